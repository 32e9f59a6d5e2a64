// testing.h — a minimal test registry for the native unit tests.
// TEST(name) { CHECK(cond) << ...; } ; every tests/*.cpp is linked into one binary
// (specode_native_tests [filter]) that prints one line per test and a closing
// "N passed, N failed" line.
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace testing {
struct Case { const char *name; std::function<void()> fn; };
inline std::vector<Case> &registry() { static std::vector<Case> r; return r; }
inline int &failures() { static int f = 0; return f; }
struct Register { Register(const char *n, std::function<void()> f) { registry().push_back({n, std::move(f)}); } };
}  // namespace testing

#define TEST_CONCAT2(a, b) a##b
#define TEST_CONCAT(a, b) TEST_CONCAT2(a, b)
#define TEST(name)                                                              \
  static void test_##name();                                                    \
  static testing::Register TEST_CONCAT(reg_, name)(#name, test_##name);         \
  static void test_##name()

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "  CHECK failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++testing::failures();                                                    \
    }                                                                           \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                   \
  do {                                                                          \
    double va_ = (a), vb_ = (b);                                                \
    if (!(std::fabs(va_ - vb_) <= (tol))) {                                     \
      std::fprintf(stderr, "  CHECK_NEAR failed at %s:%d: %s=%g %s=%g tol=%g\n", \
                   __FILE__, __LINE__, #a, va_, #b, vb_, (double)(tol));        \
      ++testing::failures();                                                    \
    }                                                                           \
  } while (0)

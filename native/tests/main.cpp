#include <cstring>

#include "testing.h"

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0;
  for (auto &c : testing::registry()) {
    if (filter && !std::strstr(c.name, filter)) continue;
    int before = testing::failures();
    c.fn();
    bool ok = testing::failures() == before;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", c.name);
    (ok ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

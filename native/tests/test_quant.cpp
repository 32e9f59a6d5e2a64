// test_quant.cpp — GGUF block decoding, fp16 conversion, activation preparation and the
// matmul kernels of every kernel set this CPU runs, against double-precision references.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "quant.h"
#include "quant_kernels.h"
#include "testing.h"

using namespace specode;

namespace {

const DType kQuantTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                             DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
const DType kAllMatmulTypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1,
                                 DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                                 DType::Q4_K, DType::Q5_K, DType::Q6_K};

// Restores the kernel set that was active when the scope began.
struct KernelSetScope {
  std::string saved = quant_kernel_set();
  ~KernelSetScope() { quant_force_kernel_set(saved.c_str()); }
};

std::vector<std::string> available_sets() {
  KernelSetScope keep;
  std::vector<std::string> v;
  for (const char *n : {"scalar", "avx2", "avx512"})
    if (quant_force_kernel_set(n)) v.push_back(n);
  return v;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto &x : v) x = nd(rng);
  // a few outliers, as real activations have
  for (size_t i = 0; i < n; i += 97) v[i] *= 6.0f;
  return v;
}

std::vector<uint8_t> quantize(DType t, const std::vector<float> &x, int64_t rows, int64_t cols) {
  const size_t rb = dtype_row_bytes(t, cols);
  std::vector<uint8_t> w(rb * rows + 64);
  for (int64_t r = 0; r < rows; ++r) quantize_row_reference(t, x.data() + r * cols, w.data() + r * rb, cols);
  return w;
}


}  // namespace

// ---- type table ------------------------------------------------------------------------------
TEST(quant_type_table) {
  CHECK(std::string(dtype_name(12)) == "Q4_K");
  CHECK(std::string(dtype_name(30)) == "BF16");
  CHECK(std::string(dtype_name(99)) == "type#99");
  CHECK(dtype_name(99) == dtype_name(99));  // static storage
  struct Row { DType t; int64_t be; size_t bb; };
  const Row rows[] = {{DType::F32, 1, 4},      {DType::F16, 1, 2},       {DType::BF16, 1, 2},
                      {DType::Q4_0, 32, 18},   {DType::Q4_1, 32, 20},    {DType::Q5_0, 32, 22},
                      {DType::Q5_1, 32, 24},   {DType::Q8_0, 32, 34},    {DType::Q2_K, 256, 84},
                      {DType::Q3_K, 256, 110}, {DType::Q4_K, 256, 144},  {DType::Q5_K, 256, 176},
                      {DType::Q6_K, 256, 210}, {DType::Q8_K, 256, 292}};
  for (const Row &r : rows) {
    CHECK(dtype_block_elems(r.t) == r.be);
    CHECK(dtype_block_bytes(r.t) == r.bb);
    CHECK(dtype_row_bytes(r.t, r.be * 7) == r.bb * 7);
  }
  for (DType t : kAllMatmulTypes) CHECK(dtype_supported((uint32_t)t));
  CHECK(!dtype_supported(99));
  CHECK(!dtype_supported((uint32_t)DType::Q8_K));
}

TEST(quant_row_length_check_aborts) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    std::freopen("/dev/null", "w", stderr);
    (void)dtype_row_bytes(DType::Q4_0, 33);  // not a multiple of 32: must abort
    _exit(0);
  }
  int status = 0;
  CHECK(pid > 0);
  if (pid > 0) {
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status));
  }
}

// ---- fp16 ------------------------------------------------------------------------------------
TEST(quant_fp16_roundtrip) {
  int bad = 0;
  for (uint32_t i = 0; i < 65536; ++i) {
    const float f = fp16_to_fp32((uint16_t)i);
    const bool nan = ((i >> 10) & 31) == 31 && (i & 1023);
    if (nan) {
      if (!std::isnan(f) || !std::isnan(fp16_to_fp32(fp32_to_fp16(f)))) ++bad;
    } else if (fp32_to_fp16(f) != i) {
      ++bad;
    }
  }
  CHECK(bad == 0);
  CHECK(fp16_to_fp32(0x3c00) == 1.0f);
  CHECK(fp16_to_fp32(0xc000) == -2.0f);
  CHECK(fp16_to_fp32(0x7bff) == 65504.0f);
  CHECK(fp16_to_fp32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(fp16_to_fp32(0x03ff) == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(fp16_to_fp32(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(std::isinf(fp16_to_fp32(0x7c00)) && fp16_to_fp32(0x7c00) > 0);
  CHECK(std::isinf(fp16_to_fp32(0xfc00)) && fp16_to_fp32(0xfc00) < 0);
  CHECK(std::signbit(fp16_to_fp32(0x8000)) && fp16_to_fp32(0x8000) == 0.0f);
  CHECK(fp32_to_fp16(1.0f) == 0x3c00);
  CHECK(fp32_to_fp16(-0.0f) == 0x8000);
  CHECK(fp32_to_fp16(65504.0f) == 0x7bff);
  CHECK(fp32_to_fp16(65519.0f) == 0x7bff);
  CHECK(fp32_to_fp16(65520.0f) == 0x7c00);  // halfway to 65536 rounds to even -> inf
  CHECK(fp32_to_fp16(1e9f) == 0x7c00);
  CHECK(fp32_to_fp16(-INFINITY) == 0xfc00);
  CHECK((fp32_to_fp16(NAN) & 0x7c00) == 0x7c00 && (fp32_to_fp16(NAN) & 0x3ff) != 0);
  CHECK(fp32_to_fp16(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(fp32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);  // tie -> even (0)
  CHECK(fp32_to_fp16(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 units -> tie -> even (2)
  CHECK(fp32_to_fp16(std::ldexp(1.25f, -25)) == 0x0001);
  CHECK(fp32_to_fp16(1e-30f) == 0x0000);
  CHECK(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie -> even
  CHECK(fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(fp32_to_fp16(std::ldexp(1023.5f, -24)) == 0x0400);  // subnormal rounds up to normal
}

TEST(quant_fp16_nearest) {
  // Every finite float maps to a nearest half (ties to even), including subnormals.
  std::mt19937 rng(7);
  int bad = 0;
  for (int i = 0; i < 200000; ++i) {
    const int e = (int)(rng() % 45) - 30;  // 2^-30 .. 2^15 (overflow is checked above)
    const float f = std::ldexp(1.0f + (float)(rng() % 8388608) / 8388608.0f, e) * ((rng() & 1) ? -1.0f : 1.0f);
    const uint16_t hv = fp32_to_fp16(f);
    const double got = fp16_to_fp32(hv), err = std::fabs(got - (double)f);
    for (int dlt : {-1, 1}) {
      const int n = (int)(hv & 0x7fff) + dlt;
      if (n < 0 || n > 0x7bff) continue;
      const double other = fp16_to_fp32((uint16_t)((hv & 0x8000) | n));
      const double oerr = std::fabs(other - (double)f);
      if (oerr < err || (oerr == err && (hv & 1))) ++bad;
    }
  }
  CHECK(bad == 0);
}

// ---- dequantize_row of hand-built blocks ------------------------------------------------------
TEST(quant_dequant_legacy_blocks) {
  {  // Q4_0: d = 0.5, low nibble j, high nibble 15-j
    uint8_t b[18] = {0x00, 0x38};
    for (int j = 0; j < 16; ++j) b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    dequantize_row(DType::Q4_0, b, y, 32);
    for (int j = 0; j < 16; ++j) {
      CHECK(y[j] == 0.5f * (float)(j - 8));
      CHECK(y[j + 16] == 0.5f * (float)(7 - j));
    }
  }
  {  // Q4_1: d = 0.25, m = -1
    uint8_t b[20] = {0x00, 0x34, 0x00, 0xbc};
    for (int j = 0; j < 16; ++j) b[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    dequantize_row(DType::Q4_1, b, y, 32);
    for (int j = 0; j < 16; ++j) {
      CHECK(y[j] == 0.25f * (float)j - 1.0f);
      CHECK(y[j + 16] == 0.25f * (float)(15 - j) - 1.0f);
    }
  }
  {  // Q5_0: d = 2, qh = 0x80000001 -> element 0 and element 31 get bit 4
    uint8_t b[22] = {0x00, 0x40, 0x01, 0x00, 0x00, 0x80};
    for (int j = 0; j < 16; ++j) b[6 + j] = 0x53;  // low 3, high 5
    float y[32];
    dequantize_row(DType::Q5_0, b, y, 32);
    CHECK(y[0] == 2.0f * (3 + 16 - 16));
    for (int j = 1; j < 16; ++j) CHECK(y[j] == 2.0f * (3 - 16));
    for (int j = 16; j < 31; ++j) CHECK(y[j] == 2.0f * (5 - 16));
    CHECK(y[31] == 2.0f * (5 + 16 - 16));
  }
  {  // Q5_1: d = 1, m = 0.5, qh = 0x00010002 -> elements 1 and 16 get bit 4
    uint8_t b[24] = {0x00, 0x3c, 0x00, 0x38, 0x02, 0x00, 0x01, 0x00};
    for (int j = 0; j < 16; ++j) b[8 + j] = 0xf0;
    float y[32];
    dequantize_row(DType::Q5_1, b, y, 32);
    CHECK(y[0] == 0.5f && y[1] == 16.5f && y[2] == 0.5f);
    CHECK(y[16] == 31.5f && y[17] == 15.5f);
  }
  {  // Q8_0: d = -0.5
    uint8_t b[34] = {0x00, 0xb8};
    for (int j = 0; j < 32; ++j) b[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    float y[32];
    dequantize_row(DType::Q8_0, b, y, 32);
    for (int j = 0; j < 32; ++j) CHECK(y[j] == -0.5f * (float)(j * 8 - 128));
  }
  {  // F16 / BF16
    const uint16_t f16[4] = {0x3c00, 0xc400, 0x0001, 0x7c00};
    const uint16_t b16[4] = {0x3f80, 0xc040, 0x0000, 0x7f80};
    float y[4];
    dequantize_row(DType::F16, f16, y, 4);
    CHECK(y[0] == 1.0f && y[1] == -4.0f && y[2] == std::ldexp(1.0f, -24) && std::isinf(y[3]));
    dequantize_row(DType::BF16, b16, y, 4);
    CHECK(y[0] == 1.0f && y[1] == -3.0f && y[2] == 0.0f && std::isinf(y[3]));
  }
}

TEST(quant_dequant_q4_K_block) {
  // scales 1,2,3,4,40,50,60,63 and mins 0,5,10,15,20,33,47,63 packed by hand:
  //   bytes 0..3  = sc[j] | (sc[j+4] >> 4) << 6
  //   bytes 4..7  = mn[j] | (mn[j+4] >> 4) << 6
  //   bytes 8..11 = (sc[j+4] & 15) | (mn[j+4] & 15) << 4
  const int sc[8] = {1, 2, 3, 4, 40, 50, 60, 63}, mn[8] = {0, 5, 10, 15, 20, 33, 47, 63};
  const uint8_t packed[12] = {129, 194, 195, 196, 64, 133, 138, 207, 72, 18, 252, 255};
  qk::BlockQ4_K b{};
  b.d = 0x3c00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  std::memcpy(b.scales, packed, 12);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = (uint8_t)((l & 15) | ((15 - (l & 15)) << 4));
  float y[256];
  dequantize_row(DType::Q4_K, &b, y, 256);
  int bad = 0;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      if (y[64 * c + l] != (float)(sc[2 * c] * (l & 15)) - 0.5f * (float)mn[2 * c]) ++bad;
      if (y[64 * c + 32 + l] != (float)(sc[2 * c + 1] * (15 - (l & 15))) - 0.5f * (float)mn[2 * c + 1]) ++bad;
    }
  CHECK(bad == 0);
  uint8_t s8[8], m8[8];
  qk::unpack_k4_scales(packed, s8, m8);
  for (int j = 0; j < 8; ++j) CHECK(s8[j] == sc[j] && m8[j] == mn[j]);
}

TEST(quant_dequant_q5_K_block) {
  const uint8_t packed[12] = {129, 194, 195, 196, 64, 133, 138, 207, 72, 18, 252, 255};
  const int sc[8] = {1, 2, 3, 4, 40, 50, 60, 63}, mn[8] = {0, 5, 10, 15, 20, 33, 47, 63};
  qk::BlockQ5_K b{};
  b.d = 0x3800;     // 0.5
  b.dmin = 0x3c00;  // 1.0
  std::memcpy(b.scales, packed, 12);
  for (int i = 0; i < 128; ++i) b.qs[i] = (uint8_t)(((i * 5) & 15) | (((i * 3) & 15) << 4));
  for (int l = 0; l < 32; ++l) b.qh[l] = (uint8_t)(l * 37 + 11);
  float y[256];
  dequantize_row(DType::Q5_K, &b, y, 256);
  int bad = 0;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      const int i = 32 * c + l;
      const int q0 = ((i * 5) & 15) + 16 * ((b.qh[l] >> (2 * c)) & 1);
      const int q1 = ((i * 3) & 15) + 16 * ((b.qh[l] >> (2 * c + 1)) & 1);
      if (y[64 * c + l] != 0.5f * (float)(sc[2 * c] * q0) - (float)mn[2 * c]) ++bad;
      if (y[64 * c + 32 + l] != 0.5f * (float)(sc[2 * c + 1] * q1) - (float)mn[2 * c + 1]) ++bad;
    }
  CHECK(bad == 0);
}

TEST(quant_dequant_q6_K_block) {
  // element e = 128h + 32k + l: low nibble in ql[64h + 32(k&1) + l] (k >= 2: high nibble),
  // bits 4..5 in qh[32h + l] at 2k; scale scales[e/16]; value d*scale*(q-32).
  qk::BlockQ6_K b{};
  b.d = 0x3800;  // 0.5
  for (int g = 0; g < 16; ++g) b.scales[g] = (int8_t)(g * 9 - 70);
  int q[256];
  for (int e = 0; e < 256; ++e) q[e] = (e * 7 + 3) & 63;
  for (int e = 0; e < 256; ++e) {
    const int hh = e / 128, k = (e / 32) % 4, l = e % 32;
    b.ql[64 * hh + 32 * (k & 1) + l] |= (uint8_t)((q[e] & 15) << (k >= 2 ? 4 : 0));
    b.qh[32 * hh + l] |= (uint8_t)((q[e] >> 4) << (2 * k));
  }
  float y[256];
  dequantize_row(DType::Q6_K, &b, y, 256);
  int bad = 0;
  for (int e = 0; e < 256; ++e)
    if (y[e] != 0.5f * (float)(b.scales[e / 16] * (q[e] - 32))) ++bad;
  CHECK(bad == 0);
}

TEST(quant_dequant_q2_q3_K_blocks) {
  {  // Q2_K: scale byte = scale | min << 4; value d*scale*q - dmin*min
    qk::BlockQ2_K b{};
    b.d = 0x3c00;     // 1
    b.dmin = 0x3400;  // 0.25
    for (int g = 0; g < 16; ++g) b.scales[g] = (uint8_t)((g & 15) | (((15 - g) & 15) << 4));
    int q[256];
    for (int e = 0; e < 256; ++e) q[e] = (e * 5 + e / 7) & 3;
    for (int e = 0; e < 256; ++e) b.qs[32 * (e / 128) + e % 32] |= (uint8_t)(q[e] << (2 * ((e / 32) % 4)));
    float y[256];
    dequantize_row(DType::Q2_K, &b, y, 256);
    int bad = 0;
    for (int e = 0; e < 256; ++e) {
      const int g = e / 16;
      if (y[e] != (float)((g & 15) * q[e]) - 0.25f * (float)(15 - g)) ++bad;
    }
    CHECK(bad == 0);
  }
  {  // Q3_K: 16 six-bit scales biased by 32: low 4 bits in bytes 0..7 (g < 8: low nibble of
     // byte g, else high nibble of byte g-8), high 2 bits in byte 8 + g%4 at bit 2*(g/4).
    qk::BlockQ3_K b{};
    b.d = 0x4000;  // 2
    int sc[16];
    for (int g = 0; g < 16; ++g) sc[g] = g * 4 - 31;  // -31 .. 29
    for (int g = 0; g < 16; ++g) {
      const int u = sc[g] + 32;
      if (g < 8) b.scales[g] |= (uint8_t)(u & 15);
      else b.scales[g - 8] |= (uint8_t)((u & 15) << 4);
      b.scales[8 + g % 4] |= (uint8_t)((u >> 4) << (2 * (g / 4)));
    }
    int q[256];
    for (int e = 0; e < 256; ++e) q[e] = (e * 3 + e / 5) & 7;  // 0..7, value q-4
    for (int e = 0; e < 256; ++e) {
      const int hh = e / 128, j = (e / 32) % 4, l = e % 32;
      b.qs[32 * hh + l] |= (uint8_t)((q[e] & 3) << (2 * j));
      b.hmask[l] |= (uint8_t)((q[e] >> 2) << (4 * hh + j));
    }
    float y[256];
    dequantize_row(DType::Q3_K, &b, y, 256);
    int bad = 0;
    for (int e = 0; e < 256; ++e)
      if (y[e] != 2.0f * (float)(sc[e / 16] * (q[e] - 4))) ++bad;
    CHECK(bad == 0);
  }
}

// The reference quantizers reproduce their input to within the type's resolution.
TEST(quant_reference_roundtrip) {
  const int64_t n = 512;
  const std::vector<float> x = random_floats(n, 11);
  struct Tol { DType t; double rel; };  // max error / max|x| per block
  const Tol tols[] = {{DType::F16, 1e-3},  {DType::BF16, 8e-3}, {DType::Q8_0, 0.01}, {DType::Q5_0, 0.04},
                      {DType::Q5_1, 0.04}, {DType::Q4_0, 0.08}, {DType::Q4_1, 0.08}, {DType::Q6_K, 0.04},
                      {DType::Q5_K, 0.08}, {DType::Q4_K, 0.15}, {DType::Q3_K, 0.35}, {DType::Q2_K, 0.6}};
  double amax = 0;
  for (float v : x) amax = std::max(amax, (double)std::fabs(v));
  for (const Tol &t : tols) {
    std::vector<uint8_t> w(dtype_row_bytes(t.t, n));
    quantize_row_reference(t.t, x.data(), w.data(), n);
    std::vector<float> y(n);
    dequantize_row(t.t, w.data(), y.data(), n);
    double err = 0;
    for (int64_t i = 0; i < n; ++i) err = std::max(err, (double)std::fabs(y[i] - x[i]));
    if (!(err <= t.rel * amax)) std::fprintf(stderr, "  %s: max error %g (limit %g)\n", dtype_name((uint32_t)t.t), err, t.rel * amax);
    CHECK(err <= t.rel * amax);
  }
}

// Canonical decode (what the kernels see) agrees with dequantize_row for every type.
TEST(quant_canonical_decode_matches_dequantize) {
  const int64_t n = 512;
  const std::vector<float> x = random_floats(n, 5);
  for (DType t : kQuantTypes) {
    std::vector<uint8_t> w(dtype_row_bytes(t, n));
    quantize_row_reference(t, x.data(), w.data(), n);
    std::vector<float> y(n);
    dequantize_row(t, w.data(), y.data(), n);
    const int SB = qk::sb_elems(t), G = qk::group_elems(t);
    int bad = 0;
    for (int64_t sb = 0; sb < n / SB; ++sb) {
      int16_t q[256];
      float dw[16], mw[16];
      qk::decode_sb_scalar(t, w.data(), sb, q, dw, mw);
      for (int k = 0; k < SB; ++k) {
        const float v = dw[k / G] * (float)q[k] + mw[k / G];
        const double mag = std::fabs(dw[k / G] * (float)q[k]) + std::fabs(mw[k / G]);
        if (!(std::fabs(v - y[sb * SB + k]) <= 1e-6 * mag)) ++bad;
      }
    }
    if (bad) std::fprintf(stderr, "  %s: %d mismatches\n", dtype_name((uint32_t)t), bad);
    CHECK(bad == 0);
  }
}

// ---- activation preparation ------------------------------------------------------------------
TEST(quant_prepare_identical_across_sets) {
  KernelSetScope keep;
  const int64_t cols = 768, nt = 5;
  const std::vector<float> x = random_floats(cols * nt, 3, 2.0f);
  for (DType t : {DType::Q4_0, DType::Q4_K, DType::F16}) {
    const size_t bytes = matmul_act_bytes(t, cols, nt);
    std::vector<uint8_t> ref;
    for (const std::string &s : available_sets()) {
      quant_force_kernel_set(s.c_str());
      std::vector<uint8_t> act(bytes, 0);
      matmul_prepare(t, x.data(), cols, 0, 2, act.data());  // two calls, disjoint token ranges
      matmul_prepare(t, x.data(), cols, 2, nt, act.data());
      if (ref.empty()) {
        ref = act;
      } else {
        // compare only the meaningful bytes of every row (padding is never written)
        const qk::ActFormat f = qk::act_format(t);
        size_t used = f == qk::ActFormat::F32 ? cols * 4
                    : f == qk::ActFormat::A32 ? cols + 8 * (cols / 32)
                                              : cols + 4 * (cols / 256) + 4 * (cols / 32) + 4 * (cols / 16);
        const size_t stride = qk::act_row_stride(f, cols);
        bool same = true;
        for (int64_t r = 0; r < nt; ++r) same &= std::memcmp(act.data() + r * stride, ref.data() + r * stride, used) == 0;
        if (!same) std::fprintf(stderr, "  %s: set %s prepares different bytes\n", dtype_name((uint32_t)t), s.c_str());
        CHECK(same);
      }
    }
    // the prepared values stand for x within half a quantization step
    std::vector<float> back(cols);
    for (int64_t r = 0; r < nt; ++r) {
      qk::act_dequantize_row(t, ref.data(), cols, r, back.data());
      const qk::ActRow ar = qk::act_row(qk::act_format(t), ref.data(), cols, r);
      const int bs = qk::act_format(t) == qk::ActFormat::A32 ? 32 : 256;
      for (int64_t k = 0; k < cols; ++k) {
        const double step = ar.d ? ar.d[k / bs] : 0.0;
        CHECK_NEAR(back[k], x[r * cols + k], step * 0.5000001 + 1e-30);
      }
      if (ar.s32) {
        for (int64_t b = 0; b < cols / 32; ++b) {
          int s = 0;
          for (int j = 0; j < 32; ++j) s += ar.q[32 * b + j];
          CHECK(ar.s32[b] == (float)s);
        }
      }
      if (ar.s16) {
        for (int64_t b = 0; b < cols / 16; ++b) {
          int s = 0;
          for (int j = 0; j < 16; ++j) s += ar.q[16 * b + j];
          CHECK(ar.s16[b] == (float)s);
        }
      }
    }
  }
}

// Zero and denormal-only activation blocks quantize to zeros (no inf/NaN from 127/amax).
TEST(quant_prepare_zero_and_tiny_blocks) {
  KernelSetScope keep;
  const int64_t cols = 512, rows = 20;
  std::vector<float> x(2 * cols, 0.0f);  // two identical tokens
  for (int64_t k = 256; k < 512; k += 3) x[k] = x[cols + k] = 1e-40f;  // denormals only in the second half
  const std::vector<float> wf = random_floats(rows * cols, 9, 0.05f);
  for (const std::string &set : available_sets()) {
    quant_force_kernel_set(set.c_str());
    for (DType t : {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K}) {
      const std::vector<uint8_t> w = quantize(t, wf, rows, cols);
      std::vector<uint8_t> act(matmul_act_bytes(t, cols, 2));
      matmul_prepare(t, x.data(), cols, 0, 1, act.data());
      matmul_prepare(t, x.data(), cols, 1, 2, act.data());
      std::vector<float> back(cols);
      qk::act_dequantize_row(t, act.data(), cols, 1, back.data());
      bool zero = true;
      for (float v : back) zero &= v == 0.0f;
      CHECK(zero);
      std::vector<float> y(2 * rows, -1.0f);
      for (int64_t nt : {1, 2}) {
        matmul_rows(t, w.data(), cols, act.data(), nt, y.data(), rows, 0, rows);
        for (int64_t i = 0; i < nt * rows; ++i) CHECK(y[i] == 0.0f);
      }
    }
  }
}

// ---- matmul against double references ----------------------------------------------------------
namespace {

struct MatmulCase {
  DType t;
  int64_t rows, cols;
};

// Returns the number of failed checks (also reported through CHECK).
void check_matmul(const std::string &set, DType t, int64_t rows, int64_t cols, int64_t nt, uint32_t seed) {
  const std::vector<float> wf = random_floats(rows * cols, seed, 0.05f);
  const std::vector<float> x = random_floats(nt * cols, seed + 1, 1.5f);
  const std::vector<uint8_t> w = quantize(t, wf, rows, cols);
  std::vector<float> wd(rows * cols);
  const size_t rb = dtype_row_bytes(t, cols);
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t, w.data() + r * rb, wd.data() + r * cols, cols);

  std::vector<uint8_t> act(matmul_act_bytes(t, cols, nt) + 64);
  const int64_t tm = nt / 2;
  matmul_prepare(t, x.data(), cols, 0, tm, act.data());
  matmul_prepare(t, x.data(), cols, tm, nt, act.data());
  std::vector<float> xa(nt * cols);
  for (int64_t i = 0; i < nt; ++i) qk::act_dequantize_row(t, act.data(), cols, i, xa.data() + i * cols);
  const qk::ActFormat f = qk::act_format(t);
  const int abs_ = f == qk::ActFormat::A32 ? 32 : 256;

  const int64_t ys = rows + 3;
  std::vector<float> y(nt * ys, std::numeric_limits<float>::quiet_NaN());
  // odd row ranges, as several threads would split them
  const int64_t cuts[] = {0, std::min<int64_t>(5, rows), std::min<int64_t>(21, rows), rows};
  for (int i = 0; i < 3; ++i) matmul_rows(t, w.data(), cols, act.data(), nt, y.data(), ys, cuts[i], cuts[i + 1]);

  int bad_same = 0, bad_fp32 = 0, bad_pad = 0;
  double worst = 0;
  for (int64_t ti = 0; ti < nt; ++ti) {
    const qk::ActRow ar = qk::act_row(f, act.data(), cols, ti);
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0, mag = 0, ref32 = 0, qerr = 0;
      for (int64_t k = 0; k < cols; ++k) {
        const double wv = wd[r * cols + k];
        ref += wv * xa[ti * cols + k];
        mag += std::fabs(wv * xa[ti * cols + k]);
        ref32 += wv * x[ti * cols + k];
        if (f != qk::ActFormat::F32) qerr += std::fabs(wv) * 0.5 * ar.d[k / abs_];
      }
      const double got = y[ti * ys + r];
      const double tol = 2e-5 * mag + 1e-6;
      if (!(std::fabs(got - ref) <= tol)) {
        if (bad_same < 3)
          std::fprintf(stderr, "  [%s %s nt=%lld cols=%lld] y[%lld][%lld] = %.7g, reference %.7g (tol %.3g)\n", set.c_str(),
                       dtype_name((uint32_t)t), (long long)nt, (long long)cols, (long long)ti, (long long)r, got, ref, tol);
        ++bad_same;
      }
      // against the unquantized activations: the activation rounding bound
      if (!(std::fabs(got - ref32) <= qerr * 1.0001 + tol)) ++bad_fp32;
      worst = std::max(worst, std::fabs(got - ref) / (mag + 1e-30));
    }
    for (int64_t r = rows; r < ys; ++r)
      if (!std::isnan(y[ti * ys + r])) ++bad_pad;
  }
  CHECK(bad_same == 0);
  CHECK(bad_fp32 == 0);
  CHECK(bad_pad == 0);
  (void)worst;
}

void check_matmul_set(const std::string &set) {
  KernelSetScope keep;
  CHECK(quant_force_kernel_set(set.c_str()));
  CHECK(set == quant_kernel_set());
  uint32_t seed = 100;
  for (DType t : kAllMatmulTypes) {
    const int64_t be = std::max<int64_t>(qk::sb_elems(t), 1);
    // a short row (tails of the 8-block groups), and a long one (several 512-column chunks)
    std::vector<int64_t> colsv;
    if (be == 1) colsv = {13, 200};
    else if (be == 32) colsv = {32 * 13, 32 * 40};
    else colsv = {256 * 3, 256 * 5};
    for (int64_t cols : colsv)
      for (int64_t nt = 1; nt <= 9; ++nt) check_matmul(set, t, 37, cols, nt, seed++);
    // tiles with 2 and 3 leftover tokens (n_tokens <= 3 alone take the direct kernels)
    check_matmul(set, t, 19, colsv[0], 10, seed++);
    check_matmul(set, t, 19, colsv[1], 11, seed++);
    check_matmul(set, t, 19, colsv[0], 17, seed++);
  }
}

}  // namespace

TEST(quant_matmul_scalar) { check_matmul_set("scalar"); }
TEST(quant_matmul_avx2) {
  KernelSetScope keep;
  if (!quant_force_kernel_set("avx2")) { std::printf("  (avx2 not supported here: skipped)\n"); return; }
  check_matmul_set("avx2");
}
TEST(quant_matmul_avx512) {
  KernelSetScope keep;
  if (!quant_force_kernel_set("avx512")) { std::printf("  (avx512 not supported here: skipped)\n"); return; }
  check_matmul_set("avx512");
}

TEST(quant_kernel_set_choice) {
  KernelSetScope keep;
  CHECK(!quant_force_kernel_set("bogus"));
  CHECK(quant_force_kernel_set("scalar"));
  CHECK(std::string(quant_kernel_set()) == "scalar");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    CHECK(quant_force_kernel_set("avx512"));
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) CHECK(quant_force_kernel_set("avx2"));
#endif
}

// ---- benchmark (SPECODE_BENCH=1) -------------------------------------------------------------
TEST(bench_matmul) {
  const char *env = std::getenv("SPECODE_BENCH");
  if (!env || std::strcmp(env, "1") != 0) return;
  KernelSetScope keep;
  const char *only_type = std::getenv("SPECODE_BENCH_TYPE");  // optional filter, e.g. Q4_K
  const char *only_set = std::getenv("SPECODE_BENCH_SET");
  struct Shape { int64_t rows, cols; };
  const Shape shapes[] = {{896, 4864}, {4864, 896}};
  using clk = std::chrono::steady_clock;
  std::printf("  single thread, best of N calls; GB/s = weight bytes / time; cold = weights rotated through >= 256 MiB\n");
  for (const std::string &set : available_sets()) {
    if (only_set && set != only_set) continue;
    quant_force_kernel_set(set.c_str());
    for (DType t : kAllMatmulTypes) {
      if (only_type && std::strcmp(only_type, dtype_name((uint32_t)t)) != 0) continue;
      for (const Shape &s : shapes) {
        if (s.cols % std::max<int64_t>(1, dtype_block_elems(t)) != 0) continue;  // e.g. K-quants at 896 columns
        const size_t wbytes = dtype_row_bytes(t, s.cols) * s.rows;
        const int copies = (int)std::max<size_t>(2, (256u << 20) / wbytes + 1);
        std::vector<std::vector<uint8_t>> ws(copies);
        {
          const std::vector<float> wf = random_floats(s.rows * s.cols, 1, 0.05f);
          ws[0] = quantize(t, wf, s.rows, s.cols);
          for (int c = 1; c < copies; ++c) ws[c] = ws[0];
        }
        char line[256];
        int len = std::snprintf(line, sizeof line, "  %-6s %-5s %4lldx%-4lld", set.c_str(), dtype_name((uint32_t)t),
                                (long long)s.rows, (long long)s.cols);
        for (int64_t nt : {1, 64}) {
          const std::vector<float> x = random_floats(nt * s.cols, 2);
          std::vector<uint8_t> act(matmul_act_bytes(t, s.cols, nt));
          std::vector<float> y(nt * s.rows);
          matmul_prepare(t, x.data(), s.cols, 0, nt, act.data());
          const double budget = set == "scalar" ? 0.3 : 0.25;
          for (int cold = (nt == 1 ? 1 : 0); cold >= 0; --cold) {
            // best of N single calls: the machine is shared, the minimum is the kernel's speed
            int iters = 0;
            double best = 1e30, total = 0;
            matmul_rows(t, ws[0].data(), s.cols, act.data(), nt, y.data(), s.rows, 0, s.rows);  // warm-up
            do {
              const uint8_t *wp = ws[cold ? (iters % copies) : 0].data();
              const auto t0 = clk::now();
              matmul_rows(t, wp, s.cols, act.data(), nt, y.data(), s.rows, 0, s.rows);
              const double d = std::chrono::duration<double>(clk::now() - t0).count();
              best = std::min(best, d);
              total += d;
              ++iters;
            } while (total < budget && iters < 100000);
            len += std::snprintf(line + len, sizeof line - len, "  nt=%-2lld%s %7.3f ms %6.1f GB/s", (long long)nt,
                                 nt == 1 ? (cold ? " cold" : " hot ") : "     ", best * 1e3, wbytes / best / 1e9);
          }
        }
        std::printf("%s\n", line);
        std::fflush(stdout);
      }
    }
  }
}

// A speculative decode step multiplies two rows at once; each row must get the
// bits it gets alone (the real token's step is then exactly a one-token step).
TEST(quant_matmul_two_rows_equal_one_row_each) {
  const std::string saved = quant_kernel_set();
  const int64_t cols = 512, rows = 48;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> wf(rows * cols), x(2 * cols);
  for (float &v : wf) v = nd(rng);
  for (float &v : x) v = nd(rng);
  const DType types[] = {DType::F32, DType::F16, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                         DType::Q4_K, DType::Q5_K, DType::Q6_K};
  for (const char *set : {"scalar", "avx2", "avx512"}) {
    if (!quant_force_kernel_set(set)) continue;
    for (DType t : types) {
      const size_t rb = dtype_row_bytes(t, cols);
      std::vector<uint8_t> w(rb * rows);
      for (int64_t r = 0; r < rows; ++r) quantize_row_reference(t, &wf[r * cols], &w[r * rb], cols);
      std::vector<uint8_t> act2(matmul_act_bytes(t, cols, 2)), act1(matmul_act_bytes(t, cols, 1));
      matmul_prepare(t, x.data(), cols, 0, 2, act2.data());
      std::vector<float> y2(2 * rows), y1(rows);
      matmul_rows(t, w.data(), cols, act2.data(), 2, y2.data(), rows, 0, rows);
      bool same = true;
      for (int tok = 0; tok < 2; ++tok) {
        matmul_prepare(t, x.data() + tok * cols, cols, 0, 1, act1.data());
        matmul_rows(t, w.data(), cols, act1.data(), 1, y1.data(), rows, 0, rows);
        for (int64_t r = 0; r < rows; ++r) same = same && y1[r] == y2[tok * rows + r];
      }
      if (!same) std::fprintf(stderr, "  %s %s: a row of a 2-row product differs from the row alone\n", set, dtype_name((uint32_t)t));
      CHECK(same);
    }
  }
  quant_force_kernel_set(saved.c_str());
}

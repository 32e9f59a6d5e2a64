// quant.cpp — GGUF type table, fp16 conversion, scalar reference kernels (dequantize,
// activation preparation, integer dot products), reference quantizers and the run-time
// choice among the scalar / AVX2 / AVX-512 kernel sets.
#include "quant.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "quant_kernels.h"

namespace specode {

// ---- type table --------------------------------------------------------------------------
namespace {
struct TypeInfo {
  uint32_t id;
  const char *name;
  int64_t block_elems;
  size_t block_bytes;
  bool supported;  // the matmul kernels run it
};
constexpr TypeInfo kTypes[] = {
    {0, "F32", 1, 4, true},        {1, "F16", 1, 2, true},       {2, "Q4_0", 32, 18, true},
    {3, "Q4_1", 32, 20, true},     {6, "Q5_0", 32, 22, true},    {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},     {9, "Q8_1", 32, 36, false},   {10, "Q2_K", 256, 84, true},
    {11, "Q3_K", 256, 110, true},  {12, "Q4_K", 256, 144, true}, {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},  {15, "Q8_K", 256, 292, false}, {30, "BF16", 1, 2, true},
};
const TypeInfo *type_info(uint32_t id) {
  for (const auto &t : kTypes)
    if (t.id == id) return &t;
  return nullptr;
}
[[noreturn]] void quant_fail(const char *what, uint32_t type, int64_t n) {
  std::fprintf(stderr, "specode quant: %s (type %s, n=%lld)\n", what, dtype_name(type), (long long)n);
  std::abort();
}
}  // namespace

const char *dtype_name(uint32_t type) {
  if (const TypeInfo *t = type_info(type)) return t->name;
  static const auto names = [] {
    std::array<std::array<char, 16>, 256> a{};
    for (unsigned i = 0; i < 256; ++i) std::snprintf(a[i].data(), 16, "type#%u", i);
    return a;
  }();
  return type < 256 ? names[type].data() : "type#?";
}

bool dtype_supported(uint32_t type) {
  const TypeInfo *t = type_info(type);
  return t && t->supported;
}
int64_t dtype_block_elems(DType t) {
  const TypeInfo *i = type_info((uint32_t)t);
  return i ? i->block_elems : 0;
}
size_t dtype_block_bytes(DType t) {
  const TypeInfo *i = type_info((uint32_t)t);
  return i ? i->block_bytes : 0;
}
size_t dtype_row_bytes(DType t, int64_t n) {
  const TypeInfo *i = type_info((uint32_t)t);
  if (!i) quant_fail("unknown tensor type", (uint32_t)t, n);
  if (n < 0 || n % i->block_elems != 0) quant_fail("row length is not a multiple of the block size", (uint32_t)t, n);
  return (size_t)(n / i->block_elems) * i->block_bytes;
}

// ---- fp16 / bf16 ------------------------------------------------------------------------
namespace {
inline uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float bf16_to_fp32(uint16_t h) { return u2f((uint32_t)h << 16); }
inline uint16_t fp32_to_bf16(float f) {
  uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}
inline uint16_t ld16(const void *p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
}  // namespace

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in fp32
    const float v = (float)man * (1.0f / 16777216.0f);
    return u2f(f2u(v) | sign);
  }
  if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13));
  return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t fp32_to_fp16(float f) {
  uint32_t u = f2u(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00;       // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00;      // >= 65520 rounds to inf (and inf)
  if (u < 0x38800000u) {                           // below 2^-14: half subnormal or zero
    const uint32_t exp = u >> 23;
    if (exp < 102) return sign;                    // < 2^-25: rounds to zero
    const uint32_t man = (u & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;              // value * 2^24 = man >> shift
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return sign | (uint16_t)h;
  }
  uint32_t h = (u >> 13) - (112u << 10);
  const uint32_t rem = u & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return sign | (uint16_t)h;
}

// ---- dequantize_row ------------------------------------------------------------------------
namespace {
using namespace qk;

void deq_q4_0(const BlockQ4_0 *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * (float)((x[i].qs[j] & 0x0F) - 8);
      y[j + 16] = d * (float)((x[i].qs[j] >> 4) - 8);
    }
  }
}
void deq_q4_1(const BlockQ4_1 *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * (float)(x[i].qs[j] & 0x0F) + m;
      y[j + 16] = d * (float)(x[i].qs[j] >> 4) + m;
    }
  }
}
void deq_q5_0(const BlockQ5_0 *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      const int a = (x[i].qs[j] & 0x0F) | (int)(((qh >> j) & 1) << 4);
      const int b = (x[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
      y[j] = d * (float)(a - 16);
      y[j + 16] = d * (float)(b - 16);
    }
  }
}
void deq_q5_1(const BlockQ5_1 *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      const int a = (x[i].qs[j] & 0x0F) | (int)(((qh >> j) & 1) << 4);
      const int b = (x[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
      y[j] = d * (float)a + m;
      y[j + 16] = d * (float)b + m;
    }
  }
}
void deq_q8_0(const BlockQ8_0 *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < 32; ++j) y[j] = d * (float)x[i].qs[j];
  }
}
void deq_q8_1(const BlockQ8_1 *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < 32; ++j) y[j] = d * (float)x[i].qs[j];
  }
}
// Q2_K: element e = 128*h + 32*j + l (h<2, j<4, l<32): 2 bits at qs[32h+l] >> 2j,
// group (scale byte) 8h + 2j + l/16 (low nibble scale, high nibble min).
void deq_q2_K(const BlockQ2_K *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    const float d = fp16_to_fp32(x[i].d), dm = fp16_to_fp32(x[i].dmin);
    for (int e = 0; e < 256; ++e) {
      const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
      const int q = (x[i].qs[32 * h + l] >> (2 * j)) & 3;
      const uint8_t s = x[i].scales[e >> 4];
      y[e] = d * (float)(s & 0x0F) * (float)q - dm * (float)(s >> 4);
    }
  }
}
// Q3_K: same 2-bit layout as Q2_K plus a high bit at hmask[l] bit (4h + j); the 3-bit value
// is (low | high << 2) - 4; the 16 six-bit scales are biased by 32.
void deq_q3_K(const BlockQ3_K *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    const float d = fp16_to_fp32(x[i].d);
    for (int e = 0; e < 256; ++e) {
      const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
      const int lo = (x[i].qs[32 * h + l] >> (2 * j)) & 3;
      const int hi = (x[i].hmask[l] >> (4 * h + j)) & 1;
      y[e] = d * (float)q3k_scale(x[i].scales, e >> 4) * (float)((lo | (hi << 2)) - 4);
    }
  }
}
// Q4_K: element e = 64*c + l (l<32) low nibble of qs[32c+l], e = 64c+32+l the high nibble;
// sub-block e/32 has six-bit scale and min.
void deq_q4_K(const BlockQ4_K *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    const float d = fp16_to_fp32(x[i].d), dm = fp16_to_fp32(x[i].dmin);
    uint8_t sc[8], mn[8];
    unpack_k4_scales(x[i].scales, sc, mn);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        const uint8_t b = x[i].qs[32 * c + l];
        y[64 * c + l] = d * (float)sc[2 * c] * (float)(b & 0x0F) - dm * (float)mn[2 * c];
        y[64 * c + 32 + l] = d * (float)sc[2 * c + 1] * (float)(b >> 4) - dm * (float)mn[2 * c + 1];
      }
  }
}
// Q5_K: as Q4_K plus bit 4 from qh[l] bit 2c (low half) / 2c+1 (high half).
void deq_q5_K(const BlockQ5_K *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    const float d = fp16_to_fp32(x[i].d), dm = fp16_to_fp32(x[i].dmin);
    uint8_t sc[8], mn[8];
    unpack_k4_scales(x[i].scales, sc, mn);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        const uint8_t b = x[i].qs[32 * c + l], h = x[i].qh[l];
        const int q0 = (b & 0x0F) | (((h >> (2 * c)) & 1) << 4);
        const int q1 = (b >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
        y[64 * c + l] = d * (float)sc[2 * c] * (float)q0 - dm * (float)mn[2 * c];
        y[64 * c + 32 + l] = d * (float)sc[2 * c + 1] * (float)q1 - dm * (float)mn[2 * c + 1];
      }
  }
}
// Q6_K: element e = 128h + 32k + l: low 4 bits from ql[64h + 32(k&1) + l] (k<2: low nibble,
// k>=2: high nibble), high 2 bits from qh[32h + l] >> 2k; value (q - 32) * d * scales[e/16].
void deq_q6_K(const BlockQ6_K *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    const float d = fp16_to_fp32(x[i].d);
    for (int e = 0; e < 256; ++e) {
      const int h = e >> 7, k = (e >> 5) & 3, l = e & 31;
      const uint8_t lb = x[i].ql[64 * h + 32 * (k & 1) + l];
      const int lo = (k < 2) ? (lb & 0x0F) : (lb >> 4);
      const int hi = (x[i].qh[32 * h + l] >> (2 * k)) & 3;
      y[e] = d * (float)x[i].scales[e >> 4] * (float)((lo | (hi << 4)) - 32);
    }
  }
}
void deq_q8_K(const BlockQ8_K *x, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256)
    for (int j = 0; j < 256; ++j) y[j] = x[i].d * (float)x[i].qs[j];
}
}  // namespace

void dequantize_row(DType t, const void *src, float *dst, int64_t n) {
  const int64_t nb = n / std::max<int64_t>(1, dtype_block_elems(t));
  (void)dtype_row_bytes(t, n);  // validates type and length
  switch (t) {
    case DType::F32: std::memcpy(dst, src, (size_t)n * 4); break;
    case DType::F16: {
      const uint8_t *p = (const uint8_t *)src;
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(ld16(p + 2 * i));
      break;
    }
    case DType::BF16: {
      const uint8_t *p = (const uint8_t *)src;
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(ld16(p + 2 * i));
      break;
    }
    case DType::Q4_0: deq_q4_0((const BlockQ4_0 *)src, dst, nb); break;
    case DType::Q4_1: deq_q4_1((const BlockQ4_1 *)src, dst, nb); break;
    case DType::Q5_0: deq_q5_0((const BlockQ5_0 *)src, dst, nb); break;
    case DType::Q5_1: deq_q5_1((const BlockQ5_1 *)src, dst, nb); break;
    case DType::Q8_0: deq_q8_0((const BlockQ8_0 *)src, dst, nb); break;
    case DType::Q8_1: deq_q8_1((const BlockQ8_1 *)src, dst, nb); break;
    case DType::Q2_K: deq_q2_K((const BlockQ2_K *)src, dst, nb); break;
    case DType::Q3_K: deq_q3_K((const BlockQ3_K *)src, dst, nb); break;
    case DType::Q4_K: deq_q4_K((const BlockQ4_K *)src, dst, nb); break;
    case DType::Q5_K: deq_q5_K((const BlockQ5_K *)src, dst, nb); break;
    case DType::Q6_K: deq_q6_K((const BlockQ6_K *)src, dst, nb); break;
    case DType::Q8_K: deq_q8_K((const BlockQ8_K *)src, dst, nb); break;
  }
}

// ---- reference quantizers -----------------------------------------------------------------
namespace {
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
inline int roundi(float v) { return (int)std::lrintf(v); }
// The element of x with the largest magnitude, with its sign.
float signed_max(const float *x, int n) {
  float m = 0.0f, am = 0.0f;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > am) { am = std::fabs(x[i]); m = x[i]; }
  return m;
}
// Integer q in [0, qmax] for x ~ d*q - mn (asymmetric); returns d, mn (mn >= 0).
void minmax_scale(const float *x, int n, int qmax, float *d, float *mn) {
  float lo = 0.0f, hi = 0.0f;
  for (int i = 0; i < n; ++i) { lo = std::min(lo, x[i]); hi = std::max(hi, x[i]); }
  *d = (hi - lo) / (float)qmax;
  *mn = -lo;
}
void pack_k4_scales(const int *sc, const int *mn, uint8_t *s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 4; ++j) {
    s[j] = (uint8_t)(sc[j] & 63);
    s[j + 4] = (uint8_t)(mn[j] & 63);
  }
  for (int j = 4; j < 8; ++j) {
    s[j + 4] = (uint8_t)((sc[j] & 0x0F) | ((mn[j] & 0x0F) << 4));
    s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
    s[j] |= (uint8_t)((mn[j] >> 4) << 6);
  }
}
// Shared part of Q4_K / Q5_K: 8 sub-blocks of 32 with six-bit scales and mins; q gets
// 256 values in [0, qmax] in element order.
void quant_k_asym(const float *x, int qmax, uint16_t *d16, uint16_t *dmin16, uint8_t *scales, int *q) {
  float sd[8], sm[8], maxd = 0.0f, maxm = 0.0f;
  for (int j = 0; j < 8; ++j) {
    minmax_scale(x + 32 * j, 32, qmax, &sd[j], &sm[j]);
    maxd = std::max(maxd, sd[j]);
    maxm = std::max(maxm, sm[j]);
  }
  const float d = maxd / 63.0f, dm = maxm / 63.0f;
  *d16 = fp32_to_fp16(d);
  *dmin16 = fp32_to_fp16(dm);
  const float dq = fp16_to_fp32(*d16), dmq = fp16_to_fp32(*dmin16);
  int isc[8], imn[8];
  for (int j = 0; j < 8; ++j) {
    isc[j] = dq > 0 ? clampi(roundi(sd[j] / dq), 0, 63) : 0;
    imn[j] = dmq > 0 ? clampi(roundi(sm[j] / dmq), 0, 63) : 0;
    const float s = dq * (float)isc[j], m = dmq * (float)imn[j];
    for (int l = 0; l < 32; ++l)
      q[32 * j + l] = s > 0 ? clampi(roundi((x[32 * j + l] + m) / s), 0, qmax) : 0;
  }
  pack_k4_scales(isc, imn, scales);
}
}  // namespace

void quantize_row_reference(DType t, const float *x, void *dst, int64_t n) {
  const int64_t be = dtype_block_elems(t);
  (void)dtype_row_bytes(t, n);
  const int64_t nb = n / be;
  uint8_t *out = (uint8_t *)dst;
  switch (t) {
    case DType::F32: std::memcpy(dst, x, (size_t)n * 4); return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) { const uint16_t h = fp32_to_fp16(x[i]); std::memcpy(out + 2 * i, &h, 2); }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) { const uint16_t h = fp32_to_bf16(x[i]); std::memcpy(out + 2 * i, &h, 2); }
      return;
    case DType::Q4_0: case DType::Q5_0: {
      const int half = t == DType::Q4_0 ? 8 : 16, qmax = 2 * half - 1;
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 32 * i;
        const float d = signed_max(v, 32) / (float)-half;
        const uint16_t dh = fp32_to_fp16(d);
        const float dq = fp16_to_fp32(dh), id = dq != 0 ? 1.0f / dq : 0.0f;
        int q[32];
        for (int j = 0; j < 32; ++j) q[j] = clampi(roundi(v[j] * id) + half, 0, qmax);
        if (t == DType::Q4_0) {
          BlockQ4_0 &b = ((BlockQ4_0 *)dst)[i];
          b.d = dh;
          for (int j = 0; j < 16; ++j) b.qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
        } else {
          BlockQ5_0 &b = ((BlockQ5_0 *)dst)[i];
          b.d = dh;
          uint32_t qh = 0;
          for (int j = 0; j < 16; ++j) b.qs[j] = (uint8_t)((q[j] & 15) | ((q[j + 16] & 15) << 4));
          for (int j = 0; j < 32; ++j) qh |= (uint32_t)(q[j] >> 4) << j;
          std::memcpy(b.qh, &qh, 4);
        }
      }
      return;
    }
    case DType::Q4_1: case DType::Q5_1: {
      const int qmax = t == DType::Q4_1 ? 15 : 31;
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 32 * i;
        float lo = v[0], hi = v[0];
        for (int j = 1; j < 32; ++j) { lo = std::min(lo, v[j]); hi = std::max(hi, v[j]); }
        const uint16_t dh = fp32_to_fp16((hi - lo) / (float)qmax), mh = fp32_to_fp16(lo);
        const float dq = fp16_to_fp32(dh), mq = fp16_to_fp32(mh), id = dq != 0 ? 1.0f / dq : 0.0f;
        int q[32];
        for (int j = 0; j < 32; ++j) q[j] = clampi(roundi((v[j] - mq) * id), 0, qmax);
        if (t == DType::Q4_1) {
          BlockQ4_1 &b = ((BlockQ4_1 *)dst)[i];
          b.d = dh;
          b.m = mh;
          for (int j = 0; j < 16; ++j) b.qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
        } else {
          BlockQ5_1 &b = ((BlockQ5_1 *)dst)[i];
          b.d = dh;
          b.m = mh;
          uint32_t qh = 0;
          for (int j = 0; j < 16; ++j) b.qs[j] = (uint8_t)((q[j] & 15) | ((q[j + 16] & 15) << 4));
          for (int j = 0; j < 32; ++j) qh |= (uint32_t)(q[j] >> 4) << j;
          std::memcpy(b.qh, &qh, 4);
        }
      }
      return;
    }
    case DType::Q8_0: case DType::Q8_1: {
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 32 * i;
        float am = 0.0f;
        for (int j = 0; j < 32; ++j) am = std::max(am, std::fabs(v[j]));
        const float d = am / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        int8_t q[32];
        int sum = 0;
        for (int j = 0; j < 32; ++j) { q[j] = (int8_t)clampi(roundi(v[j] * id), -127, 127); sum += q[j]; }
        if (t == DType::Q8_0) {
          BlockQ8_0 &b = ((BlockQ8_0 *)dst)[i];
          b.d = fp32_to_fp16(d);
          std::memcpy(b.qs, q, 32);
        } else {
          BlockQ8_1 &b = ((BlockQ8_1 *)dst)[i];
          b.d = fp32_to_fp16(d);
          b.s = fp32_to_fp16(d * (float)sum);
          std::memcpy(b.qs, q, 32);
        }
      }
      return;
    }
    case DType::Q8_K: {
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 256 * i;
        BlockQ8_K &b = ((BlockQ8_K *)dst)[i];
        float am = 0.0f;
        for (int j = 0; j < 256; ++j) am = std::max(am, std::fabs(v[j]));
        b.d = am / 127.0f;
        const float id = b.d != 0 ? 1.0f / b.d : 0.0f;
        for (int j = 0; j < 256; ++j) b.qs[j] = (int8_t)clampi(roundi(v[j] * id), -127, 127);
        for (int g = 0; g < 16; ++g) {
          int s = 0;
          for (int l = 0; l < 16; ++l) s += b.qs[16 * g + l];
          b.bsums[g] = (int16_t)s;
        }
      }
      return;
    }
    case DType::Q4_K: case DType::Q5_K: {
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 256 * i;
        int q[256];
        if (t == DType::Q4_K) {
          BlockQ4_K &b = ((BlockQ4_K *)dst)[i];
          quant_k_asym(v, 15, &b.d, &b.dmin, b.scales, q);
          for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
        } else {
          BlockQ5_K &b = ((BlockQ5_K *)dst)[i];
          quant_k_asym(v, 31, &b.d, &b.dmin, b.scales, q);
          std::memset(b.qh, 0, 32);
          for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
              const int q0 = q[64 * c + l], q1 = q[64 * c + 32 + l];
              b.qs[32 * c + l] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
              b.qh[l] |= (uint8_t)(((q0 >> 4) << (2 * c)) | ((q1 >> 4) << (2 * c + 1)));
            }
        }
      }
      return;
    }
    case DType::Q6_K: {
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 256 * i;
        BlockQ6_K &b = ((BlockQ6_K *)dst)[i];
        float s[16], amax = 0.0f, smax = 0.0f;
        for (int g = 0; g < 16; ++g) {
          s[g] = signed_max(v + 16 * g, 16) / -32.0f;
          if (std::fabs(s[g]) > amax) { amax = std::fabs(s[g]); smax = s[g]; }
        }
        const uint16_t dh = fp32_to_fp16(smax / -128.0f);
        const float dq = fp16_to_fp32(dh);
        b.d = dh;
        int q[256];
        for (int g = 0; g < 16; ++g) {
          const int sc = dq != 0 ? clampi(roundi(s[g] / dq), -128, 127) : 0;
          b.scales[g] = (int8_t)sc;
          const float step = dq * (float)sc;
          for (int l = 0; l < 16; ++l)
            q[16 * g + l] = step != 0 ? clampi(roundi(v[16 * g + l] / step), -32, 31) + 32 : 32;
        }
        std::memset(b.ql, 0, 128);
        std::memset(b.qh, 0, 64);
        for (int e = 0; e < 256; ++e) {
          const int h = e >> 7, k = (e >> 5) & 3, l = e & 31;
          b.ql[64 * h + 32 * (k & 1) + l] |= (uint8_t)((q[e] & 15) << (k < 2 ? 0 : 4));
          b.qh[32 * h + l] |= (uint8_t)((q[e] >> 4) << (2 * k));
        }
      }
      return;
    }
    case DType::Q2_K: {
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 256 * i;
        BlockQ2_K &b = ((BlockQ2_K *)dst)[i];
        float sd[16], sm[16], maxd = 0, maxm = 0;
        for (int g = 0; g < 16; ++g) {
          minmax_scale(v + 16 * g, 16, 3, &sd[g], &sm[g]);
          maxd = std::max(maxd, sd[g]);
          maxm = std::max(maxm, sm[g]);
        }
        b.d = fp32_to_fp16(maxd / 15.0f);
        b.dmin = fp32_to_fp16(maxm / 15.0f);
        const float dq = fp16_to_fp32(b.d), dmq = fp16_to_fp32(b.dmin);
        int q[256];
        for (int g = 0; g < 16; ++g) {
          const int isc = dq > 0 ? clampi(roundi(sd[g] / dq), 0, 15) : 0;
          const int imn = dmq > 0 ? clampi(roundi(sm[g] / dmq), 0, 15) : 0;
          b.scales[g] = (uint8_t)(isc | (imn << 4));
          const float s = dq * (float)isc, m = dmq * (float)imn;
          for (int l = 0; l < 16; ++l) q[16 * g + l] = s > 0 ? clampi(roundi((v[16 * g + l] + m) / s), 0, 3) : 0;
        }
        std::memset(b.qs, 0, 64);
        for (int e = 0; e < 256; ++e) {
          const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
          b.qs[32 * h + l] |= (uint8_t)(q[e] << (2 * j));
        }
      }
      return;
    }
    case DType::Q3_K: {
      for (int64_t i = 0; i < nb; ++i) {
        const float *v = x + 256 * i;
        BlockQ3_K &b = ((BlockQ3_K *)dst)[i];
        float s[16], amax = 0.0f, smax = 0.0f;
        for (int g = 0; g < 16; ++g) {
          s[g] = signed_max(v + 16 * g, 16) / -4.0f;
          if (std::fabs(s[g]) > amax) { amax = std::fabs(s[g]); smax = s[g]; }
        }
        const uint16_t dh = fp32_to_fp16(smax / -32.0f);
        const float dq = fp16_to_fp32(dh);
        b.d = dh;
        int sc[16], q[256];
        for (int g = 0; g < 16; ++g) {
          sc[g] = dq != 0 ? clampi(roundi(s[g] / dq), -32, 31) : 0;
          const float step = dq * (float)sc[g];
          for (int l = 0; l < 16; ++l)
            q[16 * g + l] = step != 0 ? clampi(roundi(v[16 * g + l] / step), -4, 3) + 4 : 4;
        }
        std::memset(b.scales, 0, 12);
        for (int g = 0; g < 16; ++g) {
          const int u = sc[g] + 32;  // 0..63
          if (g < 8) b.scales[g] |= (uint8_t)(u & 15);
          else b.scales[g - 8] |= (uint8_t)((u & 15) << 4);
          b.scales[8 + (g & 3)] |= (uint8_t)((u >> 4) << (2 * (g >> 2)));
        }
        std::memset(b.qs, 0, 64);
        std::memset(b.hmask, 0, 32);
        for (int e = 0; e < 256; ++e) {
          const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
          b.qs[32 * h + l] |= (uint8_t)((q[e] & 3) << (2 * j));
          b.hmask[l] |= (uint8_t)((q[e] >> 2) << (4 * h + j));
        }
      }
      return;
    }
  }
}

// ---- canonical scalar decode (shared with the SIMD prefill for Q2_K/Q3_K) --------------
namespace qk {
void decode_sb_scalar(DType t, const void *row, int64_t sb, int16_t *q, float *dw, float *mw) {
  const uint8_t *r = (const uint8_t *)row;
  switch (t) {
    case DType::Q4_0: case DType::Q4_1: {
      const uint8_t *qs;
      if (t == DType::Q4_0) {
        const BlockQ4_0 &b = ((const BlockQ4_0 *)r)[sb];
        dw[0] = fp16_to_fp32(b.d);
        mw[0] = -8.0f * dw[0];
        qs = b.qs;
      } else {
        const BlockQ4_1 &b = ((const BlockQ4_1 *)r)[sb];
        dw[0] = fp16_to_fp32(b.d);
        mw[0] = fp16_to_fp32(b.m);
        qs = b.qs;
      }
      for (int j = 0; j < 16; ++j) { q[j] = qs[j] & 15; q[j + 16] = qs[j] >> 4; }
      return;
    }
    case DType::Q5_0: case DType::Q5_1: {
      const uint8_t *qs, *qhp;
      if (t == DType::Q5_0) {
        const BlockQ5_0 &b = ((const BlockQ5_0 *)r)[sb];
        dw[0] = fp16_to_fp32(b.d);
        mw[0] = -16.0f * dw[0];
        qs = b.qs;
        qhp = b.qh;
      } else {
        const BlockQ5_1 &b = ((const BlockQ5_1 *)r)[sb];
        dw[0] = fp16_to_fp32(b.d);
        mw[0] = fp16_to_fp32(b.m);
        qs = b.qs;
        qhp = b.qh;
      }
      uint32_t qh;
      std::memcpy(&qh, qhp, 4);
      for (int j = 0; j < 16; ++j) {
        q[j] = (int16_t)((qs[j] & 15) | (((qh >> j) & 1) << 4));
        q[j + 16] = (int16_t)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
      }
      return;
    }
    case DType::Q8_0: {
      const BlockQ8_0 &b = ((const BlockQ8_0 *)r)[sb];
      dw[0] = fp16_to_fp32(b.d);
      mw[0] = 0.0f;
      for (int j = 0; j < 32; ++j) q[j] = b.qs[j];
      return;
    }
    case DType::Q2_K: {
      const BlockQ2_K &b = ((const BlockQ2_K *)r)[sb];
      const float d = fp16_to_fp32(b.d), dm = fp16_to_fp32(b.dmin);
      for (int e = 0; e < 256; ++e) {
        const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
        q[e] = (int16_t)((b.qs[32 * h + l] >> (2 * j)) & 3);
      }
      for (int g = 0; g < 16; ++g) {
        dw[g] = d * (float)(b.scales[g] & 15);
        mw[g] = -dm * (float)(b.scales[g] >> 4);
      }
      return;
    }
    case DType::Q3_K: {
      const BlockQ3_K &b = ((const BlockQ3_K *)r)[sb];
      const float d = fp16_to_fp32(b.d);
      for (int e = 0; e < 256; ++e) {
        const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
        const int lo = (b.qs[32 * h + l] >> (2 * j)) & 3, hi = (b.hmask[l] >> (4 * h + j)) & 1;
        q[e] = (int16_t)(lo | (hi << 2));
      }
      for (int g = 0; g < 16; ++g) {
        dw[g] = d * (float)q3k_scale(b.scales, g);
        mw[g] = -4.0f * dw[g];
      }
      return;
    }
    case DType::Q4_K: case DType::Q5_K: {
      const uint8_t *scales, *qs, *qh = nullptr;
      uint16_t d16, dm16;
      if (t == DType::Q4_K) {
        const BlockQ4_K &b = ((const BlockQ4_K *)r)[sb];
        scales = b.scales; qs = b.qs; d16 = b.d; dm16 = b.dmin;
      } else {
        const BlockQ5_K &b = ((const BlockQ5_K *)r)[sb];
        scales = b.scales; qs = b.qs; qh = b.qh; d16 = b.d; dm16 = b.dmin;
      }
      uint8_t sc[8], mn[8];
      unpack_k4_scales(scales, sc, mn);
      const float d = fp16_to_fp32(d16), dm = fp16_to_fp32(dm16);
      for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
          int q0 = qs[32 * c + l] & 15, q1 = qs[32 * c + l] >> 4;
          if (qh) {
            q0 |= ((qh[l] >> (2 * c)) & 1) << 4;
            q1 |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
          }
          q[64 * c + l] = (int16_t)q0;
          q[64 * c + 32 + l] = (int16_t)q1;
        }
      for (int g = 0; g < 8; ++g) {
        dw[g] = d * (float)sc[g];
        mw[g] = -dm * (float)mn[g];
      }
      return;
    }
    case DType::Q6_K: {
      const BlockQ6_K &b = ((const BlockQ6_K *)r)[sb];
      const float d = fp16_to_fp32(b.d);
      for (int e = 0; e < 256; ++e) {
        const int h = e >> 7, k = (e >> 5) & 3, l = e & 31;
        const uint8_t lb = b.ql[64 * h + 32 * (k & 1) + l];
        const int lo = (k < 2) ? (lb & 15) : (lb >> 4);
        q[e] = (int16_t)(lo | (((b.qh[32 * h + l] >> (2 * k)) & 3) << 4));
      }
      for (int g = 0; g < 16; ++g) {
        dw[g] = d * (float)b.scales[g];
        mw[g] = -32.0f * dw[g];
      }
      return;
    }
    default: return;
  }
}

// ---- prepared activations ------------------------------------------------------------------
void act_dequantize_row(DType wtype, const void *act, int64_t cols, int64_t token, float *out) {
  const ActFormat f = act_format(wtype);
  const ActRow r = act_row(f, act, cols, token);
  if (f == ActFormat::F32) {
    std::memcpy(out, r.x, (size_t)cols * 4);
  } else if (f == ActFormat::A32 || f == ActFormat::A256) {
    const int64_t bs = f == ActFormat::A32 ? 32 : 256;
    for (int64_t k = 0; k < cols; ++k) out[k] = r.d[k / bs] * (float)r.q[k];
  }
}
}  // namespace qk

namespace {
// Quantize n floats (n = 32 or 256) to int8 with d = max|x|/127 (round half to even, the
// same operations in the same order as the SIMD versions, so all sets agree bit for bit).
inline float quant_block_scalar(const float *x, int n, int8_t *q) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float id = amax > kActTiny ? 127.0f / amax : 0.0f;
  for (int i = 0; i < n; ++i) {
    const long v = std::lrint(x[i] * id);  // round half to even, like cvtps2dq
    q[i] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
  }
  return amax / 127.0f;
}

void prepare_a32_scalar(const float *x, int64_t cols, int64_t t0, int64_t t1, void *act) {
  for (int64_t t = t0; t < t1; ++t) {
    const ActRow r = act_row(ActFormat::A32, act, cols, t);
    for (int64_t b = 0; b < cols / 32; ++b) {
      r.d[b] = quant_block_scalar(x + t * cols + 32 * b, 32, r.q + 32 * b);
      int s = 0;
      for (int j = 0; j < 32; ++j) s += r.q[32 * b + j];
      r.s32[b] = (float)s;
    }
  }
}
void prepare_a256_scalar(const float *x, int64_t cols, int64_t t0, int64_t t1, void *act) {
  for (int64_t t = t0; t < t1; ++t) {
    const ActRow r = act_row(ActFormat::A256, act, cols, t);
    for (int64_t b = 0; b < cols / 256; ++b) {
      r.d[b] = quant_block_scalar(x + t * cols + 256 * b, 256, r.q + 256 * b);
      for (int g = 0; g < 16; ++g) {
        int s = 0;
        for (int j = 0; j < 16; ++j) s += r.q[256 * b + 16 * g + j];
        r.s16[16 * b + g] = (float)s;
      }
      for (int g = 0; g < 8; ++g) r.s32[8 * b + g] = r.s16[16 * b + 2 * g] + r.s16[16 * b + 2 * g + 1];
    }
  }
}

// ---- scalar matmul kernels -----------------------------------------------------------------
template <DType T>
void matmul_quant_scalar(const void *w, int64_t cols, const void *act, int64_t nt, float *y,
                         int64_t ys, int64_t r0, int64_t r1) {
  constexpr int SB = sb_elems(T), G = group_elems(T), NG = SB / G;
  const size_t rb = dtype_row_bytes(T, cols);
  const int64_t nsb = cols / SB;
  const ActFormat f = act_format(T);
  constexpr int TB = 16;  // tokens sharing one decoded super-block
  int16_t q[SB];
  float dw[NG], mw[NG];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t *row = (const uint8_t *)w + (size_t)r * rb;
    for (int64_t t0 = 0; t0 < nt; t0 += TB) {
      const int n = (int)std::min<int64_t>(TB, nt - t0);
      ActRow a[TB];
      float acc[TB] = {};
      for (int i = 0; i < n; ++i) a[i] = act_row(f, act, cols, t0 + i);
      for (int64_t sb = 0; sb < nsb; ++sb) {
        decode_sb_scalar(T, row, sb, q, dw, mw);
        for (int i = 0; i < n; ++i) {
          const int8_t *aq = a[i].q + sb * SB;
          const float *gs = (G == 16 ? a[i].s16 : a[i].s32) + sb * NG;
          float s = 0.0f;
          for (int g = 0; g < NG; ++g) {
            int is = 0;
            for (int k = 0; k < G; ++k) is += (int)q[g * G + k] * (int)aq[g * G + k];
            s += dw[g] * (float)is + mw[g] * gs[g];
          }
          acc[i] += a[i].d[sb] * s;
        }
      }
      for (int i = 0; i < n; ++i) y[(t0 + i) * ys + r] = acc[i];
    }
  }
}

template <DType T>
void matmul_float_scalar(const void *w, int64_t cols, const void *act, int64_t nt, float *y,
                         int64_t ys, int64_t r0, int64_t r1) {
  const size_t rb = dtype_row_bytes(T, cols);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t *row = (const uint8_t *)w + (size_t)r * rb;
    for (int64_t t = 0; t < nt; ++t) {
      const float *x = act_row(ActFormat::F32, act, cols, t).x;
      float s = 0.0f;
      for (int64_t k = 0; k < cols; ++k) {
        float wv;
        if (T == DType::F32) std::memcpy(&wv, row + 4 * k, 4);
        else if (T == DType::F16) wv = fp16_to_fp32(ld16(row + 2 * k));
        else wv = bf16_to_fp32(ld16(row + 2 * k));
        s = std::fma(wv, x[k], s);
      }
      y[t * ys + r] = s;
    }
  }
}

KernelSet make_scalar_set() {
  KernelSet ks{};
  ks.name = "scalar";
  ks.matmul[(int)DType::F32] = matmul_float_scalar<DType::F32>;
  ks.matmul[(int)DType::F16] = matmul_float_scalar<DType::F16>;
  ks.matmul[(int)DType::BF16] = matmul_float_scalar<DType::BF16>;
  ks.matmul[(int)DType::Q4_0] = matmul_quant_scalar<DType::Q4_0>;
  ks.matmul[(int)DType::Q4_1] = matmul_quant_scalar<DType::Q4_1>;
  ks.matmul[(int)DType::Q5_0] = matmul_quant_scalar<DType::Q5_0>;
  ks.matmul[(int)DType::Q5_1] = matmul_quant_scalar<DType::Q5_1>;
  ks.matmul[(int)DType::Q8_0] = matmul_quant_scalar<DType::Q8_0>;
  ks.matmul[(int)DType::Q2_K] = matmul_quant_scalar<DType::Q2_K>;
  ks.matmul[(int)DType::Q3_K] = matmul_quant_scalar<DType::Q3_K>;
  ks.matmul[(int)DType::Q4_K] = matmul_quant_scalar<DType::Q4_K>;
  ks.matmul[(int)DType::Q5_K] = matmul_quant_scalar<DType::Q5_K>;
  ks.matmul[(int)DType::Q6_K] = matmul_quant_scalar<DType::Q6_K>;
  ks.prepare_a32 = prepare_a32_scalar;
  ks.prepare_a256 = prepare_a256_scalar;
  return ks;
}
}  // namespace

const KernelSet &qk::scalar_kernel_set() {
  static const KernelSet ks = make_scalar_set();
  return ks;
}

// ---- run-time kernel choice -----------------------------------------------------------------
namespace {
bool cpu_has(const char *name) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (!std::strcmp(name, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (!std::strcmp(name, "avx2"))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#endif
  return !std::strcmp(name, "scalar");
}
const KernelSet *set_by_name(const char *name) {
  if (!name) return nullptr;
  const KernelSet *ks = nullptr;
  if (!std::strcmp(name, "scalar")) ks = &qk::scalar_kernel_set();
  else if (!std::strcmp(name, "avx2")) ks = qk::avx2_kernel_set();
  else if (!std::strcmp(name, "avx512")) ks = qk::avx512_kernel_set();
  return (ks && cpu_has(name)) ? ks : nullptr;
}
const KernelSet *best_set() {
  for (const char *n : {"avx512", "avx2"})
    if (const KernelSet *ks = set_by_name(n)) return ks;
  return &qk::scalar_kernel_set();
}
std::atomic<const KernelSet *> g_set{nullptr};

const KernelSet *current_set() {
  const KernelSet *ks = g_set.load(std::memory_order_acquire);
  if (ks) return ks;
  const char *env = std::getenv("SPECODE_KERNELS");
  if (env && *env) {
    ks = set_by_name(env);
    if (!ks) std::fprintf(stderr, "specode quant: SPECODE_KERNELS=%s is not available here; using the best set\n", env);
  }
  if (!ks) ks = best_set();
  const KernelSet *expected = nullptr;
  if (!g_set.compare_exchange_strong(expected, ks, std::memory_order_acq_rel)) ks = expected;
  return ks;
}
}  // namespace

const char *quant_kernel_set() { return current_set()->name; }

bool quant_force_kernel_set(const char *name) {
  const KernelSet *ks = set_by_name(name);
  if (!ks) return false;
  g_set.store(ks, std::memory_order_release);
  return true;
}

// ---- matmul entry points --------------------------------------------------------------------
size_t matmul_act_bytes(DType wtype, int64_t cols, int64_t n_tokens) {
  return (size_t)n_tokens * act_row_stride(act_format(wtype), cols);
}

void matmul_prepare(DType wtype, const float *x, int64_t cols, int64_t t0, int64_t t1, void *act) {
  if (t1 <= t0) return;
  const ActFormat f = act_format(wtype);
  if (f == ActFormat::None || !dtype_supported((uint32_t)wtype))
    quant_fail("matmul_prepare: unsupported weight type", (uint32_t)wtype, cols);
  if (cols % std::max<int64_t>(1, sb_elems(wtype)) != 0)
    quant_fail("matmul_prepare: cols is not a multiple of the block size", (uint32_t)wtype, cols);
  const KernelSet *ks = current_set();
  switch (f) {
    case ActFormat::F32:
      for (int64_t t = t0; t < t1; ++t)
        std::memcpy(act_row(f, act, cols, t).x, x + t * cols, (size_t)cols * 4);
      break;
    case ActFormat::A32:
      (ks->prepare_a32 ? ks->prepare_a32 : prepare_a32_scalar)(x, cols, t0, t1, act);
      break;
    case ActFormat::A256:
      (ks->prepare_a256 ? ks->prepare_a256 : prepare_a256_scalar)(x, cols, t0, t1, act);
      break;
    default: break;
  }
}

void matmul_rows(DType wtype, const void *w, int64_t cols, const void *act, int64_t n_tokens,
                 float *y, int64_t y_stride, int64_t r0, int64_t r1) {
  if (r1 <= r0 || n_tokens <= 0) return;
  const uint32_t id = (uint32_t)wtype;
  if (!dtype_supported(id) || id >= (uint32_t)qk::kTypeSlots)
    quant_fail("matmul_rows: unsupported weight type", id, cols);
  (void)dtype_row_bytes(wtype, cols);  // validates cols
  const KernelSet *ks = current_set();
  MatmulFn fn = ks->matmul[id] ? ks->matmul[id] : qk::scalar_kernel_set().matmul[id];
  fn(w, cols, act, n_tokens, y, y_stride, r0, r1);
}

}  // namespace specode

// quant_kernels.h — internal to quant.cpp / quant_avx2.cpp / quant_avx512.cpp (and the
// quant tests): GGUF block structs, the prepared-activation layout, the kernel-set table,
// and (only when SPECODE_QK_SIMD_BODY is defined before inclusion) the 256-bit kernels that
// the AVX2 and AVX-512 translation units both compile, each with its own ISA flags and in
// an anonymous namespace so the two copies never meet at link time.
//
// Canonical decode: every quantized weight type is read as groups of G elements
// (G = 32, or 16 for Q6_K/Q2_K/Q3_K) inside super-blocks of SB elements (32 or 256):
//     w[k] = dw[g] * q[k] + mw[g]          q unsigned 0..maxq (Q8_0: see below)
// and the activations as blocks of int8 with one fp32 scale per super-block plus the
// integer sum of each group (stored as float), so that
//     dot = sum_sb da[sb] * sum_g ( dw[g] * isum_g + mw[g] * asum_g ).
// Q8_0 weights are signed; the AVX-512 kernels flip them to q+128 with mw = -128*dw, the
// scalar and AVX2 kernels keep them signed with mw = 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "quant.h"

namespace specode {

// Reference (simple, not size-optimal) quantizer for tests and tools: n floats -> n
// elements of type t (n a multiple of the block size). Every type dequantize_row decodes.
void quantize_row_reference(DType t, const float *src, void *dst, int64_t n);

namespace qk {

// ---- GGUF block layouts (ggml type ids in quant.h) --------------------------------------
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
struct BlockQ8_1 { uint16_t d, s; int8_t qs[32]; };
struct BlockQ2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };
struct BlockQ3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
struct BlockQ8_K { float d; int8_t qs[256]; int16_t bsums[16]; };

static_assert(sizeof(BlockQ4_0) == 18, "Q4_0");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0");
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0");
static_assert(sizeof(BlockQ8_1) == 36, "Q8_1");
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K");
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K");
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K");

constexpr int kTypeSlots = 31;  // ggml ids 0..30 (BF16 = 30)

// Super-block and group sizes of the canonical decode (0 for the float types).
constexpr int sb_elems(DType t) {
  return (t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K ||
          t == DType::Q6_K)
             ? 256
         : (t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
            t == DType::Q8_0)
             ? 32
             : 0;
}
constexpr int group_elems(DType t) {
  return (t == DType::Q6_K || t == DType::Q2_K || t == DType::Q3_K) ? 16
         : (t == DType::Q4_K || t == DType::Q5_K)                   ? 32
                                                                     : sb_elems(t);
}

// Q4_K / Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins.
inline void unpack_k4_scales(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = (uint8_t)((s[j + 8] & 0x0F) | ((s[j] >> 6) << 4));
    mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}
// Same, as two little-endian 64-bit words of 8 bytes each (SIMD paths).
inline void unpack_k4_scales64(const uint8_t *s, uint64_t *sc, uint64_t *mn) {
  uint32_t a0, a1, a2;
  std::memcpy(&a0, s, 4);
  std::memcpy(&a1, s + 4, 4);
  std::memcpy(&a2, s + 8, 4);
  const uint32_t sc_lo = a0 & 0x3f3f3f3fu, mn_lo = a1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (a2 & 0x0f0f0f0fu) | (((a0 >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((a2 >> 4) & 0x0f0f0f0fu) | (((a1 >> 6) & 0x03030303u) << 4);
  *sc = (uint64_t)sc_lo | ((uint64_t)sc_hi << 32);
  *mn = (uint64_t)mn_lo | ((uint64_t)mn_hi << 32);
}
// Q3_K: 12 bytes -> 16 six-bit scales (stored biased by 32).
inline int q3k_scale(const uint8_t *s, int i) {
  const int lo = i < 8 ? (s[i] & 0x0F) : (s[i - 8] >> 4);
  const int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

// ---- prepared activations ------------------------------------------------------------
// One row per token, each row_stride bytes (a multiple of 64):
//   A32  (weights Q4_0..Q8_0): int8 q[cols] | float d[cols/32] | float s32[cols/32]
//   A256 (K-quant weights):    int8 q[cols] | float d[cols/256] | float s32[cols/32] | float s16[cols/16]
//   F32  (F32/F16/BF16):       float x[cols]
// d is the scale of each 32 (A32) or 256 (A256) block, q = round(x / d) in [-127, 127]
// with d = max|x| / 127; sNN holds the integer sum of q over each NN elements, as float.
enum class ActFormat { F32, A32, A256, None };
// Blocks whose max |x| is at most this quantize to zeros (127/amax would overflow).
constexpr float kActTiny = 1e-30f;

inline ActFormat act_format(DType t) {
  switch (t) {
    case DType::F32: case DType::F16: case DType::BF16: return ActFormat::F32;
    case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::Q8_0:
      return ActFormat::A32;
    case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
      return ActFormat::A256;
    default: return ActFormat::None;
  }
}
inline size_t round_up64(size_t n) { return (n + 63) & ~(size_t)63; }
inline size_t act_row_stride(ActFormat f, int64_t cols) {
  switch (f) {
    case ActFormat::F32: return round_up64((size_t)cols * 4);
    case ActFormat::A32: return round_up64((size_t)cols + 8 * (size_t)(cols / 32));
    case ActFormat::A256:
      return round_up64((size_t)cols + 4 * (size_t)(cols / 256) + 4 * (size_t)(cols / 32) +
                        4 * (size_t)(cols / 16));
    default: return 0;
  }
}

struct ActRow {
  int8_t *q;
  float *d;    // per 32 (A32) or per 256 (A256)
  float *s32;  // per 32
  float *s16;  // per 16 (A256 only, else nullptr)
  float *x;    // F32 rows
};
inline ActRow act_row(ActFormat f, const void *act, int64_t cols, int64_t token) {
  char *base = (char *)act + (size_t)token * act_row_stride(f, cols);
  ActRow r{};
  if (f == ActFormat::F32) {
    r.x = (float *)base;
  } else if (f == ActFormat::A32) {
    r.q = (int8_t *)base;
    r.d = (float *)(base + cols);
    r.s32 = r.d + cols / 32;
  } else if (f == ActFormat::A256) {
    r.q = (int8_t *)base;
    r.d = (float *)(base + cols);
    r.s32 = r.d + cols / 256;
    r.s16 = r.s32 + cols / 32;
  }
  return r;
}
// The float values a prepared activation row stands for (tests).
void act_dequantize_row(DType wtype, const void *act, int64_t cols, int64_t token, float *out);

// ---- kernel sets -----------------------------------------------------------------------
using MatmulFn = void (*)(const void *w, int64_t cols, const void *act, int64_t n_tokens,
                          float *y, int64_t y_stride, int64_t r0, int64_t r1);
using PrepareFn = void (*)(const float *x, int64_t cols, int64_t t0, int64_t t1, void *act);

struct KernelSet {
  const char *name;
  MatmulFn matmul[kTypeSlots];  // nullptr: the scalar kernel runs
  PrepareFn prepare_a32;        // nullptr: scalar
  PrepareFn prepare_a256;
};

const KernelSet &scalar_kernel_set();
const KernelSet *avx2_kernel_set();    // nullptr when not built for x86
const KernelSet *avx512_kernel_set();  // nullptr when not built for x86

// Scalar canonical decode of super-block sb of a weight row (see the top of this file):
// q gets sb_elems(t) values, dw/mw one value per group.
void decode_sb_scalar(DType t, const void *row, int64_t sb, int16_t *q, float *dw, float *mw);

}  // namespace qk
}  // namespace specode

// =========================================================================================
// Shared 256-bit kernel body (AVX2+FMA+F16C, optionally AVX-512 VNNI/BW/VL).
// =========================================================================================
#if defined(SPECODE_QK_SIMD_BODY) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && \
    !defined(SPECODE_QK_SIMD_BODY_DONE)
#define SPECODE_QK_SIMD_BODY_DONE
#include <immintrin.h>

#include <cmath>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
#define QK_AVX512 1
#else
#define QK_AVX512 0
#endif

#define QK_INLINE inline __attribute__((always_inline))

namespace specode {
namespace qk {
namespace {

QK_INLINE uint16_t ld16(const void *p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
QK_INLINE uint32_t ld32(const void *p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
QK_INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

QK_INLINE __m256i loadu256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
QK_INLINE void storeu256(void *p, __m256i v) { _mm256_storeu_si256((__m256i *)p, v); }

// Per int32 lane: sum of 4 products u8 x s8 (u: 0..255 unsigned, s: -127..127).
// Without VNNI the pairs go through int16 (maddubs), so 2*u*|s| must stay <= 32767.
QK_INLINE __m256i dot4(__m256i u, __m256i s) {
#if QK_AVX512
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
// Signed x signed (Q8_0 weights).
QK_INLINE __m256i dot4_ss(__m256i w, __m256i a) {
  return dot4(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

QK_INLINE float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
QK_INLINE int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// Software prefetch of the weight stream ahead of the direct K-quant kernels, into L2.
// Measured on Zen 4 with weights streamed from DRAM: it helps Q4_K/Q6_K a little; for the
// 32-element block types every variant tried (L1 or L2, 2-12 KB ahead) was slower than the
// hardware prefetcher alone (up to 2x with L2 hints), so those kernels issue none.
#ifndef SPECODE_QK_PREFETCH
#define SPECODE_QK_PREFETCH 6144
#endif
template <int BYTES>
QK_INLINE void prefetch_ahead(const void *p) {
  if (SPECODE_QK_PREFETCH > 0) {
    const char *c = (const char *)p + SPECODE_QK_PREFETCH;
    for (int o = 0; o < BYTES; o += 64) _mm_prefetch(c + o, _MM_HINT_T1);
  }
}

// 16 packed bytes -> 32 nibbles: bytes 0..15 = low nibbles, 16..31 = high nibbles.
QK_INLINE __m256i nib32(const uint8_t *qs) {
  const __m128i x = _mm_loadu_si128((const __m128i *)qs);
  const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
  return _mm256_and_si256(y, _mm256_set1_epi8(0x0F));
}
// Byte i = 0x10 where bit i of qh is set.
QK_INLINE __m256i hibit32(uint32_t qh) {
#if QK_AVX512
  return _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(0x10));
#else
  __m256i v = _mm256_set1_epi32((int)qh);
  v = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                              2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bm = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bm), bm);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
#endif
}

// ---- activation quantization (bit-identical to the scalar version) ---------------------
QK_INLINE __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
QK_INLINE float hmax_ps(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
// 32 floats * id -> 32 int8 (round to nearest even) stored at q; lo/hi get per-lane
// partial sums of elements 0..15 and 16..31.
QK_INLINE void quant32(const float *x, __m256 id, int8_t *q, __m256i &lo, __m256i &hi) {
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 0), id));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id));
  const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id));
  lo = _mm256_add_epi32(i0, i1);
  hi = _mm256_add_epi32(i2, i3);
  const __m256i p01 = _mm256_packs_epi32(i0, i1);  // lanes: i0lo i1lo | i0hi i1hi
  const __m256i p23 = _mm256_packs_epi32(i2, i3);
  __m256i b = _mm256_packs_epi16(p01, p23);  // per lane: i0 i1 i2 i3 quarters
  b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  storeu256(q, b);
}
QK_INLINE float block_amax(const float *x, int n) {
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(x + i)));
  return hmax_ps(m);
}

void prepare_a32_simd(const float *x, int64_t cols, int64_t t0, int64_t t1, void *act) {
  const int64_t nb = cols / 32;
  for (int64_t t = t0; t < t1; ++t) {
    const ActRow r = act_row(ActFormat::A32, act, cols, t);
    const float *xr = x + t * cols;
    for (int64_t b = 0; b < nb; ++b) {
      const float amax = block_amax(xr + 32 * b, 32);
      const float id = amax > kActTiny ? 127.0f / amax : 0.0f;
      __m256i lo, hi;
      quant32(xr + 32 * b, _mm256_set1_ps(id), r.q + 32 * b, lo, hi);
      r.d[b] = amax / 127.0f;
      r.s32[b] = (float)hsum_epi32(_mm256_add_epi32(lo, hi));
    }
  }
}

void prepare_a256_simd(const float *x, int64_t cols, int64_t t0, int64_t t1, void *act) {
  const int64_t nsb = cols / 256;
  for (int64_t t = t0; t < t1; ++t) {
    const ActRow r = act_row(ActFormat::A256, act, cols, t);
    const float *xr = x + t * cols;
    for (int64_t b = 0; b < nsb; ++b) {
      const float amax = block_amax(xr + 256 * b, 256);
      const float id = amax > kActTiny ? 127.0f / amax : 0.0f;
      const __m256 idv = _mm256_set1_ps(id);
      for (int j = 0; j < 8; ++j) {
        __m256i lo, hi;
        quant32(xr + 256 * b + 32 * j, idv, r.q + 256 * b + 32 * j, lo, hi);
        const int s0 = hsum_epi32(lo), s1 = hsum_epi32(hi);
        r.s16[16 * b + 2 * j] = (float)s0;
        r.s16[16 * b + 2 * j + 1] = (float)s1;
        r.s32[8 * b + j] = (float)(s0 + s1);
      }
      r.d[b] = amax / 127.0f;
    }
  }
}

// ---- direct kernels (decode and short drafts: n_tokens <= 3..4): legacy 32-blocks ------
// Per group of 8 blocks the 8 int32 lane vectors of the block dots are reduced with an hadd
// tree to one vector of 8 block sums, which meets the 8 weight and activation scales in
// one fma (instead of a scalar scale product and broadcast per block).
// Each weight type provides q(block) -> 32 unsigned values (u8), and its scales.
struct LQ4_0 {
  using B = BlockQ4_0;
  static constexpr bool kMin = false;
  static constexpr float kOff = -8.0f;
  static QK_INLINE __m256i q(const B &b) { return nib32(b.qs); }
};
struct LQ4_1 {
  using B = BlockQ4_1;
  static constexpr bool kMin = true;
  static constexpr float kOff = 0.0f;
  static QK_INLINE __m256i q(const B &b) { return nib32(b.qs); }
};
struct LQ5_0 {
  using B = BlockQ5_0;
  static constexpr bool kMin = false;
  static constexpr float kOff = -16.0f;
  static QK_INLINE __m256i q(const B &b) { return _mm256_or_si256(nib32(b.qs), hibit32(ld32(b.qh))); }
};
struct LQ5_1 {
  using B = BlockQ5_1;
  static constexpr bool kMin = true;
  static constexpr float kOff = 0.0f;
  static QK_INLINE __m256i q(const B &b) { return _mm256_or_si256(nib32(b.qs), hibit32(ld32(b.qh))); }
};

// d of 8 consecutive blocks (explicit insert chain: a set/setr of scalar loads may be
// assembled through the stack, which stalls on store forwarding).
template <class B>
QK_INLINE __m256 load_d8(const B *b) {
  __m128i v = _mm_cvtsi32_si128(ld16(&b[0].d));
  v = _mm_insert_epi16(v, ld16(&b[1].d), 1);
  v = _mm_insert_epi16(v, ld16(&b[2].d), 2);
  v = _mm_insert_epi16(v, ld16(&b[3].d), 3);
  v = _mm_insert_epi16(v, ld16(&b[4].d), 4);
  v = _mm_insert_epi16(v, ld16(&b[5].d), 5);
  v = _mm_insert_epi16(v, ld16(&b[6].d), 6);
  v = _mm_insert_epi16(v, ld16(&b[7].d), 7);
  return _mm256_cvtph_ps(v);
}
// d and m (adjacent halves at the block start) of 8 consecutive blocks.
template <class B>
QK_INLINE void load_dm8(const B *b, __m256 &d, __m256 &m) {
  __m128i lo = _mm_cvtsi32_si128((int)ld32(&b[0]));
  lo = _mm_insert_epi32(lo, (int)ld32(&b[1]), 1);
  lo = _mm_insert_epi32(lo, (int)ld32(&b[2]), 2);
  lo = _mm_insert_epi32(lo, (int)ld32(&b[3]), 3);
  __m128i hi = _mm_cvtsi32_si128((int)ld32(&b[4]));
  hi = _mm_insert_epi32(hi, (int)ld32(&b[5]), 1);
  hi = _mm_insert_epi32(hi, (int)ld32(&b[6]), 2);
  hi = _mm_insert_epi32(hi, (int)ld32(&b[7]), 3);
  // per 128-bit lane: d d d d m m m m
  const __m128i sh = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  lo = _mm_shuffle_epi8(lo, sh);
  hi = _mm_shuffle_epi8(hi, sh);
  d = _mm256_cvtph_ps(_mm_unpacklo_epi64(lo, hi));
  m = _mm256_cvtph_ps(_mm_unpackhi_epi64(lo, hi));
}

// Direct kernels: one weight row against NT (1..4) activation rows; every block is decoded
// once into registers and used for all NT tokens.
template <class LT, int NT>
void row_dot_legacy(const typename LT::B *blk, int64_t nb, const ActRow *a, float *out) {
  using B = typename LT::B;
  __m256 acc[NT], acc2[NT];
  for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const B *b = blk + i;
    __m256i xp[NT][4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m256i q0 = LT::q(b[2 * j]), q1 = LT::q(b[2 * j + 1]);
      for (int t = 0; t < NT; ++t) {
        const int8_t *q = a[t].q + 32 * (i + 2 * j);
        xp[t][j] = _mm256_hadd_epi32(dot4(q0, loadu256(q)), dot4(q1, loadu256(q + 32)));
      }
    }
    __m256 dw, mw;
    if (LT::kMin) {
      load_dm8(b, dw, mw);
    } else {
      dw = load_d8(b);
      mw = _mm256_mul_ps(dw, _mm256_set1_ps(LT::kOff));
    }
    for (int t = 0; t < NT; ++t) {
      const __m256i x = _mm256_hadd_epi32(xp[t][0], xp[t][1]), y = _mm256_hadd_epi32(xp[t][2], xp[t][3]);
      const __m256i is = _mm256_add_epi32(_mm256_permute2x128_si256(x, y, 0x20),
                                          _mm256_permute2x128_si256(x, y, 0x31));
      const __m256 da = _mm256_loadu_ps(a[t].d + i);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, da), acc[t]);
      acc2[t] = _mm256_fmadd_ps(mw, _mm256_mul_ps(da, _mm256_loadu_ps(a[t].s32 + i)), acc2[t]);
    }
  }
  float tail[NT] = {};
  for (; i < nb; ++i) {
    const B &b = blk[i];
    const __m256i q = LT::q(b);
    const float d = h2f(b.d);
    const float m = LT::kMin ? h2f(ld16((const uint8_t *)&b + 2)) : LT::kOff * d;
    for (int t = 0; t < NT; ++t) {
      const int is = hsum_epi32(dot4(q, loadu256(a[t].q + 32 * i)));
      tail[t] += a[t].d[i] * (d * (float)is + m * a[t].s32[i]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(_mm256_add_ps(acc[t], acc2[t])) + tail[t];
}

template <int NT>
void row_dot_q8_0(const BlockQ8_0 *blk, int64_t nb, const ActRow *a, float *out) {
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const BlockQ8_0 *b = blk + i;
    __m256i xp[NT][4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m256i w0 = loadu256(b[2 * j].qs), w1 = loadu256(b[2 * j + 1].qs);
      const __m256i u0 = _mm256_sign_epi8(w0, w0), u1 = _mm256_sign_epi8(w1, w1);
      for (int t = 0; t < NT; ++t) {
        const int8_t *q = a[t].q + 32 * (i + 2 * j);
        xp[t][j] = _mm256_hadd_epi32(dot4(u0, _mm256_sign_epi8(loadu256(q), w0)),
                                     dot4(u1, _mm256_sign_epi8(loadu256(q + 32), w1)));
      }
    }
    const __m256 dw = load_d8(b);
    for (int t = 0; t < NT; ++t) {
      const __m256i x = _mm256_hadd_epi32(xp[t][0], xp[t][1]), y = _mm256_hadd_epi32(xp[t][2], xp[t][3]);
      const __m256i is = _mm256_add_epi32(_mm256_permute2x128_si256(x, y, 0x20),
                                          _mm256_permute2x128_si256(x, y, 0x31));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, _mm256_loadu_ps(a[t].d + i)), acc[t]);
    }
  }
  float tail[NT] = {};
  for (; i < nb; ++i) {
    const __m256i w = loadu256(blk[i].qs);
    const float d = h2f(blk[i].d);
    for (int t = 0; t < NT; ++t) {
      const int is = hsum_epi32(dot4_ss(w, loadu256(a[t].q + 32 * i)));
      tail[t] += a[t].d[i] * d * (float)is;
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(acc[t]) + tail[t];
}

// ---- direct kernels: K-quants --------------------------------------------------------
// (d, dmin) fp16 pair at p, times da: two broadcast vectors.
QK_INLINE void dm_times(const void *p, const float *da, __m256 &vd, __m256 &vm) {
  const __m128 x = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(p))), _mm_broadcast_ss(da));
  vd = _mm256_broadcastss_ps(x);
  vm = _mm256_broadcastss_ps(_mm_movehdup_ps(x));
}
// 8 six-bit scales and 8 mins as floats.
QK_INLINE void k4_scales_ps(const uint8_t *s, __m256 &sc, __m256 &mn) {
  uint64_t a, b;
  unpack_k4_scales64(s, &a, &b);
  const __m128i v = _mm_set_epi64x((long long)b, (long long)a);
  sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
  mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)));
}

// Q4_K (HB = false) and Q5_K (HB = true).
template <class BK, bool HB, int NT>
void row_dot_k4(const BK *blk, int64_t nsb, const ActRow *a, float *out) {
  __m256 acc[NT], accm[NT];
  for (int t = 0; t < NT; ++t) acc[t] = accm[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
  for (int64_t i = 0; i < nsb; ++i) {
    const BK &b = blk[i];
    prefetch_ahead<sizeof(BK)>(&b);
    __m256i hv;
    if constexpr (HB) hv = loadu256(b.qh);
    __m256i xp[NT][4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m256i x = loadu256(b.qs + 32 * c);
      __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
      if constexpr (HB) {
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hv, 4), b4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hv, 3), b4));
        hv = _mm256_srli_epi16(hv, 2);
      }
      for (int t = 0; t < NT; ++t) {
        const int8_t *q = a[t].q + 256 * i + 64 * c;
        xp[t][c] = _mm256_hadd_epi32(dot4(lo, loadu256(q)), dot4(hi, loadu256(q + 32)));
      }
    }
    __m256 sc, mn;
    k4_scales_ps(b.scales, sc, mn);
    for (int t = 0; t < NT; ++t) {
      const __m256i x = _mm256_hadd_epi32(xp[t][0], xp[t][1]), y = _mm256_hadd_epi32(xp[t][2], xp[t][3]);
      const __m256i is = _mm256_add_epi32(_mm256_permute2x128_si256(x, y, 0x20),
                                          _mm256_permute2x128_si256(x, y, 0x31));
      __m256 vd, vm;
      dm_times(&b.d, a[t].d + i, vd, vm);
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(is), sc), vd, acc[t]);
      accm[t] = _mm256_fmadd_ps(_mm256_mul_ps(mn, _mm256_loadu_ps(a[t].s32 + 8 * i)), vm, accm[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(_mm256_sub_ps(acc[t], accm[t]));
}

// Q6_K half (128 elements): 4 vectors of 32 values 0..63, in element order.
QK_INLINE void q6k_half(const uint8_t *ql, const uint8_t *qh, __m256i &q0, __m256i &q1,
                        __m256i &q2, __m256i &q3) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  const __m256i l0 = loadu256(ql), l1 = loadu256(ql + 32), h = loadu256(qh);
  q0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
  q1 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
  q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
  q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                       _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
}

template <int NT>
void row_dot_q6_K(const BlockQ6_K *blk, int64_t nsb, const ActRow *a, float *out) {
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  // hadd tree order of group sums: [0,2,4,6,1,3,5,7] (+8 for the second half)
  const __m128i sc_perm = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  const __m256i s_perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256 k32 = _mm256_set1_ps(32.0f);
  for (int64_t i = 0; i < nsb; ++i) {
    const BlockQ6_K &b = blk[i];
    prefetch_ahead<sizeof(BlockQ6_K)>(&b);
    __m256i x[NT][2];
    for (int h = 0; h < 2; ++h) {
      __m256i q0, q1, q2, q3;
      q6k_half(b.ql + 64 * h, b.qh + 32 * h, q0, q1, q2, q3);
      for (int t = 0; t < NT; ++t) {
        const int8_t *qa = a[t].q + 256 * i + 128 * h;
        const __m256i p0 = dot4(q0, loadu256(qa)), p1 = dot4(q1, loadu256(qa + 32));
        const __m256i p2 = dot4(q2, loadu256(qa + 64)), p3 = dot4(q3, loadu256(qa + 96));
        x[t][h] = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
      }
    }
    const __m128i sc = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)b.scales), sc_perm);
    const __m256 sc0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc));
    const __m256 sc1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc, sc)));
    const __m256 d = _mm256_set1_ps(h2f(b.d));
    for (int t = 0; t < NT; ++t) {
      const __m256 s0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(a[t].s16 + 16 * i), s_perm);
      const __m256 s1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(a[t].s16 + 16 * i + 8), s_perm);
      __m256 v = _mm256_mul_ps(_mm256_fnmadd_ps(k32, s0, _mm256_cvtepi32_ps(x[t][0])), sc0);
      v = _mm256_fmadd_ps(_mm256_fnmadd_ps(k32, s1, _mm256_cvtepi32_ps(x[t][1])), sc1, v);
      acc[t] = _mm256_fmadd_ps(v, _mm256_mul_ps(_mm256_set1_ps(a[t].d[i]), d), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(acc[t]);
}

// ---- canonical decode of one super-block into u8 (for the tiled prefill kernels) --------
// q: SB bytes in element order; dw[g*ld], mw[g*ld] per group g.
#if QK_AVX512
constexpr bool kQ8Unsigned = true;  // dpbusd: q+128 (u8) and mw = -128*dw
#else
constexpr bool kQ8Unsigned = false;  // maddubs: signed weights, sign trick in the kernel
#endif

template <DType T> struct PT;

template <> struct PT<DType::Q4_0> {
  static constexpr int SB = 32, G = 32, kMaxQ = 15;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int) {
    const BlockQ4_0 &b = ((const BlockQ4_0 *)row)[sb];
    storeu256(q, nib32(b.qs));
    const float d = h2f(b.d);
    dw[0] = d;
    mw[0] = -8.0f * d;
  }
};
template <> struct PT<DType::Q4_1> {
  static constexpr int SB = 32, G = 32, kMaxQ = 15;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int) {
    const BlockQ4_1 &b = ((const BlockQ4_1 *)row)[sb];
    storeu256(q, nib32(b.qs));
    dw[0] = h2f(b.d);
    mw[0] = h2f(b.m);
  }
};
template <> struct PT<DType::Q5_0> {
  static constexpr int SB = 32, G = 32, kMaxQ = 31;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int) {
    const BlockQ5_0 &b = ((const BlockQ5_0 *)row)[sb];
    storeu256(q, _mm256_or_si256(nib32(b.qs), hibit32(ld32(b.qh))));
    const float d = h2f(b.d);
    dw[0] = d;
    mw[0] = -16.0f * d;
  }
};
template <> struct PT<DType::Q5_1> {
  static constexpr int SB = 32, G = 32, kMaxQ = 31;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int) {
    const BlockQ5_1 &b = ((const BlockQ5_1 *)row)[sb];
    storeu256(q, _mm256_or_si256(nib32(b.qs), hibit32(ld32(b.qh))));
    dw[0] = h2f(b.d);
    mw[0] = h2f(b.m);
  }
};
template <> struct PT<DType::Q8_0> {
  static constexpr int SB = 32, G = 32, kMaxQ = kQ8Unsigned ? 255 : -1;  // -1: signed
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int) {
    const BlockQ8_0 &b = ((const BlockQ8_0 *)row)[sb];
    const __m256i x = loadu256(b.qs);
    const float d = h2f(b.d);
    dw[0] = d;
    if (kQ8Unsigned) {
      storeu256(q, _mm256_xor_si256(x, _mm256_set1_epi8((char)0x80)));
      mw[0] = -128.0f * d;
    } else {
      storeu256(q, x);
      mw[0] = 0.0f;
    }
  }
};
template <> struct PT<DType::Q4_K> {
  static constexpr int SB = 256, G = 32, kMaxQ = 15;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int ld) {
    const BlockQ4_K &b = ((const BlockQ4_K *)row)[sb];
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int c = 0; c < 4; ++c) {
      const __m256i x = loadu256(b.qs + 32 * c);
      storeu256(q + 64 * c, _mm256_and_si256(x, m4));
      storeu256(q + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(x, 4), m4));
    }
    uint8_t sc[8], mn[8];
    unpack_k4_scales(b.scales, sc, mn);
    const float d = h2f(b.d), dm = h2f(b.dmin);
    for (int g = 0; g < 8; ++g) {
      dw[g * ld] = d * (float)sc[g];
      mw[g * ld] = -dm * (float)mn[g];
    }
  }
};
template <> struct PT<DType::Q5_K> {
  static constexpr int SB = 256, G = 32, kMaxQ = 31;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int ld) {
    const BlockQ5_K &b = ((const BlockQ5_K *)row)[sb];
    const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
    __m256i hv = loadu256(b.qh);
    for (int c = 0; c < 4; ++c) {
      const __m256i x = loadu256(b.qs + 32 * c);
      storeu256(q + 64 * c, _mm256_or_si256(_mm256_and_si256(x, m4),
                                            _mm256_and_si256(_mm256_slli_epi16(hv, 4), b4)));
      storeu256(q + 64 * c + 32, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4),
                                                 _mm256_and_si256(_mm256_slli_epi16(hv, 3), b4)));
      hv = _mm256_srli_epi16(hv, 2);
    }
    uint8_t sc[8], mn[8];
    unpack_k4_scales(b.scales, sc, mn);
    const float d = h2f(b.d), dm = h2f(b.dmin);
    for (int g = 0; g < 8; ++g) {
      dw[g * ld] = d * (float)sc[g];
      mw[g * ld] = -dm * (float)mn[g];
    }
  }
};
template <> struct PT<DType::Q6_K> {
  static constexpr int SB = 256, G = 16, kMaxQ = 63;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int ld) {
    const BlockQ6_K &b = ((const BlockQ6_K *)row)[sb];
    for (int h = 0; h < 2; ++h) {
      __m256i q0, q1, q2, q3;
      q6k_half(b.ql + 64 * h, b.qh + 32 * h, q0, q1, q2, q3);
      storeu256(q + 128 * h, q0);
      storeu256(q + 128 * h + 32, q1);
      storeu256(q + 128 * h + 64, q2);
      storeu256(q + 128 * h + 96, q3);
    }
    const float d = h2f(b.d);
    for (int g = 0; g < 16; ++g) {
      const float s = d * (float)b.scales[g];
      dw[g * ld] = s;
      mw[g * ld] = -32.0f * s;
    }
  }
};
template <> struct PT<DType::Q2_K> {
  static constexpr int SB = 256, G = 16, kMaxQ = 3;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int ld) {
    const BlockQ2_K &b = ((const BlockQ2_K *)row)[sb];
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {  // element 128h + 32j + l: bits 2j of qs[32h + l]
      const __m256i x = loadu256(b.qs + 32 * h);
      storeu256(q + 128 * h, _mm256_and_si256(x, m3));
      storeu256(q + 128 * h + 32, _mm256_and_si256(_mm256_srli_epi16(x, 2), m3));
      storeu256(q + 128 * h + 64, _mm256_and_si256(_mm256_srli_epi16(x, 4), m3));
      storeu256(q + 128 * h + 96, _mm256_and_si256(_mm256_srli_epi16(x, 6), m3));
    }
    const float d = h2f(b.d), dm = h2f(b.dmin);
    for (int g = 0; g < 16; ++g) {
      dw[g * ld] = d * (float)(b.scales[g] & 15);
      mw[g * ld] = -dm * (float)(b.scales[g] >> 4);
    }
  }
};
template <> struct PT<DType::Q3_K> {
  static constexpr int SB = 256, G = 16, kMaxQ = 7;
  static QK_INLINE void decode(const uint8_t *row, int64_t sb, uint8_t *q, float *dw, float *mw, int ld) {
    const BlockQ3_K &b = ((const BlockQ3_K *)row)[sb];
    const __m256i m3 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(4);
    const __m256i hm = loadu256(b.hmask);
    for (int h = 0; h < 2; ++h) {  // + bit 2 from hmask[l] bit (4h + j); value q - 4
      const __m256i x = loadu256(b.qs + 32 * h);
      __m256i hb = _mm256_slli_epi16(_mm256_srli_epi16(hm, 4 * h), 2);  // bit 4h -> bit 2
      for (int j = 0; j < 4; ++j) {
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(x, 2 * j), m3);
        storeu256(q + 128 * h + 32 * j, _mm256_or_si256(lo, _mm256_and_si256(hb, m4)));
        hb = _mm256_srli_epi16(hb, 1);
      }
    }
    const float d = h2f(b.d);
    for (int g = 0; g < 16; ++g) {
      dw[g * ld] = d * (float)q3k_scale(b.scales, g);
      mw[g * ld] = -4.0f * dw[g * ld];
    }
  }
};

// Per-token activation pointers for a weight type with group size G.
template <class P>
QK_INLINE const float *act_group_sums(const ActRow &r) {
  return P::G == 16 ? r.s16 : r.s32;
}

#if QK_AVX512
// Q4_K / Q5_K without the hadd tree: int16 pair sums (vpmaddubsw; 4/5-bit weights cannot
// saturate) times the sub-block's integer scale accumulate straight into int32 lanes
// (vpdpwssd), one accumulator per 64-element chunk; one convert + fma per super-block.
template <class BK, bool HB, int NT>
void row_dot_k4_ws(const BK *blk, int64_t nsb, const ActRow *a, float *out) {
  __m256 acc[NT], accm[NT];
  for (int t = 0; t < NT; ++t) acc[t] = accm[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
  for (int64_t i = 0; i < nsb; ++i) {
    const BK &b = blk[i];
    prefetch_ahead<sizeof(BK)>(&b);
    uint64_t sc64, mn64;
    unpack_k4_scales64(b.scales, &sc64, &mn64);
    const __m128i scmn = _mm_set_epi64x((long long)mn64, (long long)sc64);
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scmn));  // 8 x int16, both lanes
    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(scmn, scmn)));
    __m256i hv;
    if constexpr (HB) hv = loadu256(b.qh);
    __m256i ia[NT][4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m256i x = loadu256(b.qs + 32 * c);
      __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
      if constexpr (HB) {
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hv, 4), b4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hv, 3), b4));
        hv = _mm256_srli_epi16(hv, 2);
      }
      // broadcast int16 scales of sub-blocks 2c and 2c+1
      const __m256i s0 = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * c))));
      const __m256i s1 = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * c + 1))));
      for (int t = 0; t < NT; ++t) {
        const int8_t *q = a[t].q + 256 * i + 64 * c;
        const __m256i p0 = _mm256_maddubs_epi16(lo, loadu256(q)), p1 = _mm256_maddubs_epi16(hi, loadu256(q + 32));
        ia[t][c] = _mm256_dpwssd_epi32(_mm256_madd_epi16(p0, s0), p1, s1);
      }
    }
    for (int t = 0; t < NT; ++t) {
      const __m256i is = _mm256_add_epi32(_mm256_add_epi32(ia[t][0], ia[t][1]), _mm256_add_epi32(ia[t][2], ia[t][3]));
      __m256 vd, vm;
      dm_times(&b.d, a[t].d + i, vd, vm);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), vd, acc[t]);
      accm[t] = _mm256_fmadd_ps(_mm256_mul_ps(mn, _mm256_loadu_ps(a[t].s32 + 8 * i)), vm, accm[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(_mm256_sub_ps(acc[t], accm[t]));
}

// Q6_K the same way: int8 scales per 16 elements (vpermw spreads the two of each 32-chunk
// over the two 128-bit halves of the scale vector), the -32 offset via the activation sums.
template <int NT>
void row_dot_q6_K_ws(const BlockQ6_K *blk, int64_t nsb, const ActRow *a, float *out) {
  __m256 acc[NT], acco[NT];
  for (int t = 0; t < NT; ++t) acc[t] = acco[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nsb; ++i) {
    const BlockQ6_K &b = blk[i];
    prefetch_ahead<sizeof(BlockQ6_K)>(&b);
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)b.scales);
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    const __m256 scf0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc8));
    const __m256 scf1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc8, sc8)));
    __m256i ia[NT][2];
    for (int h = 0; h < 2; ++h) {
      __m256i q[4];
      q6k_half(b.ql + 64 * h, b.qh + 32 * h, q[0], q[1], q[2], q[3]);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const int g = 8 * h + 2 * j;  // groups g (elements 0..15 of the chunk) and g+1
        const __m256i sv = _mm256_permutexvar_epi16(
            _mm256_setr_epi16(g, g, g, g, g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1), sc16);
        for (int t = 0; t < NT; ++t) {
          const __m256i p = _mm256_maddubs_epi16(q[j], loadu256(a[t].q + 256 * i + 128 * h + 32 * j));
          if (j == 0) ia[t][h] = _mm256_madd_epi16(p, sv);
          else ia[t][h] = _mm256_dpwssd_epi32(ia[t][h], p, sv);
        }
      }
    }
    const float d = h2f(b.d);
    for (int t = 0; t < NT; ++t) {
      const __m256 dd = _mm256_set1_ps(d * a[t].d[i]);
      const __m256i is = _mm256_add_epi32(ia[t][0], ia[t][1]);
      const __m256 o = _mm256_fmadd_ps(scf1, _mm256_loadu_ps(a[t].s16 + 16 * i + 8),
                                       _mm256_mul_ps(scf0, _mm256_loadu_ps(a[t].s16 + 16 * i)));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), dd, acc[t]);
      acco[t] = _mm256_fmadd_ps(o, dd, acco[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(_mm256_fnmadd_ps(_mm256_set1_ps(32.0f), acco[t], acc[t]));
}
#endif

// ---- direct kernels: dispatch --------------------------------------------------------------
template <DType T, int NT>
QK_INLINE void row_dot(const uint8_t *row, int64_t cols, const ActRow *a, float *out) {
  if constexpr (T == DType::Q4_0) row_dot_legacy<LQ4_0, NT>((const BlockQ4_0 *)row, cols / 32, a, out);
  else if constexpr (T == DType::Q4_1) row_dot_legacy<LQ4_1, NT>((const BlockQ4_1 *)row, cols / 32, a, out);
  else if constexpr (T == DType::Q5_0) row_dot_legacy<LQ5_0, NT>((const BlockQ5_0 *)row, cols / 32, a, out);
  else if constexpr (T == DType::Q5_1) row_dot_legacy<LQ5_1, NT>((const BlockQ5_1 *)row, cols / 32, a, out);
  else if constexpr (T == DType::Q8_0) row_dot_q8_0<NT>((const BlockQ8_0 *)row, cols / 32, a, out);
#if QK_AVX512
  else if constexpr (T == DType::Q4_K) row_dot_k4_ws<BlockQ4_K, false, NT>((const BlockQ4_K *)row, cols / 256, a, out);
  else if constexpr (T == DType::Q5_K) row_dot_k4_ws<BlockQ5_K, true, NT>((const BlockQ5_K *)row, cols / 256, a, out);
#else
  else if constexpr (T == DType::Q4_K) row_dot_k4<BlockQ4_K, false, NT>((const BlockQ4_K *)row, cols / 256, a, out);
  else if constexpr (T == DType::Q5_K) row_dot_k4<BlockQ5_K, true, NT>((const BlockQ5_K *)row, cols / 256, a, out);
#endif
#if QK_AVX512
  else if constexpr (T == DType::Q6_K) row_dot_q6_K_ws<NT>((const BlockQ6_K *)row, cols / 256, a, out);
#else
  else if constexpr (T == DType::Q6_K) row_dot_q6_K<NT>((const BlockQ6_K *)row, cols / 256, a, out);
#endif
}
template <DType T>
constexpr bool has_direct() {
  return T == DType::Q4_0 || T == DType::Q4_1 || T == DType::Q5_0 || T == DType::Q5_1 || T == DType::Q8_0 ||
         T == DType::Q4_K || T == DType::Q5_K || T == DType::Q6_K;
}

// y[t*ys + r] for NT tokens, rows [r0, r1).
template <DType T, int NT>
void matmul_direct(const void *w, int64_t cols, const void *act, float *y, int64_t ys, int64_t r0, int64_t r1) {
  const size_t rb = dtype_row_bytes(T, cols);
  ActRow a[NT];
  for (int t = 0; t < NT; ++t) a[t] = act_row(act_format(T), act, cols, t);
  const uint8_t *base = (const uint8_t *)w;
  for (int64_t r = r0; r < r1; ++r) {
    float out[NT];
    row_dot<T, NT>(base + (size_t)r * rb, cols, a, out);
    for (int t = 0; t < NT; ++t) y[t * ys + r] = out[t];
  }
}

// ---- float weights (F32 / F16 / BF16): fp32 FMA of the converted weights ---------------
template <DType T>
QK_INLINE __m256 ldw8(const uint8_t *row, int64_t k) {
  if constexpr (T == DType::F32) return _mm256_loadu_ps((const float *)row + k);
  else if constexpr (T == DType::F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
  else return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k))), 16));
}
template <DType T>
QK_INLINE float ldw1(const uint8_t *row, int64_t k) {
  if constexpr (T == DType::F32) return ((const float *)row)[k];
  else if constexpr (T == DType::F16) return h2f(((const uint16_t *)row)[k]);
  else {
    const uint32_t u = (uint32_t)((const uint16_t *)row)[k] << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
}

template <DType T, int RT, int NT>
QK_INLINE void ftile(const uint8_t *w0, size_t rb, int64_t cols, const float *x0, size_t xs,
                     float *y, int64_t ys) {
  __m256 acc[RT][NT];
  for (int i = 0; i < RT; ++i)
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= cols; k += 8) {
    __m256 wv[RT];
    for (int i = 0; i < RT; ++i) wv[i] = ldw8<T>(w0 + i * rb, k);
    for (int t = 0; t < NT; ++t) {
      const __m256 xv = _mm256_loadu_ps(x0 + t * xs + k);
      for (int i = 0; i < RT; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  for (int i = 0; i < RT; ++i)
    for (int t = 0; t < NT; ++t) {
      float s = hsum_ps(acc[i][t]);
      for (int64_t kk = k; kk < cols; ++kk) s = std::fma(ldw1<T>(w0 + i * rb, kk), x0[t * xs + kk], s);
      y[t * ys + i] = s;
    }
}

template <DType T>
void matmul_float(const void *w, int64_t cols, const void *act, int64_t nt, float *y,
                  int64_t ys, int64_t r0, int64_t r1) {
  const size_t rb = dtype_row_bytes(T, cols);
  const size_t xs = act_row_stride(ActFormat::F32, cols) / 4;
  const float *x = (const float *)act;
  const uint8_t *base = (const uint8_t *)w;
  if (nt == 1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) ftile<T, 4, 1>(base + r * rb, rb, cols, x, xs, y + r, ys);
    for (; r < r1; ++r) ftile<T, 1, 1>(base + r * rb, rb, cols, x, xs, y + r, ys);
    return;
  }
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) ftile<T, 2, 4>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
    for (; t < nt; ++t) ftile<T, 2, 1>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
  }
  for (; r < r1; ++r) {
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) ftile<T, 1, 4>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
    for (; t < nt; ++t) ftile<T, 1, 1>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
  }
}

}  // namespace
}  // namespace qk
}  // namespace specode
#endif  // SPECODE_QK_SIMD_BODY

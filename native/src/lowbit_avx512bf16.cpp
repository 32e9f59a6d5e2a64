// lowbit_avx512bf16.cpp — lowbit_attend's inner loops with AVX-512 BF16 dot
// products (vdpbf16ps: 32 multiply-adds per instruction, twice the fp32 FMA).
//
// A group is decoded in fp32 exactly as in lowbit_body.h and then packed into
// bf16 pairs, the unit vdpbf16ps sums over:
//   keys   [c/2][j]: (k[c][j], k[c+1][j])  — a vector is 16 tokens × a channel pair
//   values [j/2][c]: (v[j][c], v[j+1][c])  — a vector is 16 channels × a token pair
// and the query rows (scores) and probabilities (values) are rounded to bf16
// pairs the same way, so each instruction adds two products into fp32. bf16
// keeps 8 mantissa bits: the rounding (≤ 2⁻⁹ relative per factor) is small
// next to the 1–2-bit codes' own error; tests/test_lowbit.cpp bounds it.
// Chosen at run time when the CPU has avx512_bf16 (lowbit.cpp).
#define LOWBIT_W 16
#define LOWBIT_NO_TABLE
#include "lowbit_body.h"

#include <vector>

namespace specode {
namespace {

// bf16 pairs (a_i, b_i) of two vectors of 16 floats (round to nearest even).
inline __m512i pair_bf16(__m512 a, __m512 b) {
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // a in the low 16 bf16, b in the high 16
  return _mm512_permutexvar_epi16(interleave, ab);
}

// n floats (a multiple of 32) to n bf16 in the same order: element i of the
// result's 32-bit view is the pair (x[2i], x[2i+1]).
inline void to_bf16(const float *x, int n, uint32_t *out) {
  for (int i = 0; i < n; i += 32)
    _mm512_storeu_si512(out + i / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
}

std::vector<float> &fp32_tmp(size_t n) {
  thread_local std::vector<float> tmp;
  if (tmp.size() < n) tmp.resize(n);
  return tmp;
}
std::vector<uint32_t> &bf16_tmp(size_t n) {
  thread_local std::vector<uint32_t> tmp;
  if (tmp.size() < n) tmp.resize(n);
  return tmp;
}

// kd (as uint32 pairs) [cp * g + j] = (k[2cp][j], k[2cp+1][j]).
void decode_keys_bf16(const uint8_t *packed, int bits, int g, int hd, const uint16_t *scale, const uint16_t *zero,
                      float *kd) {
  float *f = fp32_tmp((size_t)g * hd).data();
  decode_keys(packed, bits, g, hd, scale, zero, f);
  uint32_t *out = reinterpret_cast<uint32_t *>(kd);
  for (int cp = 0; cp < hd / 2; ++cp)
    for (int j = 0; j < g; j += 16)
      _mm512_storeu_si512(out + (size_t)cp * g + j, pair_bf16(_mm512_loadu_ps(f + (size_t)(2 * cp) * g + j),
                                                              _mm512_loadu_ps(f + (size_t)(2 * cp + 1) * g + j)));
}

// vd (as uint32 pairs) [jp * hd + c] = (v[2jp][c], v[2jp+1][c]).
void decode_values_bf16(const uint8_t *packed, int bits, int g, int hd, int vg, const uint16_t *scale,
                        const uint16_t *zero, float *vd) {
  float *f = fp32_tmp((size_t)g * hd).data();
  decode_values(packed, bits, g, hd, vg, scale, zero, f);
  uint32_t *out = reinterpret_cast<uint32_t *>(vd);
  for (int jp = 0; jp < g / 2; ++jp)
    for (int c = 0; c < hd; c += 16)
      _mm512_storeu_si512(out + (size_t)jp * hd + c, pair_bf16(_mm512_loadu_ps(f + (size_t)(2 * jp) * hd + c),
                                                               _mm512_loadu_ps(f + (size_t)(2 * jp + 1) * hd + c)));
}

inline __m512 dot2(__m512 acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }

// RB rows × TV vectors of 16 tokens: acc += q-pair · k-pair over the channel pairs.
template <int TV, int RB>
void scores_block(const uint32_t *qb, const uint32_t *kd, int g, int hd, float *p, int64_t ldp) {
  __m512 acc[RB][TV];
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < TV; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int cp = 0; cp < hd / 2; ++cp) {
    __m512i k[TV];
    for (int t = 0; t < TV; ++t) k[t] = _mm512_loadu_si512(kd + (size_t)cp * g + t * 16);
    for (int r = 0; r < RB; ++r) {
      const __m512i b = _mm512_set1_epi32((int)qb[(size_t)r * (hd / 2) + cp]);
      for (int t = 0; t < TV; ++t) acc[r][t] = dot2(acc[r][t], k[t], b);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < TV; ++t) _mm512_storeu_ps(p + (size_t)r * ldp + t * 16, acc[r][t]);
}

template <int TV>
void scores_tv(const uint32_t *qb, int rows, const uint32_t *kd, int g, int hd, float *p, int64_t ldp) {
  constexpr int RB = kAcc / TV;
  for (int j0 = 0; j0 < g; j0 += TV * 16)
    for (int r0 = 0; r0 < rows; r0 += RB)
      with_rows<RB>(std::min(RB, rows - r0), [&](auto R) {
        scores_block<TV, decltype(R)::value>(qb + (size_t)r0 * (hd / 2), kd + j0, g, hd, p + (size_t)r0 * ldp + j0, ldp);
      });
}

// hd is a multiple of 32 and g of 16 (lowbit.cpp checks).
void scores_bf16(const float *q, int rows, const float *kd, int g, int hd, float *p, int64_t ldp) {
  uint32_t *qb = bf16_tmp((size_t)rows * hd / 2).data();
  for (int r = 0; r < rows; ++r) to_bf16(q + (size_t)r * hd, hd, qb + (size_t)r * (hd / 2));
  const uint32_t *k = reinterpret_cast<const uint32_t *>(kd);
  if (g % 64 == 0) return scores_tv<4>(qb, rows, k, g, hd, p, ldp);
  if (g % 32 == 0) return scores_tv<2>(qb, rows, k, g, hd, p, ldp);
  scores_tv<1>(qb, rows, k, g, hd, p, ldp);
}

// RB rows × CV vectors of 16 channels: acc += p-pair · v-pair over the token pairs.
template <int CV, int RB>
void values_block(const uint32_t *pb, int ldpb, const uint32_t *vd, int g, int hd, float *acc) {
  __m512 a[RB][CV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < CV; ++v) a[r][v] = _mm512_loadu_ps(acc + (size_t)r * hd + v * 16);
  for (int jp = 0; jp < g / 2; ++jp) {
    __m512i x[CV];
    for (int v = 0; v < CV; ++v) x[v] = _mm512_loadu_si512(vd + (size_t)jp * hd + v * 16);
    for (int r = 0; r < RB; ++r) {
      const __m512i b = _mm512_set1_epi32((int)pb[(size_t)r * ldpb + jp]);
      for (int v = 0; v < CV; ++v) a[r][v] = dot2(a[r][v], x[v], b);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < CV; ++v) _mm512_storeu_ps(acc + (size_t)r * hd + v * 16, a[r][v]);
}

void values_bf16(const float *p, int64_t ldp, int rows, const float *vd, int g, int hd, float *acc) {
  const int ldpb = g / 2;
  uint32_t *pb = bf16_tmp((size_t)rows * ldpb).data();
  for (int r = 0; r < rows; ++r) to_bf16(p + (size_t)r * ldp, g, pb + (size_t)r * ldpb);
  const uint32_t *v = reinterpret_cast<const uint32_t *>(vd);
  over_channel_vectors(hd, [&](auto CV, int c0) {
    constexpr int cv = decltype(CV)::value, RB = std::min(12, kAcc / cv);
    for (int r0 = 0; r0 < rows; r0 += RB)
      with_rows<RB>(std::min(RB, rows - r0), [&](auto R) {
        values_block<cv, decltype(R)::value>(pb + (size_t)r0 * ldpb, ldpb, v + c0, g, hd, acc + (size_t)r0 * hd + c0);
      });
  });
}

}  // namespace

extern const LowbitKernels kLowbitW16Bf16;
const LowbitKernels kLowbitW16Bf16 = {"w16-bf16", 16, decode_keys_bf16, decode_values_bf16, scores_bf16, values_bf16};

}  // namespace specode

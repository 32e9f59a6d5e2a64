// lowbit_body.h — lowbit_attend's inner loops at one SIMD width. Included by
// lowbit_avx2.cpp (LOWBIT_W 8) and lowbit_avx512.cpp (16) with their ISA
// flags; LOWBIT_NAME names the exported LowbitKernels table. lowbit_avx512bf16.cpp
// includes it with LOWBIT_NO_TABLE for the fp32 decoders only.
//
// Scores: a group's keys are decoded channel-major, so a vector holds W tokens
// of one channel and Q·Kᵀ is a register-blocked outer product — RB query rows
// × TV token vectors of accumulators, one broadcast of q per row and channel,
// no horizontal sums. Values: a vector holds W channels of one token; RB rows
// × CV channel vectors of accumulators, one broadcast probability per row and
// token.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "lowbit_kernels.h"

#if !defined(LOWBIT_W) || (!defined(LOWBIT_NAME) && !defined(LOWBIT_NO_TABLE))
#error "define LOWBIT_W and LOWBIT_NAME (or LOWBIT_NO_TABLE) before including lowbit_body.h"
#endif

namespace specode {
namespace {

constexpr int W = LOWBIT_W;
constexpr int kAcc = W == 16 ? 24 : 12;  // accumulator registers (of 32 / 16)
typedef float vf __attribute__((vector_size(W * 4)));
typedef uint32_t vu __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

inline vf splat(float x) {
  const vf v = {x};
  return __builtin_shuffle(v, vi{});  // lane 0 everywhere: one broadcast
}
inline vu splat_u(uint32_t x) {
  const vu v = {x};
  return __builtin_shuffle(v, vu{});
}
inline vf ld(const float *p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// f(std::integral_constant<int, rb>{}) for 1 <= rb <= RB: a run-time row
// count becomes the compile-time block size of a register-blocked kernel.
template <int RB, class F>
void with_rows(int rb, F &&f) {
  if (rb == RB) return f(std::integral_constant<int, RB>{});
  if constexpr (RB > 1) with_rows<RB - 1>(rb, f);
}

// f(std::integral_constant<int, cv>{}, c0) over hd channels in blocks of cv
// vectors starting at channel c0: 4 vectors while they last, then 2, then 1.
template <class F>
void over_channel_vectors(int hd, F &&f) {
  for (int c0 = 0; c0 < hd;) {
    const int left = (hd - c0) / W;
    if (left >= 4) f(std::integral_constant<int, 4>{}, c0), c0 += 4 * W;
    else if (left >= 2) f(std::integral_constant<int, 2>{}, c0), c0 += 2 * W;
    else f(std::integral_constant<int, 1>{}, c0), c0 += W;
  }
}

// Decodes runs of packed codes: out[i] = code i · scale + zero for count codes
// (a multiple of 32 / bits) that share (scale, zero). Built once per call: the
// shift vectors are loop constants.
struct Decoder {
  int bits, per_word;  // 16 or 32 codes in a 32-bit word
  vu shifts[32 / W], mask;
  explicit Decoder(int b) : bits(b), per_word(32 / b) {
    for (int k = 0; k < per_word / W; ++k)
      for (int i = 0; i < W; ++i) shifts[k][i] = (uint32_t)((k * W + i) * bits);
    mask = splat_u((1u << bits) - 1);
  }
  void run(const uint8_t *src, int count, float scale, float zero, float *out) const {
    const vf s = splat(scale), z = splat(zero);
    for (int i = 0; i < count; i += per_word) {
      uint32_t word;
      std::memcpy(&word, src + i * bits / 8, 4);
      const vu v = splat_u(word);
      for (int k = 0; k < per_word / W; ++k)
        st(out + i + k * W, __builtin_convertvector((vi)((v >> shifts[k]) & mask), vf) * s + z);
    }
  }
};

// g is a multiple of 32 / bits (lowbit_kernels checks): whole words per channel.
void decode_keys(const uint8_t *packed, int bits, int g, int hd, const uint16_t *scale, const uint16_t *zero,
                 float *kd) {
  const Decoder d(bits);
  const int run_bytes = g * bits / 8;
  for (int c = 0; c < hd; ++c) d.run(packed + (size_t)c * run_bytes, g, h2f(scale[c]), h2f(zero[c]), kd + (size_t)c * g);
}

// vg is a multiple of 32 / bits (lowbit_kernels checks).
void decode_values(const uint8_t *packed, int bits, int g, int hd, int vg, const uint16_t *scale, const uint16_t *zero,
                   float *vd) {
  const Decoder d(bits);
  const int nvg = hd / vg, run_bytes = vg * bits / 8;
  for (int j = 0; j < g; ++j)
    for (int gi = 0; gi < nvg; ++gi)
      d.run(packed + ((size_t)j * nvg + gi) * run_bytes, vg, h2f(scale[(size_t)j * nvg + gi]),
            h2f(zero[(size_t)j * nvg + gi]), vd + (size_t)j * hd + gi * vg);
}

template <int TV, int RB>
void scores_block(const float *q, const float *kd, int g, int hd, float *p, int64_t ldp) {
  vf acc[RB][TV] = {};
  for (int c = 0; c < hd; ++c) {
    vf k[TV];
    for (int t = 0; t < TV; ++t) k[t] = ld(kd + (size_t)c * g + t * W);
    for (int r = 0; r < RB; ++r) {
      const vf b = splat(q[(size_t)r * hd + c]);
      for (int t = 0; t < TV; ++t) acc[r][t] += b * k[t];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < TV; ++t) st(p + (size_t)r * ldp + t * W, acc[r][t]);
}

template <int TV>
void scores_tv(const float *q, int rows, const float *kd, int g, int hd, float *p, int64_t ldp) {
  constexpr int RB = std::min(12, kAcc / TV);
  for (int j0 = 0; j0 < g; j0 += TV * W)
    for (int r0 = 0; r0 < rows; r0 += RB)
      with_rows<RB>(std::min(RB, rows - r0), [&](auto R) {
        scores_block<TV, decltype(R)::value>(q + (size_t)r0 * hd, kd + j0, g, hd, p + (size_t)r0 * ldp + j0, ldp);
      });
}

// g is a multiple of W (lowbit_kernels checks).
[[maybe_unused]] void scores(const float *q, int rows, const float *kd, int g, int hd, float *p, int64_t ldp) {
  if (W == 16 && g % 64 == 0) return scores_tv<4>(q, rows, kd, g, hd, p, ldp);
  if (g % (2 * W) == 0) return scores_tv<2>(q, rows, kd, g, hd, p, ldp);
  scores_tv<1>(q, rows, kd, g, hd, p, ldp);
}

template <int CV, int RB>
void values_block(const float *p, int64_t ldp, const float *vd, int g, int hd, float *acc) {
  vf a[RB][CV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < CV; ++v) a[r][v] = ld(acc + (size_t)r * hd + v * W);
  for (int j = 0; j < g; ++j) {
    vf x[CV];
    for (int v = 0; v < CV; ++v) x[v] = ld(vd + (size_t)j * hd + v * W);
    for (int r = 0; r < RB; ++r) {
      const vf b = splat(p[(size_t)r * ldp + j]);
      for (int v = 0; v < CV; ++v) a[r][v] += b * x[v];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < CV; ++v) st(acc + (size_t)r * hd + v * W, a[r][v]);
}

// hd is a multiple of W (lowbit_kernels checks).
[[maybe_unused]] void values(const float *p, int64_t ldp, int rows, const float *vd, int g, int hd, float *acc) {
  over_channel_vectors(hd, [&](auto CV, int c0) {
    constexpr int cv = decltype(CV)::value, RB = std::min(12, kAcc / cv);
    for (int r0 = 0; r0 < rows; r0 += RB)
      with_rows<RB>(std::min(RB, rows - r0), [&](auto R) {
        values_block<cv, decltype(R)::value>(p + (size_t)r0 * ldp, ldp, vd + c0, g, hd, acc + (size_t)r0 * hd + c0);
      });
  });
}

}  // namespace

#ifndef LOWBIT_NO_TABLE
extern const LowbitKernels LOWBIT_NAME;
const LowbitKernels LOWBIT_NAME = {W == 16 ? "w16" : "w8", W, decode_keys, decode_values, scores, values};
#endif

}  // namespace specode

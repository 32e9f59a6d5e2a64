// quant_avx2.cpp — AVX2 + FMA + F16C kernel set.
//
// n_tokens <= 4 (decode, short drafts): the shared direct kernels of quant_kernels.h
// (vpmaddubsw/vpmaddwd), each weight block decoded once in registers for all tokens.
// More tokens (prefill): 8 weight rows at a time are decoded once per 512-column chunk into
// u8 row-interleaved form (for every 4 columns, 8 rows x 4 bytes = one ymm), then vpmaddubsw
// with a broadcast 4-byte activation word advances 8 rows of one token by 4 columns; int16
// partial sums are accumulated as long as they cannot overflow, then widened with vpmaddwd.
// Up to 4 tokens share each decoded ymm.
#define SPECODE_QK_SIMD_BODY
#include "quant_kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <algorithm>

namespace specode {
namespace qk {
namespace {

constexpr int kL = 8;        // rows per tile (lanes)
constexpr int kChunk = 512;  // columns decoded at a time
// Tiles read kL rows side by side, which the hardware prefetcher follows poorly: each chunk
// prefetches (into L2) the matching slice of the tile about this many bytes ahead.
#ifndef SPECODE_QK_TILE_PREFETCH
#define SPECODE_QK_TILE_PREFETCH 16384
#endif
constexpr size_t kTilePrefetchBytes = SPECODE_QK_TILE_PREFETCH;
constexpr int kMaxNT = 4;    // tokens per register tile

QK_INLINE __m128i ld128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }

// tmp: 8 rows x SB bytes (element order) -> wq: [SB/4][8 rows][4 bytes].
template <int SB>
QK_INLINE void transpose8(const uint8_t *tmp, uint8_t *wq) {
  for (int c = 0; c < SB / 16; ++c) {
    __m256i z[4];
    for (int i = 0; i < 4; ++i)  // lane j of z[i] holds row 4j+i
      z[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(ld128(tmp + (size_t)i * SB + 16 * c)),
                                     ld128(tmp + (size_t)(4 + i) * SB + 16 * c), 1);
    const __m256i a0 = _mm256_unpacklo_epi32(z[0], z[1]), a1 = _mm256_unpackhi_epi32(z[0], z[1]);
    const __m256i b0 = _mm256_unpacklo_epi32(z[2], z[3]), b1 = _mm256_unpackhi_epi32(z[2], z[3]);
    uint8_t *o = wq + (size_t)(4 * c) * 32;
    _mm256_store_si256((__m256i *)(o + 0), _mm256_unpacklo_epi64(a0, b0));
    _mm256_store_si256((__m256i *)(o + 32), _mm256_unpackhi_epi64(a0, b0));
    _mm256_store_si256((__m256i *)(o + 64), _mm256_unpacklo_epi64(a1, b1));
    _mm256_store_si256((__m256i *)(o + 96), _mm256_unpackhi_epi64(a1, b1));
  }
}

template <DType T, int NT>
QK_INLINE void pf_tile(const uint8_t *wq, const float *dw, const float *mw, int ns, const ActRow *a,
                       int64_t sb0, float *y, int64_t ys, __m256i rm, bool full, bool first) {
  using P = PT<T>;
  constexpr int GPS = P::SB / P::G, K4 = P::G / 4;
  constexpr bool kSigned = P::kMaxQ < 0;  // Q8_0: signed weights, sign trick
  constexpr int kLimit = kSigned ? 1 : 32767 / (254 * P::kMaxQ);
  constexpr int ACC = kLimit < K4 ? kLimit : K4;
  static_assert(K4 % ACC == 0, "int16 accumulation must divide the group");
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[NT];
  const int8_t *aq[NT];
  const float *ad[NT], *af[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = first ? _mm256_setzero_ps()
                   : (full ? _mm256_loadu_ps(y + t * ys) : _mm256_maskload_ps(y + t * ys, rm));
    aq[t] = a[t].q + sb0 * P::SB;
    ad[t] = a[t].d + sb0;
    af[t] = act_group_sums<P>(a[t]) + sb0 * GPS;
  }
  for (int s = 0; s < ns; ++s) {
    __m256 as[NT];
    for (int t = 0; t < NT; ++t) as[t] = _mm256_setzero_ps();
    for (int g = 0; g < GPS; ++g) {
      const int gi = s * GPS + g;
      const uint8_t *wg = wq + (size_t)gi * P::G * kL;
      __m256i i32[NT];
      for (int t = 0; t < NT; ++t) i32[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int kb = 0; kb < K4; kb += ACC) {
        __m256i i16[NT];
#pragma GCC unroll 8
        for (int k = kb; k < kb + ACC; ++k) {
          const __m256i wv = _mm256_load_si256((const __m256i *)(wg + 32 * k));
          const __m256i uw = kSigned ? _mm256_sign_epi8(wv, wv) : wv;
          for (int t = 0; t < NT; ++t) {
            __m256i av = _mm256_set1_epi32((int)ld32(aq[t] + gi * P::G + 4 * k));
            if (kSigned) av = _mm256_sign_epi8(av, wv);
            const __m256i p = _mm256_maddubs_epi16(uw, av);
            i16[t] = (k == kb) ? p : _mm256_add_epi16(i16[t], p);
          }
        }
        for (int t = 0; t < NT; ++t) i32[t] = _mm256_add_epi32(i32[t], _mm256_madd_epi16(i16[t], ones));
      }
      const __m256 dv = _mm256_load_ps(dw + gi * kL);
      for (int t = 0; t < NT; ++t) as[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32[t]), dv, as[t]);
      if (!kSigned) {
        const __m256 mv = _mm256_load_ps(mw + gi * kL);
        for (int t = 0; t < NT; ++t) as[t] = _mm256_fmadd_ps(mv, _mm256_set1_ps(af[t][gi]), as[t]);
      }
    }
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(as[t], _mm256_set1_ps(ad[t][s]), acc[t]);
  }
  for (int t = 0; t < NT; ++t) {
    if (full) _mm256_storeu_ps(y + t * ys, acc[t]);
    else _mm256_maskstore_ps(y + t * ys, rm, acc[t]);
  }
}

template <DType T>
void matmul_tiled(const void *w, int64_t cols, const void *act, int64_t nt, float *y, int64_t ys,
                  int64_t r0, int64_t r1) {
  using P = PT<T>;
  constexpr int SB = P::SB, GPS = P::SB / P::G, SPC = kChunk / SB;
  constexpr int NG = kChunk / P::G;
  static_assert(P::SB == sb_elems(T) && P::G == group_elems(T), "decode traits disagree with quant_kernels.h");
  alignas(64) uint8_t wq[kChunk * kL];
  alignas(64) float dw[NG * kL], mw[NG * kL];
  alignas(64) uint8_t tmp[kL * SB];
  const size_t rb = dtype_row_bytes(T, cols);
  const int64_t nsb = cols / SB;
  const ActFormat f = act_format(T);
  const uint8_t *base = (const uint8_t *)w;
  ActRow a[kMaxNT];
  for (int64_t rt = r0; rt < r1; rt += kL) {
    const int nr = (int)std::min<int64_t>(kL, r1 - rt);
    const bool full = nr == kL;
    const __m256i rm = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (!full) {
      std::memset(tmp, 0, sizeof tmp);
      std::memset(dw, 0, sizeof dw);
      std::memset(mw, 0, sizeof mw);
    }
    // the next tile's rows are the next kL*rb bytes: prefetch a matching slice per chunk
    // (decoding reads kL rows side by side, which the hardware prefetcher follows poorly)
    const size_t tile_bytes = (size_t)kL * rb, nchunks = (size_t)((nsb + SPC - 1) / SPC);
    const int64_t ahead = std::max<int64_t>(1, (int64_t)(kTilePrefetchBytes / tile_bytes));
    const int64_t rn = rt + kL * ahead;
    const uint8_t *next = rn < r1 ? base + (size_t)rn * rb : nullptr;
    for (int64_t sb0 = 0; sb0 < nsb; sb0 += SPC) {
      const int ns = (int)std::min<int64_t>(SPC, nsb - sb0);
      if (next) {
        const size_t c = (size_t)(sb0 / SPC), b0 = tile_bytes * c / nchunks, b1 = tile_bytes * (c + 1) / nchunks;
        for (size_t o = b0 & ~(size_t)63; o < b1; o += 64) _mm_prefetch((const char *)next + o, _MM_HINT_T1);
      }
      for (int s = 0; s < ns; ++s) {
        for (int r = 0; r < nr; ++r)
          P::decode(base + (size_t)(rt + r) * rb, sb0 + s, tmp + r * SB, dw + s * GPS * kL + r,
                    mw + s * GPS * kL + r, kL);
        transpose8<SB>(tmp, wq + (size_t)s * SB * kL);
      }
      const bool first = sb0 == 0;
      for (int64_t t0 = 0; t0 < nt; t0 += kMaxNT) {
        const int n = (int)std::min<int64_t>(kMaxNT, nt - t0);
        for (int i = 0; i < n; ++i) a[i] = act_row(f, act, cols, t0 + i);
        float *yt = y + t0 * ys + rt;
        switch (n) {
          case 1: pf_tile<T, 1>(wq, dw, mw, ns, a, sb0, yt, ys, rm, full, first); break;
          case 2: pf_tile<T, 2>(wq, dw, mw, ns, a, sb0, yt, ys, rm, full, first); break;
          case 3: pf_tile<T, 3>(wq, dw, mw, ns, a, sb0, yt, ys, rm, full, first); break;
          default: pf_tile<T, 4>(wq, dw, mw, ns, a, sb0, yt, ys, rm, full, first); break;
        }
      }
    }
  }
}

// n_tokens up to this run the direct kernels (measured: they beat the maddubs tiles up to 4)
template <DType T>
constexpr int direct_max() { return 4; }

template <DType T>
void matmul_q(const void *w, int64_t cols, const void *act, int64_t nt, float *y, int64_t ys,
              int64_t r0, int64_t r1) {
  if constexpr (has_direct<T>()) {
    // few tokens: decode each block once in registers for all of them; more: tiles
    if (nt == 1) return matmul_direct<T, 1>(w, cols, act, y, ys, r0, r1);
    if constexpr (direct_max<T>() >= 2)
      if (nt == 2) return matmul_direct<T, 2>(w, cols, act, y, ys, r0, r1);
    if constexpr (direct_max<T>() >= 3)
      if (nt == 3) return matmul_direct<T, 3>(w, cols, act, y, ys, r0, r1);
    if constexpr (direct_max<T>() >= 4)
      if (nt == 4) return matmul_direct<T, 4>(w, cols, act, y, ys, r0, r1);
  }
  matmul_tiled<T>(w, cols, act, nt, y, ys, r0, r1);
}

KernelSet make_set() {
  KernelSet ks{};
  ks.name = "avx2";
  ks.matmul[(int)DType::F32] = matmul_float<DType::F32>;
  ks.matmul[(int)DType::F16] = matmul_float<DType::F16>;
  ks.matmul[(int)DType::BF16] = matmul_float<DType::BF16>;
  ks.matmul[(int)DType::Q4_0] = matmul_q<DType::Q4_0>;
  ks.matmul[(int)DType::Q4_1] = matmul_q<DType::Q4_1>;
  ks.matmul[(int)DType::Q5_0] = matmul_q<DType::Q5_0>;
  ks.matmul[(int)DType::Q5_1] = matmul_q<DType::Q5_1>;
  ks.matmul[(int)DType::Q8_0] = matmul_q<DType::Q8_0>;
  ks.matmul[(int)DType::Q2_K] = matmul_q<DType::Q2_K>;
  ks.matmul[(int)DType::Q3_K] = matmul_q<DType::Q3_K>;
  ks.matmul[(int)DType::Q4_K] = matmul_q<DType::Q4_K>;
  ks.matmul[(int)DType::Q5_K] = matmul_q<DType::Q5_K>;
  ks.matmul[(int)DType::Q6_K] = matmul_q<DType::Q6_K>;
  ks.prepare_a32 = prepare_a32_simd;
  ks.prepare_a256 = prepare_a256_simd;
  return ks;
}

}  // namespace

const KernelSet *avx2_kernel_set() {
  static const KernelSet ks = make_set();
  return &ks;
}

}  // namespace qk
}  // namespace specode

#else  // not compiled with the AVX2 flags (non-x86 build)
namespace specode {
namespace qk {
const KernelSet *avx2_kernel_set() { return nullptr; }
}  // namespace qk
}  // namespace specode
#endif

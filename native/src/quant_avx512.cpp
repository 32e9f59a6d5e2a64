// quant_avx512.cpp — AVX-512 (F/BW/VL/DQ/VNNI) kernel set.
//
// n_tokens <= 3 (decode, short drafts): the shared direct kernels of quant_kernels.h, here
// with VNNI (vpdpbusd / vpdpwssd) for the integer dots and mask registers for the Q5 high bits.
// More tokens (prefill): 16 weight rows at a time are decoded once per 512-column chunk
// straight from the packed blocks (16x16-byte transposes, then nibble/high-bit unpacking in
// that form; scales by gathers) into u8 "row-interleaved" form — for every 4 consecutive
// columns, 16 rows x 4 bytes = one zmm — so that one vpdpbusd with a broadcast 4-byte
// activation word advances 16 rows of one token by 4 columns. Up to 8 tokens run against
// each decoded zmm; the per-group scales are applied as one fma per (16 rows, token, group).
// F32/F16/BF16: zmm fp32 FMA with masked tails.
#define SPECODE_QK_SIMD_BODY
// GCC 12 reports the _mm512_undefined_* idiom inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "quant_kernels.h"

#if QK_AVX512
#include <algorithm>

namespace specode {
namespace qk {
namespace {

constexpr int kL = 16;       // rows per tile (lanes)
constexpr int kChunk = 512;  // columns decoded at a time
// Tiles read kL rows side by side, which the hardware prefetcher follows poorly: each chunk
// prefetches (into L2) the matching slice of the tile about this many bytes ahead.
#ifndef SPECODE_QK_TILE_PREFETCH
#define SPECODE_QK_TILE_PREFETCH 16384
#endif
constexpr size_t kTilePrefetchBytes = SPECODE_QK_TILE_PREFETCH;
constexpr int kMaxNT = 8;    // tokens per register tile

QK_INLINE __m128i ld128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }

// tmp: 16 rows x SB bytes (element order) -> wq: [SB/4][16 rows][4 bytes].
template <int SB>
QK_INLINE void transpose16(const uint8_t *tmp, uint8_t *wq) {
  for (int c = 0; c < SB / 16; ++c) {
    __m512i z[4];
    for (int i = 0; i < 4; ++i) {
      // lane j of z[i] holds row 4j+i, so that output position 4j+i is row 4j+i
      __m512i v = _mm512_castsi128_si512(ld128(tmp + (size_t)i * SB + 16 * c));
      v = _mm512_inserti32x4(v, ld128(tmp + (size_t)(4 + i) * SB + 16 * c), 1);
      v = _mm512_inserti32x4(v, ld128(tmp + (size_t)(8 + i) * SB + 16 * c), 2);
      z[i] = _mm512_inserti32x4(v, ld128(tmp + (size_t)(12 + i) * SB + 16 * c), 3);
    }
    const __m512i a0 = _mm512_unpacklo_epi32(z[0], z[1]), a1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i b0 = _mm512_unpacklo_epi32(z[2], z[3]), b1 = _mm512_unpackhi_epi32(z[2], z[3]);
    uint8_t *o = wq + (size_t)(4 * c) * 64;
    _mm512_store_si512((__m512i *)(o + 0), _mm512_unpacklo_epi64(a0, b0));
    _mm512_store_si512((__m512i *)(o + 64), _mm512_unpackhi_epi64(a0, b0));
    _mm512_store_si512((__m512i *)(o + 128), _mm512_unpacklo_epi64(a1, b1));
    _mm512_store_si512((__m512i *)(o + 192), _mm512_unpackhi_epi64(a1, b1));
  }
}

// ---- direct tile decoders ------------------------------------------------------------------
// Each decodes super-block sb of 16 rows (row r at p[r]; rows past the tile repeat the last
// valid row, their lanes are never stored) straight into the interleaved layout: packed
// bytes are transposed first (16 rows x 16 bytes -> 4 zmm, lane r = dword k of row r) and
// unpacked in that form; scales come from gathers with ridx[r] = byte offset of row r.
struct Tile16 {
  const uint8_t *p[kL];  // row starts
  const uint8_t *base;   // p[0]
  __m512i ridx;          // p[r] - base
};

QK_INLINE void tr16x4(const Tile16 &tl, size_t off, __m512i out[4]) {
  __m512i z[4];
  for (int i = 0; i < 4; ++i) {
    __m512i v = _mm512_castsi128_si512(ld128(tl.p[i] + off));
    v = _mm512_inserti32x4(v, ld128(tl.p[4 + i] + off), 1);
    v = _mm512_inserti32x4(v, ld128(tl.p[8 + i] + off), 2);
    z[i] = _mm512_inserti32x4(v, ld128(tl.p[12 + i] + off), 3);
  }
  const __m512i a0 = _mm512_unpacklo_epi32(z[0], z[1]), a1 = _mm512_unpackhi_epi32(z[0], z[1]);
  const __m512i b0 = _mm512_unpacklo_epi32(z[2], z[3]), b1 = _mm512_unpackhi_epi32(z[2], z[3]);
  out[0] = _mm512_unpacklo_epi64(a0, b0);
  out[1] = _mm512_unpackhi_epi64(a0, b0);
  out[2] = _mm512_unpacklo_epi64(a1, b1);
  out[3] = _mm512_unpackhi_epi64(a1, b1);
}
// 16 x 32-bit loads at base + ridx[r] + off.
QK_INLINE __m512i gather16(const Tile16 &tl, size_t off) {
  return _mm512_i32gather_epi32(tl.ridx, (const void *)(tl.base + off), 1);
}
QK_INLINE __m512 half_lo(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)); }
QK_INLINE __m512 half_hi(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16))); }
QK_INLINE void st(uint8_t *p, __m512i v) { _mm512_store_si512((__m512i *)p, v); }
QK_INLINE __m512i nib_lo(__m512i v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
QK_INLINE __m512i nib_hi(__m512i v) { return _mm512_and_si512(_mm512_srli_epi32(v, 4), _mm512_set1_epi8(0x0F)); }
// Q5_0/Q5_1 high bits: qh (lane = row) holds bit e for element e; k4 covers elements
// 4*k4..4*k4+3, i.e. bits 4*(k4&1).. of byte k4/2. Adds 16 to those bytes of q.
QK_INLINE __m512i add_hibits(__m512i q, __m512i qh, int k4) {
  const int b = k4 >> 1;
  const __m512i idx = _mm512_broadcast_i32x4(_mm_setr_epi32(b * 0x01010101, (4 + b) * 0x01010101,
                                                            (8 + b) * 0x01010101, (12 + b) * 0x01010101));
  const __m512i sel = _mm512_shuffle_epi8(qh, idx);  // byte k4/2 of each dword, 4 times
  const __m512i bits = _mm512_set1_epi32((k4 & 1) ? (int)0x80402010 : 0x08040201);
  return _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(sel, bits), q, _mm512_set1_epi8(16));
}

template <DType T> struct Dec16 { static constexpr bool kHas = false; };

template <> struct Dec16<DType::Q4_0> {
  static constexpr bool kHas = true;
  static QK_INLINE void run(const Tile16 &tl, int64_t sb, uint8_t *wq, float *dw, float *mw) {
    const size_t o = (size_t)sb * 18;
    __m512i W[4];
    tr16x4(tl, o + 2, W);
    for (int k = 0; k < 4; ++k) {
      st(wq + 64 * k, nib_lo(W[k]));
      st(wq + 64 * (4 + k), nib_hi(W[k]));
    }
    const __m512 d = half_lo(gather16(tl, o));
    _mm512_store_ps(dw, d);
    _mm512_store_ps(mw, _mm512_mul_ps(d, _mm512_set1_ps(-8.0f)));
  }
};
template <> struct Dec16<DType::Q4_1> {
  static constexpr bool kHas = true;
  static QK_INLINE void run(const Tile16 &tl, int64_t sb, uint8_t *wq, float *dw, float *mw) {
    const size_t o = (size_t)sb * 20;
    __m512i W[4];
    tr16x4(tl, o + 4, W);
    for (int k = 0; k < 4; ++k) {
      st(wq + 64 * k, nib_lo(W[k]));
      st(wq + 64 * (4 + k), nib_hi(W[k]));
    }
    const __m512i g = gather16(tl, o);
    _mm512_store_ps(dw, half_lo(g));
    _mm512_store_ps(mw, half_hi(g));
  }
};
template <int BB, int QH, int QS, bool kMin>
struct Dec16Q5 {
  static constexpr bool kHas = true;
  static QK_INLINE void run(const Tile16 &tl, int64_t sb, uint8_t *wq, float *dw, float *mw) {
    const size_t o = (size_t)sb * BB;
    __m512i W[4];
    tr16x4(tl, o + QS, W);
    const __m512i qh = gather16(tl, o + QH);
    for (int k = 0; k < 4; ++k) {
      st(wq + 64 * k, add_hibits(nib_lo(W[k]), qh, k));
      st(wq + 64 * (4 + k), add_hibits(nib_hi(W[k]), qh, 4 + k));
    }
    const __m512i g = gather16(tl, o);
    const __m512 d = half_lo(g);
    _mm512_store_ps(dw, d);
    _mm512_store_ps(mw, kMin ? half_hi(g) : _mm512_mul_ps(d, _mm512_set1_ps(-16.0f)));
  }
};
template <> struct Dec16<DType::Q5_0> : Dec16Q5<22, 2, 6, false> {};
template <> struct Dec16<DType::Q5_1> : Dec16Q5<24, 4, 8, true> {};
template <> struct Dec16<DType::Q8_0> {
  static constexpr bool kHas = true;
  static QK_INLINE void run(const Tile16 &tl, int64_t sb, uint8_t *wq, float *dw, float *mw) {
    const size_t o = (size_t)sb * 34;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int c = 0; c < 2; ++c) {
      __m512i W[4];
      tr16x4(tl, o + 2 + 16 * c, W);
      for (int k = 0; k < 4; ++k) st(wq + 64 * (4 * c + k), _mm512_xor_si512(W[k], flip));
    }
    const __m512 d = half_lo(gather16(tl, o));
    _mm512_store_ps(dw, d);
    _mm512_store_ps(mw, _mm512_mul_ps(d, _mm512_set1_ps(-128.0f)));
  }
};
// Q4_K / Q5_K: six-bit scales and mins of 16 rows at once (lanes = rows).
QK_INLINE void k4_scales16(const Tile16 &tl, size_t o, float *dw, float *mw) {
  const __m512i dd = gather16(tl, o);
  const __m512i a0 = gather16(tl, o + 4), a1 = gather16(tl, o + 8), a2 = gather16(tl, o + 12);
  const __m512i m3f = _mm512_set1_epi8(0x3f), m0f = _mm512_set1_epi8(0x0f), m03 = _mm512_set1_epi8(0x03);
  const __m512i sc_lo = _mm512_and_si512(a0, m3f), mn_lo = _mm512_and_si512(a1, m3f);
  const __m512i sc_hi = _mm512_or_si512(_mm512_and_si512(a2, m0f),
                                        _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a0, 6), m03), 4));
  const __m512i mn_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(a2, 4), m0f),
                                        _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a1, 6), m03), 4));
  const __m512 d = half_lo(dd), dmin = _mm512_sub_ps(_mm512_setzero_ps(), half_hi(dd));
  const __m512i ff = _mm512_set1_epi32(0xff);
  for (int g = 0; g < 8; ++g) {
    const __m512i s = g < 4 ? sc_lo : sc_hi, m = g < 4 ? mn_lo : mn_hi;
    const int sh = 8 * (g & 3);
    const __m512 sf = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(s, sh), ff));
    const __m512 mf = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(m, sh), ff));
    _mm512_store_ps(dw + 16 * g, _mm512_mul_ps(d, sf));
    _mm512_store_ps(mw + 16 * g, _mm512_mul_ps(dmin, mf));
  }
}
template <> struct Dec16<DType::Q4_K> {
  static constexpr bool kHas = true;
  static QK_INLINE void run(const Tile16 &tl, int64_t sb, uint8_t *wq, float *dw, float *mw) {
    const size_t o = (size_t)sb * 144;
    for (int c = 0; c < 8; ++c) {  // 16 packed bytes: chunk c/2, bytes 16*(c%2)..
      __m512i W[4];
      tr16x4(tl, o + 16 + 16 * c, W);
      const int k0 = 16 * (c >> 1) + 4 * (c & 1);
      for (int k = 0; k < 4; ++k) {
        st(wq + 64 * (k0 + k), nib_lo(W[k]));
        st(wq + 64 * (k0 + 8 + k), nib_hi(W[k]));
      }
    }
    k4_scales16(tl, o, dw, mw);
  }
};
template <> struct Dec16<DType::Q5_K> {
  static constexpr bool kHas = true;
  static QK_INLINE void run(const Tile16 &tl, int64_t sb, uint8_t *wq, float *dw, float *mw) {
    const size_t o = (size_t)sb * 176;
    __m512i QH[8];
    tr16x4(tl, o + 16, QH);
    tr16x4(tl, o + 32, QH + 4);
    const __m512i sixteen = _mm512_set1_epi8(16);
    for (int c = 0; c < 8; ++c) {
      __m512i W[4];
      tr16x4(tl, o + 48 + 16 * c, W);
      const int ch = c >> 1, k0 = 16 * ch + 4 * (c & 1);
      const __m512i blo = _mm512_set1_epi8((char)(1 << (2 * ch))), bhi = _mm512_set1_epi8((char)(2 << (2 * ch)));
      for (int k = 0; k < 4; ++k) {
        const __m512i h = QH[4 * (c & 1) + k];
        const __m512i lo = nib_lo(W[k]), hi = nib_hi(W[k]);
        st(wq + 64 * (k0 + k), _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(h, blo), lo, sixteen));
        st(wq + 64 * (k0 + 8 + k), _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(h, bhi), hi, sixteen));
      }
    }
    k4_scales16(tl, o, dw, mw);
  }
};
template <> struct Dec16<DType::Q6_K> {
  static constexpr bool kHas = true;
  static QK_INLINE void run(const Tile16 &tl, int64_t sb, uint8_t *wq, float *dw, float *mw) {
    const size_t o = (size_t)sb * 210;
    const __m512i m0f = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
      __m512i QL[16], QH[8];
      for (int c = 0; c < 4; ++c) tr16x4(tl, o + 64 * h + 16 * c, QL + 4 * c);
      tr16x4(tl, o + 128 + 32 * h, QH);
      tr16x4(tl, o + 128 + 32 * h + 16, QH + 4);
      uint8_t *w = wq + 64 * 32 * h;
      for (int m = 0; m < 8; ++m) {
        const __m512i a = QL[m], b = QL[8 + m], q = QH[m];
        // (x & 0x0F) | (y & 0x30)
        st(w + 64 * m, _mm512_ternarylogic_epi32(_mm512_and_si512(a, m0f), _mm512_slli_epi32(q, 4), m30, 0xF8));
        st(w + 64 * (8 + m), _mm512_ternarylogic_epi32(_mm512_and_si512(b, m0f), _mm512_slli_epi32(q, 2), m30, 0xF8));
        st(w + 64 * (16 + m), _mm512_ternarylogic_epi32(nib_hi(a), q, m30, 0xF8));
        st(w + 64 * (24 + m), _mm512_ternarylogic_epi32(nib_hi(b), _mm512_srli_epi32(q, 2), m30, 0xF8));
      }
    }
    // int8 scales 0..15 (bytes 192..207) and d (208..209, read as the top half of 206..209)
    const __m512 d = half_hi(gather16(tl, o + 206));
    for (int j = 0; j < 4; ++j) {
      const __m512i sv = gather16(tl, o + 192 + 4 * j);
      for (int b = 0; b < 4; ++b) {
        const __m512i v = _mm512_srai_epi32(_mm512_slli_epi32(sv, 24 - 8 * b), 24);
        const __m512 s = _mm512_mul_ps(d, _mm512_cvtepi32_ps(v));
        _mm512_store_ps(dw + 16 * (4 * j + b), s);
        _mm512_store_ps(mw + 16 * (4 * j + b), _mm512_mul_ps(s, _mm512_set1_ps(-32.0f)));
      }
    }
  }
};

// y[t][rows] (+)= W(16 rows, chunk) . act(token t, chunk) for NT tokens.
template <DType T, int NT>
QK_INLINE void pf_tile(const uint8_t *wq, const float *dw, const float *mw, int ns, const ActRow *a,
                       int64_t sb0, float *y, int64_t ys, __mmask16 rm, bool first) {
  using P = PT<T>;
  constexpr int GPS = P::SB / P::G, K4 = P::G / 4;
  __m512 acc[NT];
  const int8_t *aq[NT];
  const float *ad[NT], *af[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rm, y + t * ys);
    aq[t] = a[t].q + sb0 * P::SB;
    ad[t] = a[t].d + sb0;
    af[t] = act_group_sums<P>(a[t]) + sb0 * GPS;
  }
  for (int s = 0; s < ns; ++s) {
    __m512 as[NT];
    for (int t = 0; t < NT; ++t) as[t] = _mm512_setzero_ps();
    for (int g = 0; g < GPS; ++g) {
      const int gi = s * GPS + g;
      const uint8_t *wg = wq + (size_t)gi * P::G * kL;
      __m512i ia[NT];
      for (int t = 0; t < NT; ++t) ia[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int k = 0; k < K4; ++k) {
        const __m512i wv = _mm512_load_si512((const __m512i *)(wg + 64 * k));
        for (int t = 0; t < NT; ++t)
          ia[t] = _mm512_dpbusd_epi32(ia[t], wv, _mm512_set1_epi32((int)ld32(aq[t] + gi * P::G + 4 * k)));
      }
      const __m512 dv = _mm512_load_ps(dw + gi * kL), mv = _mm512_load_ps(mw + gi * kL);
      for (int t = 0; t < NT; ++t) {
        as[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), dv, as[t]);
        as[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(af[t][gi]), as[t]);
      }
    }
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(as[t], _mm512_set1_ps(ad[t][s]), acc[t]);
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, rm, acc[t]);
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
    const __mmask16 rm = (__mmask16)((1u << nr) - 1);
    Tile16 tl;
    alignas(64) int32_t ri[kL];
    for (int r = 0; r < kL; ++r) {
      tl.p[r] = base + (size_t)(rt + std::min(r, nr - 1)) * rb;
      ri[r] = (int32_t)(tl.p[r] - tl.p[0]);
    }
    tl.base = tl.p[0];
    tl.ridx = _mm512_load_si512((const __m512i *)ri);
    if (nr < kL && !Dec16<T>::kHas) {
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
      if constexpr (Dec16<T>::kHas) {
        for (int s = 0; s < ns; ++s)
          Dec16<T>::run(tl, sb0 + s, wq + (size_t)s * SB * kL, dw + s * GPS * kL, mw + s * GPS * kL);
      } else {
        for (int s = 0; s < ns; ++s) {
          for (int r = 0; r < nr; ++r)
            P::decode(base + (size_t)(rt + r) * rb, sb0 + s, tmp + r * SB, dw + s * GPS * kL + r,
                      mw + s * GPS * kL + r, kL);
          transpose16<SB>(tmp, wq + (size_t)s * SB * kL);
        }
      }
      const bool first = sb0 == 0;
      for (int64_t t0 = 0; t0 < nt; t0 += kMaxNT) {
        const int n = (int)std::min<int64_t>(kMaxNT, nt - t0);
        for (int i = 0; i < n; ++i) a[i] = act_row(f, act, cols, t0 + i);
        float *yt = y + t0 * ys + rt;
        switch (n) {
          case 1: pf_tile<T, 1>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
          case 2: pf_tile<T, 2>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
          case 3: pf_tile<T, 3>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
          case 4: pf_tile<T, 4>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
          case 5: pf_tile<T, 5>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
          case 6: pf_tile<T, 6>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
          case 7: pf_tile<T, 7>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
          default: pf_tile<T, 8>(wq, dw, mw, ns, a, sb0, yt, ys, rm, first); break;
        }
      }
    }
  }
}

// ---- float weights: fp32 FMA of the converted weights, 16 columns per zmm ------------------
template <DType T>
QK_INLINE __m512 ldw16(const uint8_t *row, int64_t k, __mmask16 m) {
  if constexpr (T == DType::F32) return _mm512_maskz_loadu_ps(m, (const float *)row + k);
  else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k);
    if constexpr (T == DType::F16) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}
// y[t*ys + i] = W row i . x_t for RT rows and NT tokens.
template <DType T, int RT, int NT>
QK_INLINE void ftile16(const uint8_t *w0, size_t rb, int64_t cols, const float *x0, size_t xs, float *y, int64_t ys) {
  __m512 acc[RT][NT];
  for (int i = 0; i < RT; ++i)
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < cols; k += 16) {
    const __mmask16 m = cols - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - k)) - 1);
    __m512 wv[RT];
    for (int i = 0; i < RT; ++i) wv[i] = ldw16<T>(w0 + i * rb, k, m);
    for (int t = 0; t < NT; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x0 + t * xs + k);
      for (int i = 0; i < RT; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  for (int i = 0; i < RT; ++i)
    for (int t = 0; t < NT; ++t) y[t * ys + i] = _mm512_reduce_add_ps(acc[i][t]);
}

template <DType T>
void matmul_float16(const void *w, int64_t cols, const void *act, int64_t nt, float *y, int64_t ys, int64_t r0,
                    int64_t r1) {
  const size_t rb = dtype_row_bytes(T, cols);
  const size_t xs = act_row_stride(ActFormat::F32, cols) / 4;
  const float *x = (const float *)act;
  const uint8_t *base = (const uint8_t *)w;
  if (nt == 1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) ftile16<T, 4, 1>(base + r * rb, rb, cols, x, xs, y + r, ys);
    for (; r < r1; ++r) ftile16<T, 1, 1>(base + r * rb, rb, cols, x, xs, y + r, ys);
    return;
  }
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) ftile16<T, 4, 4>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
    for (; t < nt; ++t) ftile16<T, 4, 1>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
  }
  for (; r < r1; ++r) {
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) ftile16<T, 1, 4>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
    for (; t < nt; ++t) ftile16<T, 1, 1>(base + r * rb, rb, cols, x + t * xs, xs, y + t * ys + r, ys);
  }
}

// n_tokens up to this run the direct kernels (measured crossover against the VNNI tiles, on
// cache-resident and on DRAM-streamed weights)
template <DType T>
constexpr int direct_max() { return 3; }

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
  ks.name = "avx512";
  ks.matmul[(int)DType::F32] = matmul_float16<DType::F32>;
  ks.matmul[(int)DType::F16] = matmul_float16<DType::F16>;
  ks.matmul[(int)DType::BF16] = matmul_float16<DType::BF16>;
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

const KernelSet *avx512_kernel_set() {
  static const KernelSet ks = make_set();
  return &ks;
}

}  // namespace qk
}  // namespace specode

#else  // not compiled with the AVX-512 flags (non-x86 build)
namespace specode {
namespace qk {
const KernelSet *avx512_kernel_set() { return nullptr; }
}  // namespace qk
}  // namespace specode
#endif

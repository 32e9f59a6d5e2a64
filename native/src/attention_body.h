// attention_body.h — the blocked attention kernels, compiled once per SIMD width.
// Included by attention.cpp (ATTN_W 4, portable), attention_avx2.cpp (8) and
// attention_avx512.cpp (16), each with its own ISA flags; ATTN_NAME names the
// AttnKernels table the translation unit exports, ATTN_LABEL its name string. Everything else here lives
// in an anonymous namespace, so the copies never meet at link time.
//
// The math (see attention.h): S = Q·Kᵀ over one block of kBlock keys with Kᵀ
// held transposed ([d][j]) so every FMA fills a whole vector of keys without
// horizontal sums; then, per query row, the online-softmax update of the
// running max m, sum l and unnormalized output o with that block's P·V.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention.h"
#include "quant.h"

#if !defined(ATTN_W) || !defined(ATTN_NAME) || !defined(ATTN_LABEL)
#error "define ATTN_W, ATTN_NAME and ATTN_LABEL before including attention_body.h"
#endif

namespace specode {
namespace attn {
namespace {

constexpr int W = ATTN_W;
constexpr int NV = kBlock / W;  // vectors per row of S
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

inline vf splat(float x) {
  const vf v = {x};
  return __builtin_shuffle(v, vi{});  // lane 0 everywhere: one broadcast
}
inline vf ld(const float *p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
inline float hsum(vf v) {
  float s = 0;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
inline vf iota() {
  vf v;
  for (int i = 0; i < W; ++i) v[i] = (float)i;
  return v;
}

// e^x, relative error ~2e-7 on [-87, 88] (Cephes' expf polynomial); below -87 it
// returns ~1e-38, which the callers zero where it matters (masked keys).
inline vf vexp(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

inline void f16_row_to_f32(const uint16_t *src, float *dst, int n) {
#if defined(__F16C__) && defined(__AVX__)
  // (256-bit conversions in the AVX-512 build too: GCC 12 warns on its own 512-bit one.)
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
#else
  for (int i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
#endif
}

// Kt[d * kBlock + j] = K[j][d]; Vf[j * hd + d] = V[j][d]; rows nb..kBlock-1 zero.
template <typename Row, typename Cvt>
inline void load_block(const Row *const *k, const Row *const *v, int nb, int hd, float *Kt, float *Vf, Cvt cvt) {
  float tmp[kMaxHeadDim];
  for (int j = 0; j < nb; ++j) {
    cvt(k[j], tmp, hd);
    for (int d = 0; d < hd; ++d) Kt[d * kBlock + j] = tmp[d];
    cvt(v[j], Vf + (size_t)j * hd, hd);
  }
  if (nb < kBlock) {
    for (int d = 0; d < hd; ++d)
      for (int j = nb; j < kBlock; ++j) Kt[d * kBlock + j] = 0.0f;
    std::memset(Vf + (size_t)nb * hd, 0, (size_t)(kBlock - nb) * hd * sizeof(float));
  }
}

void load_f16(const uint16_t *const *k, const uint16_t *const *v, int nb, int hd, float *Kt, float *Vf) {
  load_block(k, v, nb, hd, Kt, Vf, f16_row_to_f32);
}
void load_f32(const float *const *k, const float *const *v, int nb, int hd, float *Kt, float *Vf) {
  load_block(k, v, nb, hd, Kt, Vf,
             [](const float *src, float *dst, int n) { std::memcpy(dst, src, (size_t)n * sizeof(float)); });
}

// S[r][0..kBlock) = q[r] · Kᵀ for R rows starting at q.
template <int R, int HD>
inline void scores_rows(const float *q, int hd_rt, const float *Kt, float *S) {
  const int hd = HD ? HD : hd_rt;
  vf acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = splat(0.0f);
  for (int d = 0; d < hd; ++d) {
    vf kv[NV];
    for (int v = 0; v < NV; ++v) kv[v] = ld(Kt + d * kBlock + v * W);
    for (int r = 0; r < R; ++r) {
      const float b = q[(size_t)r * hd + d];
      for (int v = 0; v < NV; ++v) acc[r][v] += b * kv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) st(S + r * kBlock + v * W, acc[r][v]);
}

// o[0..cnt*W) = o * alpha + Σ_{i<valid} p[i] · V[i][0..cnt*W)
template <int CNT>
inline void pv_chunk(float *o, float alpha, const float *p, int valid, const float *V, int hd, int cnt_rt) {
  const int cnt = CNT ? CNT : cnt_rt;
  vf acc[CNT ? CNT : 64 / W];
  const vf a = splat(alpha);
  for (int c = 0; c < cnt; ++c) acc[c] = ld(o + c * W) * a;
  for (int i = 0; i < valid; ++i) {
    const float b = p[i];
    const float *vr = V + (size_t)i * hd;
    for (int c = 0; c < cnt; ++c) acc[c] += b * ld(vr + c * W);
  }
  for (int c = 0; c < cnt; ++c) st(o + c * W, acc[c]);
}

template <int HD>
void update_impl(const BlockUpdate &u) {
  const int hd = HD ? HD : u.hd, m = u.m;
  // Rows per pass of the score loop: as many as fill the vector registers.
  constexpr int RB = W == 4 ? 2 : (W == 8 ? 3 : 4);
  float *S = u.s_scratch;
  int r = 0;
  for (; r + RB <= m; r += RB) scores_rows<RB, HD>(u.q + (size_t)r * hd, hd, u.Kt, S + r * kBlock);
  for (; r < m; ++r) scores_rows<1, HD>(u.q + (size_t)r * hd, hd, u.Kt, S + r * kBlock);

  const vf lane = iota();
  float p[kBlock];
  for (r = 0; r < m; ++r) {
    const int valid = std::min(u.nb, u.limit[r] - u.j0);
    if (valid <= 0) continue;
    vf s[NV];
    const vf vlim = splat((float)valid);
    float bm = -INFINITY;
    for (int v = 0; v < NV; ++v) {
      s[v] = ld(S + r * kBlock + v * W);
      s[v] = (lane + (float)(v * W)) < vlim ? s[v] : splat(-INFINITY);
      bm = std::max(bm, hmax(s[v]));
    }
    const float m_old = u.mx[r], m_new = std::max(m_old, bm);
    const float alpha = m_old == -INFINITY ? 0.0f : std::exp(m_old - m_new);
    vf sum = splat(0.0f);
    for (int v = 0; v < NV; ++v) {
      vf e = vexp(s[v] - m_new);
      e = (lane + (float)(v * W)) < vlim ? e : splat(0.0f);
      sum += e;
      st(p + v * W, e);
    }
    u.l[r] = u.l[r] * alpha + hsum(sum);
    u.mx[r] = m_new;
    float *o = u.o + (size_t)r * hd;
    if (HD && HD % 64 == 0) {
      for (int c0 = 0; c0 < hd; c0 += 64) pv_chunk<64 / W>(o + c0, alpha, p, valid, u.Vf + c0, hd, 0);
    } else {
      for (int c0 = 0; c0 < hd; c0 += 64) {
        const int cnt = std::min(64, hd - c0) / W;
        pv_chunk<0>(o + c0, alpha, p, valid, u.Vf + c0, hd, cnt);
      }
    }
  }
}

void update(const BlockUpdate &u) {
  if (u.hd == 64) return update_impl<64>(u);
  if (u.hd == 128) return update_impl<128>(u);
  update_impl<0>(u);
}

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i]
void silu_mul(const float *gate, const float *up, float *out, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf g = ld(gate + i);
    st(out + i, g / (vexp(-g) + 1.0f) * ld(up + i));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// x[i] = e^(x[i] - mx); returns the sum.
float exp_sum(float *x, int64_t n, float mx) {
  vf sum = splat(0.0f);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf e = vexp(ld(x + i) - mx);
    st(x + i, e);
    sum += e;
  }
  float s = hsum(sum);
  for (; i < n; ++i) s += (x[i] = std::exp(x[i] - mx));
  return s;
}

// max over x[0..n) (-inf when n is 0).
float max_of(const float *x, int64_t n) {
  vf m = splat(-INFINITY);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf v = ld(x + i);
    m = v > m ? v : m;
  }
  float r = hmax(m);
  for (; i < n; ++i) r = x[i] > r ? x[i] : r;
  return r;
}

}  // namespace

extern const AttnKernels ATTN_NAME = {ATTN_LABEL, W, load_f16, load_f32, update, silu_mul, exp_sum, max_of};

}  // namespace attn
}  // namespace specode

// attention.h — exact causal attention over fp16 (or fp32) K/V rows, blocked
// the way flash attention is: per KV head, a tile of query rows (several
// tokens × the GQA group's heads, so every K/V row is read once per tile, not
// once per query head) walks the keys in blocks of kBlock; each block is
// converted to fp32 once, scored for the whole tile, and folded into each
// row's running (max, sum, output) with the online softmax. Nothing of size
// n_ctx is materialized per row. Decode (few query rows) splits the keys into
// chunks so every thread has work, and merges the chunks by log-sum-exp.
//
// The kernels (attention_body.h) are compiled per SIMD width and chosen at run
// time with the quant kernel set (SPECODE_KERNELS=scalar selects the portable
// width-4 code). The result depends only on the rows, the tile/block/chunk
// shape and the kernel set — so two policies that attend the same rows through
// these functions get the same bits.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kv_cache.h"
#include "ops.h"
#include "threadpool.h"

namespace specode {
namespace attn {

constexpr int kBlock = 32;        // keys per block
constexpr int kMaxRows = 64;      // query rows per tile (tokens × GQA group)
constexpr int kMaxHeadDim = 256;  // the model loader refuses larger heads
constexpr int kSplitMin = 512;    // decode: keys per chunk at least this many

// One block's update of m query rows (the kernels' only entry besides loading).
struct BlockUpdate {
  int hd = 0, m = 0;               // head size; query rows
  const float *q = nullptr;        // [m][hd], already scaled by 1/sqrt(hd)
  const int *limit = nullptr;      // [m]: row r sees key index j only when j < limit[r]
  int j0 = 0, nb = 0;              // the block holds key indices j0 .. j0 + nb - 1
  const float *Kt = nullptr;       // [hd][kBlock] keys, transposed
  const float *Vf = nullptr;       // [kBlock][hd] values
  float *o = nullptr;              // [m][hd] running unnormalized output
  float *mx = nullptr, *l = nullptr;  // [m] running max and sum of exp(score - max)
  float *s_scratch = nullptr;      // [m][kBlock]
};

struct AttnKernels {
  const char *name;
  int width;  // floats per vector; the kernel needs head_dim % width == 0
  // Kt[d * kBlock + j] = K[j][d], Vf[j * hd + d] = V[j][d] for j < nb; zeros after.
  void (*load_f16)(const uint16_t *const *k, const uint16_t *const *v, int nb, int hd, float *Kt, float *Vf);
  void (*load_f32)(const float *const *k, const float *const *v, int nb, int hd, float *Kt, float *Vf);
  void (*update)(const BlockUpdate &u);
  // The SwiGLU activation out[i] = silu(gate[i]) * up[i] (it shares the vector exp).
  void (*silu_mul)(const float *gate, const float *up, float *out, int64_t n);
  // x[i] = e^(x[i] - mx) over a row; returns Σ x[i] (softmax numerators).
  float (*exp_sum)(float *x, int64_t n, float mx);
  // max over x[0..n) (-inf when n is 0).
  float (*max)(const float *x, int64_t n);
};

// The widest kernels the current kernel set allows for this head size.
const AttnKernels &kernels_for(int head_dim);
inline const AttnKernels &widest_kernels() { return kernels_for(kMaxHeadDim); }

// Per-thread scratch (grown on demand, kept between calls).
struct Worker {
  std::vector<float> q, o, mx, l, Kt, Vf, S;
  std::vector<int> limit;
  std::vector<const void *> kp, vp;
  void reserve(int m, int hd);
};
Worker &worker();

// Attention of m query rows of one KV head over key indices [k0, k1): leaves
// the unnormalized output o [m][hd] and each row's max and sum (rows that saw
// no key: o = 0, mx = -inf, l = 0). q is pre-scaled; row r sees key j < limit[r].
// krow(j), vrow(j): the [hd] fp16 (uint16_t) or fp32 row of key index j.
template <typename KRow, typename VRow>
void rows_attend(const AttnKernels &kr, int hd, int m, const float *q, const int *limit, int k0, int k1, KRow krow,
                 VRow vrow, float *o, float *mx, float *l, Worker &w) {
  using Row = std::decay_t<decltype(krow(0))>;
  static_assert(std::is_same_v<Row, const uint16_t *> || std::is_same_v<Row, const float *>,
                "rows are fp16 (const uint16_t *) or fp32 (const float *)");
  std::fill(o, o + (size_t)m * hd, 0.0f);
  std::fill(mx, mx + m, -INFINITY);
  std::fill(l, l + m, 0.0f);
  int kend = k0;
  for (int r = 0; r < m; ++r) kend = std::max(kend, limit[r]);
  kend = std::min(kend, k1);
  BlockUpdate u;
  u.hd = hd, u.m = m, u.q = q, u.limit = limit, u.Kt = w.Kt.data(), u.Vf = w.Vf.data();
  u.o = o, u.mx = mx, u.l = l, u.s_scratch = w.S.data();
  auto kp = reinterpret_cast<Row *>(w.kp.data());
  auto vp = reinterpret_cast<Row *>(w.vp.data());
  for (int j0 = k0; j0 < kend; j0 += kBlock) {
    const int nb = std::min(kBlock, kend - j0);
    for (int i = 0; i < nb; ++i) {
      kp[i] = krow(j0 + i);
      vp[i] = vrow(j0 + i);
    }
    if constexpr (std::is_same_v<Row, const uint16_t *>) kr.load_f16(kp, vp, nb, hd, w.Kt.data(), w.Vf.data());
    else kr.load_f32(kp, vp, nb, hd, w.Kt.data(), w.Vf.data());
    u.j0 = j0, u.nb = nb;
    kr.update(u);
  }
}

// out = o / l (0 for a row that saw nothing).
inline void finish_row(const float *o, float l, float *out, int hd) {
  const float inv = l > 0 ? 1.0f / l : 0.0f;
  for (int c = 0; c < hd; ++c) out[c] = o[c] * inv;
}

// Causal attention of n query tokens at positions pos0 .. pos0 + n - 1 over
// key positions [0, pos0 + t] (token t): out, q: [n][n_head * head_dim].
// krow(g, j), vrow(g, j): the row of KV head g at position j.
template <typename KRow, typename VRow>
void causal_attention(ThreadPool &pool, const KvShape &sh, int pos0, int n, const float *q, float *out, KRow krow,
                      VRow vrow) {
  const int hd = sh.head_dim, nh = sh.n_head, nkv = sh.n_head_kv, G = nh / nkv;
  const float scale = 1.0f / std::sqrt((float)hd);
  const AttnKernels &kr = kernels_for(hd);
  const int tt = std::max(1, kMaxRows / G);  // tokens per tile
  const int n_tiles = (n + tt - 1) / tt;
  const int keys = pos0 + n, nth = pool.size();
  const int base = n_tiles * nkv;
  int chunks = 1, chunk_len = keys;
  if (base < 4 * nth && keys >= 2 * kSplitMin) {
    chunks = std::min((keys + kSplitMin - 1) / kSplitMin, (4 * nth + base - 1) / base);
    chunk_len = ((keys + chunks - 1) / chunks + kBlock - 1) / kBlock * kBlock;
    chunks = (keys + chunk_len - 1) / chunk_len;
  }
  const int n_tasks = base * chunks;
  const int rows_max = tt * G;
  // Chunk partials: [task][rows_max][hd], [task][rows_max] x2 (only when split).
  std::vector<float> part_o, part_m, part_l;
  if (chunks > 1) {
    part_o.resize((size_t)n_tasks * rows_max * hd);
    part_m.resize((size_t)n_tasks * rows_max);
    part_l.resize(part_m.size());
  }
  std::atomic<int> next{0};
  pool.run([&](int, int) {
    Worker &w = worker();
    w.reserve(rows_max, hd);
    for (int task; (task = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      // Later tiles see more keys: hand them out first.
      const int tile = n_tiles - 1 - task / (nkv * chunks);
      const int g = (task / chunks) % nkv, c = task % chunks;
      const int t0 = tile * tt, t1 = std::min(n, t0 + tt), m = (t1 - t0) * G;
      for (int t = t0; t < t1; ++t)
        for (int hq = 0; hq < G; ++hq) {
          const int r = (t - t0) * G + hq;
          const float *src = q + ((size_t)t * nh + g * G + hq) * hd;
          for (int d = 0; d < hd; ++d) w.q[(size_t)r * hd + d] = src[d] * scale;
          w.limit[r] = pos0 + t + 1;
        }
      const int k0 = c * chunk_len, k1 = std::min(keys, k0 + chunk_len);
      float *o = chunks > 1 ? &part_o[(size_t)task * rows_max * hd] : w.o.data();
      float *mx = chunks > 1 ? &part_m[(size_t)task * rows_max] : w.mx.data();
      float *l = chunks > 1 ? &part_l[(size_t)task * rows_max] : w.l.data();
      rows_attend(kr, hd, m, w.q.data(), w.limit.data(), k0, k1, [&](int j) { return krow(g, j); },
                  [&](int j) { return vrow(g, j); }, o, mx, l, w);
      if (chunks > 1) continue;
      for (int r = 0; r < m; ++r) {
        const int t = t0 + r / G, hq = r % G;
        finish_row(o + (size_t)r * hd, l[r], out + ((size_t)t * nh + g * G + hq) * hd, hd);
      }
    }
  });
  if (chunks == 1) return;
  // Log-sum-exp merge of the chunks, in chunk order.
  for (int tile = 0; tile < n_tiles; ++tile)
    for (int g = 0; g < nkv; ++g) {
      const int t0 = tile * tt, t1 = std::min(n, t0 + tt), m = (t1 - t0) * G;
      const int first = ((n_tiles - 1 - tile) * nkv + g) * chunks;
      for (int r = 0; r < m; ++r) {
        float M = -INFINITY;
        for (int c = 0; c < chunks; ++c) M = std::max(M, part_m[(size_t)(first + c) * rows_max + r]);
        float *dst = out + ((size_t)(t0 + r / G) * nh + g * G + r % G) * hd;
        std::fill(dst, dst + hd, 0.0f);
        float L = 0;
        for (int c = 0; c < chunks; ++c) {
          const float mc = part_m[(size_t)(first + c) * rows_max + r];
          if (mc == -INFINITY) continue;
          const float f = std::exp(mc - M);
          L += part_l[(size_t)(first + c) * rows_max + r] * f;
          const float *oc = &part_o[((size_t)(first + c) * rows_max + r) * hd];
          for (int d = 0; d < hd; ++d) dst[d] += oc[d] * f;
        }
        const float inv = L > 0 ? 1.0f / L : 0.0f;
        for (int d = 0; d < hd; ++d) dst[d] *= inv;
      }
    }
}


// H2O-style attention scores: for each of the nk query tokens at positions
// old .. old + nk - 1 and each query head of a KV head, the exact softmax
// probabilities over the keys it sees are added to score(g)[j]. Tasks are
// (KV head, 16 tokens) with their own partial sums (part: scratch), reduced in
// task order, so the result does not depend on the thread count.
// krow(g, j): the fp16 key row of KV head g at position j.
template <typename KRow, typename Score>
void accumulate_probs(ThreadPool &pool, const KvShape &sh, int old, int nk, const float *q, KRow krow, Score score,
                      std::vector<float> &part) {
  if (nk <= 0) return;
  const int hd = sh.head_dim, nh = sh.n_head, nkv = sh.n_head_kv, G = nh / nkv;
  const float scale = 1.0f / std::sqrt((float)hd);
  const int keys = old + nk;
  constexpr int kTokens = 16;
  const int chunks = (nk + kTokens - 1) / kTokens, n_tasks = nkv * chunks;
  part.assign((size_t)n_tasks * keys, 0.0f);
  std::atomic<int> next{0};
  pool.run([&](int, int) {
    thread_local std::vector<float> s, qs;
    if (s.size() < (size_t)keys) s.resize(keys);
    if (qs.size() < (size_t)hd) qs.resize(hd);
    for (int task; (task = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int g = task / chunks, c = task % chunks;
      float *acc = &part[(size_t)task * keys];
      for (int t = c * kTokens; t < std::min(nk, (c + 1) * kTokens); ++t) {
        const int lim = old + t + 1;
        for (int hq = 0; hq < G; ++hq) {
          const float *src = q + ((size_t)t * nh + g * G + hq) * hd;
          for (int d = 0; d < hd; ++d) qs[d] = src[d] * scale;
          float mx = -INFINITY;
          for (int j = 0; j < lim; ++j) {
            s[j] = dot_f16_f32(krow(g, j), qs.data(), hd);
            mx = std::max(mx, s[j]);
          }
          const float inv = 1.0f / widest_kernels().exp_sum(s.data(), lim, mx);
          for (int j = 0; j < lim; ++j) acc[j] += s[j] * inv;
        }
      }
    }
  });
  for (int g = 0; g < nkv; ++g) {
    float *sc = score(g);
    for (int c = 0; c < chunks; ++c) {
      const float *p = &part[(size_t)(g * chunks + c) * keys];
      for (int j = 0; j < keys; ++j) sc[j] += p[j];
    }
  }
}

}  // namespace attn
}  // namespace specode

// gear.cpp — GEAR: outliers + 2-bit KIVI codes + low-rank residual (gear.h).
#include "gear.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>

#include "attention.h"
#include "ops.h"
#include "quant.h"

namespace specode {

namespace {

inline uint16_t h16(float x) { return fp32_to_fp16(x); }
inline float f16(uint16_t h) { return fp16_to_fp32(h); }

// Runs fn(task) for task in [0, n) across the pool.
template <typename Fn>
void parallel_tasks(ThreadPool &pool, int n, Fn fn) {
  std::atomic<int> next{0};
  pool.run([&](int, int) {
    for (int t; (t = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(t);
  });
}

}  // namespace

void gear_low_rank(const float *R, int n, int cols, int r, int iters, std::vector<float> *A, std::vector<float> *B) {
  A->assign((size_t)n * r, 0.0f);
  B->assign((size_t)cols * r, 0.0f);
  if (n <= 0 || r <= 0) return;
  // Fixed start: a deterministic pseudo-random [cols][r] (xorshift).
  uint32_t s = 0x9E3779B9u;
  for (auto &x : *B) {
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;
    x = (float)((int32_t)(s >> 8) - (1 << 23)) / (float)(1 << 23);
  }
  std::vector<double> acc(r);
  for (int it = 0; it < std::max(1, iters); ++it) {
    // A = R·B
    for (int i = 0; i < n; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const float *ri = R + (size_t)i * cols;
      for (int c = 0; c < cols; ++c) {
        const float x = ri[c];
        if (x == 0.0f) continue;
        const float *bc = &(*B)[(size_t)c * r];
        for (int j = 0; j < r; ++j) acc[j] += (double)x * bc[j];
      }
      for (int j = 0; j < r; ++j) (*A)[(size_t)i * r + j] = (float)acc[j];
    }
    // Orthonormalize A's columns (modified Gram-Schmidt); a column that
    // vanishes (rank of R below r) is left at zero.
    for (int j = 0; j < r; ++j) {
      // Two Gram-Schmidt passes ("twice is enough"): a column much smaller
      // than the others keeps its orthogonality in float.
      for (int pass = 0; pass < 2; ++pass)
        for (int p = 0; p < j; ++p) {
          double d = 0;
          for (int i = 0; i < n; ++i) d += (double)(*A)[(size_t)i * r + j] * (*A)[(size_t)i * r + p];
          for (int i = 0; i < n; ++i) (*A)[(size_t)i * r + j] -= (float)d * (*A)[(size_t)i * r + p];
        }
      double nn = 0;
      for (int i = 0; i < n; ++i) nn += (double)(*A)[(size_t)i * r + j] * (*A)[(size_t)i * r + j];
      const float inv = nn > 1e-30 ? (float)(1.0 / std::sqrt(nn)) : 0.0f;
      for (int i = 0; i < n; ++i) (*A)[(size_t)i * r + j] *= inv;
    }
    // B = Rᵀ·A
    std::vector<double> bt((size_t)cols * r, 0.0);
    for (int i = 0; i < n; ++i) {
      const float *ri = R + (size_t)i * cols, *ai = &(*A)[(size_t)i * r];
      for (int c = 0; c < cols; ++c) {
        const double x = ri[c];
        if (x == 0.0) continue;
        for (int j = 0; j < r; ++j) bt[(size_t)c * r + j] += x * ai[j];
      }
    }
    for (size_t e = 0; e < bt.size(); ++e) (*B)[e] = (float)bt[e];
  }
}

GearKvCache::GearKvCache(const KvShape &shape, const SeedKvConfig &cfg) : cfg_(cfg) {
  assert(cfg.buffer > 0 && cfg.buffer % cfg.group == 0);
  shape_ = shape;
  LowbitConfig lc;
  lc.head_dim = shape.head_dim;
  lc.bits = cfg.bits;
  lc.group = cfg.group;
  const size_t LH = (size_t)shape.n_layer * shape.n_head_kv;
  lowbit_.resize(LH);
  for (auto &s : lowbit_) s.init(lc);
  blocks_.resize(LH);
  kout_.resize(LH);
  vout_.resize(LH);
  ncomp_.assign(shape.n_layer, 0);
  k_.resize(LH * shape.n_ctx * shape.head_dim);
  v_.resize(k_.size());
}

bool GearKvCache::begin_pass(const KvPass &pass) {
  pass_ = pass;
  n_tokens_ = pass.pos0;
  // A generation step starts from the compressed cache; each layer compresses
  // when its attend() runs (the pool is there).
  if (pass.decode) target_ = std::max(target_, target_for(n_tokens_));
  return true;
}

void GearKvCache::end_pass() { n_tokens_ = pass_.pos0 + pass_.n_keep; }

void GearKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  assert(pos0 >= ncomp_[layer] && pos0 + n <= shape_.n_ctx);
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      f32_to_f16_row(k + ((size_t)t * nkv + h) * hd, &k_[row(layer, h, pos0 + t)], hd);
      f32_to_f16_row(v + ((size_t)t * nkv + h) * hd, &v_[row(layer, h, pos0 + t)], hd);
    }
}

void GearKvCache::compress_all(int n_tokens, ThreadPool &pool) {
  const int target = target_for(n_tokens);
  for (int l = 0; l < shape_.n_layer; ++l) compress_layer(l, target, pool);
  target_ = std::max(target_, target);
}

void GearKvCache::compress_layer(int layer, int target, ThreadPool &pool) {
  const int t0 = ncomp_[layer];
  if (target <= t0) return;
  // The prompt (nothing compressed yet) gets the prefill rank, later buffers the decode rank.
  const int rank = t0 == 0 ? cfg_.rank_prefill : cfg_.rank_decode;
  parallel_tasks(pool, shape_.n_head_kv, [&](int h) { compress_head(layer, h, t0, target, rank); });
  ncomp_[layer] = target;
}

// Rows [t0, t1) of (layer, h) from fp16 into S + Q(D) + L.
void GearKvCache::compress_head(int layer, int h, int t0, int t1, int rank) {
  const int hd = shape_.head_dim, n = t1 - t0, g = cfg_.group, vg = std::min(g, hd);
  const size_t N = (size_t)n * hd;
  std::vector<float> X[2], D[2];
  for (int kv = 0; kv < 2; ++kv) {
    const uint16_t *src = kv == 0 ? &k_[row(layer, h, t0)] : &v_[row(layer, h, t0)];
    X[kv].resize(N);
    for (size_t i = 0; i < N; ++i) X[kv][i] = f16(src[i]);
    D[kv] = X[kv];
  }
  // S: per matrix, the top outlier_ratio entries by |x - group mean|.
  const size_t n_out = (size_t)std::ceil((double)cfg_.outlier_ratio * (double)N - 1e-9);
  for (int kv = 0; kv < 2; ++kv) {
    std::vector<float> mean(N);
    const std::vector<float> &x = X[kv];
    if (kv == 0) {  // keys: channel c over the group's g tokens
      for (int b = 0; b < n / g; ++b)
        for (int c = 0; c < hd; ++c) {
          double s = 0;
          for (int j = 0; j < g; ++j) s += x[((size_t)b * g + j) * hd + c];
          const float m = (float)(s / g);
          for (int j = 0; j < g; ++j) mean[((size_t)b * g + j) * hd + c] = m;
        }
    } else {  // values: token j over vg channels
      for (int j = 0; j < n; ++j)
        for (int c0 = 0; c0 < hd; c0 += vg) {
          double s = 0;
          for (int c = c0; c < c0 + vg; ++c) s += x[(size_t)j * hd + c];
          const float m = (float)(s / vg);
          for (int c = c0; c < c0 + vg; ++c) mean[(size_t)j * hd + c] = m;
        }
    }
    std::vector<Outlier> &out = kv == 0 ? kout_[lh(layer, h)] : vout_[lh(layer, h)];
    if (n_out > 0) {
      std::vector<uint32_t> idx(N);
      for (size_t i = 0; i < N; ++i) idx[i] = (uint32_t)i;
      auto dev = [&](uint32_t i) { return std::fabs(x[i] - mean[i]); };
      // Largest deviation first; ties: the lower index.
      auto before = [&](uint32_t a, uint32_t b) { return dev(a) > dev(b) || (dev(a) == dev(b) && a < b); };
      std::nth_element(idx.begin(), idx.begin() + (n_out - 1), idx.end(), before);
      idx.resize(n_out);
      std::sort(idx.begin(), idx.end());
      for (uint32_t i : idx) {
        out.push_back({t0 + (int32_t)(i / hd), (uint16_t)(i % hd), h16(x[i])});
        D[kv][i] = mean[i];
      }
    }
  }
  // Q: codes of D.
  LowbitStream &s = lowbit_[lh(layer, h)];
  assert(s.size() == t0);
  s.append(D[0].data(), D[1].data(), n);
  std::vector<float> dq[2] = {std::vector<float>(N), std::vector<float>(N)};
  s.dequantize(t0, t1, dq[0].data(), dq[1].data());
  // L: low-rank of the residual.
  Block blk;
  blk.t0 = t0, blk.t1 = t1, blk.rank = rank;
  for (int kv = 0; kv < 2; ++kv) {
    std::vector<float> R(N), A, B;
    for (size_t i = 0; i < N; ++i) R[i] = D[kv][i] - dq[kv][i];
    gear_low_rank(R.data(), n, hd, rank, cfg_.power_iters, &A, &B);
    std::vector<uint16_t> &a = kv == 0 ? blk.ak : blk.av, &b = kv == 0 ? blk.bk : blk.bv;
    a.resize(A.size());
    b.resize(B.size());
    for (size_t i = 0; i < A.size(); ++i) a[i] = h16(A[i]);
    for (size_t i = 0; i < B.size(); ++i) b[i] = h16(B[i]);
  }
  blocks_[lh(layer, h)].push_back(std::move(blk));
}

void GearKvCache::reconstruct(int layer, int h, int t0, int t1, float *k, float *v, bool with_lowrank,
                              bool with_outliers) const {
  const int hd = shape_.head_dim;
  assert(t0 >= 0 && t1 <= ncomp_[layer] && t0 <= t1);
  if (t1 <= t0) return;
  // The codes come in whole groups.
  const int g = cfg_.group, a0 = t0 / g * g, a1 = (t1 + g - 1) / g * g;
  std::vector<float> dk((size_t)(a1 - a0) * hd), dv(dk.size());
  lowbit_[lh(layer, h)].dequantize(a0, a1, dk.data(), dv.data());
  std::memcpy(k, &dk[(size_t)(t0 - a0) * hd], (size_t)(t1 - t0) * hd * sizeof(float));
  std::memcpy(v, &dv[(size_t)(t0 - a0) * hd], (size_t)(t1 - t0) * hd * sizeof(float));
  if (with_lowrank)
    for (const Block &b : blocks_[lh(layer, h)]) {
      const int lo = std::max(t0, b.t0), hi = std::min(t1, b.t1), r = b.rank;
      if (lo >= hi) continue;
      std::vector<float> bk((size_t)hd * r), bv(bk.size());
      for (size_t i = 0; i < bk.size(); ++i) bk[i] = f16(b.bk[i]), bv[i] = f16(b.bv[i]);
      for (int p = lo; p < hi; ++p) {
        float ak[8], av[8];
        for (int j = 0; j < r; ++j) ak[j] = f16(b.ak[(size_t)(p - b.t0) * r + j]), av[j] = f16(b.av[(size_t)(p - b.t0) * r + j]);
        float *kr = k + (size_t)(p - t0) * hd, *vr = v + (size_t)(p - t0) * hd;
        for (int c = 0; c < hd; ++c) {
          float sk = 0, sv = 0;
          for (int j = 0; j < r; ++j) sk += ak[j] * bk[(size_t)c * r + j], sv += av[j] * bv[(size_t)c * r + j];
          kr[c] += sk;
          vr[c] += sv;
        }
      }
    }
  if (with_outliers)
    for (int kv = 0; kv < 2; ++kv) {
      const std::vector<Outlier> &os = kv == 0 ? kout_[lh(layer, h)] : vout_[lh(layer, h)];
      float *dst = kv == 0 ? k : v;
      auto it = std::lower_bound(os.begin(), os.end(), t0, [](const Outlier &o, int p) { return o.pos < p; });
      for (; it != os.end() && it->pos < t1; ++it) dst[(size_t)(it->pos - t0) * hd + it->ch] = f16(it->val);
    }
}

void GearKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  if (pass_.decode) compress_layer(layer, std::min(target_, pos0), pool);
  const int C = ncomp_[layer], hd = shape_.head_dim, nkv = shape_.n_head_kv;
  auto kf = [&](int g, int j) -> const uint16_t * { return &k_[row(layer, g, j)]; };
  auto vf = [&](int g, int j) -> const uint16_t * { return &v_[row(layer, g, j)]; };
  if (C == 0) {  // everything in fp16: full's arithmetic
    attn::causal_attention(pool, shape_, pos0, n, q, out, kf, vf);
    return;
  }
  // One layer's compressed rows, reconstructed to fp16, in slices of 256 rows across the pool.
  rk_.resize((size_t)nkv * C * hd);
  rv_.resize(rk_.size());
  constexpr int kSlice = 256;
  const int slices = (C + kSlice - 1) / kSlice;
  parallel_tasks(pool, nkv * slices, [&](int task) {
    const int g = task / slices, a = task % slices * kSlice, b = std::min(C, a + kSlice);
    thread_local std::vector<float> tk, tv;
    tk.resize((size_t)(b - a) * hd), tv.resize(tk.size());
    reconstruct(layer, g, a, b, tk.data(), tv.data());
    f32_to_f16_row(tk.data(), &rk_[((size_t)g * C + a) * hd], (b - a) * hd);
    f32_to_f16_row(tv.data(), &rv_[((size_t)g * C + a) * hd], (b - a) * hd);
  });
  attn::causal_attention(
      pool, shape_, pos0, n, q, out,
      [&](int g, int j) -> const uint16_t * { return j < C ? &rk_[((size_t)g * C + j) * hd] : kf(g, j); },
      [&](int g, int j) -> const uint16_t * { return j < C ? &rv_[((size_t)g * C + j) * hd] : vf(g, j); });
}

void GearKvCache::truncate(int n_keep) {
  if (n_keep >= n_tokens_) return;
  n_keep = std::max(0, n_keep);
  n_tokens_ = n_keep;
  target_ = std::min(target_, target_for(n_keep));
  const int hd = shape_.head_dim;
  for (int l = 0; l < shape_.n_layer; ++l) {
    if (n_keep >= ncomp_[l]) continue;
    // Blocks reaching past the cut go: their kept rows come back as fp16
    // rows of their reconstruction (the fp16 originals are gone).
    int cut = ncomp_[l];
    for (const Block &b : blocks_[lh(l, 0)])
      if (b.t1 > n_keep) cut = std::min(cut, b.t0);
    for (int h = 0; h < shape_.n_head_kv; ++h) {
      if (n_keep > cut) {
        std::vector<float> kf((size_t)(n_keep - cut) * hd), vf(kf.size());
        reconstruct(l, h, cut, n_keep, kf.data(), vf.data());
        f32_to_f16_row(kf.data(), &k_[row(l, h, cut)], (n_keep - cut) * hd);
        f32_to_f16_row(vf.data(), &v_[row(l, h, cut)], (n_keep - cut) * hd);
      }
      lowbit_[lh(l, h)].truncate(cut);
      auto &bl = blocks_[lh(l, h)];
      bl.erase(std::remove_if(bl.begin(), bl.end(), [&](const Block &b) { return b.t0 >= cut; }), bl.end());
      for (auto *os : {&kout_[lh(l, h)], &vout_[lh(l, h)]})
        os->erase(std::lower_bound(os->begin(), os->end(), cut, [](const Outlier &o, int p) { return o.pos < p; }),
                  os->end());
    }
    ncomp_[l] = cut;
  }
}

bool GearKvCache::read(int layer, int pos0, int n, float *k, float *v) const {
  // Only the fp16 rows not yet compressed are held at full precision.
  if (pos0 < ncomp_[layer] || pos0 + n > n_tokens_) return false;
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      const uint16_t *ks = &k_[row(layer, h, pos0 + t)], *vs = &v_[row(layer, h, pos0 + t)];
      for (int c = 0; c < hd; ++c) {
        k[((size_t)t * nkv + h) * hd + c] = f16(ks[c]);
        v[((size_t)t * nkv + h) * hd + c] = f16(vs[c]);
      }
    }
  return true;
}

uint64_t GearKvCache::compressed_bytes() const {
  uint64_t b = 0;
  for (size_t i = 0; i < lowbit_.size(); ++i) {
    b += lowbit_[i].bytes();
    for (const Block &bl : blocks_[i]) b += (bl.ak.size() + bl.bk.size() + bl.av.size() + bl.bv.size()) * sizeof(uint16_t);
    // An outlier: its fp16 value and a 32-bit index.
    b += (kout_[i].size() + vout_[i].size()) * (sizeof(uint16_t) + sizeof(uint32_t));
  }
  return b;
}

uint64_t GearKvCache::bytes() const {
  uint64_t fp16_rows = 0;
  for (int l = 0; l < shape_.n_layer; ++l) fp16_rows += (uint64_t)std::max(0, n_tokens_ - ncomp_[l]);
  return compressed_bytes() + fp16_rows * shape_.n_head_kv * shape_.head_dim * 2 * sizeof(uint16_t);
}

void GearKvCache::metrics(KvMetrics *out) const {
  *out = KvMetrics{};
  out->device_lowbit_bytes = compressed_bytes();
  // The fp16 buffer as allocated (buffer rows), or what a prompt left in
  // fp16 before the first generation step compressed it.
  const int nc = ncomp_.empty() ? 0 : ncomp_[0];
  const int fp16_rows = std::max(cfg_.buffer, n_tokens_ - nc);
  out->device_residual_bytes = (uint64_t)fp16_rows * lowbit_.size() * shape_.head_dim * 2 * sizeof(uint16_t);
  out->n_tokens = (uint64_t)n_tokens_;
  out->n_lowbit_tokens = (uint64_t)nc;
  out->n_residual_tokens = (uint64_t)(n_tokens_ - nc);
}

}  // namespace specode

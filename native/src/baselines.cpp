// baselines.cpp — streamingllm, h2o and kivi (see baselines.h).
#include "baselines.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>

#include "attention.h"
#include "ops.h"
#include "quant.h"

namespace specode {

const char *baseline_policy_name(KvPolicy p) {
  if (p == kKvStreamingLlm) return "streamingllm";
  if (p == kKvH2O) return "h2o";
  if (p == kKvKivi) return "kivi";
  return nullptr;
}

std::unique_ptr<KvCache> make_baseline_kv_cache(const KvShape &shape, const BaselineKvConfig &cfg) {
  if (cfg.policy == kKvKivi) return std::make_unique<KiviKvCache>(shape, cfg);
  return std::make_unique<EvictingKvCache>(shape, cfg);
}

// =============================================================================
// h2o, streamingllm

EvictingKvCache::EvictingKvCache(const KvShape &shape, const BaselineKvConfig &cfg) : cfg_(cfg) {
  assert(cfg.policy == kKvH2O || cfg.policy == kKvStreamingLlm);
  shape_ = shape;
  const size_t slots = (size_t)shape.n_layer * shape.n_head_kv * shape.n_ctx;
  k_.resize(slots * shape.head_dim);
  v_.resize(slots * shape.head_dim);
  pos_.resize(slots);
  if (cfg_.policy == kKvH2O) score_.resize(slots);
  cnt_.assign((size_t)shape.n_layer * shape.n_head_kv, 0);
}

int EvictingKvCache::budget_for(int n_tokens) const {
  int b = cfg_.budget;
  if (b <= 0) b = std::max(1, (int)std::ceil((double)cfg_.budget_ratio * n_tokens - 1e-4));
  if (cfg_.policy == kKvStreamingLlm) b = std::max(b, cfg_.sinks + 1);
  return b;
}

bool EvictingKvCache::begin_pass(const KvPass &pass) {
  pass_ = pass;
  in_pass_ = true;
  n_tokens_ = pass.pos0;
  // A generation step starts from the compressed cache (after a prompt this
  // is where the prompt's rows are evicted).
  if (pass.decode) compress(budget_for(n_tokens_));
  return true;
}

void EvictingKvCache::end_pass() {
  if (!in_pass_) return;
  in_pass_ = false;
  // The pass's unkept (speculative) rows are the newest slots.
  const int drop = pass_.n - pass_.n_keep;
  if (drop > 0)
    for (int &c : cnt_) c = std::max(0, c - drop);
  n_tokens_ = pass_.pos0 + pass_.n_keep;
  if (pass_.decode) compress(budget_for(n_tokens_));
}

void EvictingKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int h = 0; h < nkv; ++h) {
    int &c = cnt_[lh(layer, h)];
    assert(c + n <= shape_.n_ctx);
    for (int t = 0; t < n; ++t) {
      const size_t s = slot(layer, h, c + t);
      f32_to_f16_row(k + ((size_t)t * nkv + h) * hd, &k_[s * hd], hd);
      f32_to_f16_row(v + ((size_t)t * nkv + h) * hd, &v_[s * hd], hd);
      pos_[s] = pos0 + t;
      if (!score_.empty()) score_[s] = 0.0f;
    }
    c += n;
  }
}

void EvictingKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  // Every KV head holds the same number of rows; the pass's n new ones are
  // the last n slots, in order, so slot index works as the causal position.
  const int old = cnt_[lh(layer, 0)] - n;
  for (int h = 1; h < shape_.n_head_kv; ++h) assert(cnt_[lh(layer, h)] - n == old);
  attn::causal_attention(
      pool, shape_, old, n, q, out, [&](int g, int j) { return krow(layer, g, j); },
      [&](int g, int j) { return vrow(layer, g, j); });
  if (cfg_.policy == kKvH2O) accumulate(layer, old, n, q, pool);
}

// H2O's score: each kept query row's attention probabilities (exact softmax
// over the rows it sees), summed over the query heads of the KV head and over
// the rows, added to the rows' accumulated attention. Tasks are (KV head,
// 16 tokens), each with its own partial sums, reduced in task order: the
// result does not depend on the thread count.
void EvictingKvCache::accumulate(int layer, int old, int n, const float *q, ThreadPool &pool) {
  const int nk = in_pass_ ? std::min(n, pass_.n_keep) : n;  // speculative rows do not vote
  attn::accumulate_probs(
      pool, shape_, old, nk, q, [&](int g, int j) { return (const uint16_t *)krow(layer, g, j); },
      [&](int g) { return &score_[slot(layer, g, 0)]; }, part_);
}

void EvictingKvCache::compress(int target) {
  for (int l = 0; l < shape_.n_layer; ++l)
    for (int h = 0; h < shape_.n_head_kv; ++h)
      if (cnt_[lh(l, h)] > target) compress_one(l, h, target);
}

void EvictingKvCache::compress_one(int layer, int h, int target) {
  const int c = cnt_[lh(layer, h)];
  if (c <= target) return;
  const int32_t *pos = &pos_[slot(layer, h, 0)];
  std::vector<int32_t> p(pos, pos + c);  // positions are distinct within a (layer, KV head)
  std::vector<uint8_t> keep(c, 0);
  if (target <= 0) {
    keep_only(layer, h, keep);
    return;
  }
  if (cfg_.policy == kKvStreamingLlm) {
    // The `sinks` lowest positions and the newest target - sinks (at least one).
    const int sinks = std::min(cfg_.sinks, target - 1), window = target - sinks;
    int32_t sink_max = -1;
    if (sinks > 0) {
      std::nth_element(p.begin(), p.begin() + (sinks - 1), p.end());
      sink_max = p[sinks - 1];
    }
    std::nth_element(p.begin(), p.begin() + (c - window), p.end());
    const int32_t window_min = p[c - window];
    for (int s = 0; s < c; ++s) keep[s] = pos[s] <= sink_max || pos[s] >= window_min;
  } else {
    // The newest `recent` rows, and the `heavy` older rows with the most
    // accumulated attention (ties: the lower slot).
    const int heavy = target / 2, recent = target - heavy;
    std::nth_element(p.begin(), p.begin() + (c - recent), p.end());
    const int32_t recent_min = p[c - recent];
    std::vector<float> cand_score;
    std::vector<int> cand_slot;
    cand_score.reserve(c - recent);
    cand_slot.reserve(c - recent);
    const float *sc = &score_[slot(layer, h, 0)];
    for (int s = 0; s < c; ++s) {
      if (pos[s] >= recent_min) {
        keep[s] = 1;
      } else {
        cand_score.push_back(sc[s]);
        cand_slot.push_back(s);
      }
    }
    std::vector<int32_t> chosen(std::max(heavy, 1));
    const int got = select_topk(cand_score.data(), (int)cand_score.size(), heavy, chosen.data());
    for (int i = 0; i < got; ++i) keep[cand_slot[chosen[i]]] = 1;
  }
  keep_only(layer, h, keep);
}

// Keeps the slots with keep[s] set: the kept slots past the new count move
// into the freed slots below it (in slot order), so only evicted rows move.
void EvictingKvCache::keep_only(int layer, int h, const std::vector<uint8_t> &keep) {
  const int c = cnt_[lh(layer, h)], hd = shape_.head_dim;
  int kept = 0;
  for (int s = 0; s < c; ++s) kept += keep[s] ? 1 : 0;
  int hole = 0;
  for (int s = kept; s < c; ++s) {
    if (!keep[s]) continue;
    while (keep[hole]) ++hole;  // a free slot below `kept` exists for every kept slot above it
    const size_t dst = slot(layer, h, hole), src = slot(layer, h, s);
    std::memcpy(&k_[dst * hd], &k_[src * hd], hd * sizeof(uint16_t));
    std::memcpy(&v_[dst * hd], &v_[src * hd], hd * sizeof(uint16_t));
    pos_[dst] = pos_[src];
    if (!score_.empty()) score_[dst] = score_[src];
    ++hole;
  }
  cnt_[lh(layer, h)] = kept;
}

void EvictingKvCache::truncate(int n_keep) {
  if (n_keep >= n_tokens_) return;
  n_tokens_ = std::max(0, n_keep);
  int least = shape_.n_ctx;
  for (int l = 0; l < shape_.n_layer; ++l)
    for (int h = 0; h < shape_.n_head_kv; ++h) {
      const int c = cnt_[lh(l, h)];
      const int32_t *pos = &pos_[slot(l, h, 0)];
      std::vector<uint8_t> keep(c);
      for (int s = 0; s < c; ++s) keep[s] = pos[s] < n_keep;
      keep_only(l, h, keep);
      least = std::min(least, cnt_[lh(l, h)]);
    }
  // h2o heads evict different positions, so they may now hold different
  // counts; attention wants one count: trim the others by the policy's rule.
  compress(least);
}

uint64_t EvictingKvCache::bytes() const {
  uint64_t rows = 0;
  for (int c : cnt_) rows += (uint64_t)c;
  return rows * shape_.head_dim * 2 * sizeof(uint16_t);
}

void EvictingKvCache::metrics(KvMetrics *out) const {
  *out = KvMetrics{};
  out->device_full_bytes = bytes();
  out->n_tokens = (uint64_t)n_tokens_;
}

std::vector<int32_t> EvictingKvCache::held_positions(int layer, int kv_head) const {
  const int32_t *pos = &pos_[slot(layer, kv_head, 0)];
  std::vector<int32_t> out(pos, pos + cnt_[lh(layer, kv_head)]);
  std::sort(out.begin(), out.end());
  return out;
}

float EvictingKvCache::score_of(int layer, int kv_head, int p) const {
  if (score_.empty()) return -1.0f;
  for (int s = 0; s < cnt_[lh(layer, kv_head)]; ++s)
    if (pos_[slot(layer, kv_head, s)] == p) return score_[slot(layer, kv_head, s)];
  return -1.0f;
}

// =============================================================================
// kivi

KiviKvCache::KiviKvCache(const KvShape &shape, const BaselineKvConfig &cfg) : cfg_(cfg) {
  shape_ = shape;
  LowbitConfig lc;
  lc.head_dim = shape.head_dim;
  lc.bits = cfg.bits;
  lc.group = cfg.group;
  lowbit_.resize((size_t)shape.n_layer * shape.n_head_kv);
  for (auto &s : lowbit_) s.init(lc);
  const size_t rows = (size_t)shape.n_layer * shape.n_head_kv * shape.n_ctx;
  k_.resize(rows * shape.head_dim);
  v_.resize(rows * shape.head_dim);
}

bool KiviKvCache::begin_pass(const KvPass &pass) {
  pass_ = pass;
  n_tokens_ = pass.pos0;
  if (pass.decode) compress(n_tokens_);
  return true;
}

void KiviKvCache::end_pass() { n_tokens_ = pass_.pos0 + pass_.n_keep; }

void KiviKvCache::compress(int n_tokens) {
  // With n_tokens + 1 tokens, n_lowbit = R * floor(n_tokens / R) leaves
  // 1..R in fp16 (KIVI quantizes a full residual, R tokens at once).
  const int R = cfg_.residual, target = n_tokens / R * R;
  if (target <= n_lowbit_) return;
  const int hd = shape_.head_dim, cnt = target - n_lowbit_;
  std::vector<float> kf((size_t)cnt * hd), vf((size_t)cnt * hd);
  for (int l = 0; l < shape_.n_layer; ++l)
    for (int h = 0; h < shape_.n_head_kv; ++h) {
      const uint16_t *ks = &k_[row(l, h, n_lowbit_)], *vs = &v_[row(l, h, n_lowbit_)];
      for (size_t i = 0; i < (size_t)cnt * hd; ++i) {
        kf[i] = fp16_to_fp32(ks[i]);
        vf[i] = fp16_to_fp32(vs[i]);
      }
      lowbit_[lh(l, h)].append(kf.data(), vf.data(), cnt);
    }
  n_lowbit_ = target;
}

void KiviKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  assert(pos0 >= n_lowbit_ && pos0 + n <= shape_.n_ctx);
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      f32_to_f16_row(k + ((size_t)t * nkv + h) * hd, &k_[row(layer, h, pos0 + t)], hd);
      f32_to_f16_row(v + ((size_t)t * nkv + h) * hd, &v_[row(layer, h, pos0 + t)], hd);
    }
}

// Split softmax per (query tile, KV head): piece 0 is the fp16 rows
// [n_lowbit, pos0 + n) through attn::rows_attend (causal), pieces 1.. are
// chunks of the low-bit copy scored from the codes (lowbit_attend; every
// query sees all of it); merged by log-sum-exp in piece order 1.., 0.
void KiviKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  const int hd = shape_.head_dim, nh = shape_.n_head, nkv = shape_.n_head_kv, G = nh / nkv;
  auto kf = [&](int g, int j) -> const uint16_t * { return &k_[row(layer, g, j)]; };
  auto vf = [&](int g, int j) -> const uint16_t * { return &v_[row(layer, g, j)]; };
  const int L = n_lowbit_;
  if (L == 0) {  // everything in fp16: full's arithmetic
    attn::causal_attention(pool, shape_, pos0, n, q, out, kf, vf);
    return;
  }
  const float scale = 1.0f / std::sqrt((float)hd);
  const attn::AttnKernels &kr = attn::kernels_for(hd);
  const int tt = std::max(1, attn::kMaxRows / G), n_tiles = (n + tt - 1) / tt, rows_max = tt * G;
  const int base = n_tiles * nkv, nth = pool.size(), g_ = cfg_.group;
  // Low-bit chunks: at most kMaxPiece tokens (bounds the score scratch), and
  // enough of them to give every thread work in a generation step.
  constexpr int kMaxPiece = 2048;
  int chunks = (L + kMaxPiece - 1) / kMaxPiece;
  if (base * chunks < 4 * nth && L >= 2 * attn::kSplitMin)
    chunks = std::max(chunks, std::min((L + attn::kSplitMin - 1) / attn::kSplitMin, (4 * nth + base - 1) / base));
  const int cl = ((L + chunks - 1) / chunks + g_ - 1) / g_ * g_;
  chunks = (L + cl - 1) / cl;
  const int pieces = chunks + 1, n_tasks = base * pieces;
  part_m_.resize((size_t)n_tasks * rows_max);
  part_l_.resize(part_m_.size());
  part_acc_.resize(part_m_.size() * hd);
  std::atomic<int> next{0};
  pool.run([&](int, int) {
    attn::Worker &w = attn::worker();
    w.reserve(rows_max, hd);
    thread_local LowbitScratch scratch;
    thread_local std::vector<float> p;
    for (int task; (task = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int tile = n_tiles - 1 - task / (nkv * pieces);  // later tiles see more keys: first
      const int g = (task / pieces) % nkv, pc = task % pieces;
      const int t0 = tile * tt, t1 = std::min(n, t0 + tt), m = (t1 - t0) * G;
      for (int t = t0; t < t1; ++t)
        for (int hq = 0; hq < G; ++hq) {
          const int r = (t - t0) * G + hq;
          const float *src = q + ((size_t)t * nh + g * G + hq) * hd;
          for (int d = 0; d < hd; ++d) w.q[(size_t)r * hd + d] = src[d] * scale;
          w.limit[r] = pos0 + t + 1 - L;
        }
      float *pm = &part_m_[(size_t)task * rows_max], *pl = &part_l_[(size_t)task * rows_max];
      float *pa = &part_acc_[(size_t)task * rows_max * hd];
      if (pc == 0) {
        attn::rows_attend(
            kr, hd, m, w.q.data(), w.limit.data(), 0, pos0 + n - L, [&](int j) { return kf(g, L + j); },
            [&](int j) { return vf(g, L + j); }, pa, pm, pl, w);
        for (int r = 0; r < m; ++r) attn::finish_row(pa + (size_t)r * hd, pl[r], pa + (size_t)r * hd, hd);
      } else {
        const int c0 = (pc - 1) * cl, c1 = std::min(L, c0 + cl);
        if (p.size() < (size_t)m * (c1 - c0)) p.resize((size_t)m * (c1 - c0));
        lowbit_attend(lowbit_[lh(layer, g)], c0, c1, w.q.data(), m, nullptr, p.data(), pm, pl, pa, scratch);
      }
    }
  });
  for (int tile = 0; tile < n_tiles; ++tile)
    for (int g = 0; g < nkv; ++g) {
      const int t0 = tile * tt, t1 = std::min(n, t0 + tt), m = (t1 - t0) * G;
      const int first = ((n_tiles - 1 - tile) * nkv + g) * pieces;
      for (int r = 0; r < m; ++r) {
        float *dst = out + ((size_t)(t0 + r / G) * nh + g * G + r % G) * hd;
        std::fill(dst, dst + hd, 0.0f);
        float M = -INFINITY, S = 0;
        for (int i = 1; i <= pieces; ++i) {
          const int task = first + i % pieces;  // 1, 2, .., chunks, then 0
          softmax_merge(&M, &S, dst, part_m_[(size_t)task * rows_max + r], part_l_[(size_t)task * rows_max + r],
                        &part_acc_[((size_t)task * rows_max + r) * hd], hd);
        }
      }
    }
}

void KiviKvCache::truncate(int n_keep) {
  if (n_keep >= n_tokens_) return;
  n_keep = std::max(0, n_keep);
  if (n_keep < n_lowbit_) {
    // The stream keeps whole groups; the tokens of the cut group come back
    // as fp16 rows decoded from their codes (their fp16 originals are gone).
    const int hd = shape_.head_dim, L2 = n_keep / cfg_.group * cfg_.group, cnt = n_keep - L2;
    std::vector<float> kf((size_t)std::max(cnt, 1) * hd), vf(kf.size());
    for (int l = 0; l < shape_.n_layer; ++l)
      for (int h = 0; h < shape_.n_head_kv; ++h) {
        LowbitStream &s = lowbit_[lh(l, h)];
        if (cnt > 0) {
          s.dequantize(L2, n_keep, kf.data(), vf.data());
          for (int t = 0; t < cnt; ++t) {
            f32_to_f16_row(&kf[(size_t)t * hd], &k_[row(l, h, L2 + t)], hd);
            f32_to_f16_row(&vf[(size_t)t * hd], &v_[row(l, h, L2 + t)], hd);
          }
        }
        s.truncate(L2);
      }
    n_lowbit_ = L2;
  }
  n_tokens_ = n_keep;
}

uint64_t KiviKvCache::bytes() const {
  uint64_t b = 0;
  for (const auto &s : lowbit_) b += s.bytes();
  return b + (uint64_t)(n_tokens_ - n_lowbit_) * lowbit_.size() * shape_.head_dim * 2 * sizeof(uint16_t);
}

void KiviKvCache::metrics(KvMetrics *out) const {
  *out = KvMetrics{};
  for (const auto &s : lowbit_) out->device_lowbit_bytes += s.bytes();
  // The residual as allocated (R rows), or what a prompt left in fp16 before
  // the first generation step quantized it.
  const int fp16_rows = std::max(cfg_.residual, n_tokens_ - n_lowbit_);
  out->device_residual_bytes = (uint64_t)fp16_rows * lowbit_.size() * shape_.head_dim * 2 * sizeof(uint16_t);
  out->n_tokens = (uint64_t)n_tokens_;
  out->n_lowbit_tokens = (uint64_t)n_lowbit_;
  out->n_residual_tokens = (uint64_t)(n_tokens_ - n_lowbit_);
}

}  // namespace specode

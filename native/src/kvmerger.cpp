// kvmerger.cpp — KVMerger: contiguous merging sets + Gaussian-weighted merge (kvmerger.h).
#include "kvmerger.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>
#include <numeric>

#include "attention.h"
#include "ops.h"
#include "quant.h"

namespace specode {

namespace {

// Cosine similarity of keys i and i+1 for every adjacent pair; -2 where
// either is protected (not joinable).
std::vector<float> adjacent_sims(const float *keys, int c, int hd, const std::vector<uint8_t> &prot) {
  std::vector<float> s(std::max(0, c - 1), -2.0f);
  std::vector<double> norm(c);
  for (int i = 0; i < c; ++i) {
    double n2 = 0;
    for (int d = 0; d < hd; ++d) n2 += (double)keys[(size_t)i * hd + d] * keys[(size_t)i * hd + d];
    norm[i] = std::sqrt(n2);
  }
  for (int i = 0; i + 1 < c; ++i) {
    if (prot[i] || prot[i + 1]) continue;
    double dot = 0;
    for (int d = 0; d < hd; ++d) dot += (double)keys[(size_t)i * hd + d] * keys[(size_t)(i + 1) * hd + d];
    const double den = norm[i] * norm[i + 1];
    s[i] = den > 0 ? (float)(dot / den) : (norm[i] == 0 && norm[i + 1] == 0 ? 1.0f : 0.0f);
  }
  return s;
}

}  // namespace

void kvmerger_weights(const float *keys, int m, int hd, int pivot, float *w) {
  std::vector<double> d2(m, 0.0);
  double mean = 0;
  for (int i = 0; i < m; ++i) {
    for (int c = 0; c < hd; ++c) {
      const double x = (double)keys[(size_t)i * hd + c] - keys[(size_t)pivot * hd + c];
      d2[i] += x * x;
    }
    if (i != pivot) mean += d2[i];
  }
  mean = m > 1 ? mean / (m - 1) : 0.0;
  double sum = 0;
  std::vector<double> e(m);
  for (int i = 0; i < m; ++i) {
    e[i] = mean > 0 ? std::exp(-d2[i] / (2.0 * mean)) : 1.0;
    sum += e[i];
  }
  for (int i = 0; i < m; ++i) w[i] = (float)(e[i] / sum);
}

std::vector<int> kvmerger_sets(const float *keys, int c, int hd, const std::vector<uint8_t> &prot, int target) {
  const std::vector<float> s = adjacent_sims(keys, c, hd, prot);
  std::vector<int> order;
  for (int i = 0; i + 1 < c; ++i)
    if (s[i] > -2.0f) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s[a] > s[b]; });
  const int joins = std::min((int)order.size(), std::max(0, c - target));
  std::vector<uint8_t> join(std::max(0, c - 1), 0);
  for (int i = 0; i < joins; ++i) join[order[i]] = 1;
  std::vector<int> set(c);
  int id = 0;
  for (int i = 0; i < c; ++i) {
    if (i > 0 && !join[i - 1]) ++id;
    set[i] = id;
  }
  return set;
}

int kvmerger_rows_at_threshold(const float *keys, int c, int hd, const std::vector<uint8_t> &prot, float threshold) {
  const std::vector<float> s = adjacent_sims(keys, c, hd, prot);
  int rows = c;
  for (float x : s) rows -= x > threshold ? 1 : 0;
  return rows;
}

MergerKvCache::MergerKvCache(const KvShape &shape, const SeedKvConfig &cfg) : cfg_(cfg) {
  shape_ = shape;
  const size_t slots = (size_t)shape.n_layer * shape.n_head_kv * shape.n_ctx;
  k_.resize(slots * shape.head_dim);
  v_.resize(slots * shape.head_dim);
  pos_.resize(slots);
  score_.resize(slots);
  cnt_.assign((size_t)shape.n_layer * shape.n_head_kv, 0);
  merged_.assign(shape.n_layer, 0);
  log_.resize((size_t)shape.n_layer * shape.n_head_kv);
}

int MergerKvCache::budget_for(int n_tokens) const {
  if (cfg_.budget > 0) return cfg_.budget;
  return std::max(1, (int)std::ceil((double)cfg_.budget_ratio * n_tokens - 1e-4));
}

bool MergerKvCache::begin_pass(const KvPass &pass) {
  pass_ = pass;
  in_pass_ = true;
  n_tokens_ = pass.pos0;
  if (pass.decode && pending_) {
    compress(n_tokens_);
    pending_ = false;
  }
  return true;
}

void MergerKvCache::end_pass() {
  if (!in_pass_) return;
  in_pass_ = false;
  const int drop = pass_.n - pass_.n_keep;  // speculative rows: the newest slots
  if (drop > 0)
    for (int &c : cnt_) c = std::max(0, c - drop);
  n_tokens_ = pass_.pos0 + pass_.n_keep;
  if (!pass_.decode && pass_.n_keep > 0) pending_ = true;
}

void MergerKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int h = 0; h < nkv; ++h) {
    int &c = cnt_[lh(layer, h)];
    assert(c + n <= shape_.n_ctx);
    for (int t = 0; t < n; ++t) {
      const size_t s = slot(layer, h, c + t);
      f32_to_f16_row(k + ((size_t)t * nkv + h) * hd, &k_[s * hd], hd);
      f32_to_f16_row(v + ((size_t)t * nkv + h) * hd, &v_[s * hd], hd);
      pos_[s] = pos0 + t;
      score_[s] = 0.0f;
    }
    c += n;
  }
}

void MergerKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  // The heads of a layer hold the same count; the pass's n rows are the last
  // n slots, so the slot index works as the causal position.
  const int old = cnt_[lh(layer, 0)] - n;
  for (int h = 1; h < shape_.n_head_kv; ++h) assert(cnt_[lh(layer, h)] - n == old);
  const int hd = shape_.head_dim;
  attn::causal_attention(
      pool, shape_, old, n, q, out, [&](int g, int j) -> const uint16_t * { return &k_[slot(layer, g, j) * hd]; },
      [&](int g, int j) -> const uint16_t * { return &v_[slot(layer, g, j) * hd]; });
  if (mergeable(layer)) accumulate(layer, old, n, q, pool);
}

// Every kept query row's attention probabilities (exact softmax over the rows
// it sees) summed over the KV head's query heads and added to the rows'
// scores; tasks (KV head, 16 tokens) with their own partial sums, reduced in
// task order (independent of the thread count).
void MergerKvCache::accumulate(int layer, int old, int n, const float *q, ThreadPool &pool) {
  const int nk = in_pass_ ? std::min(n, pass_.n_keep) : n;  // speculative rows do not vote
  attn::accumulate_probs(
      pool, shape_, old, nk, q, [&](int g, int j) { return (const uint16_t *)&k_[slot(layer, g, j) * shape_.head_dim]; },
      [&](int g) { return &score_[slot(layer, g, 0)]; }, part_);
}

std::vector<uint8_t> MergerKvCache::protect(int layer, int h, int target) const {
  const int c = cnt_[lh(layer, h)];
  std::vector<uint8_t> prot(c, 0);
  if (target < 4) return prot;
  const int recent = std::min(c, target / 4), heavy = target / 4;
  for (int s = c - recent; s < c; ++s) prot[s] = 1;
  const int older = c - recent;
  std::vector<int32_t> chosen(std::max(1, heavy));
  const int got = select_topk(&score_[slot(layer, h, 0)], older, heavy, chosen.data());
  for (int i = 0; i < got; ++i) prot[chosen[i]] = 1;
  return prot;
}

void MergerKvCache::compress(int n_tokens) {
  const int B = budget_for(n_tokens);
  for (int l = 0; l < shape_.n_layer; ++l)
    if (mergeable(l)) compress_layer(l, B, false);
}

void MergerKvCache::compress_layer(int layer, int target, bool exact) {
  const int nkv = shape_.n_head_kv, hd = shape_.head_dim;
  int most = 0;
  for (int h = 0; h < nkv; ++h) most = std::max(most, cnt_[lh(layer, h)]);
  if (most <= target && !exact) return;
  std::vector<std::vector<float>> keys(nkv), vals(nkv);
  std::vector<std::vector<uint8_t>> prot(nkv);
  int T = target, reach = 0, threshold_rows = 0;
  for (int h = 0; h < nkv; ++h) {
    held_rows(layer, h, &keys[h], &vals[h]);
    const int c = cnt_[lh(layer, h)];
    prot[h] = protect(layer, h, target);
    const std::vector<float> s = adjacent_sims(keys[h].data(), c, hd, prot[h]);
    int joinable = 0;
    for (float x : s) joinable += x > -2.0f ? 1 : 0;
    reach = std::max(reach, c - joinable);
    threshold_rows = std::max(threshold_rows, kvmerger_rows_at_threshold(keys[h].data(), c, hd, prot[h], cfg_.sim_threshold));
  }
  if (!exact) T = std::min(target, threshold_rows);
  T = std::max(T, reach);
  for (int h = 0; h < nkv; ++h) {
    const int c = cnt_[lh(layer, h)];
    auto &log = log_[lh(layer, h)];
    log.clear();
    if (c <= T) continue;
    const std::vector<int> set = kvmerger_sets(keys[h].data(), c, hd, prot[h], T);
    int out = 0;
    for (int i = 0; i < c;) {
      int j = i;
      while (j < c && set[j] == set[i]) ++j;
      const size_t dst = slot(layer, h, out);
      if (j - i == 1) {
        const size_t src = slot(layer, h, i);
        if (src != dst) {
          std::memmove(&k_[dst * hd], &k_[src * hd], hd * sizeof(uint16_t));
          std::memmove(&v_[dst * hd], &v_[src * hd], hd * sizeof(uint16_t));
          pos_[dst] = pos_[src];
          score_[dst] = score_[src];
        }
      } else {
        MergedSet ms;
        int pivot = i;
        float total = 0;
        for (int r = i; r < j; ++r) {
          const float sc = score_[slot(layer, h, r)];
          total += sc;
          if (sc > score_[slot(layer, h, pivot)]) pivot = r;
          ms.members.push_back(pos_[slot(layer, h, r)]);
        }
        ms.pivot = pivot - i;
        ms.weights.resize(j - i);
        kvmerger_weights(&keys[h][(size_t)i * hd], j - i, hd, ms.pivot, ms.weights.data());
        std::vector<float> mk(hd, 0.0f), mv(hd, 0.0f);
        for (int r = i; r < j; ++r) {
          const float w = ms.weights[r - i];
          for (int d = 0; d < hd; ++d) {
            mk[d] += w * keys[h][(size_t)r * hd + d];
            mv[d] += w * vals[h][(size_t)r * hd + d];
          }
        }
        const int32_t ppos = pos_[slot(layer, h, pivot)];
        f32_to_f16_row(mk.data(), &k_[dst * hd], hd);
        f32_to_f16_row(mv.data(), &v_[dst * hd], hd);
        pos_[dst] = ppos;
        score_[dst] = total;
        log.push_back(std::move(ms));
      }
      ++out;
      i = j;
    }
    cnt_[lh(layer, h)] = out;
    merged_[layer] = 1;
  }
}

void MergerKvCache::truncate(int n_keep) {
  if (n_keep >= n_tokens_) return;
  n_keep = std::max(0, n_keep);
  n_tokens_ = n_keep;
  for (int l = 0; l < shape_.n_layer; ++l) {
    int least = shape_.n_ctx, most = 0;
    for (int h = 0; h < shape_.n_head_kv; ++h) {
      const int32_t *p = &pos_[slot(l, h, 0)];
      int &c = cnt_[lh(l, h)];
      c = (int)(std::lower_bound(p, p + c, n_keep) - p);  // slots are in position order
      least = std::min(least, c);
      most = std::max(most, c);
    }
    if (most > least) compress_layer(l, least, true);
    if (n_keep == 0) merged_[l] = 0;
  }
}

bool MergerKvCache::read(int layer, int pos0, int n, float *k, float *v) const {
  if (merged_[layer] || pos0 + n > cnt_[lh(layer, 0)]) return false;
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      const size_t s = slot(layer, h, pos0 + t);  // unmerged: slot == position
      for (int c = 0; c < hd; ++c) {
        k[((size_t)t * nkv + h) * hd + c] = fp16_to_fp32(k_[s * hd + c]);
        v[((size_t)t * nkv + h) * hd + c] = fp16_to_fp32(v_[s * hd + c]);
      }
    }
  return true;
}

uint64_t MergerKvCache::bytes() const {
  uint64_t rows = 0;
  for (int c : cnt_) rows += (uint64_t)c;
  return rows * shape_.head_dim * 2 * sizeof(uint16_t);
}

void MergerKvCache::metrics(KvMetrics *out) const {
  *out = KvMetrics{};
  out->device_full_bytes = bytes();
  out->n_tokens = (uint64_t)n_tokens_;
}

std::vector<int32_t> MergerKvCache::held_positions(int layer, int kv_head) const {
  const int32_t *p = &pos_[slot(layer, kv_head, 0)];
  return std::vector<int32_t>(p, p + cnt_[lh(layer, kv_head)]);
}

float MergerKvCache::score_of(int layer, int kv_head, int pos) const {
  for (int s = 0; s < cnt_[lh(layer, kv_head)]; ++s)
    if (pos_[slot(layer, kv_head, s)] == pos) return score_[slot(layer, kv_head, s)];
  return -1.0f;
}

void MergerKvCache::held_rows(int layer, int kv_head, std::vector<float> *k, std::vector<float> *v) const {
  const int c = cnt_[lh(layer, kv_head)], hd = shape_.head_dim;
  k->resize((size_t)c * hd);
  v->resize(k->size());
  for (size_t i = 0; i < (size_t)c * hd; ++i) {
    (*k)[i] = fp16_to_fp32(k_[slot(layer, kv_head, 0) * hd + i]);
    (*v)[i] = fp16_to_fp32(v_[slot(layer, kv_head, 0) * hd + i]);
  }
}

}  // namespace specode

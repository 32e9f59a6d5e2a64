// specache_attend.cpp — decode attention of the specache policies: the
// split softmax over the low-bit copy, the fetched fp16 rows, the residual
// and the pass's speculative tokens; the top-k choice and the fetch it
// issues; the synchronous true top-k (specache-sync) and the overlap measure.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "specache_impl.h"

namespace specode {
namespace paged {

// Mean over the group's query rows (token 0 of the pass, in qbuf_) of the
// exact softmax over host rows [0, n_pos): avg[j], j < n_pos.
void PagedKvCache::exact_probs(int layer, int h, int n_pos, float *avg, float *scratch) {
  const int HD = shape_.head_dim, G = shape_.n_head / shape_.n_head_kv, rows = pass_.n * G;
  const PageId *table = pages_->page_table(seq_).data();
  const int P = cfg_.page_tokens;
  std::fill(avg, avg + n_pos, 0.0f);
  for (int hq = 0; hq < G; ++hq) {
    const float *qv = &qbuf_[((size_t)h * rows + hq) * HD];
    float mx = -INFINITY;
    for (int j = 0; j < n_pos; ++j) {
      scratch[j] = dot_f16_f32(pages_->k_row(table[j / P], layer, h, j % P), qv, HD);
      mx = std::max(mx, scratch[j]);
    }
    float sum = 0;
    for (int j = 0; j < n_pos; ++j) sum += (scratch[j] = std::exp(scratch[j] - mx));
    const float f = 1.0f / (sum * G);
    for (int j = 0; j < n_pos; ++j) avg[j] += scratch[j] * f;
  }
}

void PagedKvCache::sync_fetch_true_topk(int layer, ThreadPool &pool) {
  const int NKV = shape_.n_head_kv, HD = shape_.head_dim, K = cfg_.topk;
  const int nq = n_lowbit_[layer], n_pos = nq + resid_n_[layer];
  std::vector<std::vector<int32_t>> picks(NKV, std::vector<int32_t>(std::max(1, K)));
  std::vector<int> counts(NKV);
  std::atomic<int> next{0};
  pool.run([&](int ith, int) {
    std::vector<float> avg(n_pos);
    for (int h; (h = next.fetch_add(1)) < NKV;) {
      exact_probs(layer, h, n_pos, avg.data(), scores_[ith].data());
      counts[h] = select_topk(avg.data(), nq, K, picks[h].data());
    }
  });
  // The copy is synchronous: all of it is stall.
  const auto t0 = Clock::now();
  const size_t bytes = (size_t)HD * sizeof(uint16_t);
  for (int h = 0; h < NKV; ++h) {
    set_fetched(layer, h, picks[h].data(), counts[h]);
    for (int i = 0; i < counts[h]; ++i) {
      std::memcpy(pre_k(layer, h, i), pages_->seq_k_row(seq_, layer, h, picks[h][i]), bytes);
      std::memcpy(pre_v(layer, h, i), pages_->seq_v_row(seq_, layer, h, picks[h][i]), bytes);
    }
    fetch_bytes_ += (uint64_t)counts[h] * bytes * 2;
  }
  stall_ns_ += ns_since(t0);
}

void PagedKvCache::measure_overlap(int layer, ThreadPool &pool) {
  const int NKV = shape_.n_head_kv, K = cfg_.topk;
  const int nq = n_lowbit_[layer], n_pos = nq + resid_n_[layer];
  std::vector<double> overlap(NKV), recall(NKV);
  std::atomic<int> next{0};
  pool.run([&](int ith, int) {
    std::vector<float> avg(n_pos);
    std::vector<int32_t> truth(K);
    for (int h; (h = next.fetch_add(1)) < NKV;) {
      exact_probs(layer, h, n_pos, avg.data(), scores_[ith].data());
      const int nt = select_topk(avg.data(), nq, K, truth.data());
      const int32_t *held = pre_pos(layer, h);
      const int nh = pre_n_[lh(layer, h)];
      int both = 0;
      double mass_held = 0, mass_true = 0;
      for (int i = 0; i < nh; ++i) {
        mass_held += avg[held[i]];
        both += std::binary_search(truth.begin(), truth.begin() + nt, held[i]) ? 1 : 0;
      }
      for (int i = 0; i < nt; ++i) mass_true += avg[truth[i]];
      overlap[h] = (double)both / nt;
      recall[h] = mass_true > 0 ? mass_held / mass_true : 1.0;
    }
  });
  for (int h = 0; h < NKV; ++h) {
    overlap_sum_ += overlap[h];
    mass_recall_sum_ += recall[h];
    ++overlap_samples_;
  }
}

void PagedKvCache::attend_mixed(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  const int NKV = shape_.n_head_kv, NH = shape_.n_head, G = NH / NKV, HD = shape_.head_dim;
  const int g = cfg_.group, K = cfg_.topk, R = cfg_.residual;
  const int rows = n * G, nq = n_lowbit_[layer], nr = resid_n_[layer];
  const float scale = 1.0f / std::sqrt((float)HD);
  q_ = q;

  // The rows chosen last step must have landed before this layer reads them.
  if (fetch_) stall_ns_ += fetch_->wait(layer);

  qbuf_.resize((size_t)NKV * rows * HD);
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < NKV; ++h)
      for (int hq = 0; hq < G; ++hq) {
        const float *src = q + ((size_t)t * NH + h * G + hq) * HD;
        float *dst = &qbuf_[((size_t)h * rows + t * G + hq) * HD];
        for (int c = 0; c < HD; ++c) dst[c] = src[c] * scale;
      }
  if (cfg_.policy == KvPolicy::SpecacheSync && pass_.n_keep > 0 && nq > 0) sync_fetch_true_topk(layer, pool);
  if (cfg_.measure && cfg_.policy == KvPolicy::Specache && pass_.n_keep > 0 && nq > K) measure_overlap(layer, pool);

  // Pieces: per KV head, chunks of low-bit key groups, then one fp16 piece
  // (fetched rows, residual, this pass's unkept tokens).
  tasks_.clear();
  const int groups = nq / g;
  const int per_head = std::max(1, (4 * pool.size() + NKV - 1) / NKV);
  const int chunk = std::min(64, std::max(1, (groups + per_head - 1) / per_head));
  for (int h = 0; h < NKV; ++h) {
    for (int g0 = 0; g0 < groups; g0 += chunk) tasks_.push_back({h, g0 * g, std::min(groups, g0 + chunk) * g, true});
    tasks_.push_back({h, 0, 0, false});
  }
  const int n_tasks = (int)tasks_.size();
  part_m_.resize((size_t)n_tasks * rows);
  part_l_.resize(part_m_.size());
  part_acc_.resize(part_m_.size() * HD);
  const bool select = cfg_.policy == KvPolicy::Specache && pass_.select_row >= 0 && pass_.select_row < n;
  if (select) {
    sel_e_.resize((size_t)NKV * G * shape_.n_ctx);
    fetched_e_.resize((size_t)NKV * G * std::max(1, K));
    resid_e_.resize((size_t)NKV * G * R);
  }
  const int sel0 = select ? pass_.select_row * G : 0;

  std::atomic<int> next{0};
  pool.run([&](int ith, int) {
    for (int ti; (ti = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const Task &task = tasks_[ti];
      if (!task.lowbit) {
        fp16_piece(layer, task.h, ti, ith, select);
        continue;
      }
      const int len = task.t1 - task.t0;
      std::vector<float> &p = scores_[ith];
      if (p.size() < (size_t)rows * len) p.resize((size_t)rows * len);
      lowbit_attend(lowbit(layer, task.h), task.t0, task.t1, &qbuf_[(size_t)task.h * rows * HD], rows,
                    pre_bits(layer, task.h), p.data(), &part_m_[(size_t)ti * rows], &part_l_[(size_t)ti * rows],
                    &part_acc_[(size_t)ti * rows * HD], lowbit_scratch_[ith]);
      if (select)
        for (int hq = 0; hq < G; ++hq)
          std::memcpy(&sel_e_[((size_t)task.h * G + hq) * shape_.n_ctx + task.t0], &p[(size_t)(sel0 + hq) * len],
                      len * sizeof(float));
    }
  });

  // Log-sum-exp merge of the pieces, in task order (deterministic).
  std::vector<float> acc(HD), sel_m((size_t)NKV * G), sel_l((size_t)NKV * G);
  int ti0 = 0;
  for (int h = 0; h < NKV; ++h) {
    int ti1 = ti0;
    while (ti1 < n_tasks && tasks_[ti1].h == h) ++ti1;
    for (int r = 0; r < rows; ++r) {
      float m = -INFINITY, l = 0;
      for (int ti = ti0; ti < ti1; ++ti)
        softmax_merge(&m, &l, acc.data(), part_m_[(size_t)ti * rows + r], part_l_[(size_t)ti * rows + r],
                      &part_acc_[((size_t)ti * rows + r) * HD], HD);
      const int t = r / G, hq = r % G;
      std::memcpy(out + ((size_t)t * NH + h * G + hq) * HD, acc.data(), HD * sizeof(float));
      if (select && r >= sel0 && r < sel0 + G) {
        sel_m[(size_t)h * G + hq] = m;
        sel_l[(size_t)h * G + hq] = l;
      }
    }
    ti0 = ti1;
  }
  if (!select) return;

  // Top-k of the select row (GQA: mean of the group's probabilities) among
  // the positions that will be in the low-bit copy at the next step: the
  // quantized ones, plus the residual when it is full (the next append
  // quantizes it). In parallel over position ranges (each low-bit task's, and
  // the residual's): each range sums its mean probabilities and keeps its own
  // top k; the heads' candidates are then merged. Candidates are in position
  // order and select_topk breaks ties by lower index, so the choice is the
  // one a single pass over all positions makes.
  const int n_cand = nq + (nr == R ? R : 0);
  avg_.resize(std::max(avg_.size(), (size_t)NKV * std::max(1, n_cand)));
  ranges_.clear();
  for (int ti = 0; ti < n_tasks; ++ti)
    if (tasks_[ti].lowbit) ranges_.push_back({tasks_[ti].h, tasks_[ti].t0, tasks_[ti].t1, ti});
    else if (nr == R) ranges_.push_back({tasks_[ti].h, nq, nq + R, ti});
  // With rerank > 1 each range keeps the rerank × K best, re-scored exactly below.
  const int n_ranges = (int)ranges_.size(), kk = std::max(1, K), keep = kk * std::max(1, cfg_.rerank);
  range_pos_.resize((size_t)n_ranges * keep);
  range_score_.resize((size_t)n_ranges * keep);
  range_n_.resize(n_ranges);
  auto factor = [&](int ti, int h, int hq) {
    const float mt = part_m_[(size_t)ti * rows + sel0 + hq], M = sel_m[(size_t)h * G + hq];
    return mt == -INFINITY ? 0.0f : std::exp(mt - M) / (sel_l[(size_t)h * G + hq] * G);
  };
  std::atomic<int> next_range{0};
  pool.run([&](int ith, int) {
    for (int ri; (ri = next_range.fetch_add(1, std::memory_order_relaxed)) < n_ranges;) {
      const Range &rg = ranges_[ri];
      const int h = rg.h, len = rg.t1 - rg.t0;
      float *avg = &avg_[(size_t)h * n_cand + rg.t0];
      std::fill(avg, avg + len, 0.0f);
      if (tasks_[rg.task].lowbit)
        for (int hq = 0; hq < G; ++hq) {
          const float fh = factor(rg.task, h, hq);
          if (fh == 0.0f) continue;
          const float *e = &sel_e_[((size_t)h * G + hq) * shape_.n_ctx + rg.t0];
          for (int j = 0; j < len; ++j) avg[j] += fh * e[j];
        }
      // The fp16 task's rows that fall in this range: fetched rows, then the residual.
      int fp16_task = rg.task;
      while (tasks_[fp16_task].lowbit) ++fp16_task;
      const int32_t *held = pre_pos(layer, h);
      const int n_held = pre_n_[lh(layer, h)];
      for (int hq = 0; hq < G; ++hq) {
        const float fh = factor(fp16_task, h, hq);
        if (fh == 0.0f) continue;
        const float *fe = &fetched_e_[((size_t)h * G + hq) * kk];
        for (int i = 0; i < n_held; ++i)
          if (held[i] >= rg.t0 && held[i] < rg.t1) avg[held[i] - rg.t0] += fh * fe[i];
        if (nr == R && rg.t1 > nq) {
          const float *re = &resid_e_[((size_t)h * G + hq) * R];
          for (int i = std::max(nq, rg.t0); i < rg.t1; ++i) avg[i - rg.t0] += fh * re[i - nq];
        }
      }
      if (track_attn_) {
        float *mass = &attn_mass_[(size_t)h * shape_.n_ctx + rg.t0];
        for (int j = 0; j < len; ++j) mass[j] += avg[j];
      }
      std::vector<int32_t> &pick = picks_[ith];
      pick.resize(keep);
      const int got = select_topk(avg, len, K > 0 ? keep : 0, pick.data());
      range_n_[ri] = got;
      for (int i = 0; i < got; ++i) {
        range_pos_[(size_t)ri * keep + i] = rg.t0 + pick[i];
        range_score_[(size_t)ri * keep + i] = avg[pick[i]];
      }
    }
  });
  // Per KV head, in parallel: merge the ranges' candidates, then (rerank > 1)
  // re-score the wide choice exactly from the fp16 host rows.
  head_sel_.resize(NKV);
  std::atomic<int> next_head{0};
  pool.run([&](int, int) {
    for (int h; (h = next_head.fetch_add(1, std::memory_order_relaxed)) < NKV;) {
      HeadSelection &hs = head_sel_[h];
      hs.cand_pos.clear();
      hs.cand_score.clear();
      for (int ri = 0; ri < n_ranges; ++ri)
        if (ranges_[ri].h == h)
          for (int i = 0; i < range_n_[ri]; ++i) {
            hs.cand_pos.push_back(range_pos_[(size_t)ri * keep + i]);
            hs.cand_score.push_back(range_score_[(size_t)ri * keep + i]);
          }
      hs.wide.resize(keep);
      hs.chosen.resize(kk);
      int count = select_topk(hs.cand_score.data(), (int)hs.cand_score.size(), K > 0 ? keep : 0, hs.wide.data());
      for (int i = 0; i < count; ++i) hs.wide[i] = hs.cand_pos[hs.wide[i]];
      if (count > K) {
        // Second stage: the select row's exact scores over the candidates' fp16 host rows.
        hs.exact.resize(count);
        for (int i = 0; i < count; ++i) {
          const uint16_t *krow = pages_->seq_k_row(seq_, layer, h, hs.wide[i]);
          float w = 0;
          for (int hq = 0; hq < G; ++hq) {
            const float M = sel_m[(size_t)h * G + hq];
            if (M == -INFINITY) continue;
            const float *qv = &qbuf_[((size_t)h * rows + sel0 + hq) * HD];
            w += std::exp(dot_f16_f32(krow, qv, HD) - M) / (sel_l[(size_t)h * G + hq] * G);
          }
          hs.exact[i] = w;
        }
        count = select_topk(hs.exact.data(), count, K, hs.chosen.data());
        for (int i = 0; i < count; ++i) hs.chosen[i] = hs.wide[hs.chosen[i]];
      } else {
        std::copy(hs.wide.begin(), hs.wide.begin() + count, hs.chosen.begin());
      }
      hs.count = count;
    }
  });
  copies_[layer].clear();
  for (int h = 0; h < NKV; ++h) {
    const HeadSelection &hs = head_sel_[h];
    set_fetched(layer, h, hs.chosen.data(), hs.count);
    for (int i = 0; i < hs.count; ++i) {
      copies_[layer].push_back({pre_k(layer, h, i), pages_->seq_k_row(seq_, layer, h, hs.chosen[i])});
      copies_[layer].push_back({pre_v(layer, h, i), pages_->seq_v_row(seq_, layer, h, hs.chosen[i])});
    }
  }
  fetch_bytes_ += (uint64_t)copies_[layer].size() * HD * sizeof(uint16_t);
  if (!copies_[layer].empty()) fetch_->issue(layer);
}

bool PagedKvCache::track_attention(bool on) {
  if (cfg_.policy != KvPolicy::Specache) return false;
  track_attn_ = on;
  if (on) attn_mass_.assign((size_t)shape_.n_head_kv * shape_.n_ctx, 0.0f);
  return true;
}

int PagedKvCache::attention_mass(float *out, int n) const {
  if (cfg_.policy != KvPolicy::Specache) return -1;
  n = std::max(0, std::min(n, shape_.n_ctx));
  std::fill(out, out + n, 0.0f);
  if (attn_mass_.empty()) return n;
  for (int h = 0; h < shape_.n_head_kv; ++h)
    for (int j = 0; j < n; ++j) out[j] += attn_mass_[(size_t)h * shape_.n_ctx + j];
  return n;
}

// The fp16 piece of KV head h: fetched rows, residual rows, and this pass's
// unkept (speculative) tokens, each visible from its own position on.
void PagedKvCache::fp16_piece(int layer, int h, int ti, int ith, bool select) {
  const int NKV = shape_.n_head_kv, G = shape_.n_head / NKV, HD = shape_.head_dim;
  const int K = cfg_.topk, R = cfg_.residual;
  const int n = pass_.n, n_keep = pass_.n_keep, rows = n * G;
  const int n_fetched = pre_n_[lh(layer, h)], nr = resid_n_[layer], n_new = n - n_keep;
  const int n_all = n_fetched + nr + n_new;
  std::vector<float> &sc = scores_[ith];
  if (sc.size() < (size_t)n_all) sc.resize(n_all);
  auto krow = [&](int i) -> const uint16_t * {
    if (i < n_fetched) return pre_k(layer, h, i);
    if (i < n_fetched + nr) return resid_k(layer, h, i - n_fetched);
    return &new_k_[((size_t)(i - n_fetched - nr) * NKV + h) * HD];
  };
  auto vrow = [&](int i) -> const uint16_t * {
    if (i < n_fetched) return pre_v(layer, h, i);
    if (i < n_fetched + nr) return resid_v(layer, h, i - n_fetched);
    return &new_v_[((size_t)(i - n_fetched - nr) * NKV + h) * HD];
  };
  // Rows in (token, head) order over keys in position order, through full's
  // kernels: when every low-bit position is fetched the output is full's, bit
  // for bit.
  const float scale = 1.0f / std::sqrt((float)HD);
  attn::Worker &w = attn::worker();
  w.reserve(rows, HD);
  for (int r = 0; r < rows; ++r) {
    const int t = r / G, hq = r % G;
    const float *src = q_ + ((size_t)t * shape_.n_head + h * G + hq) * HD;
    for (int c = 0; c < HD; ++c) w.q[(size_t)r * HD + c] = src[c] * scale;
    // Unkept token i is at position pos0 + n_keep + i: row t sees it when n_keep + i <= t.
    w.limit[r] = n_fetched + nr + std::max(0, std::min(n_new, t - n_keep + 1));
  }
  float *acc = &part_acc_[(size_t)ti * rows * HD], *pm = &part_m_[(size_t)ti * rows], *pl = &part_l_[(size_t)ti * rows];
  attn::rows_attend(attn::kernels_for(HD), HD, rows, w.q.data(), w.limit.data(), 0, n_all, krow, vrow, acc, pm, pl, w);
  for (int r = 0; r < rows; ++r) attn::finish_row(acc + (size_t)r * HD, pl[r], acc + (size_t)r * HD, HD);
  if (!select) return;
  // exp(score - max) of the select row's fetched and residual keys, for the top-k choice.
  const int n_scored = n_fetched + (nr == R ? R : 0);
  if (sc.size() < (size_t)n_scored) sc.resize(n_scored);
  for (int hq = 0; hq < G; ++hq) {
    const int r = pass_.select_row * G + hq;
    if (pm[r] == -INFINITY) continue;
    const float *qv = &w.q[(size_t)r * HD];
    for (int i = 0; i < n_scored; ++i) sc[i] = std::exp(dot_f16_f32(krow(i), qv, HD) - pm[r]);
    std::memcpy(&fetched_e_[((size_t)h * G + hq) * std::max(1, K)], sc.data(), n_fetched * sizeof(float));
    if (nr == R) std::memcpy(&resid_e_[((size_t)h * G + hq) * R], sc.data() + n_fetched, R * sizeof(float));
  }
}

}  // namespace paged
}  // namespace specode

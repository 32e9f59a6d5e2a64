#include "specache.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <functional>
#include <vector>

#include "quant.h"
#include "specache_impl.h"

namespace specode {

const char *kv_policy_name(KvPolicy policy) {
  switch (policy) {
    case KvPolicy::Full: return "full";
    case KvPolicy::OffloadAll: return "offload-all";
    case KvPolicy::Specache: return "specache";
    case KvPolicy::SpecacheSync: return "specache-sync";
  }
  return "?";
}

int select_topk(const float *score, int n, int k, int32_t *out) {
  if (k <= 0 || n <= 0) return 0;
  if (n <= k) {
    for (int i = 0; i < n; ++i) out[i] = i;
    return n;
  }
  if ((int64_t)k * 16 > n) {
    // A wide choice (rerank's r·k of a range): the k-th largest score t by a linear
    // selection, then one pass in position order keeps every score above t and the
    // first (lowest-position) ties at t until k are kept. No heap, no sort.
    thread_local std::vector<float> tmp;
    tmp.assign(score, score + n);
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float t = tmp[k - 1];
    int above = 0;
    for (int i = 0; i < n; ++i) above += score[i] > t;
    int ties = k - above, c = 0;
    for (int i = 0; i < n && c < k; ++i)
      if (score[i] > t || (score[i] == t && ties-- > 0)) out[c++] = i;
    return c;
  }
  struct Entry {
    float score;
    int32_t pos;
  };
  // stronger(a, b): a ranks before b. As a heap "less", the root is the
  // weakest entry kept so far.
  auto stronger = [](const Entry &a, const Entry &b) {
    return a.score > b.score || (a.score == b.score && a.pos < b.pos);
  };
  thread_local std::vector<Entry> heap;
  heap.resize(k);
  for (int i = 0; i < k; ++i) heap[i] = {score[i], i};
  std::make_heap(heap.begin(), heap.end(), stronger);
  for (int i = k; i < n; ++i) {
    if (!(score[i] > heap.front().score)) continue;  // cannot beat the weakest (ties keep the lower position)
    std::pop_heap(heap.begin(), heap.end(), stronger);
    heap.back() = {score[i], i};
    std::push_heap(heap.begin(), heap.end(), stronger);
  }
  for (int i = 0; i < k; ++i) out[i] = heap[i].pos;
  std::sort(out, out + k);
  return k;
}
namespace paged {

PagedKvCache::PagedKvCache(const KvShape &shape, const PagedKvConfig &cfg) : cfg_(cfg) {
  shape_ = shape;
  assert(cfg.policy != KvPolicy::Full);
  assert(cfg.residual % cfg.group == 0 && cfg.residual > 0 && cfg.topk >= 0);
  const int P = cfg.page_tokens;
  const int seq_pages = (shape.n_ctx + P - 1) / P;
  // One sequence's pages, one spare for copy-on-write, and room to keep a
  // quarter as many cached pages for prefix reuse.
  KvPagesConfig pc{shape.n_layer, shape.n_head_kv, shape.head_dim, P, seq_pages + 1 + std::max(2, seq_pages / 4)};
  pages_ = std::make_unique<KvPages>(pc);
  if (!cfg.disk_dir.empty()) {
    disk_ = std::make_unique<KvDisk>(KvDiskConfig{cfg.disk_dir, cfg.model_id, cfg.disk_max_bytes, shape.n_layer,
                                                  shape.n_head_kv, shape.head_dim, P});
    pages_->set_disk(disk_.get());
  }
  seq_ = pages_->seq_create();
  words_ = (shape.n_ctx + 63) / 64;
  ensure_threads(std::max(1, cfg.n_threads));
  if (lowbit_policy()) {
    const size_t LH = (size_t)shape.n_layer * shape.n_head_kv, HD = shape.head_dim;
    lowbit_.resize(LH);
    for (auto &s : lowbit_) s.init(LowbitConfig{shape.head_dim, cfg.bits, cfg.group, lowbit_debias_default(), cfg.sym_values, cfg.param_bits});
    n_lowbit_.assign(shape.n_layer, 0);
    resid_n_.assign(shape.n_layer, 0);
    resid_k_.resize(LH * cfg.residual * HD);
    resid_v_.resize(resid_k_.size());
    pre_k_.resize(LH * cfg.topk * HD);
    pre_v_.resize(pre_k_.size());
    pre_pos_.resize(LH * cfg.topk);
    pre_n_.assign(LH, 0);
    pre_bits_.assign(LH * words_, 0);
    flush_k_.resize((size_t)cfg.residual * HD);
    flush_v_.resize(flush_k_.size());
    copies_.resize(shape.n_layer);
  }
  if (cfg.policy == KvPolicy::Specache)
    fetch_ = std::make_unique<FetchThread>(shape.n_layer, [this](int layer) { run_fetch(layer); });
}

void PagedKvCache::ensure_threads(int n) {
  if ((int)scores_.size() >= n) return;
  scores_.resize(n);
  for (auto &s : scores_) s.resize(shape_.n_ctx);
  lowbit_scratch_.resize(n);
  picks_.resize(n);
}

uint64_t PagedKvCache::bytes() const {
  KvMetrics m;
  metrics(&m);
  return m.host_bytes + m.device_lowbit_bytes + m.device_residual_bytes + m.device_prefetch_bytes + m.device_full_bytes;
}

void PagedKvCache::metrics(KvMetrics *out) const {
  *out = KvMetrics{};
  const uint64_t row = (uint64_t)shape_.head_dim * 2;  // one fp16 row
  const uint64_t LH = (uint64_t)shape_.n_layer * shape_.n_head_kv;
  out->host_bytes = pages_->bytes_allocated();
  out->n_tokens = n_tokens();
  if (lowbit_policy()) {
    for (const auto &s : lowbit_) out->device_lowbit_bytes += s.bytes();
    out->device_residual_bytes = LH * cfg_.residual * row * 2;
    out->device_prefetch_bytes = LH * cfg_.topk * row * 2;
    out->n_lowbit_tokens = n_lowbit_.empty() ? 0 : n_lowbit_[0];
    out->n_residual_tokens = resid_n_.empty() ? 0 : resid_n_[0];
    out->lowbit_param_bits = cfg_.param_bits;
  } else {
    out->device_full_bytes = staged_rows_ * shape_.n_head_kv * row * 2;
  }
  out->fetch_bytes_total = fetch_bytes_;
  out->stall_ns_total = stall_ns_;
  out->overlap_samples = overlap_samples_;
  out->overlap_sum = overlap_sum_;
  out->mass_recall_sum = mass_recall_sum_;
  out->prefix_reused_tokens = reused_;
  out->host_pages_referenced = (uint64_t)pages_->pages_referenced();
  out->host_pages_cached = (uint64_t)pages_->pages_cached();
  if (disk_) {
    out->disk_pages_loaded = disk_->loaded();
    out->disk_pages_saved = disk_->saved();
    out->disk_pages_rejected = disk_->rejected();
    out->disk_bytes = disk_->bytes_on_disk();
  }
}

void PagedKvCache::reset_metrics() {
  fetch_bytes_ = stall_ns_ = overlap_samples_ = reused_ = 0;
  overlap_sum_ = mass_recall_sum_ = 0;
}

bool PagedKvCache::begin_pass(const KvPass &pass) {
  pass_ = pass;
  // Prefill and pre-decode attend without fetched rows; a prefetch set from
  // before is stale then.
  if (lowbit_policy() && (!pass.decode || pass.n_keep == 0)) drop_fetched();
  if (pass.n_keep > 0 && !pages_->seq_append(seq_, pass.tokens, pass.n_keep)) return false;
  if (lowbit_policy()) {
    const size_t unkept = (size_t)(pass.n - pass.n_keep) * shape_.n_head_kv * shape_.head_dim;
    if (new_k_.size() < unkept) {
      new_k_.resize(unkept);
      new_v_.resize(unkept);
    }
  }
  return true;
}

void PagedKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  assert(pos0 == pass_.pos0 && n == pass_.n);
  const int NKV = shape_.n_head_kv, HD = shape_.head_dim, KV = NKV * HD;
  const int kept = std::min(n, pass_.n_keep);
  for (int t = 0; t < kept; ++t) {
    for (int h = 0; h < NKV; ++h) {
      f32_to_f16_row(k + (size_t)t * KV + h * HD, pages_->seq_k_row(seq_, layer, h, pos0 + t), HD);
      f32_to_f16_row(v + (size_t)t * KV + h * HD, pages_->seq_v_row(seq_, layer, h, pos0 + t), HD);
    }
    if (lowbit_policy()) append_residual(layer, pos0 + t);
  }
  if (lowbit_policy())
    for (int t = kept; t < n; ++t)
      for (int h = 0; h < NKV; ++h) {
        const size_t at = ((size_t)(t - kept) * NKV + h) * HD;
        f32_to_f16_row(k + (size_t)t * KV + h * HD, &new_k_[at], HD);
        f32_to_f16_row(v + (size_t)t * KV + h * HD, &new_v_[at], HD);
      }
}

void PagedKvCache::append_residual(int layer, int pos) {
  if (resid_n_[layer] == cfg_.residual) flush_residual(layer);
  const size_t bytes = (size_t)shape_.head_dim * sizeof(uint16_t);
  for (int h = 0; h < shape_.n_head_kv; ++h) {
    std::memcpy(resid_k(layer, h, resid_n_[layer]), pages_->seq_k_row(seq_, layer, h, pos), bytes);
    std::memcpy(resid_v(layer, h, resid_n_[layer]), pages_->seq_v_row(seq_, layer, h, pos), bytes);
  }
  resid_n_[layer]++;
}

void PagedKvCache::flush_residual(int layer) {
  const int R = cfg_.residual, HD = shape_.head_dim;
  assert(resid_n_[layer] == R);
  for (int h = 0; h < shape_.n_head_kv; ++h) {
    for (int i = 0; i < R; ++i)
      for (int c = 0; c < HD; ++c) {
        flush_k_[(size_t)i * HD + c] = fp16_to_fp32(resid_k(layer, h, i)[c]);
        flush_v_[(size_t)i * HD + c] = fp16_to_fp32(resid_v(layer, h, i)[c]);
      }
    lowbit(layer, h).append(flush_k_.data(), flush_v_.data(), R);
  }
  n_lowbit_[layer] += R;
  resid_n_[layer] = 0;
}

// Makes the low-bit copy and residual of every layer hold the first n host
// tokens under the residual invariant, reading rows from the host pages.
void PagedKvCache::rebuild_device(int n) {
  const int R = cfg_.residual, HD = shape_.head_dim;
  const int target = n >= 1 ? (n - 1) / R * R : 0;
  for (int l = 0; l < shape_.n_layer; ++l) {
    for (int h = 0; h < shape_.n_head_kv; ++h) {
      LowbitStream &s = lowbit(l, h);
      if (s.size() > target) s.truncate(target);
      while (s.size() < target) {
        const int from = s.size();
        for (int i = 0; i < R; ++i)
          for (int c = 0; c < HD; ++c) {
            flush_k_[(size_t)i * HD + c] = fp16_to_fp32(pages_->seq_k_row(seq_, l, h, from + i)[c]);
            flush_v_[(size_t)i * HD + c] = fp16_to_fp32(pages_->seq_v_row(seq_, l, h, from + i)[c]);
          }
        s.append(flush_k_.data(), flush_v_.data(), R);
      }
      for (int pos = target; pos < n; ++pos) {
        std::memcpy(resid_k(l, h, pos - target), pages_->seq_k_row(seq_, l, h, pos), HD * sizeof(uint16_t));
        std::memcpy(resid_v(l, h, pos - target), pages_->seq_v_row(seq_, l, h, pos), HD * sizeof(uint16_t));
      }
    }
    n_lowbit_[l] = target;
    resid_n_[l] = n - target;
  }
}

void PagedKvCache::set_fetched(int layer, int h, const int32_t *pos, int count) {
  uint64_t *bits = pre_bits(layer, h);
  int32_t *held = pre_pos(layer, h);
  int &n_held = pre_n_[lh(layer, h)];
  for (int i = 0; i < n_held; ++i) bits[held[i] >> 6] &= ~(1ull << (held[i] & 63));
  for (int i = 0; i < count; ++i) {
    held[i] = pos[i];
    bits[pos[i] >> 6] |= 1ull << (pos[i] & 63);
  }
  n_held = count;
}

void PagedKvCache::drop_fetched() {
  if (fetch_) fetch_->wait_all();
  for (int l = 0; l < shape_.n_layer; ++l)
    for (int h = 0; h < shape_.n_head_kv; ++h)
      if (pre_n_[lh(l, h)]) set_fetched(l, h, nullptr, 0);
}

void PagedKvCache::run_fetch(int layer) {
  const size_t bytes = (size_t)shape_.head_dim * sizeof(uint16_t);
  for (const RowCopy &c : copies_[layer]) std::memcpy(c.dst, c.src, bytes);
  if (cfg_.fetch_delay_ns > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(cfg_.fetch_delay_ns));
}

bool PagedKvCache::read(int layer, int pos0, int n, float *k, float *v) const {
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      const uint16_t *kr = pages_->seq_k_row(seq_, layer, h, pos0 + t), *vr = pages_->seq_v_row(seq_, layer, h, pos0 + t);
      const size_t to = ((size_t)t * nkv + h) * hd;
      for (int c = 0; c < hd; ++c) {
        k[to + c] = fp16_to_fp32(kr[c]);
        v[to + c] = fp16_to_fp32(vr[c]);
      }
    }
  return true;
}

void PagedKvCache::truncate(int n_keep) {
  if (n_keep >= n_tokens()) return;
  if (lowbit_policy()) drop_fetched();
  bool ok = pages_->seq_truncate(seq_, n_keep);
  assert(ok);  // the pool keeps a spare page for the copy
  (void)ok;
  if (lowbit_policy()) rebuild_device(n_keep);
}

int PagedKvCache::adopt_cached(const int32_t *next, int n) {
  if (n <= 0) return 0;
  if (lowbit_policy()) drop_fetched();
  const int added = pages_->seq_adopt_cached(seq_, next, n);
  if (added > 0 && lowbit_policy()) rebuild_device(n_tokens());
  reused_ += added;
  return added;
}

void PagedKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  ensure_threads(pool.size());
  if (!pass_.decode) return attend_host_exact(layer, pos0, n, q, out, pool);
  if (cfg_.policy == KvPolicy::OffloadAll) return attend_offload_all(layer, pos0, n, q, out, pool);
  attend_mixed(layer, pos0, n, q, out, pool);
}

void PagedKvCache::attend_host_exact(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  assert(pass_.n_keep == n);
  const PageId *table = pages_->page_table(seq_).data();
  const int P = cfg_.page_tokens;
  KvPages &pg = *pages_;
  // Exact attention through full's kernels: the same rows give the same bits.
  attn::causal_attention(
      pool, shape_, pos0, n, q, out,
      [&](int g, int j) { return (const uint16_t *)pg.k_row(table[j / P], layer, g, j % P); },
      [&](int g, int j) { return (const uint16_t *)pg.v_row(table[j / P], layer, g, j % P); });
}

void PagedKvCache::attend_offload_all(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  assert(pass_.n_keep == n);
  const int NKV = shape_.n_head_kv, HD = shape_.head_dim, P = cfg_.page_tokens, ctx = shape_.n_ctx;
  const int rows = pos0 + n;
  if (stage_k_.empty()) {
    stage_k_.resize((size_t)NKV * ctx * HD);
    stage_v_.resize(stage_k_.size());
  }
  // The naive baseline: every row of this layer crosses to the device now,
  // and the layer waits for it.
  const auto t0 = Clock::now();
  const PageId *table = pages_->page_table(seq_).data();
  for (int h = 0; h < NKV; ++h)
    for (int first = 0; first < rows; first += P) {
      const int count = std::min(P, rows - first);
      const size_t bytes = (size_t)count * HD * sizeof(uint16_t), at = ((size_t)h * ctx + first) * HD;
      std::memcpy(&stage_k_[at], pages_->k_row(table[first / P], layer, h, 0), bytes);
      std::memcpy(&stage_v_[at], pages_->v_row(table[first / P], layer, h, 0), bytes);
    }
  stall_ns_ += ns_since(t0);
  fetch_bytes_ += (uint64_t)rows * NKV * HD * sizeof(uint16_t) * 2;
  staged_rows_ = rows;
  const uint16_t *sk = stage_k_.data(), *sv = stage_v_.data();
  attn::causal_attention(
      pool, shape_, pos0, n, q, out, [&](int g, int j) { return sk + ((size_t)g * ctx + j) * HD; },
      [&](int g, int j) { return sv + ((size_t)g * ctx + j) * HD; });
}

}  // namespace paged

std::unique_ptr<KvCache> make_paged_kv_cache(const KvShape &shape, const PagedKvConfig &cfg) {
  return std::make_unique<paged::PagedKvCache>(shape, cfg);
}

}  // namespace specode

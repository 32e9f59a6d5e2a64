#include "specache.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "kv_pages.h"
#include "lowbit.h"
#include "ops.h"
#include "quant.h"

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
  struct Entry {
    float score;
    int32_t pos;
  };
  // stronger(a, b): a ranks before b. As a heap "less", the root is the
  // weakest entry kept so far.
  auto stronger = [](const Entry &a, const Entry &b) {
    return a.score > b.score || (a.score == b.score && a.pos < b.pos);
  };
  std::vector<Entry> heap(k);
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

namespace {

using Clock = std::chrono::steady_clock;

uint64_t ns_since(Clock::time_point t0) {
  return (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
}

// A dedicated thread that runs the fetch of one layer at a time, in issue
// order. wait(layer) returns once every fetch issued for that layer is done.
class FetchThread {
 public:
  FetchThread(int n_layer, std::function<void(int)> job)
      : job_(std::move(job)), issued_(n_layer, 0), done_(new std::atomic<uint64_t>[n_layer]) {
    for (int l = 0; l < n_layer; ++l) done_[l].store(0);
    n_layer_ = n_layer;
    thread_ = std::thread([this] { loop(); });
  }
  ~FetchThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void issue(int layer) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++issued_[layer];
      queue_.push_back(layer);
    }
    wake_.notify_one();
  }
  // Nanoseconds spent waiting (0 when the fetch was already done).
  uint64_t wait(int layer) {
    if (done_[layer].load(std::memory_order_acquire) == issued_[layer]) return 0;
    const auto t0 = Clock::now();
    for (int spin = 0; spin < 2000 && done_[layer].load(std::memory_order_acquire) != issued_[layer]; ++spin)
      std::this_thread::yield();
    if (done_[layer].load(std::memory_order_acquire) != issued_[layer]) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_cv_.wait(lock, [&] { return done_[layer].load(std::memory_order_acquire) == issued_[layer]; });
    }
    return ns_since(t0);
  }
  void wait_all() {
    for (int l = 0; l < n_layer_; ++l) wait(l);
  }

 private:
  void loop() {
    for (;;) {
      int layer;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and nothing left
        layer = queue_.front();
        queue_.pop_front();
      }
      job_(layer);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done_[layer].fetch_add(1, std::memory_order_release);
      }
      done_cv_.notify_all();
    }
  }

  std::function<void(int)> job_;
  int n_layer_ = 0;
  std::vector<uint64_t> issued_;                     // [n_layer], main thread only
  std::unique_ptr<std::atomic<uint64_t>[]> done_;    // [n_layer]
  std::deque<int> queue_;
  std::mutex mutex_;
  std::condition_variable wake_, done_cv_;
  bool stop_ = false;
  std::thread thread_;
};

// Exact causal attention of n query tokens at positions pos0.. over fp16
// rows [0, pos0 + t]: the same arithmetic, in the same order, as FullKvCache
// with fp16 rows, so both give bit-identical outputs. krow(g, j), vrow(g, j):
// [head_dim] fp16 rows of KV head g at position j.
template <typename KRow, typename VRow>
void attend_exact_f16(ThreadPool &pool, std::vector<std::vector<float>> &scratch, const KvShape &sh, int pos0, int n,
                      const float *q, float *out, KRow krow, VRow vrow) {
  const int hd = sh.head_dim, nh = sh.n_head, group = sh.n_head / sh.n_head_kv;
  const float scale = 1.0f / std::sqrt((float)hd);
  const int n_tasks = n * nh;
  std::atomic<int> next{0};
  pool.run([&](int ith, int) {
    float *scores = scratch[ith].data();
    for (int task; (task = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int t = task / nh, h = task % nh, g = h / group;
      const int n_pos = pos0 + t + 1;
      const float *qh = q + ((size_t)t * nh + h) * hd;
      float *oh = out + ((size_t)t * nh + h) * hd;
      float mx = -INFINITY;
      for (int j = 0; j < n_pos; ++j) {
        float s = dot_f16_f32(krow(g, j), qh, hd) * scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
      }
      float sum = 0;
      for (int j = 0; j < n_pos; ++j) {
        float e = std::exp(scores[j] - mx);
        scores[j] = e;
        sum += e;
      }
      const float inv = 1.0f / sum;
      std::memset(oh, 0, hd * sizeof(float));
      for (int j = 0; j < n_pos; ++j) axpy_f16(scores[j] * inv, vrow(g, j), oh, hd);
    }
  });
}

struct RowCopy {
  uint16_t *dst;
  const uint16_t *src;
};

class PagedKvCache final : public KvCache {
 public:
  PagedKvCache(const KvShape &shape, const PagedKvConfig &cfg);
  ~PagedKvCache() override { fetch_.reset(); }

  const char *policy() const override { return kv_policy_name(cfg_.policy); }
  bool begin_pass(const KvPass &pass) override;
  void end_pass() override {}
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int n_keep) override;
  uint64_t bytes() const override;
  int adopt_cached(const int32_t *next, int n) override;
  int cached_prefix(const int32_t *tokens, int n) const override { return pages_->cached_prefix(tokens, n); }
  void metrics(KvMetrics *out) const override;
  void reset_metrics() override;

 private:
  bool lowbit_policy() const { return cfg_.policy == KvPolicy::Specache || cfg_.policy == KvPolicy::SpecacheSync; }
  int n_tokens() const { return pages_->seq_len(seq_); }
  size_t lh(int layer, int h) const { return (size_t)layer * shape_.n_head_kv + h; }
  LowbitStream &lowbit(int layer, int h) { return lowbit_[lh(layer, h)]; }
  uint16_t *resid_k(int layer, int h, int i) { return &resid_k_[(lh(layer, h) * cfg_.residual + i) * shape_.head_dim]; }
  uint16_t *resid_v(int layer, int h, int i) { return &resid_v_[(lh(layer, h) * cfg_.residual + i) * shape_.head_dim]; }
  uint16_t *pre_k(int layer, int h, int i) { return &pre_k_[(lh(layer, h) * cfg_.topk + i) * shape_.head_dim]; }
  uint16_t *pre_v(int layer, int h, int i) { return &pre_v_[(lh(layer, h) * cfg_.topk + i) * shape_.head_dim]; }
  int32_t *pre_pos(int layer, int h) { return &pre_pos_[lh(layer, h) * cfg_.topk]; }
  uint64_t *pre_bits(int layer, int h) { return &pre_bits_[lh(layer, h) * words_]; }

  void ensure_threads(int n);
  void append_residual(int layer, int pos);
  void flush_residual(int layer);
  void rebuild_device(int n);
  void drop_fetched();
  void set_fetched(int layer, int h, const int32_t *pos, int count);
  void run_fetch(int layer);

  void attend_host_exact(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool);
  void attend_offload_all(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool);
  void attend_mixed(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool);
  void fp16_piece(int layer, int h, int task, int ith, bool select);
  void exact_probs(int layer, int h, int n_pos, float *avg, float *scratch);
  void sync_fetch_true_topk(int layer, ThreadPool &pool);
  void measure_overlap(int layer, ThreadPool &pool);
  void choose_and_fetch(int layer);

  PagedKvConfig cfg_;
  std::unique_ptr<KvPages> pages_;
  int seq_ = 0;
  KvPass pass_;
  int words_ = 0;  // 64-bit words of a position bitset

  // Per-thread scratch: [n_threads][n_ctx] scores, low-bit kernel space.
  std::vector<std::vector<float>> scores_;
  std::vector<LowbitScratch> lowbit_scratch_;

  // offload-all staging, one layer: [n_head_kv][n_ctx][head_dim] fp16.
  std::vector<uint16_t> stage_k_, stage_v_;
  uint64_t staged_rows_ = 0;  // rows staged by the last step (per layer)

  // specache / specache-sync "device" tier.
  std::vector<LowbitStream> lowbit_;       // [n_layer][n_head_kv]
  std::vector<int> n_lowbit_;              // [n_layer] tokens in the low-bit copy
  std::vector<int> resid_n_;               // [n_layer] tokens in the residual
  std::vector<uint16_t> resid_k_, resid_v_;  // [n_layer][n_head_kv][R][head_dim] fp16
  std::vector<uint16_t> pre_k_, pre_v_;      // [n_layer][n_head_kv][topk][head_dim] fp16 prefetch buffers
  std::vector<int32_t> pre_pos_;             // [n_layer][n_head_kv][topk] positions they hold
  std::vector<int> pre_n_;                   // [n_layer][n_head_kv] rows they hold
  std::vector<uint64_t> pre_bits_;           // [n_layer][n_head_kv][words] the same positions as a bitset
  std::vector<uint16_t> new_k_, new_v_;      // [n - n_keep][n_head_kv][head_dim] fp16: this pass's unkept tokens
  std::vector<float> flush_k_, flush_v_;     // [R][head_dim] fp32 rows being quantized
  std::vector<std::vector<RowCopy>> copies_;  // [n_layer] the fetch thread's work for each layer
  std::unique_ptr<FetchThread> fetch_;

  // attend_mixed state for one layer.
  struct Task {
    int h, t0, t1;
    bool lowbit;
  };
  std::vector<Task> tasks_;
  const float *q_ = nullptr;                 // [n][n_head][head_dim] this layer's queries
  std::vector<float> qbuf_;                  // [n_head_kv][rows][head_dim] queries * 1/sqrt(d), row = t*G + hq
  std::vector<float> part_m_, part_l_, part_acc_;  // [task][rows](+[head_dim])
  std::vector<float> sel_e_;                 // [n_head_kv][G][n_ctx] select row's exp(score - m_task), low-bit part
  std::vector<float> fetched_e_, resid_e_;   // [n_head_kv][G][topk], [n_head_kv][G][R]: the same for fp16 rows
  std::vector<float> avg_;                   // [n_ctx] mean attention over the group (selection)
  std::vector<int32_t> chosen_;              // [topk]

  // Totals.
  uint64_t fetch_bytes_ = 0, stall_ns_ = 0, overlap_samples_ = 0, reused_ = 0;
  double overlap_sum_ = 0, mass_recall_sum_ = 0;
};

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
  seq_ = pages_->seq_create();
  words_ = (shape.n_ctx + 63) / 64;
  ensure_threads(std::max(1, cfg.n_threads));
  if (lowbit_policy()) {
    const size_t LH = (size_t)shape.n_layer * shape.n_head_kv, HD = shape.head_dim;
    lowbit_.resize(LH);
    for (auto &s : lowbit_) s.init(LowbitConfig{shape.head_dim, cfg.bits, cfg.group});
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
    chosen_.resize(std::max(1, cfg.topk));
  }
  if (cfg.policy == KvPolicy::Specache)
    fetch_ = std::make_unique<FetchThread>(shape.n_layer, [this](int layer) { run_fetch(layer); });
}

void PagedKvCache::ensure_threads(int n) {
  if ((int)scores_.size() >= n) return;
  scores_.resize(n);
  for (auto &s : scores_) s.resize(shape_.n_ctx);
  lowbit_scratch_.resize(n);
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
  attend_exact_f16(
      pool, scores_, shape_, pos0, n, q, out,
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
  attend_exact_f16(
      pool, scores_, shape_, pos0, n, q, out, [&](int g, int j) { return sk + ((size_t)g * ctx + j) * HD; },
      [&](int g, int j) { return sv + ((size_t)g * ctx + j) * HD; });
}

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
  // quantizes it).
  const int n_cand = nq + (nr == R ? R : 0);
  avg_.resize(std::max<size_t>(avg_.size(), (size_t)std::max(1, n_cand)));
  copies_[layer].clear();
  ti0 = 0;
  for (int h = 0; h < NKV; ++h) {
    std::fill(avg_.begin(), avg_.begin() + n_cand, 0.0f);
    for (int ti = ti0; ti < n_tasks && tasks_[ti].h == h; ++ti) {
      const Task &task = tasks_[ti];
      for (int hq = 0; hq < G; ++hq) {
        const float mt = part_m_[(size_t)ti * rows + sel0 + hq], M = sel_m[(size_t)h * G + hq];
        if (mt == -INFINITY) continue;
        const float f = std::exp(mt - M) / (sel_l[(size_t)h * G + hq] * G);
        if (task.lowbit) {
          const float *e = &sel_e_[((size_t)h * G + hq) * shape_.n_ctx];
          for (int j = task.t0; j < task.t1; ++j) avg_[j] += f * e[j];
        } else {
          const float *fe = &fetched_e_[((size_t)h * G + hq) * std::max(1, K)];
          const int32_t *held = pre_pos(layer, h);
          for (int i = 0; i < pre_n_[lh(layer, h)]; ++i) avg_[held[i]] += f * fe[i];
          if (nr == R) {
            const float *re = &resid_e_[((size_t)h * G + hq) * R];
            for (int i = 0; i < R; ++i) avg_[nq + i] += f * re[i];
          }
        }
      }
    }
    while (ti0 < n_tasks && tasks_[ti0].h == h) ++ti0;
    const int count = select_topk(avg_.data(), n_cand, K, chosen_.data());
    set_fetched(layer, h, chosen_.data(), count);
    for (int i = 0; i < count; ++i) {
      copies_[layer].push_back({pre_k(layer, h, i), pages_->seq_k_row(seq_, layer, h, chosen_[i])});
      copies_[layer].push_back({pre_v(layer, h, i), pages_->seq_v_row(seq_, layer, h, chosen_[i])});
    }
  }
  fetch_bytes_ += (uint64_t)copies_[layer].size() * HD * sizeof(uint16_t);
  if (!copies_[layer].empty()) fetch_->issue(layer);
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
  const float scale = 1.0f / std::sqrt((float)HD);
  for (int r = 0; r < rows; ++r) {
    const int t = r / G, hq = r % G;
    // Unkept token i is at position pos0 + n_keep + i: row t sees it when n_keep + i <= t.
    const int visible = n_fetched + nr + std::max(0, std::min(n_new, t - n_keep + 1));
    // Rows are in position order and the arithmetic is FullKvCache's, so
    // when every low-bit position is fetched the output is full's, bit for bit.
    const float *qv = q_ + ((size_t)t * shape_.n_head + h * G + hq) * HD;
    float mx = -INFINITY;
    for (int i = 0; i < visible; ++i) {
      float s = dot_f16_f32(krow(i), qv, HD) * scale;
      sc[i] = s;
      mx = s > mx ? s : mx;
    }
    float sum = 0;
    for (int i = 0; i < visible; ++i) {
      float e = std::exp(sc[i] - mx);
      sc[i] = e;
      sum += e;
    }
    float *acc = &part_acc_[((size_t)ti * rows + r) * HD];
    std::memset(acc, 0, HD * sizeof(float));
    const float inv = 1.0f / sum;
    for (int i = 0; i < visible; ++i) axpy_f16(sc[i] * inv, vrow(i), acc, HD);
    part_m_[(size_t)ti * rows + r] = visible ? mx : -INFINITY;
    part_l_[(size_t)ti * rows + r] = sum;
    if (select && t == pass_.select_row) {
      std::memcpy(&fetched_e_[((size_t)h * G + hq) * std::max(1, K)], sc.data(), n_fetched * sizeof(float));
      if (nr == R) std::memcpy(&resid_e_[((size_t)h * G + hq) * R], sc.data() + n_fetched, R * sizeof(float));
    }
  }
}

}  // namespace

std::unique_ptr<KvCache> make_paged_kv_cache(const KvShape &shape, const PagedKvConfig &cfg) {
  return std::make_unique<PagedKvCache>(shape, cfg);
}

}  // namespace specode

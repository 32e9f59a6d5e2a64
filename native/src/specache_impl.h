// specache_impl.h — internal to specache.cpp and specache_attend.cpp: the
// paged KV cache class behind make_paged_kv_cache() and the fetch thread that
// stands in for an async copy stream.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "attention.h"
#include "kv_cache.h"
#include "kv_pages.h"
#include "lowbit.h"
#include "ops.h"
#include "kv_disk.h"
#include "specache.h"

namespace specode {
namespace paged {

using Clock = std::chrono::steady_clock;

inline uint64_t ns_since(Clock::time_point t0) {
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
  // Pages that filled during a prefill pass of at least a page of tokens (the repo head, a
  // recomputed prompt tail) go to the disk tier; pages filled by generation steps or
  // draft checks do not (their content is this request's output, not a reusable prefix).
  void end_pass() override {
    if (pass_.n_keep >= cfg_.page_tokens && !pass_.decode) pages_->persist();
    else pages_->forget_unsaved();
  }
  void end_failed_pass() override { pages_->forget_unsaved(); }
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int n_keep) override;
  bool read(int layer, int pos0, int n, float *k, float *v) const override;
  uint64_t bytes() const override;
  int adopt_cached(const int32_t *next, int n) override;
  int cached_prefix(const int32_t *tokens, int n) const override { return pages_->cached_prefix(tokens, n); }
  void metrics(KvMetrics *out) const override;
  void reset_metrics() override;
  // specache: the speculative query's attention over the low-bit candidates,
  // the same probabilities its top-k choice reads (the newest residual and
  // this pass's tokens are not included).
  bool track_attention(bool on) override;
  int attention_mass(float *out, int n) const override;

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
  std::unique_ptr<KvDisk> disk_;  // before pages_: pages_ points at it
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
  std::vector<float> avg_;                   // [n_head_kv][candidates] mean attention over the group (selection)
  struct Range {
    int h, t0, t1, task;                     // positions [t0, t1) of KV head h; task: their low-bit task (or the fp16 one)
  };
  std::vector<Range> ranges_;
  std::vector<int32_t> range_pos_;           // [range][topk] each range's own top-k positions (ascending)
  std::vector<float> range_score_;           // [range][topk] and their mean probabilities
  std::vector<int> range_n_;
  std::vector<std::vector<int32_t>> picks_;  // [thread][topk]
  bool track_attn_ = false;
  std::vector<float> attn_mass_;             // [n_head_kv][n_ctx] the read-out's sums (track_attention)
  struct HeadSelection {                     // one KV head's choice of rows (attend_mixed)
    std::vector<int32_t> cand_pos;           // the ranges' candidates, in position order
    std::vector<float> cand_score;
    std::vector<int32_t> wide;               // [rerank * topk] the first stage's choice (positions, ascending)
    std::vector<float> exact;                // their exact mean probabilities (rerank > 1)
    std::vector<int32_t> chosen;             // [topk] the rows to fetch
    int count = 0;
  };
  std::vector<HeadSelection> head_sel_;

  // Totals.
  uint64_t fetch_bytes_ = 0, stall_ns_ = 0, overlap_samples_ = 0, reused_ = 0;
  double overlap_sum_ = 0, mass_recall_sum_ = 0;
};

}  // namespace paged
}  // namespace specode

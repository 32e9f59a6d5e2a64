// kv_cache.h — the KV policy interface the forward pass talks to, and the
// `full` policy (every K/V row resident, fp16 or fp32: the exactness reference).
//
// The forward pass hands each layer's new rotated keys and values to store(),
// then asks attend() for the attention output of its queries. Policies differ
// in where rows live and which precision attention reads (see DESIGN.md).
#pragma once

#include <cstdint>
#include <vector>

#include "threadpool.h"

namespace specode {

// What one forward pass is; the context tells the policy before layer 0.
struct KvPass {
  int pos0 = 0;                     // position of the first token
  int n = 0;                        // tokens (query rows) in the pass
  int n_keep = 0;                   // the first n_keep tokens' K/V are appended to the cache; the
                                    // rest are speculative: attended, then discarded
  const int32_t *tokens = nullptr;  // [n] token ids (paged policies hash the kept ones)
  bool decode = false;              // a generation step: a policy may attend approximately and
                                    // fetch; false: prefill, exact attention
  int select_row = -1;              // the token whose attention row chooses the rows to fetch for
                                    // the next step (SpeCache); -1: none
};

// What a policy holds and moves, for specode_context_metrics(). "Device"
// bytes are what the accelerator would hold (the CPU backend keeps them in
// RAM and counts them the same way).
struct KvMetrics {
  uint64_t device_lowbit_bytes = 0;    // low-bit copy: codes + fp16 scales/zeros
  uint64_t device_residual_bytes = 0;  // fp16 residual window (allocated)
  uint64_t device_prefetch_bytes = 0;  // fp16 prefetch buffers (allocated)
  uint64_t device_full_bytes = 0;      // full-precision rows on device (full: the whole cache;
                                       // offload-all: the rows staged for one layer)
  uint64_t host_bytes = 0;             // host pages allocated (in use and cached)
  uint64_t n_tokens = 0;               // tokens held
  uint64_t n_lowbit_tokens = 0;        // of which in the low-bit copy (per layer)
  uint64_t n_residual_tokens = 0;      // of which in the fp16 residual (per layer)
  uint64_t fetch_bytes_total = 0;      // host -> device bytes copied by decode steps
  uint64_t fetch_bytes_last = 0;       // ... by the last decode step
  uint64_t stall_ns_total = 0;         // time the forward pass waited on fetches
  uint64_t stall_ns_last = 0;          // ... in the last decode step
  uint64_t overlap_samples = 0;        // (layer, kv head) pairs measured (measure mode)
  double overlap_sum = 0;              // Σ |speculative top-k ∩ true top-k| / k
  double mass_recall_sum = 0;          // Σ true attention mass on the fetched rows / on the true top-k
  uint64_t prefix_reused_tokens = 0;   // tokens taken from cached pages instead of recomputed
  uint64_t host_pages_referenced = 0;  // pages held by the sequence
  uint64_t host_pages_cached = 0;     // unreferenced pages kept for prefix reuse (LRU)
  uint64_t disk_pages_loaded = 0, disk_pages_saved = 0, disk_pages_rejected = 0, disk_bytes = 0;  // disk tier
  int lowbit_param_bits = 0;           // specache*: 16 or 8 (PagedKvConfig::param_bits); 0: other policies
};

struct KvShape {
  int n_layer = 0;
  int n_head = 0;     // query heads
  int n_head_kv = 0;  // key/value heads
  int head_dim = 0;
  int n_ctx = 0;      // capacity in tokens
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual const char *policy() const = 0;
  const KvShape &shape() const { return shape_; }

  // Store K/V for positions [pos0, pos0 + n) of one layer.
  // k, v: [n][n_head_kv * head_dim] fp32, keys already rotated.
  virtual void store(int layer, int pos0, int n, const float *k, const float *v) = 0;

  // Causal attention: out[t] = softmax(q[t] K^T / sqrt(d)) V over positions
  // [0, pos0 + t] for t < n. q, out: [n][n_head * head_dim] fp32.
  virtual void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) = 0;

  // Forget positions >= n_keep.
  virtual void truncate(int n_keep) = 0;

  // The full-precision K/V of held positions [pos0, pos0 + n) of one layer, as
  // store() takes them (k, v: [n][n_head_kv * head_dim] fp32). False when the
  // policy keeps no full-precision copy of them.
  virtual bool read(int layer, int pos0, int n, float *k, float *v) const { return false; }

  // Bytes held for K/V.
  virtual uint64_t bytes() const = 0;

  // Called before layer 0 and after the last layer of every forward pass.
  // begin_pass returns false when the cache cannot hold pass.n_keep more
  // tokens. Policies that keep every row resident need neither.
  virtual bool begin_pass(const KvPass &pass) { return true; }
  virtual void end_pass() {}
  // A pass that stopped before every layer stored its rows (an error path): the rows of
  // its tokens are not to be trusted (not persisted). Default: end_pass().
  virtual void end_failed_pass() { end_pass(); }

  // Paged policies: extend the held tokens with cached pages whose prefix
  // chain continues them with next[0..n); returns how many tokens were
  // added (their K/V is then held without recomputing them).
  virtual int adopt_cached(const int32_t *next, int n) { return 0; }
  // Leading tokens of tokens[0..n) that cached pages hold (0 for unpaged).
  virtual int cached_prefix(const int32_t *tokens, int n) const { return 0; }

  virtual void metrics(KvMetrics *out) const {
    *out = KvMetrics{};
    out->device_full_bytes = bytes();
  }
  virtual void reset_metrics() {}

  // Attention read-out (policies that compute per-position attention anyway):
  // while on, every generation step adds each held position's attention
  // probability (mean over the query heads of a GQA group, summed over layers
  // and KV heads). Turning it on zeroes the sums; false when the policy has no
  // read-out. attention_mass writes positions [0, n) and returns how many it
  // wrote, or -1 when the policy has none.
  virtual bool track_attention(bool on) { return false; }
  virtual int attention_mass(float *out, int n) const { return -1; }

 protected:
  KvShape shape_;
};

// All rows resident in RAM. f16 = true: fp16 rows (as llama.cpp's default).
class FullKvCache final : public KvCache {
 public:
  FullKvCache(const KvShape &shape, bool f16, int n_threads);
  const char *policy() const override { return "full"; }
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int) override {}
  bool read(int layer, int pos0, int n, float *k, float *v) const override;
  uint64_t bytes() const override;

 private:
  size_t row_index(int layer, int kv_head, int pos) const;
  bool f16_;
  // [n_layer][n_head_kv][n_ctx][head_dim] in fp16 (k16_/v16_) or fp32 (k32_/v32_).
  std::vector<uint16_t> k16_, v16_;
  std::vector<float> k32_, v32_;
};

}  // namespace specode

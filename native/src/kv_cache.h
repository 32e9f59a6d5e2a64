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

  // Bytes held for K/V.
  virtual uint64_t bytes() const = 0;

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
  uint64_t bytes() const override;

 private:
  size_t row_index(int layer, int kv_head, int pos) const;
  bool f16_;
  // [n_layer][n_head_kv][n_ctx][head_dim] in fp16 (k16_/v16_) or fp32 (k32_/v32_).
  std::vector<uint16_t> k16_, v16_;
  std::vector<float> k32_, v32_;
  // Per-thread score scratch: [n_threads][n_ctx].
  std::vector<std::vector<float>> scratch_;
};

}  // namespace specode

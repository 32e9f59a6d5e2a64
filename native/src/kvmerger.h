// kvmerger.h — KVMerger (Wang et al., "Model Tells You Where to Merge:
// Adaptive KV Cache Merging for LLMs on Long-Context Tasks"), behind KvCache.
//
// Per (layer, KV head) the cache holds fp16 rows in position order. Every row
// accumulates the attention probability it receives (as H2O does: exact
// softmax of every kept query row, summed over the KV head's query heads).
// When generation starts (the first KvPass with decode after a prefill) each
// mergeable layer is compressed to the budget B (kv_budget rows, or
// ceil(budget_ratio · tokens held); the paper's budgets are 50% and 35%):
//
//   1. protected rows, never merged: the newest floor(B/4) and, of the
//      others, the floor(B/4) with the most accumulated attention (none when
//      B < 4);
//   2. merging sets: contiguous runs of unprotected rows whose adjacent keys'
//      cosine similarity is above the threshold (0.75). The KV heads of a
//      layer must hold the same number of rows (the attention kernels index
//      keys uniformly), so the layer's count is T = min(B, the most rows any
//      head's threshold sets leave), and each head joins its adjacent pairs
//      in decreasing similarity until it holds T rows (pairs above the
//      threshold first, so a head whose threshold sets leave more than T joins
//      further pairs; T is never below what every head can reach);
//   3. each set becomes one row at its pivot, the member with the most
//      accumulated attention (ties: the lowest position): Gaussian-kernel
//      weights w_i ∝ exp(−‖k_i − k_p‖² / 2σ²), σ² the set's mean ‖k_i − k_p‖²
//      (all equal when every key equals the pivot's), normalized to sum 1, so
//      the pivot's weight (kernel 1) is the largest; k = Σ w_i k_i,
//      v = Σ w_i v_i (fp32 sums, stored fp16); its score is the members' sum.
//
// Layers 0, 1 and the last are never merged. Tokens generated after the
// compression are appended unmerged (the budget is applied to what a prefill
// left; a later prefill followed by generation compresses again). A truncate
// keeps a merged row when its pivot position is below the cut (its later
// members' content stays folded in), then evens out the heads' counts by
// merging (exact target). With B >= the rows held nothing is merged and
// attention is full's, bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "kv_cache.h"
#include "seed_policies.h"

namespace specode {

// Normalized Gaussian-kernel weights of the m keys [m][hd] around keys[pivot].
void kvmerger_weights(const float *keys, int m, int hd, int pivot, float *w);

// Merging sets of c rows (keys [c][hd], position order): row i's set id
// (sets are contiguous, ids 0.. ascending). prot[i]: never merged (a set of
// its own). Joins adjacent unprotected pairs in decreasing cosine similarity
// until c - joins == target rows (or no pair is left).
std::vector<int> kvmerger_sets(const float *keys, int c, int hd, const std::vector<uint8_t> &prot, int target);
// Rows left when exactly the pairs above `threshold` are joined.
int kvmerger_rows_at_threshold(const float *keys, int c, int hd, const std::vector<uint8_t> &prot, float threshold);

class MergerKvCache final : public KvCache {
 public:
  MergerKvCache(const KvShape &shape, const SeedKvConfig &cfg);
  const char *policy() const override { return "kvmerger"; }
  bool begin_pass(const KvPass &pass) override;
  void end_pass() override;
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int n_keep) override;
  bool read(int layer, int pos0, int n, float *k, float *v) const override;
  uint64_t bytes() const override;
  void metrics(KvMetrics *out) const override;

  int budget_for(int n_tokens) const;
  bool mergeable(int layer) const { return layer >= 2 && layer < shape_.n_layer - 1; }
  int held(int layer) const { return cnt_[lh(layer, 0)]; }
  std::vector<int32_t> held_positions(int layer, int kv_head) const;
  float score_of(int layer, int kv_head, int pos) const;  // -1 when no row sits at pos
  // The fp32 K and V rows held by (layer, kv_head), in position order.
  void held_rows(int layer, int kv_head, std::vector<float> *k, std::vector<float> *v) const;
  // Merges every mergeable layer down to the budget for n_tokens.
  void compress(int n_tokens);
  // One layer to `target` rows per head (exact: exactly target, no threshold).
  void compress_layer(int layer, int target, bool exact);

  // What the last compression of (layer, kv_head) did, for the tests: per
  // merged set (size > 1) its member positions, weights and pivot index.
  struct MergedSet {
    std::vector<int32_t> members;
    std::vector<float> weights;
    int pivot = 0;
  };
  const std::vector<MergedSet> &last_sets(int layer, int kv_head) const { return log_[lh(layer, kv_head)]; }

 private:
  size_t lh(int layer, int h) const { return (size_t)layer * shape_.n_head_kv + h; }
  size_t slot(int layer, int h, int s) const { return lh(layer, h) * shape_.n_ctx + s; }
  void accumulate(int layer, int old, int n, const float *q, ThreadPool &pool);
  std::vector<uint8_t> protect(int layer, int h, int target) const;

  SeedKvConfig cfg_;
  KvPass pass_;
  bool in_pass_ = false;
  bool pending_ = false;            // a prefill added rows since the last compression
  int n_tokens_ = 0;
  std::vector<uint16_t> k_, v_;     // [n_layer][n_head_kv][n_ctx slots][head_dim] fp16, position order
  std::vector<int32_t> pos_;        // [n_layer][n_head_kv][n_ctx]
  std::vector<float> score_;        // [n_layer][n_head_kv][n_ctx] accumulated attention
  std::vector<int> cnt_;            // [n_layer][n_head_kv]
  std::vector<uint8_t> merged_;     // [n_layer] the layer's rows are no longer one per position
  std::vector<float> part_;         // accumulate: per-task partial sums
  std::vector<std::vector<MergedSet>> log_;
};

}  // namespace specode

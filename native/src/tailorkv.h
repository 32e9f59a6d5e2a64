// tailorkv.h — TailorKV (Yao et al., "TailorKV: A Hybrid Framework for
// Long-Context Inference via Tailored KV Cache Optimization"), behind KvCache.
//
// Each layer is one of two kinds, chosen offline per model:
//
//   dense   attention spread over many keys (the profile's attention mass
//           outside the top 5% of keys > 0.2; usually layers 0-1): a
//           quantize-only layer, a 1-bit KIVI copy (g 64) + the newest 1..128
//           tokens in fp16 (KiviKvCache for these layers).
//   sparse  every row stays on the host (fp16, by position). A generation
//           step loads 8 sinks + the 56 newest + the top 128 of the other
//           rows into a device buffer and attends exactly over them. The top
//           rows are chosen by approximate scores on 8 key channels: per query
//           head the channels with the largest |q_c|·max_j |K_jc|, score_j =
//           Σ over those channels q_c·K_jc; a KV head takes, per key, the max
//           over its query heads' scores.
//
//           The paper computes layer l+1's selection with the next layer's
//           query, one layer ahead, so the host→device load overlaps layer
//           l's compute. NOT DONE HERE: the KvCache interface only sees a
//           layer's own query at attend(), and computing layer l+1's query
//           early would need the forward pass (context.cpp) to run layer
//           l+1's norm + Q projection on layer l's hidden state. This
//           implementation selects with the CURRENT layer's exact query, at
//           the current layer, synchronously — selection at least as good as
//           the paper's, with no overlap of the load (the fetch is counted in
//           the metrics, not hidden).
//
// Prefill passes attend exactly (all fp16 rows, dense layers too, as
// KiviKvCache does); compression starts with generation. A step whose held
// tokens fit in sinks + recent + top-k attends over all of them: full's bits.
//
// The profile (tailorkv_profile) runs a fixed token sequence through the
// model with full attention once per model and stores the per-layer values in
// the user cache ($SPECODE_CACHE, else ~/.cache/specode), logging what it
// does on stderr. The engine has no tokenizer, so the "fixed prompt" is a
// fixed synthetic token sequence (see tailorkv.cpp), not natural text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "baselines.h"
#include "kv_cache.h"
#include "seed_policies.h"

namespace specode {

struct Model;

inline constexpr float kTailorDenseThreshold = 0.2f;  // mass outside the top keys above it: dense
inline constexpr float kTailorTopFraction = 0.05f;    // "top 5% of keys"

// Attention mass outside the top ceil(top_fraction · n) of the n probabilities p.
double tailorkv_outside_mass(const float *p, int n, float top_fraction = kTailorTopFraction);
// The rule: dense[l] = outside_mass[l] > threshold.
std::vector<uint8_t> tailorkv_dense_layers(const std::vector<float> &outside_mass,
                                           float threshold = kTailorDenseThreshold);

// A full-precision KV cache that also measures, per layer, the mean attention
// mass outside the top 5% of keys over query rows at positions >= min_pos
// (every `stride`-th), all query heads. Used by the profile; exposed for tests.
class TailorProfileKvCache final : public KvCache {
 public:
  TailorProfileKvCache(const KvShape &shape, int min_pos = 63, int stride = 4);
  const char *policy() const override { return "tailorkv-profile"; }
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int) override {}
  uint64_t bytes() const override { return (k_.size() + v_.size()) * sizeof(float); }
  // [n_layer] mean mass outside the top 5% (0 for a layer that measured nothing).
  std::vector<float> outside_mass() const;

 private:
  int min_pos_, stride_;
  std::vector<float> k_, v_;          // [n_layer][n_head_kv][n_ctx][head_dim]
  std::vector<double> sum_;           // [n_layer]
  std::vector<int64_t> count_;        // [n_layer]
};

// The fixed token sequence the profile runs (n tokens, ids < n_vocab; bos >= 0
// is put first).
std::vector<int32_t> tailorkv_profile_tokens(int n, int n_vocab, int bos);

// The per-layer profile of `model`: read from the user cache, else measured
// (a full-attention prefill of the fixed sequence) and written there. Logs one
// line on stderr either way. outside_mass: [n_layer]. Returns false (and sets
// *err) only when it can neither read nor measure it.
bool tailorkv_profile(Model *model, int n_threads, std::vector<float> *outside_mass, std::string *err);
// Where the profile of `model` is (or would be) stored.
std::string tailorkv_profile_path(const Model &model);

class TailorKvCache final : public KvCache {
 public:
  TailorKvCache(const KvShape &shape, const SeedKvConfig &cfg);
  const char *policy() const override { return "tailorkv"; }
  bool begin_pass(const KvPass &pass) override;
  void end_pass() override;
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int n_keep) override;
  bool read(int layer, int pos0, int n, float *k, float *v) const override;
  uint64_t bytes() const override;
  void metrics(KvMetrics *out) const override;
  void reset_metrics() override { fetch_total_ = 0; }

  bool dense(int layer) const { return dense_idx_[layer] >= 0; }
  int load_rows() const { return cfg_.tk_sinks + cfg_.tk_recent + cfg_.tk_topk; }
  // Positions the last generation step loaded for (sparse layer, kv_head), ascending.
  const std::vector<int32_t> &last_selection(int layer, int kv_head) const { return sel_[lh(layer, kv_head)]; }
  const KiviKvCache *dense_cache() const { return kivi_.get(); }

 private:
  size_t lh(int layer, int h) const { return (size_t)layer * shape_.n_head_kv + h; }
  size_t row(int layer, int h, int pos) const {
    return ((size_t)sparse_idx_[layer] * shape_.n_head_kv * shape_.n_ctx + (size_t)h * shape_.n_ctx + pos) * shape_.head_dim;
  }
  void select(int layer, int g, int n_tokens, const float *q);

  SeedKvConfig cfg_;
  KvPass pass_;
  int n_tokens_ = 0;
  std::vector<int> dense_idx_, sparse_idx_;  // [n_layer]: index among its kind, or -1
  int n_sparse_ = 0;
  std::unique_ptr<KiviKvCache> kivi_;         // the dense layers
  std::vector<uint16_t> k_, v_;               // sparse layers' host rows [n_sparse][n_head_kv][n_ctx][head_dim]
  std::vector<float> kmax_;                   // [n_layer][n_head_kv][head_dim] max |K| per channel (sparse)
  std::vector<std::vector<int32_t>> sel_;     // [n_layer][n_head_kv] positions loaded by the last step
  std::vector<uint16_t> bk_, bv_;             // the device load buffer of one layer [n_head_kv][load_rows][head_dim]
  uint64_t fetch_total_ = 0;
};

}  // namespace specode

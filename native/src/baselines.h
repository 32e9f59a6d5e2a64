// baselines.h — the eviction and quantization baselines the seed papers
// compare SpeCache to (DESIGN.md, "Other policies"), behind KvCache:
//
//   streamingllm  attention sinks + recent window (Xiao et al., "Efficient
//                 Streaming Language Models with Attention Sinks"): the first
//                 `sinks` tokens and the newest budget - sinks tokens stay,
//                 every other row is evicted.
//   h2o           heavy hitters + recent window (Zhang et al., "H2O"): every
//                 row accumulates the attention probability it receives
//                 (summed over the query heads of its KV head); the newest
//                 ceil(budget/2) rows stay, and of the older rows the
//                 floor(budget/2) with the largest accumulated attention
//                 (ties: the lower slot). Each (layer, KV head) evicts on its
//                 own scores. Scores come from attend(): rows that are only
//                 stored (e.g. copied in by specode_context_copy, which runs
//                 no attention) score 0 until later queries attend them.
//   kivi          2-bit KIVI (Liu et al., "KIVI"): keys per channel, values
//                 per token, group g, in the lowbit.h layout; the newest
//                 tokens (1..R, R = 128 by default) stay in fp16. Attention
//                 is a split softmax over the codes and the fp16 rows.
//
// When compression happens. As in the papers' reference code, a prompt is
// prefilled with exact attention and the cache is compressed when generation
// starts: prefill passes (KvPass::decode false) store and attend every row
// exactly, over whatever the cache holds; a generation step (decode true)
// first compresses the cache to the budget (h2o, streamingllm: evict; kivi:
// quantize all but the residual), then attends, then (h2o, streamingllm)
// evicts again so that after the step at most budget rows are held. So the
// device figures (metrics) are the compressed ones once generation ran; right
// after a prefill they still count the whole prompt in fp16.
//
// Budget (h2o, streamingllm), per layer and KV head, when the sequence holds
// N tokens: `budget` rows if > 0, else max(1, ceil(budget_ratio * N));
// streamingllm keeps at least sinks + 1. Keys keep the rotary position they
// were stored with (no position re-indexing inside the window), which is
// right for a context that fits the model's trained length.
//
// With nothing to compress (budget >= tokens, or kivi with every token in the
// residual) attention goes through attn::causal_attention over the fp16 rows
// in position order: the same bits as the full policy with fp16 rows.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kv_cache.h"
#include "lowbit.h"
#include "specache.h"

namespace specode {

// Policy ids after specache.h's KvPolicy (the same numbers as specode_kv_policy).
inline constexpr KvPolicy kKvStreamingLlm = static_cast<KvPolicy>(4);
inline constexpr KvPolicy kKvH2O = static_cast<KvPolicy>(5);
inline constexpr KvPolicy kKvKivi = static_cast<KvPolicy>(6);

inline bool is_baseline_policy(KvPolicy p) { return p == kKvStreamingLlm || p == kKvH2O || p == kKvKivi; }
// "streamingllm", "h2o", "kivi"; nullptr for other ids.
const char *baseline_policy_name(KvPolicy p);

struct BaselineKvConfig {
  KvPolicy policy = kKvH2O;
  // h2o, streamingllm
  int budget = 0;             // rows kept per layer and KV head; 0: budget_ratio of the tokens held
  float budget_ratio = 0.2f;  // used when budget == 0, in (0, 1]
  int sinks = 4;              // streamingllm: attention sinks (the first tokens), kept always
  // kivi
  int bits = 2;        // 1 or 2
  int group = 64;      // key group (tokens) and value group (channels, capped at head_dim)
  int residual = 128;  // R: newest tokens kept in fp16, a multiple of group
};

// A baseline policy for shape (capacity shape.n_ctx tokens). The config must
// be valid (the engine checks user input first).
std::unique_ptr<KvCache> make_baseline_kv_cache(const KvShape &shape, const BaselineKvConfig &cfg);

// ---- the classes (exposed for the unit tests) -------------------------------

// h2o and streamingllm: each (layer, KV head) holds up to n_ctx fp16 rows in
// slots; slot order is not position order once something was evicted (an
// evicted slot is refilled from the tail). Every (layer, KV head) holds the
// same number of rows (a truncate that leaves them uneven trims the others
// by the policy's rule).
class EvictingKvCache final : public KvCache {
 public:
  EvictingKvCache(const KvShape &shape, const BaselineKvConfig &cfg);
  const char *policy() const override { return baseline_policy_name(cfg_.policy); }
  bool begin_pass(const KvPass &pass) override;
  void end_pass() override;
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int n_keep) override;
  uint64_t bytes() const override;
  void metrics(KvMetrics *out) const override;

  // The budget for a sequence of n_tokens tokens.
  int budget_for(int n_tokens) const;
  // Rows held per (layer, KV head) (between passes).
  int held() const { return cnt_.empty() ? 0 : cnt_[0]; }
  // Positions held by (layer, kv_head), ascending.
  std::vector<int32_t> held_positions(int layer, int kv_head) const;
  // h2o: accumulated attention of the row holding position pos (-1 if not held).
  float score_of(int layer, int kv_head, int pos) const;
  // Evicts every (layer, KV head) down to at most target rows (the policy's rule).
  void compress(int target);

 private:
  size_t lh(int layer, int h) const { return (size_t)layer * shape_.n_head_kv + h; }
  size_t slot(int layer, int h, int s) const { return lh(layer, h) * shape_.n_ctx + s; }
  const uint16_t *krow(int layer, int h, int s) const { return &k_[slot(layer, h, s) * shape_.head_dim]; }
  const uint16_t *vrow(int layer, int h, int s) const { return &v_[slot(layer, h, s) * shape_.head_dim]; }
  void compress_one(int layer, int h, int target);
  void keep_only(int layer, int h, const std::vector<uint8_t> &keep);
  void accumulate(int layer, int old, int n, const float *q, ThreadPool &pool);

  BaselineKvConfig cfg_;
  KvPass pass_;
  bool in_pass_ = false;
  int n_tokens_ = 0;                // tokens in the sequence (held or evicted)
  std::vector<uint16_t> k_, v_;     // [n_layer][n_head_kv][n_ctx slots][head_dim] fp16
  std::vector<int32_t> pos_;        // [n_layer][n_head_kv][n_ctx] the position in each slot
  std::vector<float> score_;        // h2o: [n_layer][n_head_kv][n_ctx] accumulated attention
  std::vector<int> cnt_;            // [n_layer][n_head_kv] slots in use
  std::vector<float> part_;         // h2o: per-task partial sums of attention
};

// kivi: per (layer, KV head) a LowbitStream of the oldest tokens and fp16
// rows (by position) of the rest.
class KiviKvCache final : public KvCache {
 public:
  KiviKvCache(const KvShape &shape, const BaselineKvConfig &cfg);
  const char *policy() const override { return "kivi"; }
  bool begin_pass(const KvPass &pass) override;
  void end_pass() override;
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int n_keep) override;
  uint64_t bytes() const override;
  void metrics(KvMetrics *out) const override;

  int n_lowbit() const { return n_lowbit_; }
  // Quantizes every whole residual so that 1 <= residual <= R once one more
  // token is appended to the n_tokens held (called by a generation step).
  void compress(int n_tokens);
  const LowbitStream &stream(int layer, int kv_head) const { return lowbit_[lh(layer, kv_head)]; }

 private:
  size_t lh(int layer, int h) const { return (size_t)layer * shape_.n_head_kv + h; }
  size_t row(int layer, int h, int pos) const { return (lh(layer, h) * shape_.n_ctx + pos) * shape_.head_dim; }

  BaselineKvConfig cfg_;
  KvPass pass_;
  int n_tokens_ = 0;
  int n_lowbit_ = 0;                // tokens in every stream (a multiple of group)
  std::vector<LowbitStream> lowbit_;  // [n_layer][n_head_kv]
  std::vector<uint16_t> k_, v_;     // [n_layer][n_head_kv][n_ctx][head_dim] fp16 by position; rows
                                    // below n_lowbit_ are not held (their codes are)
  std::vector<float> part_m_, part_l_, part_acc_;  // attend: per-task split-softmax pieces
};

}  // namespace specode

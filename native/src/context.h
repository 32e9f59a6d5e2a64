// context.h — one sequence's state: KV cache, scratch buffers, the forward pass.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kv_cache.h"
#include "model.h"
#include "specache.h"
#include "specode.h"

namespace specode {

struct ContextConfig {
  int n_ctx = 0;
  int n_batch = 256;
  bool kv_f16 = true;  // full policy only
  int n_threads = 0;   // <= 0: the model's pool
  KvPolicy policy = KvPolicy::Full;
  int kv_bits = 2;         // paged policies and kivi: see PagedKvConfig
  int kv_group = 64;
  int kv_topk = 64;
  int kv_rerank = 4;
  bool kv_sym_values = false;  // specache* 2-bit: symmetric values (LowbitConfig::sym_values)
  int kv_param_bits = 16;      // specache*: 8 = scales and zeros on 8-bit grids (LowbitConfig::param_bits)
  int kv_residual = 64;
  int kv_page_tokens = 64;
  bool kv_measure = false;
  int kv_budget = 0;             // h2o, streamingllm: see BaselineKvConfig
  float kv_budget_ratio = 0.2f;
  int kv_sinks = 4;
  std::string kv_disk_dir;         // paged policies: the disk tier's directory ('' = off)
  uint64_t kv_disk_max_bytes = 0;  // its cap (0: 4 GiB)
  // When set, builds the KV cache instead of the policy (the tailorkv profile
  // runs the model over a measuring cache this way).
  std::function<std::unique_ptr<KvCache>(const KvShape &)> make_kv;
};

// Generation-step and speculation counters, kept the same way by both backends.
struct StepCounters {
  uint64_t steps = 0, step_ns_total = 0, step_ns_last = 0, fetch_last = 0, stall_last = 0;
  uint64_t spec_checked = 0, spec_matched = 0;
  // The real token of this step against last step's speculative guess (-1: none).
  void check_guess(int32_t token, int32_t guess) {
    if (guess < 0) return;
    ++spec_checked;
    spec_matched += token == guess ? 1 : 0;
  }
  void add_step(uint64_t ns) {
    step_ns_last = ns;
    step_ns_total += ns;
    ++steps;
  }
  // Writes the counters into *m, and the figures derived from what *m already holds:
  // device_kv_bytes (the sum of the four kinds), fp16_kv_bytes of m->n_tokens, the
  // compression ratio and the speculative match rate.
  void publish(const Hparams &hp, specode_kv_metrics *m) const;
};

// decode()'s input checks (also the CUDA backend's): tokens present, in the
// vocabulary, and fitting after n_past; SPECODE_OK or a status with *err.
int check_decode_tokens(const Hparams &hp, int n_past, int n_ctx, const int32_t *tokens, int n, std::string *err);

class Context {
 public:
  Context(Model *model, const ContextConfig &cfg);

  // Runs tokens at positions n_past.. (chunked by n_batch), appending K/V.
  // Leading tokens held in cached host pages are adopted, not recomputed
  // (paged policies, unless all_logits). One token after a prompt is a
  // generation step (the speculative two-token step under specache).
  // logits_out: NULL, [n][n_vocab] (all_logits) or [n_vocab] (last token).
  // Returns a specode_status; *err describes a failure.
  int decode(const int32_t *tokens, int n, bool all_logits, float *logits_out, std::string *err);
  // One generation step (see specode_decode_spec); *spec_out: the speculative
  // token run at n_past + 1, or -1.
  int decode_step(int32_t token, float *logits_out, int32_t *spec_out, std::string *err);
  int truncate(int n_keep, std::string *err);
  // Makes this context hold src's tokens with src's K/V rows (same model),
  // written through this context's policy as a prefill would write them but
  // without running the model; src's last logits come along.
  int copy_from(const Context &src, std::string *err);
  // Leading tokens of tokens[0..n) a decode would not recompute.
  int cached_prefix(const int32_t *tokens, int n) const;
  // Snapshot as of the end of the last decode/truncate; thread-safe.
  void metrics(specode_kv_metrics *out) const;
  void reset_metrics();  // not while a decode runs on this context

  int n_past() const { return n_past_; }
  int n_ctx() const { return cfg_.n_ctx; }
  const float *last_logits() const { return has_logits_ ? logits_.data() : nullptr; }
  void cancel() { cancel_.store(true); }
  const Model &model() const { return *model_; }
  const KvCache &kv() const { return *kv_; }
  KvCache &kv_mut() { return *kv_; }

 private:
  // One forward pass over pass.n <= n_batch tokens at positions n_past_..;
  // appends the first pass.n_keep tokens' K/V.
  // logits_mode 0: none; 1: last row into logits_; 2: every row into
  // out_all ([n][n_vocab]) and the last into logits_.
  // False when the KV cache has no room (pages exhausted).
  bool forward(const KvPass &pass, int logits_mode, float *out_all);
  int check_tokens(const int32_t *tokens, int n, std::string *err) const;
  // One generation step; speculate: the two-token step (pre-decode first
  // when there is no speculative token yet).
  int step_locked(int32_t token, bool speculate, float *logits_out, int32_t *spec_out, std::string *err);
  void forget_speculation() { next_spec_ = last_guess_ = -1; }
  void publish_metrics();  // refresh the snapshot metrics() returns
  ThreadPool &pool() { return own_pool_ ? *own_pool_ : *model_->pool; }

  Model *model_;
  ContextConfig cfg_;
  std::unique_ptr<ThreadPool> own_pool_;
  std::unique_ptr<KvCache> kv_;
  int n_past_ = 0;
  std::atomic<bool> cancel_{false};
  bool has_logits_ = false;

  std::vector<float> inv_freq_;   // [head_dim/2]
  // Scratch for one chunk of up to n_batch tokens (row-major [token][...]).
  std::vector<float> x_, xn_, q_, k_, v_, attn_, proj_, gate_, up_;
  std::vector<float> logits_;     // [n_vocab], last token
  std::vector<float> step_logits_;  // [2][n_vocab], the two rows of a speculative step
  std::vector<uint8_t> act_;      // prepared activations for the quantized matmuls
  std::vector<int32_t> tokens_;   // [n_past] ids held in the cache

  // Speculation (specache): next_spec_ runs at n_past + 1 in the next step;
  // last_guess_ ran at n_past last step, to be checked against the real token.
  int32_t next_spec_ = -1, last_guess_ = -1;

  // Counters (decode thread) and the snapshot metrics() reads.
  StepCounters counters_;
  mutable std::mutex metrics_mutex_;
  specode_kv_metrics snapshot_{};
};

}  // namespace specode

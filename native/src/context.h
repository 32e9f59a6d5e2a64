// context.h — one sequence's state: KV cache, scratch buffers, the forward pass.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "kv_cache.h"
#include "model.h"

namespace specode {

struct ContextConfig {
  int n_ctx = 0;
  int n_batch = 256;
  bool kv_f16 = true;
  int n_threads = 0;  // <= 0: the model's pool
};

class Context {
 public:
  Context(Model *model, const ContextConfig &cfg);

  // Runs tokens at positions n_past.. (chunked by n_batch), appending K/V.
  // logits_out: NULL, [n][n_vocab] (all_logits) or [n_vocab] (last token).
  // Returns a specode_status; *err describes a failure.
  int decode(const int32_t *tokens, int n, bool all_logits, float *logits_out, std::string *err);
  int truncate(int n_keep, std::string *err);

  int n_past() const { return n_past_; }
  int n_ctx() const { return cfg_.n_ctx; }
  const float *last_logits() const { return has_logits_ ? logits_.data() : nullptr; }
  void cancel() { cancel_.store(true); }
  const Model &model() const { return *model_; }
  const KvCache &kv() const { return *kv_; }

 private:
  // One forward pass over n <= n_batch tokens at positions n_past_..
  // logits_mode 0: none; 1: last row into logits_; 2: every row into
  // out_all ([n][n_vocab]) and the last into logits_.
  void forward(const int32_t *tokens, int n, int logits_mode, float *out_all);
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
  std::vector<uint8_t> act_;      // prepared activations for the quantized matmuls
};

}  // namespace specode

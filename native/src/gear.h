// gear.h — GEAR (Kang et al., "GEAR: An Efficient KV Cache Compression
// Recipe for Near-Lossless Generative Inference of LLM"), KIVI flavour:
//
//   X ≈ S + Q(D) + L        per (layer, KV head), keys and values separately
//
//   S  sparse outliers: the top outlier_ratio (2%) entries of a compressed
//      block by |x − mean of its quantization group| (keys: the channel over
//      the group's g tokens; values: the token over vg channels), kept exactly
//      in fp16 with their index. They are the entries that would widen a
//      group's range, so D = X with each of them replaced by its group's mean.
//   Q  2-bit KIVI codes of D (lowbit.h: keys per channel, values per token,
//      group g = 64).
//   L  rank-r approximation of the quantization residual R = D − deq(Q(D)):
//      r = 4 when the prompt is compressed, 2 for each later buffer; subspace
//      (power) iteration from a fixed start, 3 iterations: A = orth(R·B),
//      B = Rᵀ·A; L = A·Bᵀ (A [n][r], B [head_dim][r], both stored fp16).
//
// Streaming as in GEAR's KIVI variant: the newest tokens stay in fp16 and are
// compressed `buffer` (64) at a time. A generation step holding N tokens
// first compresses up to buffer·floor(N / buffer) (the whole prompt at the
// first step, as one block with the prefill rank), so 1..buffer tokens are in
// fp16 after it appends its own. Prefill passes attend exactly.
//
// Attention reconstructs one layer's compressed rows (deq(Q) + L, outliers
// written back) into a transient fp16 buffer and runs attn::causal_attention
// over them and the fp16 rows — GEAR dequantizes before attention too. The
// buffer holds one layer and is not counted as held K/V (like the attention
// kernels' scratch). With nothing compressed attention is full's, bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "kv_cache.h"
#include "lowbit.h"
#include "seed_policies.h"

namespace specode {

// Rank-r approximation of R [n][cols] (row-major) by `iters` subspace
// iterations from a fixed start: A [n][r] (orthonormal columns), B [cols][r]
// with R ≈ A·Bᵀ. Exposed for the tests.
void gear_low_rank(const float *R, int n, int cols, int r, int iters, std::vector<float> *A, std::vector<float> *B);

class GearKvCache final : public KvCache {
 public:
  GearKvCache(const KvShape &shape, const SeedKvConfig &cfg);
  const char *policy() const override { return "gear"; }
  bool begin_pass(const KvPass &pass) override;
  void end_pass() override;
  void store(int layer, int pos0, int n, const float *k, const float *v) override;
  void attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) override;
  void truncate(int n_keep) override;
  bool read(int layer, int pos0, int n, float *k, float *v) const override;
  uint64_t bytes() const override;
  void metrics(KvMetrics *out) const override;

  // Tokens of `layer` in the compressed form (a multiple of group).
  int n_compressed(int layer) const { return ncomp_[layer]; }
  // Compresses every layer up to buffer·floor(n_tokens / buffer) (what a
  // generation step with n_tokens held does before attending).
  void compress_all(int n_tokens, ThreadPool &pool);
  // The reconstruction S + deq(Q) + L of compressed rows [t0, t1) of (layer,
  // kv_head); k, v: [t1 - t0][head_dim] fp32. with_lowrank / with_outliers
  // false leave that term out (tests: each term's contribution).
  void reconstruct(int layer, int kv_head, int t0, int t1, float *k, float *v, bool with_lowrank = true,
                   bool with_outliers = true) const;
  // Bytes of the compressed form: codes + scales/zeros, low-rank factors, outliers.
  uint64_t compressed_bytes() const;

 private:
  struct Block {  // one compression of rows [t0, t1)
    int t0 = 0, t1 = 0, rank = 0;
    std::vector<uint16_t> ak, bk, av, bv;  // fp16 factors: A [n][rank], B [head_dim][rank]
  };
  struct Outlier {
    int32_t pos;
    uint16_t ch;
    uint16_t val;  // fp16
  };
  size_t lh(int layer, int h) const { return (size_t)layer * shape_.n_head_kv + h; }
  size_t row(int layer, int h, int pos) const { return (lh(layer, h) * shape_.n_ctx + pos) * shape_.head_dim; }
  int target_for(int n_tokens) const { return n_tokens / cfg_.buffer * cfg_.buffer; }
  void compress_layer(int layer, int target, ThreadPool &pool);
  void compress_head(int layer, int h, int t0, int t1, int rank);

  SeedKvConfig cfg_;
  KvPass pass_;
  int n_tokens_ = 0;
  int target_ = 0;                     // set by a generation step's begin_pass
  std::vector<int> ncomp_;             // [n_layer] compressed tokens
  std::vector<LowbitStream> lowbit_;   // [n_layer][n_head_kv] codes of D
  std::vector<std::vector<Block>> blocks_;      // [n_layer][n_head_kv]
  std::vector<std::vector<Outlier>> kout_, vout_;  // [n_layer][n_head_kv], ascending pos
  std::vector<uint16_t> k_, v_;        // [n_layer][n_head_kv][n_ctx][head_dim] fp16 by position (rows
                                       // below ncomp_[layer] are not held)
  std::vector<uint16_t> rk_, rv_;      // attend: one layer's reconstructed rows [n_head_kv][ncomp][head_dim]
};

}  // namespace specode

// specache.h — the paged KV policies: every row lives in fp16 host pages
// (kv_pages.h, the source of truth); what the "device" holds differs.
//
//   offload-all    the device holds nothing between steps; every decode step
//                  copies every row of a layer from the host pages before
//                  that layer's attention (the naive baseline).
//   specache       the device holds the low-bit copy of every token
//                  (lowbit.h), the newest tokens in fp16 (residual) and, per
//                  layer and KV head, a prefetch buffer of the top-k fp16 rows
//                  chosen by the previous step's speculative token. Right
//                  after layer l's attention the rows for the next step are
//                  copied by a fetch thread; layer l of the next step waits
//                  for them (stall) before it attends.
//   specache-sync  ablation: no speculative token; at every layer the true
//                  top-k of the real token (exact scores over the host pages)
//                  is copied synchronously before attention.
//
// Decode attention for specache is a split softmax over: the low-bit part
// (scored from codes, fetched positions left out), the fetched fp16 rows
// (which replace their low-bit versions), the residual, and the pass's
// speculative tokens; the pieces are merged by log-sum-exp. Prefill
// attention is exact over the host pages (the same arithmetic, in the same
// order, as the full policy with fp16 rows).
//
// Residual invariant: after any append, 1 <= residual <= R tokens sit in
// fp16 and the n_lowbit = R·floor((n - 1)/R) oldest are in the low-bit copy
// (R is a multiple of the key group g; a full residual is quantized, R
// tokens at once, just before the next token is appended). The low-bit copy
// and residual are a pure function of the host pages: truncation and prefix
// reuse rebuild them from there.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kv_cache.h"

namespace specode {

enum class KvPolicy { Full = 0, OffloadAll = 1, Specache = 2, SpecacheSync = 3 };

// "full", "offload-all", "specache", "specache-sync".
const char *kv_policy_name(KvPolicy policy);

// The second stage's width when the caller leaves it automatic: 16 × k candidates at 1 bit,
// where the low-bit scores alone rank a retrieval's needle rows poorly, 4 × k at 2 bits
// (docs/benchmarks.md, "rerank at 1 bit"); never more than 1024 (the CUDA kernel's limit).
inline int auto_rerank(int bits, int topk) {
  const int want = bits == 1 ? 16 : 4;
  const int cap = 1024 / (topk > 0 ? topk : 1);
  return want < cap ? want : (cap > 1 ? cap : 1);
}

struct PagedKvConfig {
  KvPolicy policy = KvPolicy::Specache;  // OffloadAll, Specache or SpecacheSync
  int page_tokens = 64;  // P: tokens per host page
  int bits = 2;          // low-bit copy: 1 or 2
  int group = 64;        // g: key group (tokens) and value group (channels, capped at head_dim)
  int topk = 64;         // fetched fp16 rows per layer per KV head
  int rerank = 4;        // > 1: the rerank × topk best by low-bit scores, re-scored exactly from the host rows
  int residual = 64;     // R: fp16 window, a multiple of group
  bool sym_values = false;  // 2-bit: values with one scale and no zero per group (LowbitConfig::sym_values)
  int param_bits = 16;      // 8: scales and zeros on 8-bit grids (LowbitConfig::param_bits)
  bool measure = false;  // compute the true top-k of each real token (costs a full-precision pass)
  int n_threads = 1;     // size of the pool attend() will be given
  int64_t fetch_delay_ns = 0;  // tests: each layer's fetch also sleeps this long (a slow link)
  std::string disk_dir;         // disk tier of the host pages ('' = none; see kv_disk.h)
  uint64_t disk_max_bytes = 0;  // its cap (0: 4 GiB)
  uint64_t model_id = 0;        // identity of the weights (KvDisk::model_identity)
};

// A paged policy for shape (capacity shape.n_ctx tokens). The config must be
// valid (the engine checks user input first).
std::unique_ptr<KvCache> make_paged_kv_cache(const KvShape &shape, const PagedKvConfig &cfg);

// Top-k selection: positions of the k largest score[0..n) in ascending
// position order (ties: the lower position wins); all of them when n <= k.
// out: [min(n, k)]. Returns the count.
int select_topk(const float *score, int n, int k, int32_t *out);

}  // namespace specode

// seed_policies.h — the seed papers' other KV methods (DESIGN.md, "Other
// policies"), behind KvCache like the baselines (baselines.h):
//
//   gear      2-bit KIVI codes + a low-rank approximation of the quantization
//             residual + the top 2% outliers in fp16 (gear.h)
//   kvmerger  adjacent similar keys merged into one row per set, Gaussian
//             weights around the highest-attention member (kvmerger.h)
//   tailorkv  per layer, chosen by an offline profile: a 1-bit copy
//             ("dense" layers) or host rows with a sparse selection loaded
//             per step ("sparse" layers) (tailorkv.h)
//
// As with the baselines, a prompt is prefilled with exact attention over fp16
// rows and the cache is compressed when generation starts (the first pass
// with KvPass::decode). With nothing to compress each policy attends through
// attn::causal_attention over fp16 rows in position order: full's bits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv_cache.h"
#include "specache.h"

namespace specode {

// Policy ids after baselines.h's (the same numbers as specode_kv_policy).
inline constexpr KvPolicy kKvTailorKv = static_cast<KvPolicy>(7);
inline constexpr KvPolicy kKvGear = static_cast<KvPolicy>(8);
inline constexpr KvPolicy kKvMerger = static_cast<KvPolicy>(9);

inline bool is_seed_policy(KvPolicy p) { return p == kKvTailorKv || p == kKvGear || p == kKvMerger; }
// "tailorkv", "gear", "kvmerger"; nullptr for other ids.
const char *seed_policy_name(KvPolicy p);

struct SeedKvConfig {
  KvPolicy policy = kKvGear;
  // gear
  int bits = 2;              // KIVI codes, 1 or 2
  int group = 64;            // key group (tokens), value group (channels, capped at head_dim)
  int buffer = 64;           // fp16 tokens between recompressions (a multiple of group)
  int rank_prefill = 4;      // low-rank of the residual: the prompt's compression
  int rank_decode = 2;       // ... each later buffer's
  int power_iters = 3;       // power (subspace) iterations
  float outlier_ratio = 0.02f;  // entries kept exactly in fp16
  // kvmerger
  int budget = 0;               // rows kept per layer and KV head; 0: budget_ratio of the tokens held
  float budget_ratio = 0.5f;    // in (0, 1]; the paper's budgets are 0.5 and 0.35
  float sim_threshold = 0.75f;  // adjacent keys with cosine similarity above it merge
  // tailorkv
  int tk_sinks = 8;           // sparse layers: first tokens always loaded
  int tk_recent = 56;         // ... newest tokens always loaded
  int tk_topk = 128;          // ... rows chosen by approximate scores
  int tk_channels = 8;        // key channels the approximate score uses
  int tk_group = 64;          // dense layers: 1-bit KIVI group
  int tk_residual = 128;      // dense layers: newest tokens kept in fp16
  std::vector<uint8_t> dense_layers;  // [n_layer] 1: quantize-only layer (from the profile)
};

// A policy for shape (capacity shape.n_ctx tokens); the config must be valid.
// tailorkv needs cfg.dense_layers (see tailorkv_profile in tailorkv.h).
std::unique_ptr<KvCache> make_seed_kv_cache(const KvShape &shape, const SeedKvConfig &cfg);

}  // namespace specode

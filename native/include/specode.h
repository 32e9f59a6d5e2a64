/*
 * specode.h — the only door into the specode engine.
 *
 * Opaque handles, parameter structs with a comment per field, sized integers,
 * init/free pairs. Every function returns 0 on success or a negative
 * specode_status; on failure the message is available from specode_last_error()
 * (thread-local, valid until the next call on the same thread).
 *
 * The engine works in token ids. Tokenization lives with the caller (the
 * TypeScript server reads the vocabulary from the GGUF metadata).
 */
#ifndef SPECODE_H
#define SPECODE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum specode_status {
  SPECODE_OK = 0,
  SPECODE_ERR_IO = -1,          /* file missing or unreadable */
  SPECODE_ERR_FORMAT = -2,      /* not a GGUF file, truncated or corrupt */
  SPECODE_ERR_UNSUPPORTED = -3, /* architecture or quant type we do not run */
  SPECODE_ERR_ARGUMENT = -4,    /* bad parameter (empty input, out of range id) */
  SPECODE_ERR_CONTEXT_FULL = -5,/* the tokens do not fit in n_ctx */
  SPECODE_ERR_CANCELLED = -6,   /* specode_context_cancel() was called */
  SPECODE_ERR_NOMEM = -7,       /* allocation failed */
} specode_status;

typedef struct specode_model specode_model;     /* weights (mmapped GGUF) + hparams */
typedef struct specode_context specode_context; /* KV cache + scratch for one sequence */

/* Text of the last error on this thread ("" when none). */
const char *specode_last_error(void);

/* Which CPU kernels were selected at run time: "avx512", "avx2" or "scalar". */
const char *specode_cpu_kernels(void);

/* ---------------------------------------------------------------- model */

typedef struct specode_model_params {
  const char *path;  /* GGUF file path (memory-mapped, read-only) */
  int32_t n_threads; /* worker threads for this model's contexts; <= 0: all cores */
} specode_model_params;

specode_model_params specode_model_default_params(void);

int32_t specode_model_load(const specode_model_params *params, specode_model **out);
void specode_model_free(specode_model *model);

typedef struct specode_model_info {
  char arch[32];          /* "llama" or "qwen2" */
  char name[128];         /* general.name, may be empty */
  int32_t n_vocab;        /* rows of token_embd */
  int32_t n_embd;         /* hidden size */
  int32_t n_layer;        /* transformer blocks */
  int32_t n_head;         /* query heads */
  int32_t n_head_kv;      /* key/value heads (GQA when < n_head) */
  int32_t head_dim;       /* n_embd / n_head */
  int32_t n_ff;           /* feed-forward hidden size */
  int32_t n_ctx_train;    /* context length the model was trained for */
  float rope_freq_base;   /* theta */
  float rms_eps;          /* RMSNorm epsilon */
  int32_t rope_neox;      /* 1: rotate halves (qwen2), 0: rotate adjacent pairs (llama) */
  uint64_t weight_bytes;  /* bytes of tensor data in the file */
  char file_type[16];     /* dominant weight quant type, e.g. "Q4_K" */
} specode_model_info;

int32_t specode_model_get_info(const specode_model *model, specode_model_info *out);

/* ---------------------------------------------------------------- context */

typedef enum specode_kv_type {
  SPECODE_KV_F16 = 0, /* default: fp16 K/V rows, as llama.cpp */
  SPECODE_KV_F32 = 1, /* full precision, for exactness tests */
} specode_kv_type;

/* Where K/V rows live and what decode attention reads (DESIGN.md, "The KV
 * subsystem"). Every policy but full keeps all rows in fp16 host pages, shares
 * full pages by prefix hash and reuses them instead of recomputing a prefix. */
typedef enum specode_kv_policy {
  SPECODE_KV_POLICY_FULL = 0,          /* every row resident (kv_type precision): the exactness reference */
  SPECODE_KV_POLICY_OFFLOAD_ALL = 1,   /* host pages; each decode step copies every row (naive baseline) */
  SPECODE_KV_POLICY_SPECACHE = 2,      /* low-bit copy + fp16 residual + top-k rows prefetched by a
                                          speculative token, one step ahead */
  SPECODE_KV_POLICY_SPECACHE_SYNC = 3, /* ablation: the real token's true top-k, fetched synchronously */
  /* Baselines (no host pages; a prompt is prefilled exactly and the cache is
   * compressed when generation starts, see native/src/baselines.h): */
  SPECODE_KV_POLICY_STREAMINGLLM = 4,  /* attention sinks (kv_sinks first tokens) + the newest tokens,
                                          kv_budget rows in all; the rest evicted */
  SPECODE_KV_POLICY_H2O = 5,           /* heavy hitters (most accumulated attention, half the budget)
                                          + the newest tokens (the other half); the rest evicted */
  SPECODE_KV_POLICY_KIVI = 6,          /* KIVI: kv_bits-bit codes (keys per channel, values per token,
                                          group kv_group) + the newest 1..kv_residual tokens in fp16 */
  /* The seed papers' other methods (same compression timing as the
   * baselines; see native/src/seed_policies.h): */
  SPECODE_KV_POLICY_TAILORKV = 7,      /* per layer from an offline profile (computed once per model into
                                          $SPECODE_CACHE or ~/.cache/specode): "dense" layers keep a 1-bit
                                          copy (group kv_group, kv_residual newest tokens fp16, default
                                          128); "sparse" layers keep every row on the host and load 8 sinks
                                          + 56 recent + top rows by approximate score, kv_budget rows in
                                          all (default 192) */
  SPECODE_KV_POLICY_GEAR = 8,          /* GEAR: kv_bits-bit KIVI codes (group kv_group) + low-rank residual
                                          (rank 4 prompt, 2 later) + top 2% outliers in fp16; the newest
                                          1..kv_residual tokens (default 64) in fp16 */
  SPECODE_KV_POLICY_KVMERGER = 9,      /* KVMerger: similar adjacent keys merged (Gaussian weights around
                                          the highest-attention member) down to kv_budget rows, or
                                          kv_budget_ratio of the prompt (default 0.5); first two and
                                          last layers untouched */
} specode_kv_policy;

/* Which decoder runs a context. The CUDA backend (when the engine was built with
 * nvcc and a device answers) holds the weights, the low-bit copy, the residual and
 * the prefetch buffer in VRAM and the fp16 rows in pinned host RAM; it runs the
 * full, offload-all and specache policies, kv_type f16, without kv_measure. It has
 * no host-page sharing between contexts nor disk tier (kv_disk_dir is ignored), and
 * specode_context_copy / track_attention are CPU-only. */
typedef enum specode_backend {
  SPECODE_BACKEND_CPU = 0,  /* default: the CPU decoder */
  SPECODE_BACKEND_AUTO = 1, /* CUDA when built in, a device answers, the policy and options run there and
                               the context fits; the CPU otherwise. specode_context_backend says which and why */
  SPECODE_BACKEND_CUDA = 2, /* CUDA or an error saying why not */
} specode_backend;

typedef struct specode_context_params {
  uint32_t n_ctx;        /* max tokens held in the KV cache; 0: model's n_ctx_train */
  uint32_t n_batch;      /* max tokens per forward pass during prefill; 0: 256 */
  int32_t kv_type;       /* specode_kv_type (full policy only; paged policies hold fp16) */
  int32_t n_threads;     /* <= 0: the model's n_threads */
  int32_t kv_policy;     /* specode_kv_policy; default full */
  int32_t kv_bits;       /* specache*, kivi, gear: bits of the low-bit copy, 1 or 2; default 2 */
  int32_t kv_group;      /* specache*, kivi, gear, tailorkv: quantization group g, 32 or 64 (tokens per key group,
                            channels per value group, capped at head_dim); default 64 */
  int32_t kv_topk;       /* specache*: fp16 rows fetched per layer per KV head; default 64 */
  int32_t kv_residual;   /* specache*, kivi, gear, tailorkv: newest tokens kept in fp16, a multiple of kv_group;
                            0 (default): the policy's own, specache* 64, kivi 128, gear 64,
                            tailorkv 128 */
  int32_t kv_page_tokens;/* paged policies: tokens per host page; default 64 */
  int32_t kv_measure;    /* specache: 1 = also compute each real token's true top-k (exact scores
                            over the host pages) to report top-k overlap; costs a full pass */
  int32_t kv_budget;     /* h2o, streamingllm, kvmerger: K/V rows kept per layer and KV head once
                            generation starts; 0 (default): kv_budget_ratio of the tokens held.
                            tailorkv: rows loaded per sparse layer and KV head, > 64; 0: 192 */
  float kv_budget_ratio; /* h2o, streamingllm, kvmerger: used when kv_budget is 0, in (0, 1];
                            0: the policy's default, 0.2 (kvmerger 0.5) */
  int32_t kv_sinks;      /* streamingllm: first tokens always kept (attention sinks), >= 0;
                            default 4; kv_budget, when set, must exceed it */
  int32_t kv_rerank;     /* specache: choose the fetched rows in two stages — the kv_rerank × kv_topk
                            best by the low-bit scores, then the kv_topk best of those by exact
                            scores over their fp16 host rows; 1: one stage, as the SpeCache paper;
                            1..16; 0 (default): automatic — 16 at 1 bit, 4 at 2 bits, lowered
                            where needed so that kv_rerank × kv_topk <= 1024 */
  const char *kv_disk_dir; /* paged policies: disk tier of the host pages — full pages are saved
                              under <kv_disk_dir>/<model id>/ and adopted from there by a later
                              context of the same weights instead of recomputed; corrupt or stale
                              files are detected and recomputed. NULL or "" (default): off */
  uint64_t kv_disk_max_bytes; /* cap on the model's directory, oldest pages out; 0: 4 GiB */
  int32_t backend;              /* specode_backend; default CPU */
  uint64_t device_budget_bytes; /* CUDA: device memory the weights and this context may use; 0: what is free.
                                   A context that does not fit is refused with the largest n_ctx that would */
  int32_t kv_sym_values; /* specache*, 2-bit only: 1 = values quantized symmetrically, one fp16 scale per
                            value group and no zero (2 bytes less per token and KV head than KIVI's
                            min/max; an experiment beyond DESIGN.md, see docs/benchmarks.md). CPU
                            backend only. 0 (default): KIVI's scale and zero */
  int32_t kv_param_bits; /* specache*: how the low-bit copy stores its scales and zeros.
                            16: fp16 per group, as DESIGN.md. 8: 8-bit codes on a grid per block (a key
                            group's channels; a value column over a key group's tokens) with the grid's lo
                            and step in fp16, about 2 bytes less per token and KV head for keys and for
                            values; CPU backend only, not with kv_sym_values. 0 (default): automatic — 8 for
                            the 2-bit copy on the CPU backend (fp16 params put 2-bit over 1/6 of fp16 below
                            12k tokens; 8-bit params keep its agreement, docs/benchmarks.md), 16 otherwise.
                            specode_kv_metrics.lowbit_param_bits says which a context uses */
} specode_context_params;

specode_context_params specode_context_default_params(void);

int32_t specode_context_init(specode_model *model, const specode_context_params *params,
                             specode_context **out);
void specode_context_free(specode_context *ctx);

/* The backend a context runs on and why it was chosen. */
typedef struct specode_backend_info {
  char name[8];      /* "cpu" or "cuda" */
  char device[128];  /* the GPU's name, or the CPU kernels ("avx512", "avx2", "scalar") */
  char reason[384];  /* why this backend: what was requested, what the CUDA probe found, what does not run there */
} specode_backend_info;

int32_t specode_context_backend(const specode_context *ctx, specode_backend_info *out);

/* Tokens currently held in the KV cache (positions 0 .. n_past-1). */
uint32_t specode_context_n_past(const specode_context *ctx);

/* Drop every cached position >= n_keep (for prefix reuse and rewinds). */
int32_t specode_context_truncate(specode_context *ctx, uint32_t n_keep);

/* Make dst hold the same tokens and K/V as src (contexts of the same model;
 * any policies; dst's n_ctx must fit src's tokens) without running the model:
 * src's full-precision rows are written through dst's policy exactly as a
 * prefill would write them (a low-bit policy builds its low-bit copy from
 * them), and src's last logits are copied. What dst held before is dropped.
 * Used to evaluate several policies on one prefill. */
int32_t specode_context_copy(specode_context *dst, const specode_context *src);

/* Run tokens at positions n_past .. n_past+n_tokens-1, appending their K/V.
 * Prefill is chunked by n_batch internally. Paged policies adopt leading
 * tokens held in cached host pages instead of recomputing them (not with
 * all_logits). One token after a prompt is a generation step (see
 * specode_decode_spec).
 * logits_out: NULL, or [n_tokens][n_vocab] when all_logits != 0, else [n_vocab]
 * for the last token only. The context also keeps the last token's logits for
 * specode_sample(). */
int32_t specode_decode(specode_context *ctx, const int32_t *tokens, uint32_t n_tokens,
                       int32_t all_logits, float *logits_out);

/* Ask a running specode_decode() on another thread to stop at the next chunk
 * boundary (between tokens); it returns SPECODE_ERR_CANCELLED and keeps the
 * tokens already processed. Cleared by the next specode_decode(). */
void specode_context_cancel(specode_context *ctx);

/* Last token's logits ([n_vocab]) or NULL before the first decode. */
const float *specode_context_logits(const specode_context *ctx);

/* One generation step for real_token at position n_past (n_past >= 1).
 * specache: one forward pass over TWO tokens, real_token at n_past and the
 * engine's speculative token at n_past + 1 (a causal batch: the real token
 * does not see it). The real token's K/V is appended, the speculative one's
 * discarded; the speculative token's attention row picks the rows fetched for
 * the next step. The first step after a prefill (or truncate) first runs a
 * pre-decode of real_token over the low-bit copy to get the first speculative
 * token and fetch set.
 * logits_real: NULL or [n_vocab], the real token's logits (also kept for
 * specode_sample). spec_token_out: NULL or the speculative token this step ran
 * at n_past + 1, i.e. the engine's guess of the token the caller will choose
 * from logits_real; -1 for policies without speculation.
 * full runs the same two-token step with exact attention (a reference for
 * the speculative token); offload-all and specache-sync run a plain one-token
 * step. The real token's numbers never depend on the speculative one: with
 * a top-k covering the context, specache's logits are full's, bit for bit.
 * specode_decode() with n_tokens == 1 is this step for specache and a plain
 * one-token step for the other policies, so callers need not change to get
 * SpeCache. */
int32_t specode_decode_spec(specode_context *ctx, int32_t real_token, float *logits_real, int32_t *spec_token_out);

/* Leading tokens of tokens[0..n_tokens) that a decode would not recompute:
 * those equal to the cached positions, or held in cached host pages (paged
 * policies). specode_decode reuses cached pages by itself. */
int32_t specode_context_cached_prefix(const specode_context *ctx, const int32_t *tokens, uint32_t n_tokens,
                                      uint32_t *n_cached);

/* What the KV policy holds and moves. "Device" is the accelerator tier; on
 * the CPU backend it lives in RAM and is counted as VRAM would be. */
typedef struct specode_kv_metrics {
  char policy[16];                  /* "full", "offload-all", "specache", "specache-sync",
                                       "streamingllm", "h2o", "kivi", "tailorkv", "gear", "kvmerger" */
  char backend[8];                  /* "cpu" or "cuda" */
  uint64_t device_weight_bytes;     /* model weights */
  uint64_t device_lowbit_bytes;     /* low-bit K/V copy: codes + fp16 scales/zeros */
  uint64_t device_residual_bytes;   /* fp16 residual window (allocated) */
  uint64_t device_prefetch_bytes;   /* fp16 prefetch buffers (allocated) */
  uint64_t device_full_bytes;       /* full-precision rows on device: the whole cache (full), one
                                       layer's staged rows (offload-all) or the rows not evicted
                                       (h2o, streamingllm) */
  uint64_t device_kv_bytes;         /* sum of the four above */
  uint64_t device_workspace_bytes;  /* CUDA: activations, logits and attention work space (0 on the CPU) */
  uint64_t device_free_bytes;       /* CUDA: the device's free memory after the last call (0 on the CPU) */
  uint64_t device_total_bytes;      /* CUDA: the device's memory (0 on the CPU) */
  uint64_t host_kv_bytes;           /* host pages allocated (in use and cached) */
  uint64_t fp16_kv_bytes;           /* the held tokens' K/V in fp16 (what full fp16 would need) */
  double compression_ratio;         /* fp16_kv_bytes / device_kv_bytes */
  uint64_t n_tokens;                /* tokens held */
  uint64_t n_lowbit_tokens;         /* of which in the low-bit copy */
  uint64_t n_residual_tokens;       /* of which in the fp16 residual */
  uint64_t fetch_bytes_total;       /* host -> device bytes copied by decode steps */
  uint64_t fetch_bytes_last;        /* ... by the last step */
  uint64_t stall_ns_total;          /* time decode waited on fetches */
  uint64_t stall_ns_last;           /* ... in the last step */
  uint64_t step_ns_total;           /* wall time of decode steps (n_tokens == 1 / decode_spec) */
  uint64_t step_ns_last;            /* ... of the last step */
  uint64_t steps;                   /* decode steps since init or reset */
  uint64_t spec_checked;            /* steps whose speculative token could be checked */
  uint64_t spec_matched;            /* ... that equalled the next real token */
  double spec_match_rate;           /* spec_matched / spec_checked (0 when none) */
  uint64_t overlap_samples;         /* (step, layer, KV head) triples measured (kv_measure, and
                                       only where the low-bit copy holds more than top-k tokens) */
  double topk_overlap;              /* mean |speculative top-k ∩ real token's true top-k| / k */
  double topk_mass_recall;          /* mean true attention mass on the fetched rows / on the true top-k */
  uint64_t prefix_reused_tokens;    /* tokens taken from cached pages instead of recomputed */
  uint64_t host_pages_referenced;   /* host pages held by the sequence */
  uint64_t host_pages_cached;       /* unreferenced host pages kept for prefix reuse */
  uint64_t disk_pages_loaded;       /* disk tier (kv_disk_dir): pages read instead of recomputed */
  uint64_t disk_pages_saved;        /* ... pages written */
  uint64_t disk_pages_rejected;     /* ... files found corrupt or stale (deleted, recomputed) */
  uint64_t disk_bytes;              /* ... bytes in the model's directory */
  int32_t lowbit_param_bits;        /* specache*: bits of each stored scale and zero of the low-bit copy,
                                       16 (fp16) or 8 (kv_param_bits); 0 for the other policies */
} specode_kv_metrics;

/* Snapshot of the metrics as of the end of the last decode (safe to call
 * while a decode runs on another thread). */
int32_t specode_context_metrics(const specode_context *ctx, specode_kv_metrics *out);
/* Zero the counters (fetch, stall, step, speculation, overlap); sizes stay.
 * Not while a decode runs on this context. */
void specode_context_reset_metrics(specode_context *ctx);

/* Attention read-out: while on, every generation step adds, for each cached
 * position, the attention probability the step's query gave it (mean over a
 * GQA group's query heads, summed over layers and KV heads). specache reads
 * the speculative token's probabilities over the low-bit copy — the ones its
 * top-k choice uses (each step, plus the pre-decode pass that starts a run
 * of steps) — so the newest R tokens are not included. Turning it on
 * zeroes the sums. SPECODE_ERR_UNSUPPORTED for policies without a read-out.
 * Not while a decode runs on this context. */
int32_t specode_context_track_attention(specode_context *ctx, int32_t on);
/* The sums of positions [0, n) into out; returns how many were written
 * (min(n, n_ctx)) or a negative status. Not while a decode runs. */
int32_t specode_context_attention_mass(const specode_context *ctx, float *out, uint32_t n);

/* ---------------------------------------------------------------- CUDA probe */

/* Whether a CUDA device is present, found at run time (the NVIDIA driver library is
 * opened with dlopen), and whether this build has the CUDA backend; says what was found
 * and why not. */
typedef struct specode_cuda_info {
  int32_t available;      /* 1: a device answered */
  int32_t device_count;
  int32_t driver_version; /* e.g. 13000; 0 when unknown */
  char name[128];         /* device 0 */
  uint64_t total_bytes;   /* device 0's memory */
  char reason[256];       /* when not available: why */
  int32_t backend_built;  /* 1: the engine was built with the CUDA backend (nvcc at install time) */
} specode_cuda_info;

int32_t specode_cuda_probe(specode_cuda_info *out);

/* ---------------------------------------------------------------- sampler */

typedef struct specode_sampler specode_sampler;

typedef struct specode_sampler_params {
  float temperature;         /* <= 0: greedy (argmax) */
  int32_t top_k;             /* <= 0: off */
  float top_p;               /* >= 1: off */
  float min_p;               /* <= 0: off */
  float repeat_penalty;      /* 1: off; applied to the last repeat_last_n tokens */
  int32_t repeat_last_n;     /* window for the repetition penalty */
  uint64_t seed;             /* RNG seed */
} specode_sampler_params;

specode_sampler_params specode_sampler_default_params(void);

int32_t specode_sampler_init(const specode_sampler_params *params, specode_sampler **out);
void specode_sampler_free(specode_sampler *sampler);
/* Record a token as part of the history (prompt tokens too, for the penalty). */
void specode_sampler_accept(specode_sampler *sampler, int32_t token);
/* Choose the next token from logits [n_vocab]. Does not accept it. */
int32_t specode_sampler_sample(specode_sampler *sampler, const float *logits, int32_t n_vocab);

#ifdef __cplusplus
}
#endif

#endif /* SPECODE_H */

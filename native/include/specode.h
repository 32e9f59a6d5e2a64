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

typedef struct specode_context_params {
  uint32_t n_ctx;        /* max tokens held in the KV cache; 0: model's n_ctx_train */
  uint32_t n_batch;      /* max tokens per forward pass during prefill; 0: 256 */
  int32_t kv_type;       /* specode_kv_type */
  int32_t n_threads;     /* <= 0: the model's n_threads */
} specode_context_params;

specode_context_params specode_context_default_params(void);

int32_t specode_context_init(specode_model *model, const specode_context_params *params,
                             specode_context **out);
void specode_context_free(specode_context *ctx);

/* Tokens currently held in the KV cache (positions 0 .. n_past-1). */
uint32_t specode_context_n_past(const specode_context *ctx);

/* Drop every cached position >= n_keep (for prefix reuse and rewinds). */
int32_t specode_context_truncate(specode_context *ctx, uint32_t n_keep);

/* Run tokens at positions n_past .. n_past+n_tokens-1, appending their K/V.
 * Prefill is chunked by n_batch internally.
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

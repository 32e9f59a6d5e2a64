// engine.cpp — the C API of specode.h over the C++ model, context and sampler.
#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "context.h"
#include "engine_internal.h"
#include "gpu_backend.h"
#include "model.h"
#include "quant.h"
#include "sampler.h"
#include "specode.h"

struct specode_sampler {
  std::unique_ptr<specode::Sampler> impl;
};

namespace {
thread_local std::string g_last_error;

int32_t set_error(int32_t status, const std::string &msg) {
  g_last_error = msg;
  return status;
}

void copy_str(char *dst, size_t cap, const std::string &s) {
  std::strncpy(dst, s.c_str(), cap - 1);
  dst[cap - 1] = 0;
}
}  // namespace

extern "C" {

const char *specode_last_error(void) { return g_last_error.c_str(); }

const char *specode_cpu_kernels(void) { return specode::quant_kernel_set(); }

specode_model_params specode_model_default_params(void) {
  specode_model_params p{};
  p.path = nullptr;
  p.n_threads = 0;
  return p;
}

int32_t specode_model_load(const specode_model_params *params, specode_model **out) {
  if (!params || !params->path || !out) return set_error(SPECODE_ERR_ARGUMENT, "model_load: path is required");
  *out = nullptr;
  try {
    std::unique_ptr<specode::Model> m;
    std::string err;
    int st = specode::model_load(params->path, params->n_threads, &m, &err);
    if (st != SPECODE_OK) return set_error(st, err);
    *out = new specode_model{};
    (*out)->impl = std::move(m);
    return SPECODE_OK;
  } catch (const std::bad_alloc &) {
    return set_error(SPECODE_ERR_NOMEM, std::string(params->path) + ": out of memory while loading");
  }
}

void specode_model_free(specode_model *model) { delete model; }

int32_t specode_model_get_info(const specode_model *model, specode_model_info *out) {
  if (!model || !out) return set_error(SPECODE_ERR_ARGUMENT, "model_get_info: null argument");
  const specode::Model &m = *model->impl;
  const specode::Hparams &hp = m.hp;
  std::memset(out, 0, sizeof(*out));
  copy_str(out->arch, sizeof(out->arch), hp.arch);
  copy_str(out->name, sizeof(out->name), hp.name);
  out->n_vocab = hp.n_vocab;
  out->n_embd = hp.n_embd;
  out->n_layer = hp.n_layer;
  out->n_head = hp.n_head;
  out->n_head_kv = hp.n_head_kv;
  out->head_dim = hp.head_dim;
  out->n_ff = hp.n_ff;
  out->n_ctx_train = hp.n_ctx_train;
  out->rope_freq_base = hp.rope_base;
  out->rms_eps = hp.rms_eps;
  out->rope_neox = hp.rope_neox ? 1 : 0;
  out->weight_bytes = m.file.data_bytes();
  copy_str(out->file_type, sizeof(out->file_type), m.dominant_type);
  return SPECODE_OK;
}

specode_context_params specode_context_default_params(void) {
  specode_context_params p{};
  p.n_ctx = 0;
  p.n_batch = 256;
  p.kv_type = SPECODE_KV_F16;
  p.n_threads = 0;
  p.kv_policy = SPECODE_KV_POLICY_FULL;
  p.kv_bits = 2;
  p.kv_group = 64;
  p.kv_topk = 64;
  p.kv_page_tokens = 64;
  p.kv_measure = 0;
  p.kv_residual = 0;  // the policy's own: specache* 64, kivi 128
  p.kv_budget = 0;
  p.kv_budget_ratio = 0.0f;  // 0.2
  p.kv_sinks = 4;
  p.kv_rerank = 0;  // automatic: resolved_rerank
  p.kv_sym_values = 0;
  p.kv_param_bits = 0;  // automatic: resolved_param_bits
  p.kv_disk_dir = nullptr;
  p.kv_disk_max_bytes = 0;
  p.backend = SPECODE_BACKEND_CPU;
  p.device_budget_bytes = 0;
  return p;
}

namespace {
// kv_rerank as the policies use it (0: specode::auto_rerank).
int resolved_rerank(const specode_context_params &p) {
  return p.kv_rerank > 0 ? p.kv_rerank : specode::auto_rerank(p.kv_bits, p.kv_topk);
}

// kv_param_bits as a CPU context's low-bit copy uses it (0: 8 for the 2-bit copy of specache*,
// whose fp16 params miss 1/6 of fp16 below 12k tokens; 16 otherwise). CUDA contexts hold fp16.
int resolved_param_bits(const specode_context_params &p) {
  if (p.kv_param_bits) return p.kv_param_bits;
  const bool copy = p.kv_policy == SPECODE_KV_POLICY_SPECACHE || p.kv_policy == SPECODE_KV_POLICY_SPECACHE_SYNC;
  return copy && p.kv_bits == 2 && !p.kv_sym_values ? 8 : 16;
}

// What keeps a context off the CUDA backend before a device is tried ("" when nothing does).
std::string cuda_obstacle(const specode_context_params &p, specode_cuda_info *ci) {
  if (!specode::gpu_backend_built())
    return "this engine was built without the CUDA backend (nvcc was not found at install time)";
  specode_cuda_probe(ci);
  if (!ci->available) return std::string("no CUDA device (") + ci->reason + ")";
  if (p.kv_policy != SPECODE_KV_POLICY_FULL && p.kv_policy != SPECODE_KV_POLICY_OFFLOAD_ALL &&
      p.kv_policy != SPECODE_KV_POLICY_SPECACHE)
    return "the KV policy runs on the CPU backend only (CUDA has full, offload-all and specache)";
  if (p.kv_type != SPECODE_KV_F16) return "kv_type f32 runs on the CPU backend only";
  if (p.kv_measure) return "kv_measure (exact top-k overlap) runs on the CPU backend only";
  if (p.kv_sym_values) return "kv_sym_values (symmetric 2-bit values) runs on the CPU backend only";
  if (p.kv_param_bits == 8) return "kv_param_bits 8 (8-bit scales and zeros) runs on the CPU backend only";
  return "";
}

// A CUDA context for params, or the status with *err saying why not.
int32_t cuda_context(specode_model *model, const specode_context_params &p, int residual, specode_cuda_info *ci,
                     std::unique_ptr<specode::GpuContext> *out, std::string *err) {
  *err = cuda_obstacle(p, ci);
  if (!err->empty()) return SPECODE_ERR_UNSUPPORTED;
  specode::GpuContextConfig g;
  g.n_ctx = p.n_ctx ? (int)p.n_ctx : model->impl->hp.n_ctx_train;
  g.policy = (specode::KvPolicy)p.kv_policy;
  g.bits = p.kv_bits;
  g.group = p.kv_group;
  g.topk = p.kv_topk;
  g.rerank = resolved_rerank(p);
  g.residual = residual;
  g.budget_bytes = p.device_budget_bytes;
  std::lock_guard<std::mutex> lock(model->gpu_mutex);
  return specode::gpu_context_create(*model->impl, &model->gpu_weights, g, out, err);
}

void set_backend(specode_backend_info *b, const char *name, const std::string &device, const std::string &reason) {
  copy_str(b->name, sizeof b->name, name);
  copy_str(b->device, sizeof b->device, device);
  copy_str(b->reason, sizeof b->reason, reason);
}
}  // namespace

int32_t specode_context_init(specode_model *model, const specode_context_params *params, specode_context **out) {
  if (!model || !params || !out) return set_error(SPECODE_ERR_ARGUMENT, "context_init: null argument");
  *out = nullptr;
  if (params->backend < SPECODE_BACKEND_CPU || params->backend > SPECODE_BACKEND_CUDA)
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: backend must be cpu (0), auto (1) or cuda (2), got " +
                                               std::to_string(params->backend));
  if (params->kv_type != SPECODE_KV_F16 && params->kv_type != SPECODE_KV_F32)
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_type must be SPECODE_KV_F16 or SPECODE_KV_F32");
  if (params->n_ctx > (1u << 20))
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: n_ctx " + std::to_string(params->n_ctx) + " is too large");
  if (params->kv_policy < SPECODE_KV_POLICY_FULL || params->kv_policy > SPECODE_KV_POLICY_KVMERGER)
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_policy " + std::to_string(params->kv_policy) +
                                               " is not one of full (0), offload-all (1), specache (2), "
                                               "specache-sync (3), streamingllm (4), h2o (5), kivi (6), "
                                               "tailorkv (7), gear (8), kvmerger (9)");
  const bool paged = params->kv_policy >= SPECODE_KV_POLICY_OFFLOAD_ALL &&
                     params->kv_policy <= SPECODE_KV_POLICY_SPECACHE_SYNC;
  const bool evicting = params->kv_policy == SPECODE_KV_POLICY_STREAMINGLLM || params->kv_policy == SPECODE_KV_POLICY_H2O;
  const bool r128 = params->kv_policy == SPECODE_KV_POLICY_KIVI || params->kv_policy == SPECODE_KV_POLICY_TAILORKV;
  const int residual = params->kv_residual ? params->kv_residual : r128 ? 128 : 64;
  const float budget_ratio = params->kv_budget_ratio        ? params->kv_budget_ratio
                             : params->kv_policy == SPECODE_KV_POLICY_KVMERGER ? 0.5f
                                                                               : 0.2f;
  if (params->kv_policy == SPECODE_KV_POLICY_KVMERGER) {
    if (params->kv_budget < 0 || params->kv_budget > (1 << 20))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_budget must be in [0, 2^20] tokens, got " +
                                                 std::to_string(params->kv_budget));
    if (!(budget_ratio > 0.0f && budget_ratio <= 1.0f))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_budget_ratio must be in (0, 1], got " +
                                                 std::to_string(params->kv_budget_ratio));
  }
  if (params->kv_policy == SPECODE_KV_POLICY_TAILORKV &&
      params->kv_budget != 0 && (params->kv_budget <= 64 || params->kv_budget > (1 << 20)))
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: tailorkv's kv_budget (rows loaded per sparse layer and KV "
                                           "head) must exceed its 8 sinks + 56 recent rows, got " +
                                               std::to_string(params->kv_budget));
  if (evicting) {
    if (params->kv_budget < 0 || params->kv_budget > (1 << 20))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_budget must be in [0, 2^20] tokens, got " +
                                                 std::to_string(params->kv_budget));
    if (!(budget_ratio > 0.0f && budget_ratio <= 1.0f))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_budget_ratio must be in (0, 1], got " +
                                                 std::to_string(params->kv_budget_ratio));
    if (params->kv_sinks < 0 || params->kv_sinks > (1 << 20))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_sinks must be >= 0, got " +
                                                 std::to_string(params->kv_sinks));
    if (params->kv_policy == SPECODE_KV_POLICY_STREAMINGLLM && params->kv_budget > 0 &&
        params->kv_budget <= params->kv_sinks)
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_budget (" + std::to_string(params->kv_budget) +
                                                 ") must exceed kv_sinks (" + std::to_string(params->kv_sinks) +
                                                 ") to leave a recent window");
  }
  const bool lowbit = params->kv_policy == SPECODE_KV_POLICY_KIVI || params->kv_policy == SPECODE_KV_POLICY_GEAR ||
                      params->kv_policy == SPECODE_KV_POLICY_TAILORKV;
  if (params->kv_param_bits != 0 && params->kv_param_bits != 8 && params->kv_param_bits != 16)
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_param_bits must be 16 (fp16 scales and zeros) or 8, got " +
                                               std::to_string(params->kv_param_bits));
  if (params->kv_param_bits == 8 && (!paged || params->kv_policy == SPECODE_KV_POLICY_OFFLOAD_ALL))
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_param_bits 8 applies to the low-bit copy of specache and "
                                           "specache-sync only");
  if (params->kv_param_bits == 8 && params->kv_sym_values)
    return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_param_bits 8 and kv_sym_values cannot be combined");
  if (paged || lowbit) {
    const specode::Hparams &hp = model->impl->hp;
    const int g = params->kv_group, R = residual;
    if (params->kv_bits != 1 && params->kv_bits != 2)
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_bits must be 1 or 2, got " +
                                                 std::to_string(params->kv_bits));
    if (g != 32 && g != 64)
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_group must be 32 or 64, got " + std::to_string(g));
    if (R <= 0 || R % g != 0)
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_residual (" + std::to_string(R) +
                                                 ") must be a positive multiple of kv_group (" + std::to_string(g) + ")");
    if (params->kv_sym_values != 0 && params->kv_sym_values != 1)
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_sym_values must be 0 or 1, got " +
                                                 std::to_string(params->kv_sym_values));
    if (params->kv_sym_values && (!paged || params->kv_policy == SPECODE_KV_POLICY_OFFLOAD_ALL || params->kv_bits != 2))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_sym_values (symmetric values) applies to the 2-bit copy "
                                             "of specache and specache-sync only");
    if (params->kv_rerank < 0 || params->kv_rerank > 16)
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_rerank must be in [1, 16] (0: automatic), got " +
                                                 std::to_string(params->kv_rerank));
    if (paged && (params->kv_topk < 0 || params->kv_topk > (1 << 20)))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_topk must be in [0, 2^20], got " +
                                                 std::to_string(params->kv_topk));
    if (paged && (params->kv_page_tokens <= 0 || params->kv_page_tokens > 4096))
      return set_error(SPECODE_ERR_ARGUMENT, "context_init: kv_page_tokens must be in [1, 4096], got " +
                                                 std::to_string(params->kv_page_tokens));
    if (hp.head_dim % 8 != 0 || hp.head_dim % std::min(g, hp.head_dim) != 0)
      return set_error(SPECODE_ERR_UNSUPPORTED, "context_init: head_dim " + std::to_string(hp.head_dim) +
                                                    " does not split into 8-channel code bytes and groups of " +
                                                    std::to_string(g) + " (use the full policy)");
  }
  // The backend: CUDA when asked for (or, with auto, when it can run this context), else the CPU.
  std::string why_cpu = "CPU requested";
  if (params->backend != SPECODE_BACKEND_CPU) {
    std::unique_ptr<specode::GpuContext> gpu;
    specode_cuda_info ci{};
    std::string err;
    int32_t st;
    try {
      st = cuda_context(model, *params, residual, &ci, &gpu, &err);
    } catch (const std::bad_alloc &) {
      st = SPECODE_ERR_NOMEM;
      err = "out of host memory for the CUDA context";
    }
    if (st == SPECODE_OK) {
      auto *c = new specode_context{};
      c->gpu = std::move(gpu);
      set_backend(&c->backend, "cuda", ci.name,
                  std::string(params->backend == SPECODE_BACKEND_CUDA ? "CUDA requested" : "auto: a CUDA device answered") +
                      (paged && params->kv_disk_dir && *params->kv_disk_dir
                           ? "; the disk tier and host-page sharing are CPU-only and are off"
                           : ""));
      *out = c;
      return SPECODE_OK;
    }
    if (params->backend == SPECODE_BACKEND_CUDA)
      return set_error(st, "context_init: the CUDA backend cannot run this context: " + err +
                               " (use backend auto or cpu for the CPU decoder)");
    why_cpu = "auto: " + err;
  }
  specode::ContextConfig cfg;
  cfg.n_ctx = (int)params->n_ctx;
  cfg.n_batch = params->n_batch ? (int)params->n_batch : 256;
  cfg.kv_f16 = params->kv_type == SPECODE_KV_F16;
  cfg.n_threads = params->n_threads;
  cfg.policy = (specode::KvPolicy)params->kv_policy;
  cfg.kv_bits = params->kv_bits;
  cfg.kv_group = params->kv_group;
  cfg.kv_topk = params->kv_topk;
  cfg.kv_rerank = resolved_rerank(*params);
  cfg.kv_sym_values = params->kv_sym_values != 0;
  cfg.kv_param_bits = resolved_param_bits(*params);
  cfg.kv_residual = residual;
  cfg.kv_page_tokens = params->kv_page_tokens;
  cfg.kv_measure = params->kv_measure != 0;
  cfg.kv_budget = params->kv_budget;
  cfg.kv_budget_ratio = budget_ratio;
  cfg.kv_sinks = params->kv_sinks;
  if (paged && params->kv_disk_dir && *params->kv_disk_dir) cfg.kv_disk_dir = params->kv_disk_dir;
  cfg.kv_disk_max_bytes = params->kv_disk_max_bytes;
  try {
    auto *c = new specode_context{};
    c->impl = std::make_unique<specode::Context>(model->impl.get(), cfg);
    set_backend(&c->backend, "cpu", specode::quant_kernel_set(), why_cpu);
    *out = c;
    return SPECODE_OK;
  } catch (const std::bad_alloc &) {
    return set_error(SPECODE_ERR_NOMEM, "context_init: out of memory for a " + std::to_string(params->n_ctx) +
                                            "-token KV cache (use a smaller n_ctx)");
  }
}

void specode_context_free(specode_context *ctx) { delete ctx; }

int32_t specode_context_backend(const specode_context *ctx, specode_backend_info *out) {
  if (!ctx || !out) return set_error(SPECODE_ERR_ARGUMENT, "context_backend: null argument");
  *out = ctx->backend;
  return SPECODE_OK;
}

uint32_t specode_context_n_past(const specode_context *ctx) {
  return !ctx ? 0 : ctx->gpu ? (uint32_t)ctx->gpu->n_past() : (uint32_t)ctx->impl->n_past();
}

int32_t specode_context_truncate(specode_context *ctx, uint32_t n_keep) {
  if (!ctx) return set_error(SPECODE_ERR_ARGUMENT, "context_truncate: null context");
  std::string err;
  int st = ctx->gpu ? ctx->gpu->truncate((int)n_keep, &err) : ctx->impl->truncate((int)n_keep, &err);
  return st == SPECODE_OK ? st : set_error(st, err);
}

int32_t specode_context_copy(specode_context *dst, const specode_context *src) {
  if (!dst || !src) return set_error(SPECODE_ERR_ARGUMENT, "context_copy: null context");
  if (dst->gpu || src->gpu)
    return set_error(SPECODE_ERR_UNSUPPORTED, "context_copy runs on the CPU backend only (create both contexts with "
                                              "backend cpu)");
  try {
    std::string err;
    int st = dst->impl->copy_from(*src->impl, &err);
    return st == SPECODE_OK ? st : set_error(st, err);
  } catch (const std::bad_alloc &) {
    return set_error(SPECODE_ERR_NOMEM, "context_copy: out of memory");
  }
}

int32_t specode_decode(specode_context *ctx, const int32_t *tokens, uint32_t n_tokens, int32_t all_logits,
                       float *logits_out) {
  if (!ctx || (!tokens && n_tokens)) return set_error(SPECODE_ERR_ARGUMENT, "decode: null argument");
  try {
    std::string err;
    int st = ctx->gpu ? ctx->gpu->decode(tokens, (int)n_tokens, all_logits != 0, logits_out, &err)
                      : ctx->impl->decode(tokens, (int)n_tokens, all_logits != 0, logits_out, &err);
    return st == SPECODE_OK ? st : set_error(st, err);
  } catch (const std::bad_alloc &) {
    return set_error(SPECODE_ERR_NOMEM, "decode: out of memory");
  }
}

void specode_context_cancel(specode_context *ctx) {
  if (ctx && ctx->gpu) ctx->gpu->cancel();
  else if (ctx) ctx->impl->cancel();
}

const float *specode_context_logits(const specode_context *ctx) {
  return !ctx ? nullptr : ctx->gpu ? ctx->gpu->last_logits() : ctx->impl->last_logits();
}

int32_t specode_decode_spec(specode_context *ctx, int32_t real_token, float *logits_real, int32_t *spec_token_out) {
  if (!ctx) return set_error(SPECODE_ERR_ARGUMENT, "decode_spec: null context");
  try {
    std::string err;
    int st = ctx->gpu ? ctx->gpu->decode_step(real_token, logits_real, spec_token_out, &err)
                      : ctx->impl->decode_step(real_token, logits_real, spec_token_out, &err);
    return st == SPECODE_OK ? st : set_error(st, err);
  } catch (const std::bad_alloc &) {
    return set_error(SPECODE_ERR_NOMEM, "decode_spec: out of memory");
  }
}

int32_t specode_context_cached_prefix(const specode_context *ctx, const int32_t *tokens, uint32_t n_tokens,
                                      uint32_t *n_cached) {
  if (!ctx || !n_cached || (!tokens && n_tokens))
    return set_error(SPECODE_ERR_ARGUMENT, "context_cached_prefix: null argument");
  *n_cached = (uint32_t)(ctx->gpu ? ctx->gpu->cached_prefix(tokens, (int)n_tokens)
                                   : ctx->impl->cached_prefix(tokens, (int)n_tokens));
  return SPECODE_OK;
}

int32_t specode_context_metrics(const specode_context *ctx, specode_kv_metrics *out) {
  if (!ctx || !out) return set_error(SPECODE_ERR_ARGUMENT, "context_metrics: null argument");
  if (ctx->gpu) ctx->gpu->metrics(out);
  else ctx->impl->metrics(out);
  return SPECODE_OK;
}

void specode_context_reset_metrics(specode_context *ctx) {
  if (ctx && ctx->gpu) ctx->gpu->reset_metrics();
  else if (ctx) ctx->impl->reset_metrics();
}

int32_t specode_context_track_attention(specode_context *ctx, int32_t on) {
  if (!ctx) return set_error(SPECODE_ERR_ARGUMENT, "context_track_attention: null context");
  if (ctx->gpu) return set_error(SPECODE_ERR_UNSUPPORTED, "context_track_attention runs on the CPU backend only");
  if (!ctx->impl->kv_mut().track_attention(on != 0))
    return set_error(SPECODE_ERR_UNSUPPORTED, std::string("context_track_attention: the KV policy '") +
                                                  ctx->impl->kv().policy() + "' has no attention read-out (specache has)");
  return SPECODE_OK;
}

int32_t specode_context_attention_mass(const specode_context *ctx, float *out, uint32_t n) {
  if (!ctx || (!out && n)) return set_error(SPECODE_ERR_ARGUMENT, "context_attention_mass: null argument");
  if (ctx->gpu) return set_error(SPECODE_ERR_UNSUPPORTED, "context_attention_mass runs on the CPU backend only");
  const int got = ctx->impl->kv().attention_mass(out, (int)std::min<uint32_t>(n, (uint32_t)ctx->impl->n_ctx()));
  if (got < 0)
    return set_error(SPECODE_ERR_UNSUPPORTED, std::string("context_attention_mass: the KV policy '") +
                                                  ctx->impl->kv().policy() + "' has no attention read-out (specache has)");
  return got;
}

specode_sampler_params specode_sampler_default_params(void) {
  specode_sampler_params p{};
  p.temperature = 0.0f;
  p.top_k = 40;
  p.top_p = 0.95f;
  p.min_p = 0.05f;
  p.repeat_penalty = 1.0f;
  p.repeat_last_n = 64;
  p.seed = 0x5eC0de;
  return p;
}

int32_t specode_sampler_init(const specode_sampler_params *params, specode_sampler **out) {
  if (!params || !out) return set_error(SPECODE_ERR_ARGUMENT, "sampler_init: null argument");
  if (params->repeat_penalty <= 0.0f)
    return set_error(SPECODE_ERR_ARGUMENT, "sampler_init: repeat_penalty must be > 0");
  *out = new specode_sampler{std::make_unique<specode::Sampler>(*params)};
  return SPECODE_OK;
}

void specode_sampler_free(specode_sampler *sampler) { delete sampler; }

void specode_sampler_accept(specode_sampler *sampler, int32_t token) {
  if (sampler) sampler->impl->accept(token);
}

int32_t specode_sampler_sample(specode_sampler *sampler, const float *logits, int32_t n_vocab) {
  if (!sampler || !logits || n_vocab <= 0) return set_error(SPECODE_ERR_ARGUMENT, "sampler_sample: bad argument");
  return sampler->impl->sample(logits, n_vocab);
}

}  // extern "C"

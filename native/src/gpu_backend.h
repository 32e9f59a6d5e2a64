// gpu_backend.h — the CUDA backend as the C API sees it. engine.cpp routes a
// context's calls here when the backend chosen at run time is CUDA; the
// implementation is native/cuda/backend.cu when the engine is built with nvcc
// (SPECODE_WITH_CUDA), and gpu_none.cpp ("not built in") otherwise, so the core
// never needs CUDA to build or to load.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "model.h"
#include "specache.h"
#include "specode.h"

namespace specode {

// The weights on the device, uploaded once per model and shared by its contexts.
class GpuWeights {
 public:
  virtual ~GpuWeights() = default;
};

struct GpuContextConfig {
  int n_ctx = 0;
  KvPolicy policy = KvPolicy::Full;  // full, offload-all or specache
  int bits = 2, group = 64, topk = 64, rerank = 4, residual = 64;
  uint64_t budget_bytes = 0;  // device memory for weights + context; 0: what is free
};

// One sequence on the device, with the Context methods the C API needs. The
// speculative steps are the CPU's (context.cpp step_locked): a pre-decode on
// the low-bit copy, then (real, speculative) passes.
class GpuContext {
 public:
  virtual ~GpuContext() = default;
  virtual int decode(const int32_t *tokens, int n, bool all_logits, float *logits_out, std::string *err) = 0;
  virtual int decode_step(int32_t token, float *logits_out, int32_t *spec_out, std::string *err) = 0;
  virtual int truncate(int n_keep, std::string *err) = 0;
  virtual int cached_prefix(const int32_t *tokens, int n) const = 0;
  virtual void metrics(specode_kv_metrics *out) const = 0;  // thread-safe snapshot
  virtual void reset_metrics() = 0;
  virtual int n_past() const = 0;
  virtual int n_ctx() const = 0;
  virtual const float *last_logits() const = 0;
  virtual void cancel() = 0;
};

// Whether this build has the CUDA backend.
bool gpu_backend_built();

// A context on CUDA device 0. *weights is the model's slot: uploaded on first use,
// then shared. SPECODE_ERR_UNSUPPORTED when there is no usable device (or no CUDA in
// this build), SPECODE_ERR_NOMEM when the model or the context does not fit (the
// message says what would); *err says why in words a user can act on.
int gpu_context_create(const Model &model, std::shared_ptr<GpuWeights> *weights, const GpuContextConfig &cfg,
                       std::unique_ptr<GpuContext> *out, std::string *err);

}  // namespace specode

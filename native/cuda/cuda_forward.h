// cuda_forward.h — the model on the device (forward.cu): weights uploaded as
// stored in the GGUF, and a context that runs decode steps with the K/V cache
// in fp16 in VRAM (policy `full`). Not wired into the engine yet.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "cuda_ops.h"
#include "model.h"

namespace specode::cuda {

struct DeviceWeight {
  uint32_t type = 0;
  const uint8_t *data = nullptr;  // device
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
};

struct DeviceLayer {
  DeviceWeight attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
};

class DeviceModel {
 public:
  // Copies every weight of m to the device. SPECODE_ERR_UNSUPPORTED (with *err) for a weight
  // type without a kernel; the CUDA error otherwise.
  static int32_t upload(const Model &m, std::unique_ptr<DeviceModel> *out, std::string *err);
  ~DeviceModel();
  uint64_t weight_bytes() const { return weight_bytes_; }

  Hparams hp;
  DeviceWeight tok_embd, output_norm, output;
  std::vector<DeviceLayer> layers;

 private:
  DeviceModel() = default;
  int32_t upload_weight(const Weight &w, DeviceWeight *out);
  std::vector<void *> allocs_;
  uint64_t weight_bytes_ = 0;
};

// Device memory of a model and context, for the status bar and the budget check.
struct DeviceMemory {
  uint64_t weights = 0;      // the uploaded weights
  uint64_t kv = 0;           // the fp16 K/V cache (policy full)
  uint64_t activations = 0;  // per-step buffers and logits
  uint64_t free = 0, total = 0;  // the device's, as cudaMemGetInfo says
};

class DeviceContext {
 public:
  // What a context of n_ctx tokens needs (weights from `model`; free/total from the device).
  static DeviceMemory plan(const DeviceModel &model, int n_ctx);
  // Allocates a context of n_ctx tokens. When it does not fit the device's free memory or
  // budget_bytes (0: no budget) — weights included — returns SPECODE_ERR_NOMEM and *err says
  // how much it needs, how much there is, and the largest n_ctx that would fit.
  static int32_t create(const DeviceModel &model, int n_ctx, uint64_t budget_bytes, std::unique_ptr<DeviceContext> *out,
                        std::string *err);
  ~DeviceContext();
  // One token at position n_past(); logits_host (may be null): [n_vocab].
  int32_t decode(int32_t token, float *logits_host);
  int n_past() const { return n_past_; }
  uint64_t bytes() const { return bytes_; }  // activations + K/V cache

 private:
  DeviceContext(const DeviceModel &m, int n_ctx) : model_(m), n_ctx_(n_ctx) {}
  const DeviceModel &model_;
  int n_ctx_;
  int n_past_ = 0;
  cudaStream_t stream_ = nullptr;
  std::vector<void *> allocs_;
  uint64_t bytes_ = 0;
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *att_ = nullptr, *proj_ = nullptr;
  float *gate_ = nullptr, *up_ = nullptr, *logits_ = nullptr, *m_ = nullptr, *l_ = nullptr, *inv_freq_ = nullptr;
  int *pos_ = nullptr;
  __half *kcache_ = nullptr, *vcache_ = nullptr;
};

}  // namespace specode::cuda

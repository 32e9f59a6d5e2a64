// cuda_forward.h — the model on the device (forward.cu): weights uploaded as
// stored in the GGUF, and a context that runs prefill and decode passes under the
// policies below. The engine reaches it through backend.cu (src/gpu_backend.h).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
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

// The K/V policy of a device context (src/specache.h has the CPU's):
//   full        every row fp16 in VRAM;
//   offload-all rows fp16 in pinned host RAM, every row of a layer copied to a VRAM staging
//               buffer before that layer's attention, every step (the naive baseline);
//   specache    rows fp16 in pinned host RAM; VRAM holds the low-bit copy, the residual
//               window and a prefetch buffer of the top-k rows per layer and KV head, chosen
//               from the speculative token's attention and fetched on a copy stream while the
//               rest of the step runs (layer l of the next step waits only for layer l's rows).
enum class DevicePolicy { Full = 0, OffloadAll = 1, Specache = 2 };

struct DeviceKvConfig {
  DevicePolicy policy = DevicePolicy::Full;
  int bits = 2, group = 64, topk = 64, rerank = 4, residual = 64;  // specache (src/specache.h)
  bool debias = true;
  int fetch_delay_us = 0;  // tests: the copy stream spins this long before each layer's fetch (a slow link)
};

// Device memory of a model and context, for the status bar and the budget check.
struct DeviceMemory {
  uint64_t weights = 0;      // the uploaded weights
  uint64_t kv = 0;           // K/V resident in VRAM: fp16 cache (full) or low-bit copy + residual (specache)
  uint64_t kv_lowbit = 0, kv_residual = 0;  // specache's parts of kv
  uint64_t buffers = 0;      // prefetch buffer (specache) or per-layer staging (offload-all)
  uint64_t activations = 0;  // per-step buffers, logits and attention work space
  uint64_t prefill = 0;      // transient during a prefill: one layer's rows staged (specache)
  uint64_t host_pinned = 0;  // the fp16 rows in pinned host RAM (host policies)
  uint64_t free = 0, total = 0;  // the device's, as cudaMemGetInfo says
  uint64_t resident() const { return weights + kv + buffers + activations; }
};

// Per-step figures of the last step() (device timings from CUDA events).
struct DeviceStepStats {
  float step_ms = 0;         // the whole step, first kernel to logits on the host
  float stall_ms = 0;        // compute stream waiting on the copy stream (specache)
  uint64_t fetched_bytes = 0;  // host → device bytes read this step (gather, rerank, staging)
};

class DeviceContext {
 public:
  static constexpr int kMaxStepTokens = 2;
  static constexpr int kPrefillBatch = 256;
  // What a context of n_ctx tokens needs (weights from `model`; free/total from the device).
  static DeviceMemory plan(const DeviceModel &model, int n_ctx, const DeviceKvConfig &cfg);
  // Allocates a context of n_ctx tokens. When it does not fit the device's free memory or
  // budget_bytes (0: no budget) — weights included — returns SPECODE_ERR_NOMEM and *err says
  // how much it needs, how much there is, and the largest n_ctx that would fit.
  static int32_t create(const DeviceModel &model, int n_ctx, const DeviceKvConfig &cfg, uint64_t budget_bytes,
                        std::unique_ptr<DeviceContext> *out, std::string *err);
  static int32_t create(const DeviceModel &model, int n_ctx, uint64_t budget_bytes, std::unique_ptr<DeviceContext> *out,
                        std::string *err) {
    return create(model, n_ctx, DeviceKvConfig{}, budget_bytes, out, err);
  }
  ~DeviceContext();
  // Appends n tokens with exact attention, in batches; logits_host (may be null): the last
  // token's [n_vocab], or every token's [n][n_vocab] when all_rows. When *cancel (set_cancel)
  // turns true, stops between batches with SPECODE_ERR_CANCELLED, keeping the batches done.
  int32_t prefill(const int32_t *tokens, int n, float *logits_host, bool all_rows = false);
  // One decode pass of n (1 or 2) tokens at positions n_past(), n_past() + 1; the first n_keep
  // (0 or 1) are kept (appended), the rest attended and dropped. SpeCache's steps: a pre-decode
  // of the first generated token (n 1, n_keep 0, select_row 0) gives the first speculative
  // token and fetch set; then (real, speculative) with n_keep 1, select_row 1. select_row
  // (specache): the row whose attention chooses the next step's rows (-1: none; the held rows
  // stay). logits_host: [n][n_vocab].
  int32_t step(const int32_t *tokens, int n, int n_keep, int select_row, float *logits_host);
  // One token, kept (a plain decode step).
  int32_t decode(int32_t token, float *logits_host) { return step(&token, 1, 1, -1, logits_host); }
  // Drops every position >= n_keep (no-op when n_keep >= n_past()); nothing is recomputed:
  // specache's low-bit groups below the new residual window are still a function of the
  // kept rows, so only the residual is reloaded from the host rows.
  int32_t truncate(int n_keep);
  void set_cancel(const std::atomic<bool> *flag) { cancel_ = flag; }
  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  int n_lowbit() const { return n_lowbit_; }      // specache: tokens in the low-bit copy
  int n_residual() const { return resid_n_; }     // specache: tokens in the fp16 residual
  const DeviceKvConfig &config() const { return cfg_; }
  const DeviceMemory &memory() const { return mem_; }
  const DeviceStepStats &last_step() const { return stats_; }
  uint64_t bytes() const { return mem_.kv + mem_.buffers + mem_.activations; }

 private:
  DeviceContext(const DeviceModel &m, int n_ctx, const DeviceKvConfig &cfg) : model_(m), n_ctx_(n_ctx), cfg_(cfg) {}
  int32_t alloc(size_t bytes, void **p);
  int32_t run_layers(int n, int pos0, int n_keep, int select_row, bool prefill, std::vector<bool> *waited = nullptr);
  int32_t output(int row0, int n, float *logits_host);
  // forward_specache.cu
  int32_t init_specache();
  int32_t attend_specache(int layer, int n, int n_keep, int select_row);
  int32_t select_and_fetch(int layer, int n_lowbit_now, int resid_now);
  int32_t rebuild_lowbit(int valid);
  int32_t drop_fetched();
  struct LowbitDev;
  int32_t quantize_rows(const LowbitDev &d, const __half *k, const __half *v, int t0, int nt);
  void kept_one();
  size_t lh(int layer, int h) const { return (size_t)layer * model_.hp.n_head_kv + h; }

  const DeviceModel &model_;
  int n_ctx_;
  DeviceKvConfig cfg_;
  DeviceMemory mem_;
  DeviceStepStats stats_;
  int n_past_ = 0;
  const std::atomic<bool> *cancel_ = nullptr;
  cudaStream_t stream_ = nullptr, copy_ = nullptr;
  std::vector<void *> allocs_;
  // Batch buffers ([rows][...] fp32, rows = kPrefillBatch).
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *att_ = nullptr, *proj_ = nullptr;
  float *gate_ = nullptr, *up_ = nullptr, *logits_ = nullptr, *inv_freq_ = nullptr, *work_ = nullptr;
  size_t work_floats_ = 0;
  int *pos_ = nullptr, *tok_ = nullptr;
  // K/V rows, [n_layer][n_head_kv][n_ctx][hd] fp16: in VRAM (full) or pinned host RAM mapped
  // into the device's address space (the host policies).
  __half *kdev_ = nullptr, *vdev_ = nullptr;
  __half *khost_ = nullptr, *vhost_ = nullptr;        // host pointers (pinned)
  __half *khost_d_ = nullptr, *vhost_d_ = nullptr;    // the same, as device pointers
  // One layer's rows staged in VRAM, [n_head_kv][n_ctx][hd]: offload-all's every step, and
  // specache's during a prefill only (allocated and freed by prefill()).
  __half *kstage_ = nullptr, *vstage_ = nullptr;
  // specache, per (layer, KV head): the low-bit stream, residual, prefetch buffer.
  struct LowbitDev {
    uint8_t *kcodes, *vcodes;
    __half *kscale, *kzero, *vscale, *vzero;
  };
  std::vector<LowbitDev> lowbit_;                     // [n_layer][n_head_kv]: one allocation per layer and array
  int64_t lv_stride_[3] = {0, 0, 0};                  // between heads: codes (bytes), key params, value params (halves)
  __half *rk_ = nullptr, *rv_ = nullptr;              // [n_layer][n_head_kv][R][hd]
  __half *newk_ = nullptr, *newv_ = nullptr;          // [n_head_kv][kMaxStepTokens][hd] unkept tokens
  __half *pk_ = nullptr, *pv_ = nullptr;              // [n_layer][n_head_kv][topk][hd] prefetch buffers
  int *ppos_ = nullptr;                               // [n_layer][n_head_kv][topk] their positions
  uint64_t *pbits_ = nullptr;                         // [n_layer][n_head_kv][words] the same as bitsets
  int words_ = 0;
  std::vector<int> pre_n_;                            // [n_layer][n_head_kv] rows held (host's count)
  int n_lowbit_ = 0, resid_n_ = 0;                    // the same for every layer
  int vis_n_ = -1, vis_keep_ = -1;                    // the (n, n_keep) visible_ was written for
  float *flush_ = nullptr;                            // [2][flush_rows_][hd] fp32 rows being quantized
  int flush_rows_ = 0;
  // specache attention state: per KV head queries [NKV][rows][hd], pieces, and per-layer
  // copies of the select row's queries and softmax totals for the copy stream.
  float *qg_ = nullptr, *pa_m_ = nullptr, *pa_l_ = nullptr, *pa_acc_ = nullptr, *pb_m_ = nullptr, *pb_l_ = nullptr,
        *pb_acc_ = nullptr, *scores_ = nullptr;
  int *visible_ = nullptr;
  float *qsel_ = nullptr, *msel_ = nullptr, *lsel_ = nullptr;  // [n_layer][NKV][G](×hd)
  float *sel_p_ = nullptr, *sel_avg_ = nullptr, *sel_exact_ = nullptr;
  int *wide_ = nullptr, *wide_n_ = nullptr, *pick_ = nullptr, *pick_n_ = nullptr;
  std::vector<cudaEvent_t> ev_attn_, ev_fetch_, ev_wait0_, ev_wait1_;
  std::vector<bool> fetch_pending_;
  cudaEvent_t ev_start_ = nullptr, ev_end_ = nullptr;
  uint64_t step_fetch_bytes_ = 0;
};

}  // namespace specode::cuda

// forward.cu — the model on the device (issue #4): weights uploaded as they are in
// the GGUF (quantized blocks, dequantized inside the products), prefill in batches
// with exact causal attention, and decode passes of one or two tokens (real +
// speculative) under the policies of cuda_forward.h. The same operations in the
// same order as the CPU's forward pass (src/context.cpp): embedding row, per layer
// RMSNorm → q/k/v (+ bias) → RoPE → K/V store → attention (GQA) → o-proj → residual
// → RMSNorm → gate/up → SwiGLU → down → residual; final RMSNorm and the output
// product. Activations stay fp32 (the CPU quantizes them to Q8 for quantized
// weights, so logits agree to that rounding, exactly for F32 weights). specache's
// attention, top-k choice and fetch: forward_specache.cu; the engine reaches it
// through backend.cu. specode_cuda_tests compares it with the CPU engine wherever a
// GPU is present, and specode_cuda_bench measures it.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda_forward.h"
#include "dequant.cuh"
#include "lowbit.h"

namespace specode::cuda {

namespace {

// out[t][e] = row tok[t] of W, dequantized: one thread per element, grid.y = token.
__global__ void embed_kernel(int type, const uint8_t *__restrict__ w, size_t row_bytes, const int *__restrict__ tok,
                             int n, float *__restrict__ out) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int be = block_elems(type), bb = block_bytes(type);
  const uint8_t *row = w + (size_t)tok[blockIdx.y] * row_bytes;
  out[(size_t)blockIdx.y * n + e] = be == 1 ? deq(type, row, e) : deq(type, row + (size_t)(e / be) * bb, e % be);
}

// x[i] += y[i % len] (y a bias of one row, or a whole [rows][len] array with len = n).
__global__ void add_kernel(float *__restrict__ x, const float *__restrict__ y, size_t n, int len) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i % len];
}

__global__ void scale_kernel(float *__restrict__ x, float s, size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

// dst[h][pos0 + t][c] = half(x[t][h·hd + c]) for tokens t < n and every KV head h; dst's KV
// heads are head_stride elements apart (rows of n_ctx tokens).
__global__ void store_rows_kernel(const float *__restrict__ x, __half *__restrict__ dst, int n_kv, int hd,
                                  int64_t head_stride, int pos0, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * n_kv * hd) return;
  const int t = i / (n_kv * hd), h = (i / hd) % n_kv, c = i % hd;
  dst[(size_t)h * head_stride + (size_t)(pos0 + t) * hd + c] = __float2half_rn(x[i]);
}

}  // namespace

DeviceModel::~DeviceModel() {
  for (void *p : allocs_) cudaFree(p);
}

int32_t DeviceModel::upload_weight(const Weight &w, DeviceWeight *out) {
  *out = DeviceWeight{};
  if (!w) return SPECODE_OK;
  const size_t bytes = w.row_bytes * (size_t)w.rows;
  void *d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, bytes));
  allocs_.push_back(d);
  CUDA_CHECK(cudaMemcpy(d, w.data, bytes, cudaMemcpyHostToDevice));
  *out = DeviceWeight{(uint32_t)w.type, (const uint8_t *)d, w.rows, w.cols, w.row_bytes};
  weight_bytes_ += bytes;
  return SPECODE_OK;
}

int32_t DeviceModel::upload(const Model &m, std::unique_ptr<DeviceModel> *out, std::string *err) {
  auto dm = std::unique_ptr<DeviceModel>(new DeviceModel());
  dm->hp = m.hp;
  {
    uint64_t bytes = 0;
    for (const Weight *w : {&m.tok_embd, &m.output_norm, &m.output}) bytes += w->data ? w->row_bytes * (uint64_t)w->rows : 0;
    for (const LayerWeights &l : m.layers)
      for (const Weight *w : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down})
        bytes += w->data ? w->row_bytes * (uint64_t)w->rows : 0;
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess && bytes > free) {
      *err = "cuda: the weights need " + std::to_string(bytes >> 20) + " MiB; " + std::to_string(free >> 20) +
             " MiB are free on the device. Use a smaller model or the CPU backend.";
      return SPECODE_ERR_NOMEM;
    }
  }
  auto check = [&](const Weight &w, const char *what) {
    if (w && !matvec_supported((uint32_t)w.type)) {
      *err = std::string("cuda: weight type ") + dtype_name((uint32_t)w.type) + " of " + what + " has no CUDA kernel yet";
      return false;
    }
    return true;
  };
  if (!check(m.tok_embd, "token_embd") || !check(m.output, "output")) return SPECODE_ERR_UNSUPPORTED;
  int32_t st = SPECODE_OK;
  auto up = [&](const Weight &w, DeviceWeight *d) {
    if (st == SPECODE_OK) st = dm->upload_weight(w, d);
  };
  up(m.tok_embd, &dm->tok_embd);
  up(m.output_norm, &dm->output_norm);
  if (m.output.data == m.tok_embd.data) dm->output = dm->tok_embd;
  else up(m.output, &dm->output);
  dm->layers.resize(m.layers.size());
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const LayerWeights &w = m.layers[l];
    for (const Weight *x : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down})
      if (!check(*x, "a layer")) return SPECODE_ERR_UNSUPPORTED;
    DeviceLayer &d = dm->layers[l];
    up(w.attn_norm, &d.attn_norm);
    up(w.wq, &d.wq);
    up(w.wk, &d.wk);
    up(w.wv, &d.wv);
    up(w.wo, &d.wo);
    up(w.bq, &d.bq);
    up(w.bk, &d.bk);
    up(w.bv, &d.bv);
    up(w.ffn_norm, &d.ffn_norm);
    up(w.w_gate, &d.w_gate);
    up(w.w_up, &d.w_up);
    up(w.w_down, &d.w_down);
  }
  // Pageable cudaMemcpy may return before its last DMA lands, and the contexts' streams are
  // non-blocking (they do not wait for the legacy stream): wait here.
  if (st == SPECODE_OK) {
    const cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
      set_error(__FILE__, __LINE__, "cudaDeviceSynchronize()", e);
      st = SPECODE_ERR_UNSUPPORTED;
    }
  }
  if (st != SPECODE_OK) {
    *err = std::string("cuda: uploading the weights failed: ") + last_error();
    return st;
  }
  *out = std::move(dm);
  return SPECODE_OK;
}


// ---------------------------------------------------------------- the context

namespace {
const auto mib = [](uint64_t b) { return std::to_string((b + (1 << 19)) >> 20) + " MiB"; };
}  // namespace

DeviceContext::~DeviceContext() {
  if (copy_) cudaStreamSynchronize(copy_);
  if (stream_) cudaStreamSynchronize(stream_);
  for (void *p : allocs_) cudaFree(p);
  if (khost_) cudaFreeHost(khost_);
  if (vhost_) cudaFreeHost(vhost_);
  for (auto *evs : {&ev_attn_, &ev_fetch_, &ev_wait0_, &ev_wait1_})
    for (cudaEvent_t e : *evs) cudaEventDestroy(e);
  if (ev_start_) cudaEventDestroy(ev_start_);
  if (ev_end_) cudaEventDestroy(ev_end_);
  if (stream_) cudaStreamDestroy(stream_);
  if (copy_) cudaStreamDestroy(copy_);
}

DeviceMemory DeviceContext::plan(const DeviceModel &model, int n_ctx, const DeviceKvConfig &cfg) {
  const Hparams &hp = model.hp;
  const uint64_t E = hp.n_embd, NH = hp.n_head, NKV = hp.n_head_kv, HD = hp.head_dim, Q = NH * HD, KV = NKV * HD;
  const uint64_t FF = hp.n_ff, L = hp.n_layer, B = kPrefillBatch, G = NH / NKV, n = (uint64_t)n_ctx;
  const uint64_t rows_kv = 2ull * L * KV * n * sizeof(__half);  // every K/V row in fp16
  DeviceMemory m;
  m.weights = model.weight_bytes();
  size_t work = std::max(flash_work_floats((int)B, (int)NH, (int)HD, n_ctx), flash_work_floats(kMaxStepTokens, (int)NH, (int)HD, n_ctx));
  m.activations = (B * (3 * E + 2 * Q + 2 * KV + 2 * FF) + 2ull * hp.n_vocab + HD / 2) * sizeof(float) + 2 * B * sizeof(int);
  switch (cfg.policy) {
    case DevicePolicy::Full:
      m.kv = rows_kv;
      break;
    case DevicePolicy::OffloadAll:
      m.host_pinned = rows_kv;
      m.buffers = rows_kv / L;  // one layer staged
      break;
    case DevicePolicy::Specache: {
      const int R = cfg.residual, K = cfg.topk, keep = std::max(1, K) * std::max(1, cfg.rerank);
      const uint64_t rows_sel = (uint64_t)kMaxStepTokens * G;
      m.host_pinned = rows_kv;
      m.prefill = rows_kv / L;  // a prefill stages one layer's rows
      m.kv_lowbit = L * NKV * LowbitStream::bytes_for(LowbitConfig{(int)HD, cfg.bits, cfg.group, cfg.debias}, n / cfg.group * cfg.group);
      m.kv_residual = 2ull * L * NKV * R * HD * sizeof(__half);
      m.kv = m.kv_lowbit + m.kv_residual;
      const uint64_t words = (n + 63) / 64;
      m.buffers = 2ull * L * NKV * K * HD * sizeof(__half) + L * NKV * (K * sizeof(int) + words * 8) +
                  2ull * NKV * kMaxStepTokens * HD * sizeof(__half);
      // Attention pieces and the selection's space (copy stream).
      work = std::max(work, NKV * lowbit_work_floats((int)rows_sel, (int)HD, n_ctx));
      m.activations += (NKV * rows_sel * HD * 3 + NKV * rows_sel * 4 + NKV * rows_sel * n + L * NKV * G * (HD + 2) + G * n + n +
                        (uint64_t)keep + 2ull * std::max<uint64_t>(4096, R) * HD) * sizeof(float) +
                       (rows_sel + 2ull * keep + 2) * sizeof(int);
      break;
    }
  }
  m.activations += work * sizeof(float);
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) == cudaSuccess) {
    m.free = free;
    m.total = total;
  }
  return m;
}

int32_t DeviceContext::alloc(size_t bytes, void **p) {
  CUDA_CHECK(cudaMalloc(p, bytes ? bytes : 16));
  allocs_.push_back(*p);
  return SPECODE_OK;
}

int32_t DeviceContext::create(const DeviceModel &model, int n_ctx, const DeviceKvConfig &cfg, uint64_t budget_bytes,
                              std::unique_ptr<DeviceContext> *out, std::string *err) {
  const Hparams &hp = model.hp;
  if (hp.head_dim % 8 || hp.head_dim > 256 || hp.n_head % hp.n_head_kv || hp.n_head / hp.n_head_kv > 64) {
    *err = "cuda: the kernels need a head size that is a multiple of 8 and at most 256, and at most 64 query heads per "
           "KV head; this model has " + std::to_string(hp.head_dim) + " and " + std::to_string(hp.n_head) + "/" +
           std::to_string(hp.n_head_kv) + ". Use the CPU backend.";
    return SPECODE_ERR_UNSUPPORTED;
  }
  if (cfg.policy == DevicePolicy::Specache &&
      (cfg.bits < 1 || cfg.bits > 2 || cfg.group <= 0 || cfg.group % 8 || cfg.group > 1024 || cfg.residual % cfg.group ||
       cfg.residual <= 0 || cfg.topk < 0 || std::max(1, cfg.topk) * std::max(1, cfg.rerank) > 1024 ||
       cfg.topk + cfg.residual + kMaxStepTokens > 12288)) {
    *err = "cuda: specache needs bits 1 or 2, a group that is a multiple of 8 up to 1024, a residual that is a multiple "
           "of the group, topk × rerank ≤ 1024 and topk + residual ≤ 12286";
    return SPECODE_ERR_ARGUMENT;
  }
  const DeviceMemory need = plan(model, n_ctx, cfg);
  // A specache prefill also stages one layer's rows for its duration.
  const uint64_t ctx_bytes = need.kv + need.buffers + need.activations + need.prefill;
  // The weights are already on the device: the context needs free memory for itself, and the
  // budget covers both.
  const uint64_t room = budget_bytes ? std::min<uint64_t>(need.free, budget_bytes > need.weights ? budget_bytes - need.weights : 0)
                                     : need.free;
  if (ctx_bytes > room) {
    const uint64_t per_token = (need.kv + need.buffers + need.prefill) / (uint64_t)std::max(1, n_ctx);
    const uint64_t fit = room > need.activations && per_token ? (room - need.activations) / per_token : 0;
    *err = "cuda: a context of " + std::to_string(n_ctx) + " tokens needs " + mib(ctx_bytes) + " (K/V " + mib(need.kv) +
           ", buffers " + mib(need.buffers + need.activations) +
           (need.prefill ? ", while prefilling " + mib(need.prefill) : std::string()) + ") beside the weights' " +
           mib(need.weights) + "; " +
           (budget_bytes ? "the device budget is " + mib(budget_bytes) + " and " : "") + mib(need.free) +
           " are free on the device. At most " + std::to_string(fit) + " tokens fit: lower the context size" +
           (budget_bytes ? " or raise the device budget." : ".");
    return SPECODE_ERR_NOMEM;
  }
  auto c = std::unique_ptr<DeviceContext>(new DeviceContext(model, n_ctx, cfg));
  c->mem_ = need;
  const int E = hp.n_embd, NH = hp.n_head, NKV = hp.n_head_kv, HD = hp.head_dim, G = NH / NKV;
  const int Q = NH * HD, KV = NKV * HD, FF = hp.n_ff, L = hp.n_layer, B = kPrefillBatch;
  CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&c->copy_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreate(&c->ev_start_));
  CUDA_CHECK(cudaEventCreate(&c->ev_end_));
  int32_t st = SPECODE_OK;
  const size_t f = sizeof(float);
  for (auto [ptr, bytes] : std::initializer_list<std::pair<void **, size_t>>{
           {(void **)&c->x_, (size_t)B * E * f}, {(void **)&c->xn_, (size_t)B * E * f}, {(void **)&c->q_, (size_t)B * Q * f},
           {(void **)&c->k_, (size_t)B * KV * f}, {(void **)&c->v_, (size_t)B * KV * f}, {(void **)&c->att_, (size_t)B * Q * f},
           {(void **)&c->proj_, (size_t)B * E * f}, {(void **)&c->gate_, (size_t)B * FF * f}, {(void **)&c->up_, (size_t)B * FF * f},
           {(void **)&c->logits_, (size_t)kMaxStepTokens * hp.n_vocab * f}, {(void **)&c->inv_freq_, (size_t)HD / 2 * f},
           {(void **)&c->pos_, (size_t)B * sizeof(int)}, {(void **)&c->tok_, (size_t)B * sizeof(int)}})
    if (st == SPECODE_OK) st = c->alloc(bytes, ptr);
  c->work_floats_ = std::max(flash_work_floats(B, NH, HD, n_ctx), flash_work_floats(kMaxStepTokens, NH, HD, n_ctx));
  if (cfg.policy == DevicePolicy::Specache)
    c->work_floats_ = std::max(c->work_floats_, (size_t)NKV * lowbit_work_floats(kMaxStepTokens * G, HD, n_ctx));
  if (st == SPECODE_OK) st = c->alloc(c->work_floats_ * f, (void **)&c->work_);
  if (st != SPECODE_OK) return st;
  const size_t rows_bytes = (size_t)L * KV * n_ctx * sizeof(__half);
  if (cfg.policy == DevicePolicy::Full) {
    if ((st = c->alloc(rows_bytes, (void **)&c->kdev_)) != SPECODE_OK || (st = c->alloc(rows_bytes, (void **)&c->vdev_)) != SPECODE_OK)
      return st;
  } else {
    // The source of truth in pinned host RAM, mapped so kernels can read rows over the bus.
    CUDA_CHECK(cudaHostAlloc((void **)&c->khost_, rows_bytes, cudaHostAllocMapped));
    CUDA_CHECK(cudaHostAlloc((void **)&c->vhost_, rows_bytes, cudaHostAllocMapped));
    CUDA_CHECK(cudaHostGetDevicePointer((void **)&c->khost_d_, c->khost_, 0));
    CUDA_CHECK(cudaHostGetDevicePointer((void **)&c->vhost_d_, c->vhost_, 0));
  }
  if (cfg.policy == DevicePolicy::OffloadAll) {
    const size_t layer_bytes = (size_t)KV * n_ctx * sizeof(__half);
    if ((st = c->alloc(layer_bytes, (void **)&c->kstage_)) != SPECODE_OK || (st = c->alloc(layer_bytes, (void **)&c->vstage_)) != SPECODE_OK)
      return st;
  }
  if (cfg.policy == DevicePolicy::Specache && (st = c->init_specache()) != SPECODE_OK) return st;
  std::vector<float> inv(HD / 2);
  for (int i = 0; i < HD / 2; ++i) inv[i] = (float)(1.0 / std::pow((double)hp.rope_base, 2.0 * i / HD));
  CUDA_CHECK(cudaMemcpyAsync(c->inv_freq_, inv.data(), inv.size() * f, cudaMemcpyHostToDevice, c->stream_));
  CUDA_CHECK(cudaStreamSynchronize(c->stream_));
  *out = std::move(c);
  return SPECODE_OK;
}

int32_t DeviceContext::prefill(const int32_t *tokens, int n, float *logits_host, bool all_rows) {
  const Hparams &hp = model_.hp;
  if (n <= 0 || n_past_ + n > n_ctx_) return SPECODE_ERR_ARGUMENT;
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) return SPECODE_ERR_ARGUMENT;
  CUDA_CHECK(cudaStreamSynchronize(copy_));
  // specache attends a prefill exactly the way offload-all decodes: per layer, the earlier rows
  // copied from the pinned host rows into a one-layer staging buffer in VRAM (transient here,
  // freed when the pass ends), so a prefill never needs the whole cache on the device.
  const bool transient = cfg_.policy == DevicePolicy::Specache;
  const size_t layer_bytes = (size_t)hp.n_head_kv * hp.head_dim * n_ctx_ * sizeof(__half);
  if (transient) {
    if (cudaMalloc((void **)&kstage_, layer_bytes) != cudaSuccess || cudaMalloc((void **)&vstage_, layer_bytes) != cudaSuccess) {
      cudaGetLastError();
      if (kstage_) cudaFree(kstage_);
      kstage_ = vstage_ = nullptr;
      set_error(__FILE__, __LINE__, ("a prefill needs " + mib(2 * layer_bytes) + " of VRAM for one layer's rows").c_str(),
                cudaErrorMemoryAllocation);
      return SPECODE_ERR_NOMEM;
    }
  }
  struct FreeTransient {  // on every way out
    DeviceContext *c;
    bool on;
    ~FreeTransient() {
      if (!on) return;
      cudaStreamSynchronize(c->stream_);
      cudaFree(c->kstage_);
      cudaFree(c->vstage_);
      c->kstage_ = c->vstage_ = nullptr;
    }
  } free_transient{this, transient};
  int32_t st = SPECODE_OK;
  const int lowbit_valid = n_lowbit_;  // groups quantized before this prefill stay as they are
  for (int b0 = 0; b0 < n && st == SPECODE_OK; b0 += kPrefillBatch) {
    if (cancel_ && cancel_->load()) {
      st = SPECODE_ERR_CANCELLED;
      break;
    }
    const int nb = std::min(kPrefillBatch, n - b0);
    std::vector<int> pos(nb);
    for (int i = 0; i < nb; ++i) pos[i] = n_past_ + i;
    CUDA_CHECK(cudaMemcpyAsync(tok_, tokens + b0, nb * sizeof(int), cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaMemcpyAsync(pos_, pos.data(), nb * sizeof(int), cudaMemcpyHostToDevice, stream_));
    st = run_layers(nb, n_past_, nb, -1, true);
    if (st == SPECODE_OK && all_rows) st = output(0, nb, logits_host ? logits_host + (size_t)b0 * hp.n_vocab : nullptr);
    else if (st == SPECODE_OK && b0 + nb == n) st = output(nb - 1, 1, logits_host);
    if (st == SPECODE_OK) {
      CUDA_CHECK(cudaStreamSynchronize(stream_));  // pos is reused by the next batch
      n_past_ += nb;
    }
  }
  if ((st == SPECODE_OK || st == SPECODE_ERR_CANCELLED) && cfg_.policy == DevicePolicy::Specache) {
    const int32_t rb = rebuild_lowbit(lowbit_valid);
    if (rb != SPECODE_OK) st = rb;
  }
  return st;
}

int32_t DeviceContext::truncate(int n_keep) {
  if (n_keep < 0) return SPECODE_ERR_ARGUMENT;
  if (n_keep >= n_past_) return SPECODE_OK;
  CUDA_CHECK(cudaStreamSynchronize(copy_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  const int valid = std::min(n_lowbit_, n_keep);
  n_past_ = n_keep;
  return cfg_.policy == DevicePolicy::Specache ? rebuild_lowbit(valid) : SPECODE_OK;
}

// Logits of rows row0 .. row0+n-1 of x_, kMaxStepTokens rows at a time (logits_'s size).
int32_t DeviceContext::output(int row0, int n, float *logits_host) {
  const Hparams &hp = model_.hp;
  const DeviceWeight &w = model_.output;
  int32_t st = SPECODE_OK;
  for (int r = 0; r < n && st == SPECODE_OK; r += kMaxStepTokens) {
    const int m = std::min(kMaxStepTokens, n - r);
    st = rmsnorm(x_ + (size_t)(row0 + r) * hp.n_embd, (const float *)model_.output_norm.data, xn_, m, hp.n_embd, hp.rms_eps,
                 stream_);
    if (st == SPECODE_OK) st = matvec(w.type, w.data, w.rows, w.cols, xn_, m, logits_, w.rows, stream_);
    if (st == SPECODE_OK && logits_host)
      CUDA_CHECK(cudaMemcpyAsync(logits_host + (size_t)r * hp.n_vocab, logits_, (size_t)m * hp.n_vocab * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_));
  }
  return st;
}

int32_t DeviceContext::step(const int32_t *tokens, int n, int n_keep, int select_row, float *logits_host) {
  const Hparams &hp = model_.hp;
  if (n < 1 || n > kMaxStepTokens || n_past_ + n > n_ctx_ || select_row >= n || n_keep < 0 || n_keep > 1)
    return SPECODE_ERR_ARGUMENT;
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) return SPECODE_ERR_ARGUMENT;
  if (cfg_.policy == DevicePolicy::Specache && n_keep == 0) {
    // A pre-decode starts a new generation: no rows held (as the CPU's begin_pass).
    CUDA_CHECK(cudaStreamSynchronize(copy_));
    if (const int32_t st = drop_fetched(); st != SPECODE_OK) return st;
  }
  const int pos[kMaxStepTokens] = {n_past_, n_past_ + 1};
  step_fetch_bytes_ = 0;
  CUDA_CHECK(cudaEventRecord(ev_start_, stream_));
  CUDA_CHECK(cudaMemcpyAsync(tok_, tokens, n * sizeof(int), cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaMemcpyAsync(pos_, pos, n * sizeof(int), cudaMemcpyHostToDevice, stream_));
  std::vector<bool> waited;
  int32_t st = run_layers(n, n_past_, n_keep, select_row, false, &waited);
  if (st == SPECODE_OK) st = output(0, n, logits_host);
  if (st != SPECODE_OK) return st;
  CUDA_CHECK(cudaEventRecord(ev_end_, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  stats_ = DeviceStepStats{};
  CUDA_CHECK(cudaEventElapsedTime(&stats_.step_ms, ev_start_, ev_end_));
  for (size_t l = 0; l < waited.size(); ++l)
    if (waited[l]) {
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, ev_wait0_[l], ev_wait1_[l]));
      stats_.stall_ms += ms;
    }
  stats_.fetched_bytes = step_fetch_bytes_;
  if (n_keep == 1) {
    if (cfg_.policy == DevicePolicy::Specache) kept_one();
    ++n_past_;
  }
  return SPECODE_OK;
}

// Every layer for n rows at positions pos0… (pos_ and tok_ on the device already); the first
// n_keep rows are kept. Attention: exact over VRAM rows for a prefill and for full, over the
// staged rows for offload-all, the split softmax for specache.
int32_t DeviceContext::run_layers(int n, int pos0, int n_keep, int select_row, bool prefill, std::vector<bool> *waited) {
  const DeviceModel &m = model_;
  const Hparams &hp = m.hp;
  const int E = hp.n_embd, HD = hp.head_dim, NH = hp.n_head, NKV = hp.n_head_kv;
  const int Q = NH * HD, KV = NKV * HD, FF = hp.n_ff;
  const int64_t head_stride = (int64_t)n_ctx_ * HD;
  cudaStream_t s = stream_;
  embed_kernel<<<dim3(blocks_for(E), n), 256, 0, s>>>((int)m.tok_embd.type, m.tok_embd.data, m.tok_embd.row_bytes, tok_, E, x_);
  CUDA_CHECK_LAUNCH();
  if (waited) waited->assign(hp.n_layer, false);
  int32_t st;
#define RUN(call)                     \
  if ((st = (call)) != SPECODE_OK) {  \
    return st;                        \
  }
  auto mv = [&](const DeviceWeight &w, const float *in, float *o) { return matvec(w.type, w.data, w.rows, w.cols, in, n, o, w.rows, s); };
  auto add = [&](float *x, const float *y, size_t count, int len) {
    add_kernel<<<blocks_for(count), 256, 0, s>>>(x, y, count, len);
    return SPECODE_OK;
  };
  for (int l = 0; l < hp.n_layer; ++l) {
    const DeviceLayer &w = m.layers[l];
    RUN(rmsnorm(x_, (const float *)w.attn_norm.data, xn_, n, E, hp.rms_eps, s));
    RUN(mv(w.wq, xn_, q_));
    RUN(mv(w.wk, xn_, k_));
    RUN(mv(w.wv, xn_, v_));
    if (w.bq.data) add(q_, (const float *)w.bq.data, (size_t)n * Q, Q);
    if (w.bk.data) add(k_, (const float *)w.bk.data, (size_t)n * KV, KV);
    if (w.bv.data) add(v_, (const float *)w.bv.data, (size_t)n * KV, KV);
    CUDA_CHECK_LAUNCH();
    RUN(rope(q_, pos_, inv_freq_, n, NH, HD, hp.rope_neox, s));
    RUN(rope(k_, pos_, inv_freq_, n, NKV, HD, hp.rope_neox, s));
    scale_kernel<<<blocks_for((size_t)n * Q), 256, 0, s>>>(q_, 1.0f / std::sqrt((float)HD), (size_t)n * Q);
    CUDA_CHECK_LAUNCH();
    const size_t layer_off = (size_t)l * NKV * head_stride;
    auto store = [&](__half *dst, const float *src, int count) {
      store_rows_kernel<<<blocks_for((size_t)count * KV), 256, 0, s>>>(src, dst, NKV, HD, head_stride, pos0, count);
    };
    if (cfg_.policy == DevicePolicy::Full) {
      // Every row of the pass into the VRAM rows (a speculative row is overwritten later).
      store(kdev_ + layer_off, k_, n);
      store(vdev_ + layer_off, v_, n);
      CUDA_CHECK_LAUNCH();
      RUN(flash_attend(KvView{kdev_ + layer_off, vdev_ + layer_off, head_stride}, NH, NKV, HD, q_, n, pos0, pos0 + n, att_,
                       work_, work_floats_, s));
    } else if (prefill || cfg_.policy == DevicePolicy::OffloadAll) {
      // offload-all's decode (the naive baseline) and every host policy's prefill: the
      // layer's earlier rows over the bus into the staging buffer, then exact attention.
      store(khost_d_ + layer_off, k_, n_keep);
      store(vhost_d_ + layer_off, v_, n_keep);
      store(kstage_, k_, n);
      store(vstage_, v_, n);
      CUDA_CHECK_LAUNCH();
      if (pos0 > 0) {
        const size_t row = (size_t)HD * sizeof(__half);
        CUDA_CHECK(cudaMemcpy2DAsync(kstage_, (size_t)n_ctx_ * row, khost_ + layer_off, (size_t)n_ctx_ * row,
                                     (size_t)pos0 * row, NKV, cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaMemcpy2DAsync(vstage_, (size_t)n_ctx_ * row, vhost_ + layer_off, (size_t)n_ctx_ * row,
                                     (size_t)pos0 * row, NKV, cudaMemcpyHostToDevice, s));
        step_fetch_bytes_ += 2ull * NKV * pos0 * row;
      }
      RUN(flash_attend(KvView{kstage_, vstage_, head_stride}, NH, NKV, HD, q_, n, pos0, pos0 + n, att_, work_,
                       work_floats_, s));
    } else {
      if (waited && fetch_pending_[l]) (*waited)[l] = true;
      RUN(attend_specache(l, n, n_keep, select_row));
    }
    RUN(mv(w.wo, att_, proj_));
    add(x_, proj_, (size_t)n * E, n * E);
    CUDA_CHECK_LAUNCH();
    RUN(rmsnorm(x_, (const float *)w.ffn_norm.data, xn_, n, E, hp.rms_eps, s));
    RUN(mv(w.w_gate, xn_, gate_));
    RUN(mv(w.w_up, xn_, up_));
    RUN(swiglu(gate_, up_, gate_, (size_t)n * FF, s));
    RUN(mv(w.w_down, gate_, proj_));
    add(x_, proj_, (size_t)n * E, n * E);
    CUDA_CHECK_LAUNCH();
  }
#undef RUN
  return SPECODE_OK;
}

}  // namespace specode::cuda

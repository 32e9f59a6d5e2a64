// forward.cu — the model's decode step on the device (issue #4), policy `full`:
// weights uploaded as they are in the GGUF (quantized blocks, dequantized inside
// the products), the K/V cache in fp16 in VRAM, one token per step. The same
// operations in the same order as the CPU's forward pass (src/context.cpp):
// embedding row, per layer RMSNorm → q/k/v (+ bias) → RoPE → cache → attention
// (GQA) → o-proj → residual → RMSNorm → gate/up → SwiGLU → down → residual; final
// RMSNorm and the output product. Activations stay fp32 (the CPU quantizes them to
// Q8 for quantized weights, so logits agree to that rounding, exactly for F32
// weights). Not wired into the engine yet; specode_cuda_tests compares it with the
// CPU engine on a tiny model wherever a GPU is present.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda_forward.h"
#include "dequant.cuh"

namespace specode::cuda {

namespace {

// out[e] = row `token` of W, dequantized: one thread per element.
__global__ void embed_kernel(int type, const uint8_t *__restrict__ w, size_t row_bytes, int token, int n,
                             float *__restrict__ out) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int be = block_elems(type), bb = block_bytes(type);
  const uint8_t *row = w + (size_t)token * row_bytes;
  out[e] = be == 1 ? deq(type, row, e) : deq(type, row + (size_t)(e / be) * bb, e % be);
}

// x[i] += y[i] (y may be a bias of the same length).
__global__ void add_kernel(float *__restrict__ x, const float *__restrict__ y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

__global__ void scale_kernel(float *__restrict__ x, float s, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

// cache[h][pos][c] = half(x[h * hd + c]) for every KV head h.
__global__ void store_kv_kernel(const float *__restrict__ x, __half *__restrict__ cache, int n_kv, int n_ctx, int hd,
                                const int *__restrict__ pos) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n_kv * hd) return;
  const int h = i / hd, c = i % hd;
  cache[((size_t)h * n_ctx + *pos) * hd + c] = __float2half_rn(x[i]);
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
  if (st != SPECODE_OK) {
    *err = std::string("cuda: uploading the weights failed: ") + last_error();
    return st;
  }
  *out = std::move(dm);
  return SPECODE_OK;
}

DeviceContext::~DeviceContext() {
  for (void *p : allocs_) cudaFree(p);
  if (stream_) cudaStreamDestroy(stream_);
}

DeviceMemory DeviceContext::plan(const DeviceModel &model, int n_ctx) {
  const Hparams &hp = model.hp;
  const uint64_t E = hp.n_embd, Q = (uint64_t)hp.n_head * hp.head_dim, KV = (uint64_t)hp.n_head_kv * hp.head_dim, FF = hp.n_ff;
  DeviceMemory m;
  m.weights = model.weight_bytes();
  m.kv = 2ull * hp.n_layer * KV * (uint64_t)n_ctx * sizeof(__half);
  m.activations = (3 * E + 2 * Q + 2 * KV + 2 * FF + (uint64_t)hp.n_vocab + 2ull * hp.n_head + hp.head_dim / 2 + 1) * sizeof(float);
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) == cudaSuccess) {
    m.free = free;
    m.total = total;
  }
  return m;
}

int32_t DeviceContext::create(const DeviceModel &model, int n_ctx, uint64_t budget_bytes,
                              std::unique_ptr<DeviceContext> *out, std::string *err) {
  const DeviceMemory need = plan(model, n_ctx);
  const uint64_t ctx_bytes = need.kv + need.activations;
  // The weights are already on the device: the context needs free memory for itself, and the
  // budget covers both.
  const uint64_t room = budget_bytes ? std::min<uint64_t>(need.free, budget_bytes > need.weights ? budget_bytes - need.weights : 0)
                                     : need.free;
  if (ctx_bytes > room) {
    const uint64_t per_token = need.kv / (uint64_t)std::max(1, n_ctx);
    const uint64_t fit = room > need.activations && per_token ? (room - need.activations) / per_token : 0;
    const auto mib = [](uint64_t b) { return std::to_string(b >> 20) + " MiB"; };
    *err = "cuda: a context of " + std::to_string(n_ctx) + " tokens needs " + mib(ctx_bytes) + " (K/V " + mib(need.kv) +
           ", buffers " + mib(need.activations) + ") beside the weights' " + mib(need.weights) + "; " +
           (budget_bytes ? "the device budget is " + mib(budget_bytes) + " and " : "") + mib(need.free) +
           " are free on the device. At most " + std::to_string(fit) + " tokens fit: lower the context size" +
           (budget_bytes ? " or raise the device budget." : ".");
    return SPECODE_ERR_NOMEM;
  }
  auto c = std::unique_ptr<DeviceContext>(new DeviceContext(model, n_ctx));
  const Hparams &hp = model.hp;
  const int E = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_head_kv * hp.head_dim, FF = hp.n_ff;
  CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream_, cudaStreamNonBlocking));
  auto alloc = [&](size_t bytes, void **p) -> int32_t {
    CUDA_CHECK(cudaMalloc(p, bytes));
    c->allocs_.push_back(*p);
    c->bytes_ += bytes;
    return SPECODE_OK;
  };
  int32_t st = SPECODE_OK;
  const size_t f = sizeof(float);
  for (auto [ptr, bytes] : std::initializer_list<std::pair<void **, size_t>>{
           {(void **)&c->x_, E * f}, {(void **)&c->xn_, E * f}, {(void **)&c->q_, Q * f}, {(void **)&c->k_, KV * f},
           {(void **)&c->v_, KV * f}, {(void **)&c->att_, Q * f}, {(void **)&c->proj_, E * f},
           {(void **)&c->gate_, FF * f}, {(void **)&c->up_, FF * f}, {(void **)&c->logits_, (size_t)hp.n_vocab * f},
           {(void **)&c->m_, hp.n_head * f}, {(void **)&c->l_, hp.n_head * f},
           {(void **)&c->inv_freq_, hp.head_dim / 2 * f}, {(void **)&c->pos_, sizeof(int)},
           {(void **)&c->kcache_, (size_t)hp.n_layer * KV * n_ctx * sizeof(__half)},
           {(void **)&c->vcache_, (size_t)hp.n_layer * KV * n_ctx * sizeof(__half)}})
    if (st == SPECODE_OK) st = alloc(bytes, ptr);
  if (st != SPECODE_OK) return st;
  std::vector<float> inv(hp.head_dim / 2);
  for (int i = 0; i < hp.head_dim / 2; ++i) inv[i] = (float)(1.0 / std::pow((double)hp.rope_base, 2.0 * i / hp.head_dim));
  CUDA_CHECK(cudaMemcpy(c->inv_freq_, inv.data(), inv.size() * f, cudaMemcpyHostToDevice));
  *out = std::move(c);
  return SPECODE_OK;
}

int32_t DeviceContext::decode(int32_t token, float *logits_host) {
  const DeviceModel &m = model_;
  const Hparams &hp = m.hp;
  const int E = hp.n_embd, HD = hp.head_dim, NH = hp.n_head, NKV = hp.n_head_kv, G = NH / NKV;
  const int Q = NH * HD, KV = NKV * HD, FF = hp.n_ff;
  if (n_past_ >= n_ctx_) return SPECODE_ERR_ARGUMENT;
  if (token < 0 || token >= hp.n_vocab) return SPECODE_ERR_ARGUMENT;
  cudaStream_t s = stream_;
  const int pos = n_past_;
  CUDA_CHECK(cudaMemcpyAsync(pos_, &pos, sizeof(int), cudaMemcpyHostToDevice, s));
  const auto blocks = [](int n) { return (unsigned)((n + 255) / 256); };
  embed_kernel<<<blocks(E), 256, 0, s>>>((int)m.tok_embd.type, m.tok_embd.data, m.tok_embd.row_bytes, token, E, x_);
  CUDA_CHECK_LAUNCH();
  int32_t st;
#define RUN(call)                     \
  if ((st = (call)) != SPECODE_OK) {  \
    return st;                        \
  }
  auto mv = [&](const DeviceWeight &w, const float *in, float *o) { return matvec(w.type, w.data, w.rows, w.cols, in, 1, o, w.rows, s); };
  for (int l = 0; l < hp.n_layer; ++l) {
    const DeviceLayer &w = m.layers[l];
    RUN(rmsnorm(x_, (const float *)w.attn_norm.data, xn_, 1, E, hp.rms_eps, s));
    RUN(mv(w.wq, xn_, q_));
    RUN(mv(w.wk, xn_, k_));
    RUN(mv(w.wv, xn_, v_));
    if (w.bq.data) add_kernel<<<blocks(Q), 256, 0, s>>>(q_, (const float *)w.bq.data, Q);
    if (w.bk.data) add_kernel<<<blocks(KV), 256, 0, s>>>(k_, (const float *)w.bk.data, KV);
    if (w.bv.data) add_kernel<<<blocks(KV), 256, 0, s>>>(v_, (const float *)w.bv.data, KV);
    CUDA_CHECK_LAUNCH();
    RUN(rope(q_, pos_, inv_freq_, 1, NH, HD, hp.rope_neox, s));
    RUN(rope(k_, pos_, inv_freq_, 1, NKV, HD, hp.rope_neox, s));
    __half *kc = kcache_ + (size_t)l * KV * n_ctx_, *vc = vcache_ + (size_t)l * KV * n_ctx_;
    store_kv_kernel<<<blocks(KV), 256, 0, s>>>(k_, kc, NKV, n_ctx_, HD, pos_);
    store_kv_kernel<<<blocks(KV), 256, 0, s>>>(v_, vc, NKV, n_ctx_, HD, pos_);
    scale_kernel<<<blocks(Q), 256, 0, s>>>(q_, 1.0f / std::sqrt((float)HD), Q);
    CUDA_CHECK_LAUNCH();
    for (int h = 0; h < NKV; ++h) {
      Fp16Segments seg{};
      seg.k[0] = kc + (size_t)h * n_ctx_ * HD;
      seg.v[0] = vc + (size_t)h * n_ctx_ * HD;
      seg.n[0] = pos + 1;
      RUN(fp16_attend(seg, q_ + (size_t)h * G * HD, G, HD, nullptr, m_ + h * G, l_ + h * G, att_ + (size_t)h * G * HD, s));
    }
    RUN(mv(w.wo, att_, proj_));
    add_kernel<<<blocks(E), 256, 0, s>>>(x_, proj_, E);
    CUDA_CHECK_LAUNCH();
    RUN(rmsnorm(x_, (const float *)w.ffn_norm.data, xn_, 1, E, hp.rms_eps, s));
    RUN(mv(w.w_gate, xn_, gate_));
    RUN(mv(w.w_up, xn_, up_));
    RUN(swiglu(gate_, up_, gate_, (size_t)FF, s));
    RUN(mv(w.w_down, gate_, proj_));
    add_kernel<<<blocks(E), 256, 0, s>>>(x_, proj_, E);
    CUDA_CHECK_LAUNCH();
  }
  RUN(rmsnorm(x_, (const float *)m.output_norm.data, xn_, 1, E, hp.rms_eps, s));
  RUN(mv(m.output, xn_, logits_));
#undef RUN
  if (logits_host) CUDA_CHECK(cudaMemcpyAsync(logits_host, logits_, (size_t)hp.n_vocab * sizeof(float), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  ++n_past_;
  return SPECODE_OK;
}

}  // namespace specode::cuda

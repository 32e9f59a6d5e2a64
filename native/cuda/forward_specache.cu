// forward_specache.cu — SpeCache on the device (issue #4): the decode attention of
// policy specache and the speculative fetch, the way src/specache_attend.cpp does
// it on the CPU.
//
// VRAM holds, per layer and KV head, the low-bit copy (lowbit_attn.cu's layout),
// the residual window (the newest 1..R rows in fp16) and a prefetch buffer of
// top-k fp16 rows with their positions (and the same as a bitset). Every row also
// sits in pinned host RAM, mapped into the device's address space.
//
// Per layer of a step, on the compute stream: wait for this layer's fetch (issued
// one step earlier — the stall, timed by a pair of events), append the real
// token's row (host row, residual; a full residual is quantized first), then one
// split softmax per KV head — the low-bit piece from the codes with the fetched
// positions left out, and an fp16 piece over the fetched rows, the residual and the
// pass's speculative row — merged by log-sum-exp. Then, on the copy stream, after
// an event: the select row's mean probability over the candidates (the low-bit
// positions, and the residual when it is full), exact where the row is held in
// fp16; the rerank·k best re-scored exactly from the host rows; the k best gathered
// from pinned host RAM into the prefetch buffer; an event that only layer l of the
// next step waits for.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "cuda_forward.h"
#include "reduce.cuh"

namespace specode::cuda {

namespace {

// The kept row (row 0 of k, v: [n][n_kv·hd] fp32, when n_keep is 1) to the host rows at pos and
// the residual at slot; the unkept rows to new_k/new_v [n_kv][kMaxStepTokens][hd].
__global__ void keep_rows_kernel(const float *__restrict__ k, const float *__restrict__ v, int n, int n_keep, int n_kv, int hd,
                                 __half *__restrict__ hk, __half *__restrict__ hv, int64_t head_stride, int pos,
                                 __half *__restrict__ rk, __half *__restrict__ rv, int R, int slot,
                                 __half *__restrict__ nk, __half *__restrict__ nv, int max_new) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * n_kv * hd) return;
  const int t = i / (n_kv * hd), h = (i / hd) % n_kv, c = i % hd;
  const __half kh = __float2half_rn(k[i]), vh = __float2half_rn(v[i]);
  if (t < n_keep) {
    hk[(size_t)h * head_stride + (size_t)pos * hd + c] = kh;
    hv[(size_t)h * head_stride + (size_t)pos * hd + c] = vh;
    rk[((size_t)h * R + slot) * hd + c] = kh;
    rv[((size_t)h * R + slot) * hd + c] = vh;
  } else {
    nk[((size_t)h * max_new + t - n_keep) * hd + c] = kh;
    nv[((size_t)h * max_new + t - n_keep) * hd + c] = vh;
  }
}

__global__ void half_to_float_kernel(const __half *__restrict__ src, float *__restrict__ dst, size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __half2float(src[i]);
}

// q [n][n_head][hd] → qg [n_kv][rows_max][hd], row t·G + hq of KV head h (to_groups), or back.
__global__ void regroup_kernel(const float *__restrict__ src, float *__restrict__ dst, int n, int n_head, int group,
                               int hd, int rows_max, int to_groups) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * n_head * hd) return;
  const int t = i / (n_head * hd), head = (i / hd) % n_head, c = i % hd;
  const size_t g = ((size_t)(head / group) * rows_max + t * group + head % group) * hd + c;
  if (to_groups) dst[g] = src[i];
  else dst[i] = src[g];
}

// avg[j] = Σ_hq exp(p[hq][j] − M[hq]) / (L[hq]·G), j < n: the select row's mean probability.
__global__ void mean_probs_kernel(const float *__restrict__ p, int64_t ldp, int n, const float *__restrict__ M,
                                  const float *__restrict__ L, int group, float *__restrict__ avg) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float a = 0.0f;
  for (int hq = 0; hq < group; ++hq)
    if (M[hq] != -INFINITY) a += __expf(p[(size_t)hq * ldp + j] - M[hq]) / (L[hq] * group);
  avg[j] = a;
}

// The same from exact fp16 keys, one warp per row i < count: the row is rows[(by_pos ? pos : i)]
// with pos = positions ? positions[i] : pos_base + i; the result goes to out[out_by_pos ? pos : i].
// The row is read once (into registers, hd <= 256) for all the group's query heads.
__global__ void exact_probs_kernel(const __half *__restrict__ rows, const int *__restrict__ positions, int pos_base,
                                   int count, int by_pos, int out_by_pos, const float *__restrict__ q,
                                   const float *__restrict__ M, const float *__restrict__ L, int group, int hd,
                                   float *__restrict__ out) {
  const int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (i >= count) return;
  const int pos = positions ? positions[i] : pos_base + i;
  if (pos < 0) return;
  const __half *k = rows + (size_t)(by_pos ? pos : i) * hd;
  float kr[8];
  for (int j = 0; j < 8; ++j) kr[j] = lane + 32 * j < hd ? __half2float(k[lane + 32 * j]) : 0.0f;
  float a = 0.0f;
  for (int hq = 0; hq < group; ++hq) {
    float d = 0.0f;
    for (int j = 0; j < 8 && lane + 32 * j < hd; ++j) d = fmaf(q[(size_t)hq * hd + lane + 32 * j], kr[j], d);
    d = warp_sum(d);
    if (M[hq] != -INFINITY) a += __expf(d - M[hq]) / (L[hq] * group);
  }
  if (lane == 0) out[out_by_pos ? pos : i] = a;
}

// The copy stream's stand-in for a slow link (tests): spins for ns nanoseconds.
__global__ void delay_kernel(long long ns) {
  const long long t0 = clock64();
  const long long cycles = ns * 2;  // ~2 GHz; only a lower bound matters
  while (clock64() - t0 < cycles) {
  }
}

// Block h: KV head h's select rows [row0, row0 + G) of qg [NKV][rows_max][hd] and of the merged
// totals m, l [NKV][rows_max] to qsel [NKV][G][hd], msel, lsel [NKV][G].
__global__ void save_select_kernel(const float *__restrict__ qg, const float *__restrict__ m, const float *__restrict__ l,
                                   int rows_max, int row0, int group, int hd, float *__restrict__ qsel,
                                   float *__restrict__ msel, float *__restrict__ lsel) {
  const int h = blockIdx.x;
  const size_t src = (size_t)h * rows_max + row0;
  for (int i = threadIdx.x; i < group * hd; i += blockDim.x) qsel[(size_t)h * group * hd + i] = qg[src * hd + i];
  for (int i = threadIdx.x; i < group; i += blockDim.x) {
    msel[h * group + i] = m[src + i];
    lsel[h * group + i] = l[src + i];
  }
}

// chosen[i] = wide[pick[i]] for i < count.
__global__ void map_pick_kernel(const int *__restrict__ wide, const int *pick, int count, int *chosen) {  // pick may be chosen
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) chosen[i] = wide[pick[i]];
}

// Row i < count of the prefetch buffer ← host row pos[i] (a zero-copy read of pinned, mapped
// host memory over the bus); its bit set in the buffer's bitset.
__global__ void gather_positions_kernel(const __half *__restrict__ hk, const __half *__restrict__ hv,
                                        const int *__restrict__ pos, int hd, __half *__restrict__ pk,
                                        __half *__restrict__ pv, int *__restrict__ ppos,
                                        unsigned long long *__restrict__ bits) {
  const int i = blockIdx.x, p = pos[i];
  const uint2 *sk = reinterpret_cast<const uint2 *>(hk + (size_t)p * hd);
  const uint2 *sv = reinterpret_cast<const uint2 *>(hv + (size_t)p * hd);
  uint2 *dk = reinterpret_cast<uint2 *>(pk + (size_t)i * hd), *dv = reinterpret_cast<uint2 *>(pv + (size_t)i * hd);
  for (int c = threadIdx.x; c < hd / 4; c += blockDim.x) {
    dk[c] = sk[c];
    dv[c] = sv[c];
  }
  if (threadIdx.x == 0) {
    ppos[i] = p;
    atomicOr(&bits[p >> 6], 1ull << (p & 63));
  }
}

}  // namespace

int32_t DeviceContext::init_specache() {
  const Hparams &hp = model_.hp;
  const int NKV = hp.n_head_kv, HD = hp.head_dim, G = hp.n_head / NKV, L = hp.n_layer;
  const int g = cfg_.group, bits = cfg_.bits, R = cfg_.residual, K = std::max(1, cfg_.topk);
  const int keep = K * std::max(1, cfg_.rerank), rows_max = kMaxStepTokens * G, vg = std::min(g, HD);
  const int64_t cap = (int64_t)n_ctx_ / g * g;  // tokens the low-bit copy can hold
  words_ = (n_ctx_ + 63) / 64;
  int32_t st = SPECODE_OK;
  auto a = [&](size_t bytes, void **p) {
    if (st == SPECODE_OK) st = alloc(bytes, p);
  };
  // One allocation per array and layer, the KV heads' streams at fixed strides, so a launch
  // covers every head of a layer (LowbitView).
  lowbit_.resize((size_t)L * NKV);
  lv_stride_[0] = cap * HD * bits / 8;         // key and value codes, bytes
  lv_stride_[1] = (cap / g) * HD;              // key scales and zeros, halves
  lv_stride_[2] = cap * (HD / vg);             // value scales and zeros, halves
  for (int l = 0; l < L; ++l) {
    LowbitDev b{};
    a((size_t)NKV * lv_stride_[0], (void **)&b.kcodes);
    a((size_t)NKV * lv_stride_[1] * sizeof(__half), (void **)&b.kscale);
    a((size_t)NKV * lv_stride_[1] * sizeof(__half), (void **)&b.kzero);
    a((size_t)NKV * lv_stride_[0], (void **)&b.vcodes);
    a((size_t)NKV * lv_stride_[2] * sizeof(__half), (void **)&b.vscale);
    a((size_t)NKV * lv_stride_[2] * sizeof(__half), (void **)&b.vzero);
    if (st != SPECODE_OK) return st;
    for (int h = 0; h < NKV; ++h)
      lowbit_[lh(l, h)] = LowbitDev{b.kcodes + h * lv_stride_[0], b.vcodes + h * lv_stride_[0],
                                    b.kscale + h * lv_stride_[1], b.kzero + h * lv_stride_[1],
                                    b.vscale + h * lv_stride_[2], b.vzero + h * lv_stride_[2]};
  }
  const size_t h = sizeof(__half), f = sizeof(float);
  a((size_t)L * NKV * R * HD * h, (void **)&rk_);
  a((size_t)L * NKV * R * HD * h, (void **)&rv_);
  a((size_t)NKV * kMaxStepTokens * HD * h, (void **)&newk_);
  a((size_t)NKV * kMaxStepTokens * HD * h, (void **)&newv_);
  a((size_t)L * NKV * K * HD * h, (void **)&pk_);
  a((size_t)L * NKV * K * HD * h, (void **)&pv_);
  a((size_t)L * NKV * K * sizeof(int), (void **)&ppos_);
  a((size_t)L * NKV * words_ * 8, (void **)&pbits_);
  flush_rows_ = std::max(std::max(4096, R), g);
  a((size_t)2 * flush_rows_ * HD * f, (void **)&flush_);
  a((size_t)NKV * rows_max * HD * f, (void **)&qg_);
  for (float **p : {&pa_m_, &pa_l_, &pb_m_, &pb_l_}) a((size_t)NKV * rows_max * f, (void **)p);
  a((size_t)NKV * rows_max * HD * f, (void **)&pa_acc_);
  a((size_t)NKV * rows_max * HD * f, (void **)&pb_acc_);
  a((size_t)NKV * rows_max * n_ctx_ * f, (void **)&scores_);
  a((size_t)rows_max * sizeof(int), (void **)&visible_);
  a((size_t)L * NKV * G * HD * f, (void **)&qsel_);
  a((size_t)L * NKV * G * f, (void **)&msel_);
  a((size_t)L * NKV * G * f, (void **)&lsel_);
  a((size_t)G * n_ctx_ * f, (void **)&sel_p_);
  a((size_t)n_ctx_ * f, (void **)&sel_avg_);
  a((size_t)keep * f, (void **)&sel_exact_);
  a((size_t)keep * sizeof(int), (void **)&wide_);
  a((size_t)keep * sizeof(int), (void **)&pick_);
  a(sizeof(int), (void **)&wide_n_);
  a(sizeof(int), (void **)&pick_n_);
  if (st != SPECODE_OK) return st;
  pre_n_.resize((size_t)L * NKV);
  fetch_pending_.resize(L);
  if ((st = drop_fetched()) != SPECODE_OK) return st;
  for (auto *evs : {&ev_attn_, &ev_fetch_}) {
    evs->resize(L);
    for (cudaEvent_t &e : *evs) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  for (auto *evs : {&ev_wait0_, &ev_wait1_}) {
    evs->resize(L);
    for (cudaEvent_t &e : *evs) CUDA_CHECK(cudaEventCreate(&e));
  }
  return SPECODE_OK;
}

// After a prefill or truncate: the low-bit copy and residual as a pure function of the rows
// (the residual invariant of src/specache.h). Groups below `valid` tokens (a multiple of R) are
// already that function of unchanged rows and stay; the rest is built from the pinned host
// rows (read once over the bus); nothing fetched.
int32_t DeviceContext::rebuild_lowbit(int valid) {
  const Hparams &hp = model_.hp;
  const int NKV = hp.n_head_kv, HD = hp.head_dim, L = hp.n_layer, g = cfg_.group, R = cfg_.residual, n = n_past_;
  n_lowbit_ = n >= 1 ? R * ((n - 1) / R) : 0;
  resid_n_ = n - n_lowbit_;
  valid = std::min(std::max(0, valid) / R * R, n_lowbit_);
  const int chunk = std::max(1, 4096 / g) * g;  // whole groups; flush_ holds max(4096, R) rows
  cudaStream_t s = stream_;
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < NKV; ++h) {
      const size_t base = ((size_t)l * NKV + h) * n_ctx_ * HD;
      for (int t0 = valid; t0 < n_lowbit_; t0 += chunk) {
        const int nt = std::min(chunk, n_lowbit_ - t0);
        const int32_t st = quantize_rows(lowbit_[lh(l, h)], khost_d_ + base + (size_t)t0 * HD,
                                         vhost_d_ + base + (size_t)t0 * HD, t0, nt);
        if (st != SPECODE_OK) return st;
      }
      if (resid_n_ > 0) {
        const size_t r0 = lh(l, h) * R * HD;
        CUDA_CHECK(cudaMemcpyAsync(rk_ + r0, khost_ + base + (size_t)n_lowbit_ * HD, (size_t)resid_n_ * HD * sizeof(__half),
                                   cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(rv_ + r0, vhost_ + base + (size_t)n_lowbit_ * HD, (size_t)resid_n_ * HD * sizeof(__half),
                                   cudaMemcpyHostToDevice, s));
      }
    }
  if (const int32_t st = drop_fetched(); st != SPECODE_OK) return st;
  CUDA_CHECK(cudaStreamSynchronize(s));
  return SPECODE_OK;
}

// Nothing held in any prefetch buffer, no fetch pending (the copy stream must be idle).
int32_t DeviceContext::drop_fetched() {
  const Hparams &hp = model_.hp;
  CUDA_CHECK(cudaMemsetAsync(pbits_, 0, (size_t)hp.n_layer * hp.n_head_kv * words_ * 8, stream_));
  std::fill(pre_n_.begin(), pre_n_.end(), 0);
  std::fill(fetch_pending_.begin(), fetch_pending_.end(), false);
  return SPECODE_OK;
}

// Rows [t0, t0 + nt) (whole groups) of one KV head's stream from fp16 rows k, v ([nt][hd], device
// or mapped host memory), through fp32 as the CPU quantizes them.
int32_t DeviceContext::quantize_rows(const LowbitDev &d, const __half *k, const __half *v, int t0, int nt) {
  const int HD = model_.hp.head_dim, g = cfg_.group, bits = cfg_.bits, vg = std::min(g, HD);
  float *fk = flush_, *fv = flush_ + (size_t)flush_rows_ * HD;
  half_to_float_kernel<<<blocks_for((size_t)nt * HD), 256, 0, stream_>>>(k, fk, (size_t)nt * HD);
  half_to_float_kernel<<<blocks_for((size_t)nt * HD), 256, 0, stream_>>>(v, fv, (size_t)nt * HD);
  CUDA_CHECK_LAUNCH();
  const size_t t = (size_t)t0;
  return lowbit_quantize(fk, fv, nt, g, HD, bits, d.kcodes + t / g * HD * g * bits / 8, d.kscale + t / g * HD,
                         d.kzero + t / g * HD, d.vcodes + t * HD * bits / 8, d.vscale + t * (HD / vg),
                         d.vzero + t * (HD / vg), stream_);
}

void DeviceContext::kept_one() {
  if (resid_n_ == cfg_.residual) {
    n_lowbit_ += cfg_.residual;
    resid_n_ = 0;
  }
  ++resid_n_;
}

int32_t DeviceContext::attend_specache(int layer, int n, int n_keep, int select_row) {
  const Hparams &hp = model_.hp;
  const int NH = hp.n_head, NKV = hp.n_head_kv, HD = hp.head_dim, G = NH / NKV, KV = NKV * HD;
  const int g = cfg_.group, R = cfg_.residual, bits = cfg_.bits;
  const int rows = n * G, rows_max = kMaxStepTokens * G, n_new = n - n_keep;
  const int64_t head_stride = (int64_t)n_ctx_ * HD;
  const size_t layer_off = (size_t)layer * NKV * head_stride;
  if (n_keep != 0 && n_keep != 1) return SPECODE_ERR_ARGUMENT;
  cudaStream_t s = stream_;
  // This layer's rows chosen last step must have landed (and the copy stream be done with
  // the residual and the low-bit copy it read) before the store below.
  if (fetch_pending_[layer]) {
    CUDA_CHECK(cudaEventRecord(ev_wait0_[layer], s));
    CUDA_CHECK(cudaStreamWaitEvent(s, ev_fetch_[layer], 0));
    CUDA_CHECK(cudaEventRecord(ev_wait1_[layer], s));
  }
  // A full residual is quantized, R rows at once, before the next row is appended.
  const bool flush = n_keep == 1 && resid_n_ == R;
  const int nq = n_lowbit_ + (flush ? R : 0), slot = flush ? 0 : resid_n_, nr = slot + n_keep;
  if (flush)
    for (int h = 0; h < NKV; ++h) {
      const size_t r0 = lh(layer, h) * R * HD;
      if (const int32_t st = quantize_rows(lowbit_[lh(layer, h)], rk_ + r0, rv_ + r0, n_lowbit_, R); st != SPECODE_OK) return st;
    }
  keep_rows_kernel<<<blocks_for((size_t)n * KV), 256, 0, s>>>(
      k_, v_, n, n_keep, NKV, HD, khost_d_ + layer_off, vhost_d_ + layer_off, head_stride, n_past_, rk_ + lh(layer, 0) * R * HD,
      rv_ + lh(layer, 0) * R * HD, R, slot, newk_, newv_, kMaxStepTokens);
  regroup_kernel<<<blocks_for((size_t)n * NH * HD), 256, 0, s>>>(q_, qg_, n, NH, G, HD, rows_max, 1);
  CUDA_CHECK_LAUNCH();
  if (n != vis_n_ || n_keep != vis_keep_) {  // rows' visible speculative tokens: changes only with the pass's shape
    int vis[kMaxStepTokens * 64];
    if (rows > (int)(sizeof vis / sizeof vis[0])) return SPECODE_ERR_UNSUPPORTED;
    for (int r = 0; r < rows; ++r) vis[r] = std::max(0, std::min(n_new, r / G - n_keep + 1));
    // On the compute stream (a plain cudaMemcpy runs on the legacy stream, which the
    // non-blocking compute stream does not wait for); the pageable source is staged at once.
    CUDA_CHECK(cudaMemcpyAsync(visible_, vis, rows * sizeof(int), cudaMemcpyHostToDevice, s));
    vis_n_ = n;
    vis_keep_ = n_keep;
  }
  // Every KV head of the layer in one launch per kernel (heads at fixed strides; the fetched
  // row count is the same for every head of a layer).
  const size_t i0 = lh(layer, 0);
  const int K = std::max(1, cfg_.topk);
  Fp16Segments seg{};
  seg.k[0] = pk_ + i0 * K * HD;
  seg.v[0] = pv_ + i0 * K * HD;
  seg.n[0] = pre_n_[i0];
  seg.k[1] = rk_ + i0 * R * HD;
  seg.v[1] = rv_ + i0 * R * HD;
  seg.n[1] = nr;
  seg.k[2] = newk_;
  seg.v[2] = newv_;
  seg.n[2] = n_new;
  Fp16HeadStrides fs;
  fs.seg[0] = (int64_t)K * HD;
  fs.seg[1] = (int64_t)R * HD;
  fs.seg[2] = (int64_t)kMaxStepTokens * HD;
  fs.q = fs.acc = (int64_t)rows_max * HD;
  fs.ml = rows_max;
  int32_t st = fp16_attend_heads(seg, fs, NKV, qg_, rows, HD, visible_, pb_m_, pb_l_, pb_acc_, s);
  if (st != SPECODE_OK) return st;
  if (nq > 0) {
    const LowbitDev &d = lowbit_[i0];
    const LowbitView lv{d.kcodes, d.kscale, d.kzero, d.vcodes, d.vscale, d.vzero,
                        lv_stride_[0], lv_stride_[1], lv_stride_[0], lv_stride_[2]};
    HeadStrides hs;
    hs.q = hs.acc = (int64_t)rows_max * HD;
    hs.skip = words_;
    hs.p = (int64_t)rows_max * n_ctx_;
    hs.ml = rows_max;
    if ((st = lowbit_attend_heads(lv, NKV, g, HD, bits, 0, nq, qg_, rows, pbits_ + i0 * words_, cfg_.debias, scores_, pa_m_,
                                  pa_l_, pa_acc_, hs, s, work_, work_floats_)) != SPECODE_OK)
      return st;
    if ((st = softmax_merge_heads(pb_m_, pb_l_, pb_acc_, pa_m_, pa_l_, pa_acc_, rows, HD, NKV, rows_max,
                                  (int64_t)rows_max * HD, s)) != SPECODE_OK)
      return st;
  }
  regroup_kernel<<<blocks_for((size_t)n * NH * HD), 256, 0, s>>>(pb_acc_, att_, n, NH, G, HD, rows_max, 0);
  CUDA_CHECK_LAUNCH();
  if (select_row < 0 || cfg_.topk <= 0) return SPECODE_OK;
  // What the copy stream reads after this layer's attention: the select row's queries and
  // its softmax totals (kept per layer, so the next layers can go on).
  save_select_kernel<<<NKV, 128, 0, s>>>(qg_, pb_m_, pb_l_, rows_max, select_row * G, G, HD, qsel_ + lh(layer, 0) * G * HD,
                                         msel_ + lh(layer, 0) * G, lsel_ + lh(layer, 0) * G);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cudaEventRecord(ev_attn_[layer], s));
  return select_and_fetch(layer, nq, nr);
}

// On the copy stream, after layer l's attention: choose and fetch the rows layer l of the
// next step attends in fp16 (see the top of the file).
int32_t DeviceContext::select_and_fetch(int layer, int n_lowbit_now, int resid_now) {
  const Hparams &hp = model_.hp;
  const int NKV = hp.n_head_kv, HD = hp.head_dim, G = hp.n_head / NKV;
  const int g = cfg_.group, R = cfg_.residual, bits = cfg_.bits, K = cfg_.topk;
  const int keep = std::min(1024, K * std::max(1, cfg_.rerank));
  // Candidates: the positions that will be in the low-bit copy at the next step — the
  // quantized ones, and the residual when it is full (the next append quantizes it).
  const int n_cand = n_lowbit_now + (resid_now == R ? R : 0);
  const int64_t head_stride = (int64_t)n_ctx_ * HD;
  cudaStream_t c = copy_;
  CUDA_CHECK(cudaStreamWaitEvent(c, ev_attn_[layer], 0));
  // The layer's bitsets (every KV head's, contiguous) cleared once; the gathers set them.
  CUDA_CHECK(cudaMemsetAsync(pbits_ + lh(layer, 0) * words_, 0, (size_t)NKV * words_ * 8, c));
  if (cfg_.fetch_delay_us > 0) {
    delay_kernel<<<1, 1, 0, c>>>((long long)cfg_.fetch_delay_us * 1000);
    CUDA_CHECK_LAUNCH();
  }
  int32_t st;
  for (int h = 0; h < NKV; ++h) {
    const size_t i = lh(layer, h);
    const float *q = qsel_ + i * G * HD, *M = msel_ + i * G, *L = lsel_ + i * G;
    const int held = pre_n_[i];
    if (n_cand > 0) {
      if (n_lowbit_now > 0) {
        const LowbitDev &d = lowbit_[i];
        if ((st = lowbit_scores(d.kcodes, d.kscale, d.kzero, g, HD, bits, 0, n_lowbit_now, q, G, cfg_.debias, sel_p_, n_ctx_, c)) != SPECODE_OK)
          return st;
        mean_probs_kernel<<<blocks_for(n_lowbit_now), 256, 0, c>>>(sel_p_, n_ctx_, n_lowbit_now, M, L, G, sel_avg_);
      }
      // Rows held in fp16 count with their exact probabilities, as in the attention.
      if (held > 0)
        exact_probs_kernel<<<(held + 3) / 4, 128, 0, c>>>(pk_ + i * K * HD, ppos_ + i * K, 0, held, 0, 1, q, M, L, G, HD, sel_avg_);
      if (resid_now == R)
        exact_probs_kernel<<<(R + 3) / 4, 128, 0, c>>>(rk_ + i * R * HD, nullptr, n_lowbit_now, R, 0, 1, q, M, L, G, HD, sel_avg_);
      CUDA_CHECK_LAUNCH();
      const int n_wide = std::min(n_cand, keep), n_pick = std::min(n_cand, K);
      if ((st = topk(sel_avg_, n_cand, keep, wide_, wide_n_, c)) != SPECODE_OK) return st;
      const int *chosen = wide_;
      if (n_wide > n_pick) {
        // Second stage: exact scores of the wide choice from the host rows.
        exact_probs_kernel<<<(n_wide + 3) / 4, 128, 0, c>>>(khost_d_ + (size_t)i * head_stride, wide_, 0, n_wide, 1, 0, q,
                                                            M, L, G, HD, sel_exact_);
        CUDA_CHECK_LAUNCH();
        if ((st = topk(sel_exact_, n_wide, K, pick_, pick_n_, c)) != SPECODE_OK) return st;
        map_pick_kernel<<<blocks_for(n_pick), 256, 0, c>>>(wide_, pick_, n_pick, pick_);
        CUDA_CHECK_LAUNCH();
        chosen = pick_;
        step_fetch_bytes_ += (uint64_t)n_wide * HD * sizeof(__half);
      }
      gather_positions_kernel<<<n_pick, 32, 0, c>>>(khost_d_ + (size_t)i * head_stride, vhost_d_ + (size_t)i * head_stride,
                                                    chosen, HD, pk_ + i * K * HD, pv_ + i * K * HD, ppos_ + i * K,
                                                    reinterpret_cast<unsigned long long *>(pbits_ + i * words_));
      CUDA_CHECK_LAUNCH();
      step_fetch_bytes_ += 2ull * n_pick * HD * sizeof(__half);
      pre_n_[i] = n_pick;
    } else {
      pre_n_[i] = 0;
    }
  }
  CUDA_CHECK(cudaEventRecord(ev_fetch_[layer], c));
  fetch_pending_[layer] = true;
  return SPECODE_OK;
}

}  // namespace specode::cuda

// fp16_attn.cu — the full-precision piece of SpeCache's decode attention on the
// device (issue #4) and the split-softmax merge: the query rows of a pass over
// up to three fp16 segments — the fetched top-k rows, the residual window and
// the pass's own new tokens (causal: row r sees new[0..visible[r])) — as one
// piece (m, l, acc), then merged with the low-bit piece (lowbit_attn.cu) the
// way the CPU's softmax_merge does (src/lowbit.cpp).
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda_ops.h"
#include "reduce.cuh"

namespace specode::cuda {

// One block per query row; scores in shared memory ([n_keys] floats).
__global__ void fp16_attend_kernel(Fp16Segments seg, const float *__restrict__ q, int hd, const int *__restrict__ visible,
                                   float *__restrict__ m_out, float *__restrict__ l_out, float *__restrict__ acc) {
  extern __shared__ float sc[];
  const int r = blockIdx.x;
  const int n0 = seg.n[0], n1 = seg.n[1], n2 = visible ? min(seg.n[2], visible[r]) : seg.n[2];
  const int n_keys = n0 + n1 + n2;
  const float *qr = q + (size_t)r * hd;
  for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
    const int s = j < n0 ? 0 : (j < n0 + n1 ? 1 : 2), i = j - (s == 0 ? 0 : (s == 1 ? n0 : n0 + n1));
    const __half *k = seg.k[s] + (size_t)i * hd;
    float d = 0.0f;
    for (int c = 0; c < hd; ++c) d = fmaf(qr[c], __half2float(k[c]), d);
    sc[j] = d;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n_keys; j += blockDim.x) mx = fmaxf(mx, sc[j]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
    const float e = __expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  sum = block_sum(sum);  // (its barrier also makes every sc[j] visible below)
  for (int c = threadIdx.x; c < hd; c += blockDim.x) {
    float a = 0.0f;
    for (int j = 0; j < n_keys; ++j) {
      const int s = j < n0 ? 0 : (j < n0 + n1 ? 1 : 2), i = j - (s == 0 ? 0 : (s == 1 ? n0 : n0 + n1));
      a = fmaf(sc[j], __half2float(seg.v[s][(size_t)i * hd + c]), a);
    }
    acc[(size_t)r * hd + c] = n_keys ? a / sum : 0.0f;
  }
  if (threadIdx.x == 0) {
    m_out[r] = n_keys ? mx : -INFINITY;
    l_out[r] = n_keys ? sum : 0.0f;
  }
}

// Per row: (m_a, l_a, acc_a) ← the softmax over both pieces (src/lowbit.cpp softmax_merge).
__global__ void softmax_merge_kernel(float *__restrict__ m_a, float *__restrict__ l_a, float *__restrict__ acc_a,
                                     const float *__restrict__ m_b, const float *__restrict__ l_b,
                                     const float *__restrict__ acc_b, int hd) {
  const int r = blockIdx.x;
  const float ma = m_a[r], mb = m_b[r];
  if (mb == -INFINITY) return;
  float *a = acc_a + (size_t)r * hd;
  const float *b = acc_b + (size_t)r * hd;
  if (ma == -INFINITY) {
    for (int c = threadIdx.x; c < hd; c += blockDim.x) a[c] = b[c];
    __syncthreads();
    if (threadIdx.x == 0) {
      m_a[r] = mb;
      l_a[r] = l_b[r];
    }
    return;
  }
  const float mx = fmaxf(ma, mb);
  const float wa = l_a[r] * __expf(ma - mx), wb = l_b[r] * __expf(mb - mx), inv = 1.0f / (wa + wb);
  for (int c = threadIdx.x; c < hd; c += blockDim.x) a[c] = (a[c] * wa + b[c] * wb) * inv;
  __syncthreads();
  if (threadIdx.x == 0) {
    l_a[r] = wa + wb;
    m_a[r] = mx;
  }
}

// ---------------------------------------------------------------- launchers

int32_t fp16_attend(const Fp16Segments &seg, const float *q, int n_rows, int hd, const int *visible, float *m, float *l,
                    float *acc, cudaStream_t stream) {
  const int n_keys = seg.n[0] + seg.n[1] + seg.n[2];
  if (n_rows <= 0) return SPECODE_OK;
  if (hd <= 0 || n_keys < 0 || (size_t)n_keys * sizeof(float) > 48 * 1024) return SPECODE_ERR_ARGUMENT;
  fp16_attend_kernel<<<n_rows, 128, (size_t)(n_keys > 0 ? n_keys : 1) * sizeof(float), stream>>>(seg, q, hd, visible, m, l, acc);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t softmax_merge(float *m_a, float *l_a, float *acc_a, const float *m_b, const float *l_b, const float *acc_b,
                      int n_rows, int hd, cudaStream_t stream) {
  if (n_rows <= 0) return SPECODE_OK;
  softmax_merge_kernel<<<n_rows, 64, 0, stream>>>(m_a, l_a, acc_a, m_b, l_b, acc_b, hd);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

}  // namespace specode::cuda

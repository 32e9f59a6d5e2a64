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
                                   float *__restrict__ m_out, float *__restrict__ l_out, float *__restrict__ acc,
                                   Fp16HeadStrides st) {
  // Head blockIdx.y: its segments, queries and outputs.
  const int hh = blockIdx.y;
  for (int i = 0; i < 3; ++i) {
    seg.k[i] += hh * st.seg[i];
    seg.v[i] += hh * st.seg[i];
  }
  q += hh * st.q;
  m_out += hh * st.ml;
  l_out += hh * st.ml;
  acc += hh * st.acc;
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
                                     const float *__restrict__ acc_b, int hd, int64_t ml_stride, int64_t acc_stride) {
  const int hh = blockIdx.y;
  m_a += hh * ml_stride;
  l_a += hh * ml_stride;
  m_b += hh * ml_stride;
  l_b += hh * ml_stride;
  acc_a += hh * acc_stride;
  acc_b += hh * acc_stride;
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

int32_t fp16_attend_heads(const Fp16Segments &seg, const Fp16HeadStrides &st, int n_heads, const float *q, int n_rows,
                          int hd, const int *visible, float *m, float *l, float *acc, cudaStream_t stream) {
  const int n_keys = seg.n[0] + seg.n[1] + seg.n[2];
  if (n_rows <= 0) return SPECODE_OK;
  if (hd <= 0 || n_keys < 0 || (size_t)n_keys * sizeof(float) > 48 * 1024 || n_heads < 1 || n_heads > 65535)
    return SPECODE_ERR_ARGUMENT;
  fp16_attend_kernel<<<dim3(n_rows, n_heads), 128, (size_t)(n_keys > 0 ? n_keys : 1) * sizeof(float), stream>>>(
      seg, q, hd, visible, m, l, acc, st);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t fp16_attend(const Fp16Segments &seg, const float *q, int n_rows, int hd, const int *visible, float *m, float *l,
                    float *acc, cudaStream_t stream) {
  return fp16_attend_heads(seg, Fp16HeadStrides{}, 1, q, n_rows, hd, visible, m, l, acc, stream);
}

int32_t softmax_merge_heads(float *m_a, float *l_a, float *acc_a, const float *m_b, const float *l_b, const float *acc_b,
                            int n_rows, int hd, int n_heads, int64_t ml_stride, int64_t acc_stride, cudaStream_t stream) {
  if (n_rows <= 0) return SPECODE_OK;
  if (n_heads < 1 || n_heads > 65535) return SPECODE_ERR_ARGUMENT;
  softmax_merge_kernel<<<dim3(n_rows, n_heads), 64, 0, stream>>>(m_a, l_a, acc_a, m_b, l_b, acc_b, hd, ml_stride,
                                                                 acc_stride);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t softmax_merge(float *m_a, float *l_a, float *acc_a, const float *m_b, const float *l_b, const float *acc_b,
                      int n_rows, int hd, cudaStream_t stream) {
  return softmax_merge_heads(m_a, l_a, acc_a, m_b, l_b, acc_b, n_rows, hd, 1, 0, 0, stream);
}

}  // namespace specode::cuda

// ---------------------------------------------------------------- causal attention over a cache

namespace specode::cuda {

namespace {
constexpr int kFlashTile = 128;  // keys a tile; also the block size
constexpr int kFlashMaxHd = 256;

// How many key ranges (blocks along y) a call uses: enough blocks to fill the device for a
// decode step (few query rows, many keys), one range for prefill (many rows).
int flash_splits(int rows, int n_keys) {
  const int by_keys = (n_keys + 511) / 512;
  const int by_rows = rows >= 512 ? 1 : 512 / (rows > 0 ? rows : 1);
  int s = by_keys < by_rows ? by_keys : by_rows;
  return s < 1 ? 1 : s;
}
}  // namespace

// Block (row = query i · n_head + head, split): keys [split·chunk, min(visible, (split+1)·chunk)) of
// the row's KV head, in tiles of kFlashTile with an online softmax; writes its unnormalized
// piece (m, l, acc) to the work area.
__global__ void flash_partial_kernel(KvView kv, int n_head, int group, int hd, const float *__restrict__ q, int pos0,
                                     int n_keys, int chunk, int rows, float *__restrict__ pm, float *__restrict__ pl,
                                     float *__restrict__ pacc) {
  __shared__ float qs[kFlashMaxHd];
  __shared__ float p[kFlashTile];
  const int row = blockIdx.x, split = blockIdx.y;
  const int i = row / n_head, h = row % n_head, kvh = h / group;
  const int visible = min(n_keys, pos0 + i + 1);
  const int j0 = split * chunk, j1 = min(visible, j0 + chunk);
  for (int c = threadIdx.x; c < hd; c += blockDim.x) qs[c] = q[(size_t)row * hd + c];
  __syncthreads();
  const __half *K = kv.k + (size_t)kvh * kv.head_stride, *V = kv.v + (size_t)kvh * kv.head_stride;
  float m = -INFINITY, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;  // channels threadIdx.x and + kFlashTile
  for (int t0 = j0; t0 < j1; t0 += kFlashTile) {
    const int j = t0 + threadIdx.x;
    float s = -INFINITY;
    if (j < j1) {
      const __half2 *kr = reinterpret_cast<const __half2 *>(K + (size_t)j * hd);
      float d = 0.0f;
      for (int c2 = 0; c2 < hd / 2; ++c2) {
        const float2 kf = __half22float2(kr[c2]);
        d = fmaf(qs[2 * c2], kf.x, fmaf(qs[2 * c2 + 1], kf.y, d));
      }
      s = d;
    }
    const float m_new = fmaxf(m, block_max(s));
    const float e = j < j1 ? __expf(s - m_new) : 0.0f;
    p[threadIdx.x] = e;
    const float tsum = block_sum(e);  // its barriers make p visible
    const float corr = m == -INFINITY ? 0.0f : __expf(m - m_new);
    l = l * corr + tsum;
    const int n = min(kFlashTile, j1 - t0);
    float a0 = acc0 * corr, a1 = acc1 * corr;
    const int c0 = threadIdx.x, c1 = threadIdx.x + kFlashTile;
    for (int jj = 0; jj < n; ++jj) {
      const __half *vr = V + (size_t)(t0 + jj) * hd;
      if (c0 < hd) a0 = fmaf(p[jj], __half2float(vr[c0]), a0);
      if (c1 < hd) a1 = fmaf(p[jj], __half2float(vr[c1]), a1);
    }
    acc0 = a0;
    acc1 = a1;
    m = m_new;
    __syncthreads();  // p is rewritten by the next tile
  }
  const size_t slot = (size_t)split * rows + row;
  if (threadIdx.x == 0) {
    pm[slot] = m;
    pl[slot] = l;
  }
  if (threadIdx.x < hd) pacc[slot * hd + threadIdx.x] = acc0;
  if (threadIdx.x + kFlashTile < hd) pacc[slot * hd + threadIdx.x + kFlashTile] = acc1;
}

// out[row] = the softmax over every split's piece; 0 for a row that saw no key.
__global__ void flash_combine_kernel(const float *__restrict__ pm, const float *__restrict__ pl,
                                     const float *__restrict__ pacc, int splits, int rows, int hd,
                                     float *__restrict__ out) {
  const int row = blockIdx.x;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, pm[(size_t)s * rows + row]);
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = pm[(size_t)s * rows + row];
    if (ms != -INFINITY) L += pl[(size_t)s * rows + row] * __expf(ms - M);
  }
  for (int c = threadIdx.x; c < hd; c += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = pm[(size_t)s * rows + row];
      if (ms != -INFINITY) a += pacc[((size_t)s * rows + row) * hd + c] * __expf(ms - M);
    }
    out[(size_t)row * hd + c] = L > 0.0f ? a / L : 0.0f;
  }
}

size_t flash_work_floats(int n_q, int n_head, int hd, int n_keys) {
  const int rows = n_q * n_head;
  return (size_t)flash_splits(rows, n_keys) * rows * (hd + 2);
}

int32_t flash_attend(KvView kv, int n_head, int n_head_kv, int hd, const float *q, int n_q, int pos0, int n_keys,
                     float *out, float *work, size_t work_floats, cudaStream_t stream) {
  if (n_q <= 0) return SPECODE_OK;
  if (hd <= 0 || hd % 2 || hd > kFlashMaxHd || n_head_kv <= 0 || n_head % n_head_kv || n_keys <= 0 || pos0 < 0)
    return SPECODE_ERR_ARGUMENT;
  const int rows = n_q * n_head, splits = flash_splits(rows, n_keys);
  if ((size_t)splits * rows * (hd + 2) > work_floats) return SPECODE_ERR_ARGUMENT;
  const int chunk = (n_keys + splits - 1) / splits;
  float *pm = work, *pl = pm + (size_t)splits * rows, *pacc = pl + (size_t)splits * rows;
  flash_partial_kernel<<<dim3(rows, splits), kFlashTile, 0, stream>>>(kv, n_head, n_head / n_head_kv, hd, q, pos0,
                                                                      n_keys, chunk, rows, pm, pl, pacc);
  CUDA_CHECK_LAUNCH();
  flash_combine_kernel<<<rows, hd < 128 ? 64 : 128, 0, stream>>>(pm, pl, pacc, splits, rows, hd, out);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

}  // namespace specode::cuda

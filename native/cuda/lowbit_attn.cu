// lowbit_attn.cu — SpeCache's device-side op family (issue #4): quantizing new
// tokens into the low-bit copy (KIVI layout, the same bytes as the CPU's
// LowbitStream), attention straight from the codes as one split-softmax piece
// (scores, row softmax, values; never a dequantized cache), top-k per KV head,
// and the zero-copy gather of the chosen fp16 rows from pinned host pages.
// Kernels first, then launchers that take a stream and check every call.
// Checked against the CPU implementation by native/cuda/tests/test_cuda_ops.cu
// wherever a GPU is present.
//
// Layout of one (layer, KV head) stream of n tokens (see src/lowbit.h):
//   key codes   [n/g][hd][g·bits/8]  per channel, g tokens a group, LSB first
//   key params  [n/g][hd] fp16 scale and zero
//   value codes [n][hd·bits/8]       per token, LSB first
//   value params[n][hd/vg] fp16 scale and zero, vg = min(g, hd)
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "cuda_ops.h"
#include "reduce.cuh"

namespace specode::cuda {

namespace {

// fp16-rounded scale and zero of a group spanning [mn, mx] (src/lowbit.cpp lowbit_params).
__device__ void group_params(float mn, float mx, int bits, float *scale, float *zero) {
  float s = bits == 2 ? (mx - mn) / 3.0f : (mx - mn) / 2.0f;
  float z = bits == 2 ? mn : (3.0f * mn + mx) / 4.0f;
  s = fminf(s, 65504.0f);
  *scale = __half2float(__float2half_rn(s));
  *zero = __half2float(__float2half_rn(z));
}

// The clamped code of x (src/lowbit.cpp lowbit_code).
__device__ int group_code(float x, float scale, float zero, int bits) {
  if (!(scale > 0.0f)) return 0;
  const float top = (float)((1 << bits) - 1);
  float c = floorf(__fdiv_rn(x - zero, scale) + 0.5f);
  c = c < 0.0f ? 0.0f : (c > top ? top : c);
  return c == c ? (int)c : 0;
}

__device__ __forceinline__ int code_at(const uint8_t *stream, int i, int bits) {
  const int per_byte = 8 / bits;
  return (stream[i / per_byte] >> ((i % per_byte) * bits)) & ((1 << bits) - 1);
}

}  // namespace

// ---------------------------------------------------------------- kernels

// One block per key group, one thread per channel. k: [n_groups·g][hd] fp32.
__global__ void quantize_keys_kernel(const float *__restrict__ k, int g, int hd, int bits, uint8_t *__restrict__ codes,
                                     __half *__restrict__ scale, __half *__restrict__ zero) {
  const int b = blockIdx.x, c = threadIdx.x;
  if (c >= hd) return;
  const float *col = k + (size_t)b * g * hd + c;
  float mn = FLT_MAX, mx = -FLT_MAX;
  for (int j = 0; j < g; ++j) {
    mn = fminf(mn, col[(size_t)j * hd]);
    mx = fmaxf(mx, col[(size_t)j * hd]);
  }
  float s, z;
  group_params(mn, mx, bits, &s, &z);
  scale[(size_t)b * hd + c] = __float2half_rn(s);
  zero[(size_t)b * hd + c] = __float2half_rn(z);
  const int per_byte = 8 / bits;
  uint8_t *dst = codes + ((size_t)b * hd + c) * g * bits / 8;
  for (int byte = 0; byte < g / per_byte; ++byte) {
    uint8_t packed = 0;
    for (int i = 0; i < per_byte; ++i)
      packed |= (uint8_t)(group_code(col[(size_t)(byte * per_byte + i) * hd], s, z, bits) << (i * bits));
    dst[byte] = packed;
  }
}

// One thread per (token, value group). v: [n][hd] fp32.
__global__ void quantize_values_kernel(const float *__restrict__ v, int n, int hd, int vg, int bits,
                                       uint8_t *__restrict__ codes, __half *__restrict__ scale,
                                       __half *__restrict__ zero) {
  const int nvg = hd / vg;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n * nvg) return;
  const int t = idx / nvg, gi = idx % nvg;
  const float *x = v + (size_t)t * hd + gi * vg;
  float mn = FLT_MAX, mx = -FLT_MAX;
  for (int c = 0; c < vg; ++c) {
    mn = fminf(mn, x[c]);
    mx = fmaxf(mx, x[c]);
  }
  float s, z;
  group_params(mn, mx, bits, &s, &z);
  scale[(size_t)t * nvg + gi] = __float2half_rn(s);
  zero[(size_t)t * nvg + gi] = __float2half_rn(z);
  const int per_byte = 8 / bits;
  uint8_t *row = codes + (size_t)t * hd * bits / 8;
  for (int byte = gi * vg / per_byte; byte < (gi + 1) * vg / per_byte; ++byte) {
    uint8_t packed = 0;
    for (int i = 0; i < per_byte; ++i)
      packed |= (uint8_t)(group_code(x[byte * per_byte + i - gi * vg], s, z, bits) << (i * bits));
    row[byte] = packed;
  }
}

// Scores of tokens [t0, t0 + n) (whole groups): one block per group, one thread per token.
// q: [n_rows][hd] (already scaled by 1/sqrt(hd)); p: [n_rows][ldp], column j = token t0 + j.
// Skipped positions get -inf; with debias each group's scores lose σ²/2 (src/lowbit.h).
__global__ void lowbit_scores_kernel(LowbitView lv, int g, int hd, int bits, const float *__restrict__ q, int n_rows,
                                     const uint64_t *__restrict__ skip, int t0, float *__restrict__ p, int64_t ldp,
                                     int debias, HeadStrides hs) {
  // Head blockIdx.y: its stream, queries, skip set and scores.
  const int hh = blockIdx.y;
  const uint8_t *__restrict__ kcodes = lv.kcodes + hh * lv.kcodes_stride;
  const __half *__restrict__ kscale = lv.kscale + hh * lv.kparam_stride;
  const __half *__restrict__ kzero = lv.kzero + hh * lv.kparam_stride;
  q += hh * hs.q;
  if (skip) skip += hh * hs.skip;
  p += hh * hs.p;
  extern __shared__ float sh[];
  float *qs = sh;                    // [n_rows][hd]
  float *sc = qs + (size_t)n_rows * hd;  // [hd] scales
  float *ze = sc + hd;                   // [hd] zeros
  float *shift = ze + hd;                // [n_rows]
  const int group = t0 / g + blockIdx.x, j = threadIdx.x;
  for (int i = threadIdx.x; i < n_rows * hd; i += blockDim.x) qs[i] = q[i];
  for (int c = threadIdx.x; c < hd; c += blockDim.x) {
    sc[c] = __half2float(kscale[(size_t)group * hd + c]);
    ze[c] = __half2float(kzero[(size_t)group * hd + c]);
  }
  __syncthreads();
  for (int r = threadIdx.x; r < n_rows; r += blockDim.x) {
    float v = 0.0f;
    if (debias)
      for (int c = 0; c < hd; ++c) v += qs[(size_t)r * hd + c] * qs[(size_t)r * hd + c] * sc[c] * sc[c];
    shift[r] = v * (1.0f / 24.0f);
  }
  __syncthreads();
  if (j >= g) return;
  const int pos = group * g + j, col = pos - t0;
  const bool skipped = skip && ((skip[pos >> 6] >> (pos & 63)) & 1);
  for (int r = 0; r < n_rows; ++r) {
    float acc = 0.0f;
    if (!skipped) {
      for (int c = 0; c < hd; ++c) {
        const float kv = (float)code_at(kcodes + ((size_t)group * hd + c) * g * bits / 8, j, bits) * sc[c] + ze[c];
        acc = fmaf(qs[(size_t)r * hd + c], kv, acc);
      }
    }
    p[(size_t)r * ldp + col] = skipped ? -INFINITY : acc - shift[r];
  }
}

// Softmax piece per row (one block per row): m = max, p = exp(p - m) (0 where -inf), l = Σ p.
__global__ void softmax_rows_kernel(float *__restrict__ p, int n, int64_t ldp, float *__restrict__ m,
                                    float *__restrict__ l, HeadStrides hs) {
  const int hh = blockIdx.y;
  m += hh * hs.ml;
  l += hh * hs.ml;
  float *row = p + hh * hs.p + (size_t)blockIdx.x * ldp;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float e = mx == -INFINITY || row[j] == -INFINITY ? 0.0f : __expf(row[j] - mx);
    row[j] = e;
    sum += e;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    m[blockIdx.x] = mx;
    l[blockIdx.x] = sum;
  }
}

// Σ_j pr[j] · v̂[t0 + j][c] over j in [j0, j1): channel c of the decoded values, weighted.
__device__ float weighted_values(const uint8_t *__restrict__ vcodes, const __half *__restrict__ vscale,
                                 const __half *__restrict__ vzero, int hd, int vg, int bits, const float *__restrict__ pr,
                                 int t0, int j0, int j1, int c) {
  const int nvg = hd / vg, gi = c / vg, row_bytes = hd * bits / 8;
  float a = 0.0f;
  for (int j = j0; j < j1; ++j) {
    const float w = pr[j];
    if (w == 0.0f) continue;
    const size_t t = (size_t)t0 + j;
    const float v = (float)code_at(vcodes + t * row_bytes, c, bits) * __half2float(vscale[t * nvg + gi]) +
                    __half2float(vzero[t * nvg + gi]);
    a = fmaf(w, v, a);
  }
  return a;
}

// acc[r][c] = Σ_j p[r][j] · v̂[t0 + j][c] / l[r]: one block per row, one thread per channel.
__global__ void lowbit_values_kernel(LowbitView lv, int hd, int vg, int bits, const float *__restrict__ p, int64_t ldp,
                                     int t0, int n, const float *__restrict__ l, float *__restrict__ acc, HeadStrides hs) {
  const int hh = blockIdx.y;
  const uint8_t *__restrict__ vcodes = lv.vcodes + hh * lv.vcodes_stride;
  const __half *__restrict__ vscale = lv.vscale + hh * lv.vparam_stride;
  const __half *__restrict__ vzero = lv.vzero + hh * lv.vparam_stride;
  p += hh * hs.p;
  l += hh * hs.ml;
  acc += hh * hs.acc;
  const int r = blockIdx.x, c = threadIdx.x;
  if (c >= hd) return;
  const float a = weighted_values(vcodes, vscale, vzero, hd, vg, bits, p + (size_t)r * ldp, t0, 0, n, c);
  acc[(size_t)r * hd + c] = l[r] > 0.0f ? a / l[r] : 0.0f;
}

// The value pass split over positions: block (r, s) sums tokens [s·chunk, (s+1)·chunk) of row r
// into partial[s][r][c] (unnormalized); lowbit_values_reduce_kernel adds the splits up.
__global__ void lowbit_values_split_kernel(LowbitView lv, int hd, int vg, int bits, const float *__restrict__ p,
                                           int64_t ldp, int t0, int n, int chunk, int n_rows, float *__restrict__ partial,
                                           HeadStrides hs) {
  const int hh = blockIdx.z;
  const uint8_t *__restrict__ vcodes = lv.vcodes + hh * lv.vcodes_stride;
  const __half *__restrict__ vscale = lv.vscale + hh * lv.vparam_stride;
  const __half *__restrict__ vzero = lv.vzero + hh * lv.vparam_stride;
  p += hh * hs.p;
  partial += (size_t)hh * gridDim.y * n_rows * hd;
  const int r = blockIdx.x, s = blockIdx.y, c = threadIdx.x;
  if (c >= hd) return;
  partial[((size_t)s * n_rows + r) * hd + c] =
      weighted_values(vcodes, vscale, vzero, hd, vg, bits, p + (size_t)r * ldp, t0, s * chunk, min(n, (s + 1) * chunk), c);
}

__global__ void lowbit_values_reduce_kernel(const float *__restrict__ partial, int splits, int n_rows, int hd,
                                            const float *__restrict__ l, float *__restrict__ acc, HeadStrides hs) {
  const int hh = blockIdx.y;
  partial += (size_t)hh * splits * n_rows * hd;
  l += hh * hs.ml;
  acc += hh * hs.acc;
  const int r = blockIdx.x, c = threadIdx.x;
  if (c >= hd) return;
  float a = 0.0f;
  for (int s = 0; s < splits; ++s) a += partial[((size_t)s * n_rows + r) * hd + c];
  acc[(size_t)r * hd + c] = l[r] > 0.0f ? a / l[r] : 0.0f;
}

// dst[i] = *src_rows[i] (hd fp16 each): src_rows are device pointers to pinned, mapped host
// rows, so the copy is a zero-copy read over PCIe. One block per row, 8 bytes a thread.
__global__ void gather_rows_kernel(const uint16_t *const *__restrict__ src_rows, uint16_t *__restrict__ dst, int hd) {
  const uint16_t *src = src_rows[blockIdx.x];
  uint16_t *d = dst + (size_t)blockIdx.x * hd;
  if (hd % 4 == 0) {
    for (int i = threadIdx.x; i < hd / 4; i += blockDim.x) reinterpret_cast<uint2 *>(d)[i] = reinterpret_cast<const uint2 *>(src)[i];
  } else {
    for (int i = threadIdx.x; i < hd; i += blockDim.x) d[i] = src[i];
  }
}

namespace {
// A float's bits as an unsigned key in the same order (-inf lowest).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum over the block (blockDim.x values, one a thread); *total gets the sum.
__device__ int block_exclusive_scan(int v, int *buf, int *total) {
  const int t = threadIdx.x;
  buf[t] = v;
  __syncthreads();
  for (int off = 1; off < blockDim.x; off <<= 1) {
    const int add = t >= off ? buf[t - off] : 0;
    __syncthreads();
    buf[t] += add;
    __syncthreads();
  }
  const int incl = buf[t];
  *total = buf[blockDim.x - 1];
  __syncthreads();
  return incl - v;
}
}  // namespace

// Top-k by radix select in one block: four 8-bit histogram passes find the k-th largest
// key T and how many keys equal to T are taken (the lowest positions, as select_topk);
// then every thread walks its own run of positions and writes the chosen ones at their
// rank, so the output is in ascending position order. O(n) reads, no sorting.
__global__ void topk_radix_kernel(const float *__restrict__ score, int n, int k, int *__restrict__ out,
                                  int *__restrict__ count) {
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  __shared__ int scan[1024];
  const int t = threadIdx.x, nt = blockDim.x;
  if (n <= k) {  // all of them
    for (int i = t; i < n; i += nt) out[i] = i;
    if (t == 0) *count = n;
    return;
  }
  uint32_t prefix = 0, mask = 0;
  if (t == 0) s_remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = t; b < 256; b += nt) hist[b] = 0;
    __syncthreads();
    for (int i = t; i < n; i += nt) {
      const uint32_t u = order_key(score[i]);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255], 1);
    }
    __syncthreads();
    if (t == 0) {
      int cum = 0, rem = s_remaining, b = 255;
      for (; b > 0; --b) {
        if (cum + hist[b] >= rem) break;
        cum += hist[b];
      }
      s_remaining = rem - cum;  // still to take from bin b
      s_prefix = prefix | ((uint32_t)b << shift);
    }
    __syncthreads();
    prefix = s_prefix;
    mask |= 255u << shift;
  }
  const uint32_t T = prefix;
  const int need_eq = s_remaining;  // keys equal to T to take, lowest positions first
  const int chunk = (n + nt - 1) / nt, i0 = min(n, t * chunk), i1 = min(n, i0 + chunk);
  int gt = 0, eq = 0;
  for (int i = i0; i < i1; ++i) {
    const uint32_t u = order_key(score[i]);
    gt += u > T;
    eq += u == T;
  }
  int total;
  const int gt_before = block_exclusive_scan(gt, scan, &total);
  const int eq_before = block_exclusive_scan(eq, scan, &total);
  int rank = gt_before + min(eq_before, need_eq), eq_seen = eq_before;
  for (int i = i0; i < i1; ++i) {
    const uint32_t u = order_key(score[i]);
    if (u > T || (u == T && eq_seen++ < need_eq)) out[rank++] = i;
  }
  if (t == 0) *count = k;
}

// ---------------------------------------------------------------- launchers

namespace {
// Value-pass blocks per row: one per 512 positions, at most 64.
int lowbit_value_splits(int n) {
  const int s = (n + 511) / 512;
  return s < 1 ? 1 : (s > 64 ? 64 : s);
}
}  // namespace

size_t lowbit_work_floats(int n_rows, int hd, int n_tokens) { return (size_t)lowbit_value_splits(n_tokens) * n_rows * hd; }

int32_t lowbit_quantize(const float *k, const float *v, int n_tokens, int g, int hd, int bits, uint8_t *kcodes,
                        __half *kscale, __half *kzero, uint8_t *vcodes, __half *vscale, __half *vzero,
                        cudaStream_t stream) {
  if (g <= 0 || g % 8 != 0 || hd % 8 != 0 || n_tokens % g != 0 || (bits != 1 && bits != 2) || hd > 1024)
    return SPECODE_ERR_ARGUMENT;
  const int vg = g < hd ? g : hd;
  if (n_tokens == 0) return SPECODE_OK;
  quantize_keys_kernel<<<n_tokens / g, hd, 0, stream>>>(k, g, hd, bits, kcodes, kscale, kzero);
  CUDA_CHECK_LAUNCH();
  const int items = n_tokens * (hd / vg);
  quantize_values_kernel<<<(items + 127) / 128, 128, 0, stream>>>(v, n_tokens, hd, vg, bits, vcodes, vscale, vzero);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t lowbit_attend_heads(const LowbitView &lv, int n_heads, int g, int hd, int bits, int t0, int t1, const float *q,
                            int n_rows, const uint64_t *skip, bool debias, float *p, float *m, float *l, float *acc,
                            const HeadStrides &hs, cudaStream_t stream, float *work, size_t work_floats) {
  if (t0 % g != 0 || t1 % g != 0 || t1 < t0 || hd > 1024 || g > 1024 || n_heads < 1 || n_heads > 65535)
    return SPECODE_ERR_ARGUMENT;
  const int n = t1 - t0;
  if (n == 0 || n_rows == 0) return SPECODE_OK;
  if (n_heads > 1 && hs.p < (int64_t)n_rows * n) return SPECODE_ERR_ARGUMENT;  // heads' scores must not overlap
  const size_t shared = ((size_t)n_rows * hd + 2 * hd + n_rows) * sizeof(float);
  if (shared > 48 * 1024) return SPECODE_ERR_ARGUMENT;
  lowbit_scores_kernel<<<dim3(n / g, n_heads), g, shared, stream>>>(lv, g, hd, bits, q, n_rows, skip, t0, p, n,
                                                                    debias ? 1 : 0, hs);
  CUDA_CHECK_LAUNCH();
  softmax_rows_kernel<<<dim3(n_rows, n_heads), 256, 0, stream>>>(p, n, n, m, l, hs);
  CUDA_CHECK_LAUNCH();
  const int splits = lowbit_value_splits(n), vg = g < hd ? g : hd;
  if (work && (size_t)n_heads * splits * n_rows * hd <= work_floats && splits > 1) {
    const int chunk = (n + splits - 1) / splits;
    lowbit_values_split_kernel<<<dim3(n_rows, splits, n_heads), hd, 0, stream>>>(lv, hd, vg, bits, p, n, t0, n, chunk,
                                                                                 n_rows, work, hs);
    CUDA_CHECK_LAUNCH();
    lowbit_values_reduce_kernel<<<dim3(n_rows, n_heads), hd, 0, stream>>>(work, splits, n_rows, hd, l, acc, hs);
  } else {
    lowbit_values_kernel<<<dim3(n_rows, n_heads), hd, 0, stream>>>(lv, hd, vg, bits, p, n, t0, n, l, acc, hs);
  }
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t lowbit_attend(const uint8_t *kcodes, const __half *kscale, const __half *kzero, const uint8_t *vcodes,
                      const __half *vscale, const __half *vzero, int g, int hd, int bits, int t0, int t1,
                      const float *q, int n_rows, const uint64_t *skip, bool debias, float *p, float *m, float *l,
                      float *acc, cudaStream_t stream, float *work, size_t work_floats) {
  const LowbitView lv{kcodes, kscale, kzero, vcodes, vscale, vzero, 0, 0, 0, 0};
  return lowbit_attend_heads(lv, 1, g, hd, bits, t0, t1, q, n_rows, skip, debias, p, m, l, acc, HeadStrides{}, stream,
                             work, work_floats);
}

int32_t lowbit_scores(const uint8_t *kcodes, const __half *kscale, const __half *kzero, int g, int hd, int bits, int t0,
                      int t1, const float *q, int n_rows, bool debias, float *p, int64_t ldp, cudaStream_t stream) {
  if (t0 % g != 0 || t1 % g != 0 || t1 < t0 || hd > 1024 || g > 1024) return SPECODE_ERR_ARGUMENT;
  if (t1 == t0 || n_rows == 0) return SPECODE_OK;
  const size_t shared = ((size_t)n_rows * hd + 2 * hd + n_rows) * sizeof(float);
  if (shared > 48 * 1024) return SPECODE_ERR_ARGUMENT;
  const LowbitView lv{kcodes, kscale, kzero, nullptr, nullptr, nullptr, 0, 0, 0, 0};
  lowbit_scores_kernel<<<(t1 - t0) / g, g, shared, stream>>>(lv, g, hd, bits, q, n_rows, nullptr, t0, p, ldp,
                                                             debias ? 1 : 0, HeadStrides{});
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t topk(const float *score, int n, int k, int *out, int *count, cudaStream_t stream) {
  if (k <= 0 || k > 1024 || n < 0) return SPECODE_ERR_ARGUMENT;
  if (n == 0) {
    CUDA_CHECK(cudaMemsetAsync(count, 0, sizeof(int), stream));
    return SPECODE_OK;
  }
  topk_radix_kernel<<<1, 1024, 0, stream>>>(score, n, k, out, count);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t gather_rows(const uint16_t *const *src_rows, uint16_t *dst, int n_rows, int hd, cudaStream_t stream) {
  if (n_rows == 0) return SPECODE_OK;
  gather_rows_kernel<<<n_rows, 32, 0, stream>>>(src_rows, dst, hd);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

}  // namespace specode::cuda

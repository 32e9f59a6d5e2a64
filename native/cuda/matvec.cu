// matvec.cu — quantized matrix products of the CUDA backend (issue #4): y = W x
// for a few activation rows, dequantizing each weight block inside the kernel
// (never a full fp32 copy of a weight), for the types the default models use:
// F32, F16, Q4_1, Q5_0, Q8_0 (32-element blocks) and Q4_K, Q6_K (256). Block
// layouts are ggml's, as in src/quant_kernels.h; element order as src/quant.cpp's
// dequantize_row, which specode_cuda_tests compares against.
//
// One warp per output row; lanes stride over the row's blocks, each decoding a
// whole block into registers chunk by chunk and dotting it with every token's
// activations; a warp reduction ends the row. Up to kMaxTokens tokens per pass
// (decode steps: 1–2), longer batches loop. A tiled mat-mat version for prefill
// is still to write.
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda_ops.h"

namespace specode::cuda {

namespace {

constexpr int kMaxTokens = 8;

__device__ __forceinline__ float h2f(const uint8_t *p) {
  __half h;
  memcpy(&h, p, 2);
  return __half2float(h);
}

// Element e of one block of type `type` (ggml id) at `b`.
__device__ __forceinline__ float deq(int type, const uint8_t *b, int e) {
  switch (type) {
    case 0: {  // F32
      float f;
      memcpy(&f, b + 4 * e, 4);
      return f;
    }
    case 1: return h2f(b + 2 * e);  // F16
    case 3: {  // Q4_1: d, m, qs[16]
      const uint8_t q = b[4 + (e & 15)];
      return h2f(b) * (float)(e < 16 ? (q & 0x0F) : (q >> 4)) + h2f(b + 2);
    }
    case 6: {  // Q5_0: d, qh[4], qs[16]
      uint32_t qh;
      memcpy(&qh, b + 2, 4);
      const uint8_t q = b[6 + (e & 15)];
      const int lo = e < 16 ? (q & 0x0F) : (q >> 4);
      return h2f(b) * (float)((lo | (int)(((qh >> e) & 1) << 4)) - 16);
    }
    case 8:  // Q8_0: d, qs[32]
      return h2f(b) * (float)(int8_t)b[2 + e];
    case 12: {  // Q4_K: d, dmin, scales[12], qs[128]
      const uint8_t *s = b + 4;
      const int sub = e >> 5, c = e >> 6, l = e & 31;
      int sc, mn;
      if (sub < 4) {
        sc = s[sub] & 63;
        mn = s[sub + 4] & 63;
      } else {
        sc = (s[sub + 4] & 0x0F) | ((s[sub - 4] >> 6) << 4);
        mn = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
      }
      const uint8_t q = b[16 + 32 * c + l];
      return h2f(b) * (float)sc * (float)((e & 32) ? (q >> 4) : (q & 0x0F)) - h2f(b + 2) * (float)mn;
    }
    case 14: {  // Q6_K: ql[128], qh[64], scales[16], d
      const int h = e >> 7, k = (e >> 5) & 3, l = e & 31;
      const uint8_t lb = b[64 * h + 32 * (k & 1) + l];
      const int lo = k < 2 ? (lb & 0x0F) : (lb >> 4);
      const int hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
      return h2f(b + 208) * (float)(int8_t)b[192 + (e >> 4)] * (float)((lo | (hi << 4)) - 32);
    }
    default: return 0.0f;
  }
}

__host__ __device__ constexpr int block_elems(int type) { return type == 0 || type == 1 ? 1 : (type == 12 || type == 14 ? 256 : 32); }
__host__ __device__ constexpr int block_bytes(int type) {
  return type == 0 ? 4 : type == 1 ? 2 : type == 3 ? 20 : type == 6 ? 22 : type == 8 ? 34 : type == 12 ? 144 : type == 14 ? 210 : 0;
}

}  // namespace

// y[t * y_stride + r] = Σ_c W[r][c] · x[t * cols + c], tokens [0, n_tokens) with n_tokens <= kMaxTokens.
// Blocks of 4 warps, one warp per row.
__global__ void matvec_kernel(int type, const uint8_t *__restrict__ w, int64_t rows, int64_t cols,
                              const float *__restrict__ x, int n_tokens, float *__restrict__ y, int64_t y_stride) {
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int be = block_elems(type), bb = block_bytes(type);
  // F32/F16: a "block" of 32 consecutive elements a lane, like the 32-element types.
  const int span = be == 1 ? 32 : be;
  const int64_t n_spans = cols / span;
  const size_t row_bytes = (size_t)(cols / be) * bb;
  const uint8_t *wr = w + (size_t)r * row_bytes;
  float acc[kMaxTokens];
  for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.0f;
  for (int64_t s = lane; s < n_spans; s += 32) {
    const uint8_t *blk = be == 1 ? wr + (size_t)s * span * bb : wr + (size_t)s * bb;
    const float *xs = x + s * span;
    for (int e = 0; e < span; ++e) {
      const float wv = deq(type, blk, e);
      for (int t = 0; t < n_tokens; ++t) acc[t] = fmaf(wv, xs[(size_t)t * cols + e], acc[t]);
    }
  }
  for (int t = 0; t < n_tokens; ++t) {
    float v = acc[t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[(size_t)t * y_stride + r] = v;
  }
}

// ---------------------------------------------------------------- launchers

bool matvec_supported(uint32_t type) { return block_bytes((int)type) > 0; }

int32_t matvec(uint32_t type, const void *w, int64_t rows, int64_t cols, const float *x, int64_t n_tokens, float *y,
               int64_t y_stride, cudaStream_t stream) {
  if (!matvec_supported(type)) return SPECODE_ERR_UNSUPPORTED;
  const int be = block_elems((int)type);
  if (rows <= 0 || cols <= 0 || cols % (be == 1 ? 32 : be) != 0 || n_tokens < 0) return SPECODE_ERR_ARGUMENT;
  const int warps = 4;
  const unsigned blocks = (unsigned)((rows + warps - 1) / warps);
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokens) {
    const int nt = (int)(n_tokens - t0 < kMaxTokens ? n_tokens - t0 : kMaxTokens);
    matvec_kernel<<<blocks, 32 * warps, 0, stream>>>((int)type, (const uint8_t *)w, rows, cols, x + t0 * cols, nt,
                                                     y + t0 * y_stride, y_stride);
    CUDA_CHECK_LAUNCH();
  }
  return SPECODE_OK;
}

}  // namespace specode::cuda

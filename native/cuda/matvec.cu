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
#include "dequant.cuh"

namespace specode::cuda {

namespace {
constexpr int kMaxTokens = 8;
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

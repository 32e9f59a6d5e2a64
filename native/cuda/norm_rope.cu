// norm_rope.cu — element-wise op family of the CUDA backend (issue #4):
// RMSNorm, rotary embeddings (both layouts), SwiGLU. Kernels first, then
// launchers that take a stream and check every call. fp32 activations, as the
// CPU backend.
#include <string>

#include "cuda_ops.h"
#include "reduce.cuh"

namespace specode::cuda {

namespace {
thread_local std::string g_error;
}

const char *last_error() { return g_error.c_str(); }

void set_error(const char *file, int line, const char *what, cudaError_t err) {
  g_error = std::string(file) + ":" + std::to_string(line) + ": " + what + ": " + cudaGetErrorString(err);
}

// ---------------------------------------------------------------- kernels

// One block per row. x, out: [n_rows][n] fp32; w: [n].
__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w, float *__restrict__ out,
                               int n, float eps) {
  const float *row = x + (size_t)blockIdx.x * n;
  float *dst = out + (size_t)blockIdx.x * n;
  float ss = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += row[i] * row[i];
  const float scale = rsqrtf(block_sum(ss) / n + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = row[i] * scale * w[i];
}

// x: [n_tokens][n_heads][head_dim] in place; pos: [n_tokens]; inv_freq: [head_dim/2].
// One thread per rotated pair. neox: pairs (i, i + d/2); else (2i, 2i + 1).
__global__ void rope_kernel(float *__restrict__ x, const int32_t *__restrict__ pos, const float *__restrict__ inv_freq,
                            int n_heads, int head_dim, int neox, int n_pairs_total) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n_pairs_total) return;
  const int half = head_dim / 2;
  const int i = idx % half;
  const int head = (idx / half) % n_heads;
  const int t = idx / (half * n_heads);
  float *v = x + ((size_t)t * n_heads + head) * head_dim;
  const float theta = (float)pos[t] * inv_freq[i];
  float s, c;
  sincosf(theta, &s, &c);
  const int a = neox ? i : 2 * i;
  const int b = neox ? i + half : 2 * i + 1;
  const float x0 = v[a], x1 = v[b];
  v[a] = x0 * c - x1 * s;
  v[b] = x0 * s + x1 * c;
}

// out[i] = silu(gate[i]) * up[i]; all [n].
__global__ void swiglu_kernel(const float *__restrict__ gate, const float *__restrict__ up, float *__restrict__ out,
                              size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = g / (1.f + __expf(-g)) * up[i];
}

// ---------------------------------------------------------------- launchers

int32_t rmsnorm(const float *x, const float *w, float *out, int n_rows, int n, float eps, cudaStream_t stream) {
  if (n_rows <= 0 || n <= 0) return SPECODE_ERR_ARGUMENT;
  const int threads = n >= 1024 ? 1024 : ((n + 31) / 32) * 32;
  rmsnorm_kernel<<<n_rows, threads, 0, stream>>>(x, w, out, n, eps);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t rope(float *x, const int32_t *pos, const float *inv_freq, int n_tokens, int n_heads, int head_dim, bool neox,
             cudaStream_t stream) {
  if (n_tokens <= 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2) return SPECODE_ERR_ARGUMENT;
  const int total = n_tokens * n_heads * (head_dim / 2);
  rope_kernel<<<(total + 255) / 256, 256, 0, stream>>>(x, pos, inv_freq, n_heads, head_dim, neox ? 1 : 0, total);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

int32_t swiglu(const float *gate, const float *up, float *out, size_t n, cudaStream_t stream) {
  if (n == 0) return SPECODE_OK;
  swiglu_kernel<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(gate, up, out, n);
  CUDA_CHECK_LAUNCH();
  return SPECODE_OK;
}

}  // namespace specode::cuda

// reduce.cuh — block-wide sum and max for the CUDA op families: a warp shuffle,
// then the warps' partials through shared memory. Every thread of the block
// calls it (blocks of whole warps) and every thread gets the result.
#pragma once

namespace specode::cuda {

static __device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

static __device__ float block_sum(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float r = 0.0f;
  for (int w = 0; w < warps; ++w) r += part[w];
  __syncthreads();  // part is free for the next call
  return r;
}

static __device__ float block_max(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_max(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float r = -INFINITY;
  for (int w = 0; w < warps; ++w) r = fmaxf(r, part[w]);
  __syncthreads();
  return r;
}

}  // namespace specode::cuda

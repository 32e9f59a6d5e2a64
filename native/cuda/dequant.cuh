// dequant.cuh — element access to GGUF weight blocks on the device, for the
// types the default models use (F32, F16, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K): ggml's
// block layouts (src/quant_kernels.h) in src/quant.cpp's element order.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace specode::cuda {

static __device__ __forceinline__ float h2f(const uint8_t *p) {
  __half h;
  memcpy(&h, p, 2);
  return __half2float(h);
}

// Element e of one block of type `type` (ggml id) at `b`.
static __device__ __forceinline__ float deq(int type, const uint8_t *b, int e) {
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

static __host__ __device__ constexpr int block_elems(int type) { return type == 0 || type == 1 ? 1 : (type == 12 || type == 14 ? 256 : 32); }
static __host__ __device__ constexpr int block_bytes(int type) {
  return type == 0 ? 4 : type == 1 ? 2 : type == 3 ? 20 : type == 6 ? 22 : type == 8 ? 34 : type == 12 ? 144 : type == 14 ? 210 : 0;
}


}  // namespace specode::cuda

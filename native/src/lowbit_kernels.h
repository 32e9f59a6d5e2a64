// lowbit_kernels.h — the inner loops of lowbit_attend, one table per SIMD
// width: scalar (lowbit.cpp), 8 floats (lowbit_avx2.cpp) and 16 floats
// (lowbit_avx512.cpp), the latter two compiled from lowbit_body.h.
//
// One group of g tokens at a time: its codes are decoded (code·scale + zero,
// in fp32) into a small buffer that stays in L1 and is read by every query
// row, so the cost of decoding is shared by the rows and the whole cache is
// never dequantized. Codes are packed LSB first, 8/bits to a byte: keys
// channel-major within a group ([c][j]), values token-major ([j][c]).
#pragma once

#include <cstdint>

namespace specode {

struct LowbitKernels {
  const char *name;
  int width;  // floats per vector (1: scalar)
  // kd[c * g + j] = code(c, j) · scale[c] + zero[c]  (scale, zero fp16, per channel)
  void (*decode_keys)(const uint8_t *packed, int bits, int g, int hd, const uint16_t *scale, const uint16_t *zero,
                      float *kd);
  // vd[j * hd + c] = code(j, c) · scale[j * nvg + c / vg] + zero[…]  (nvg = hd / vg)
  void (*decode_values)(const uint8_t *packed, int bits, int g, int hd, int vg, const uint16_t *scale,
                        const uint16_t *zero, float *vd);
  // p[r * ldp + j] = Σ_c q[r * hd + c] · kd[c * g + j]
  void (*scores)(const float *q, int rows, const float *kd, int g, int hd, float *p, int64_t ldp);
  // acc[r * hd + c] += Σ_j p[r * ldp + j] · vd[j * hd + c]
  void (*values)(const float *p, int64_t ldp, int rows, const float *vd, int g, int hd, float *acc);
};

// The widest table the CPU's kernel set (quant_kernel_set) allows for a
// group of g tokens and head_dim channels; scalar when forced (tests).
const LowbitKernels &lowbit_kernels(int g, int head_dim);

}  // namespace specode

// ops.h — small fp32 building blocks of the forward pass (CPU).
#pragma once

#include <cstdint>

namespace specode {

// out[i] = x[i] / rms(x) * w[i]; x, w, out: [n]. out may alias x.
void rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps);

// Rotary position embedding in place on one head vector x: [head_dim].
// neox: rotate (x[i], x[i + d/2]) pairs; else adjacent (x[2i], x[2i+1]) pairs.
// inv_freq: [head_dim/2] = base^(-2i/d).
void rope_apply(float *x, int head_dim, int pos, const float *inv_freq, bool neox);

// out[i] = silu(gate[i]) * up[i]; all [n].
void swiglu(const float *gate, const float *up, float *out, int64_t n);

// y[i] += x[i]; [n].
void add_inplace(float *y, const float *x, int64_t n);

// Index of the largest of x[0..n) (the first of equals): greedy choice.
int32_t argmax(const float *x, int n);

// Fast dot products and row updates used by attention (SIMD when the CPU has it).
float dot_f32(const float *a, const float *b, int n);
float dot_f16_f32(const uint16_t *a, const float *b, int n);
// y[i] += a * x[i]
void axpy_f32(float a, const float *x, float *y, int n);
void axpy_f16(float a, const uint16_t *x, float *y, int n);
// dst[i] = fp16(src[i]); [n]
void f32_to_f16_row(const float *src, uint16_t *dst, int n);

}  // namespace specode

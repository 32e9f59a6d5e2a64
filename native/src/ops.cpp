#include "ops.h"

#include <cmath>
#include <string_view>

#include "attention.h"
#include "quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define SPECODE_X86 1
#endif

namespace specode {

void rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
  float scale = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * w[i];
}

void rope_apply(float *x, int head_dim, int pos, const float *inv_freq, bool neox) {
  int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    float theta = (float)pos * inv_freq[i];
    float c = std::cos(theta), s = std::sin(theta);
    int a = neox ? i : 2 * i;
    int b = neox ? i + half : 2 * i + 1;
    float x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}

void swiglu(const float *gate, const float *up, float *out, int64_t n) {
  attn::widest_kernels().silu_mul(gate, up, out, n);
}

void add_inplace(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

// ---- SIMD row helpers: AVX2/F16C versions chosen once at run time ---------

namespace {

float dot_f32_scalar(const float *a, const float *b, int n) {
  float s = 0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
float dot_f16_scalar(const uint16_t *a, const float *b, int n) {
  float s = 0;
  for (int i = 0; i < n; ++i) s += fp16_to_fp32(a[i]) * b[i];
  return s;
}
void axpy_f32_scalar(float a, const float *x, float *y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}
void axpy_f16_scalar(float a, const uint16_t *x, float *y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * fp16_to_fp32(x[i]);
}
void to_f16_scalar(const float *src, uint16_t *dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

#ifdef SPECODE_X86
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
AVX2_FN inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}
AVX2_FN float dot_f32_avx2(const float *a, const float *b, int n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
AVX2_FN float dot_f16_avx2(const uint16_t *a, const float *b, int n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i)));
    __m256 a1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8)));
    s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += fp16_to_fp32(a[i]) * b[i];
  return s;
}
AVX2_FN void axpy_f32_avx2(float a, const float *x, float *y, int n) {
  __m256 va = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}
AVX2_FN void axpy_f16_avx2(float a, const uint16_t *x, float *y, int n) {
  __m256 va = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, vx, _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * fp16_to_fp32(x[i]);
}
AVX2_FN void to_f16_avx2(const float *src, uint16_t *dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
#endif

struct RowKernels {
  float (*dot_f32)(const float *, const float *, int);
  float (*dot_f16)(const uint16_t *, const float *, int);
  void (*axpy_f32)(float, const float *, float *, int);
  void (*axpy_f16)(float, const uint16_t *, float *, int);
  void (*to_f16)(const float *, uint16_t *, int);
};

RowKernels pick() {
#ifdef SPECODE_X86
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
      std::string_view(quant_kernel_set()) != "scalar")
    return {dot_f32_avx2, dot_f16_avx2, axpy_f32_avx2, axpy_f16_avx2, to_f16_avx2};
#endif
  return {dot_f32_scalar, dot_f16_scalar, axpy_f32_scalar, axpy_f16_scalar, to_f16_scalar};
}

const RowKernels &kernels() {
  static const RowKernels k = pick();
  return k;
}

}  // namespace

float dot_f32(const float *a, const float *b, int n) { return kernels().dot_f32(a, b, n); }
float dot_f16_f32(const uint16_t *a, const float *b, int n) { return kernels().dot_f16(a, b, n); }
void axpy_f32(float a, const float *x, float *y, int n) { kernels().axpy_f32(a, x, y, n); }
void axpy_f16(float a, const uint16_t *x, float *y, int n) { kernels().axpy_f16(a, x, y, n); }
void f32_to_f16_row(const float *src, uint16_t *dst, int n) { kernels().to_f16(src, dst, n); }

int32_t argmax(const float *x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace specode

#include "lowbit.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>

#include "ops.h"
#include "quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace specode {

namespace {

// Byte -> the float values of the codes it packs (4 two-bit or 8 one-bit
// codes, lowest bits first). Reading a token's codes is then one 16- or
// 32-byte copy per byte, with no arithmetic.
struct CodeTables {
  float two[256][4];
  float one[256][8];
  CodeTables() {
    for (int b = 0; b < 256; ++b) {
      for (int i = 0; i < 4; ++i) two[b][i] = (float)((b >> (2 * i)) & 3);
      for (int i = 0; i < 8; ++i) one[b][i] = (float)((b >> i) & 1);
    }
  }
};

const CodeTables &tables() {
  static const CodeTables t;
  return t;
}

// codes: [head_dim * bits / 8] packed -> out: [head_dim] floats.
inline void unpack_codes(const uint8_t *codes, int bits, int head_dim, float *out) {
  const CodeTables &t = tables();
  if (bits == 2) {
    for (int i = 0; i < head_dim / 4; ++i) std::memcpy(out + 4 * i, t.two[codes[i]], sizeof(t.two[0]));
  } else {
    for (int i = 0; i < head_dim / 8; ++i) std::memcpy(out + 8 * i, t.one[codes[i]], sizeof(t.one[0]));
  }
}

inline void pack_code(uint8_t *row, int channel, int code, int bits) {
  const int per_byte = 8 / bits;
  row[channel / per_byte] |= (uint8_t)(code << ((channel % per_byte) * bits));
}

inline float f16(uint16_t h) { return fp16_to_fp32(h); }

inline bool skipped(const uint64_t *skip, int pos) { return skip && ((skip[pos >> 6] >> (pos & 63)) & 1); }

}  // namespace

void lowbit_params(float mn, float mx, int bits, float *scale, float *zero) {
  float s = bits == 2 ? (mx - mn) / 3.0f : (mx - mn) / 2.0f;
  float z = bits == 2 ? mn : (3.0f * mn + mx) / 4.0f;
  s = std::min(s, 65504.0f);  // largest fp16
  *scale = fp16_to_fp32(fp32_to_fp16(s));
  *zero = fp16_to_fp32(fp32_to_fp16(z));
}

int lowbit_code(float x, float scale, float zero, int bits) {
  if (!(scale > 0.0f)) return 0;
  const float top = (float)((1 << bits) - 1);
  float c = std::floor((x - zero) / scale + 0.5f);
  c = c < 0.0f ? 0.0f : (c > top ? top : c);  // NaN compares false: stays NaN, caught below
  return c == c ? (int)c : 0;
}

void LowbitStream::init(const LowbitConfig &cfg) {
  assert(cfg.bits == 1 || cfg.bits == 2);
  assert(cfg.group > 0 && cfg.head_dim % 8 == 0);
  cfg_ = cfg;
  vgroup_ = std::min(cfg.group, cfg.head_dim);
  assert(cfg.head_dim % vgroup_ == 0);
  row_bytes_ = cfg.head_dim * cfg.bits / 8;
  truncate(0);
}

uint64_t LowbitStream::bytes_for(const LowbitConfig &cfg, int64_t n_tokens) {
  const int64_t vg = std::min(cfg.group, cfg.head_dim);
  const int64_t codes = 2 * n_tokens * cfg.head_dim * cfg.bits / 8;                 // K and V codes
  const int64_t key_params = (n_tokens / cfg.group) * cfg.head_dim * 2 * 2;        // fp16 scale + zero
  const int64_t value_params = n_tokens * (cfg.head_dim / vg) * 2 * 2;             // fp16 scale + zero
  return (uint64_t)(codes + key_params + value_params);
}

void LowbitStream::truncate(int n) {
  assert(n >= 0 && n <= n_ && n % cfg_.group == 0);
  n_ = n;
  const int HD = cfg_.head_dim;
  kcodes_.resize((size_t)n * row_bytes_);
  kscale_.resize((size_t)(n / cfg_.group) * HD);
  kzero_.resize(kscale_.size());
  vcodes_.resize((size_t)n * row_bytes_);
  vscale_.resize((size_t)n * (HD / vgroup_));
  vzero_.resize(vscale_.size());
}

void LowbitStream::append(const float *k, const float *v, int n) {
  const int g = cfg_.group, HD = cfg_.head_dim, bits = cfg_.bits, nvg = HD / vgroup_;
  assert(n % g == 0);
  const int old = n_;
  n_ += n;
  kcodes_.resize((size_t)n_ * row_bytes_, 0);
  kscale_.resize((size_t)(n_ / g) * HD);
  kzero_.resize(kscale_.size());
  vcodes_.resize((size_t)n_ * row_bytes_, 0);
  vscale_.resize((size_t)n_ * nvg);
  vzero_.resize(vscale_.size());
  // Keys: per channel over each group of g tokens.
  for (int b = 0; b < n / g; ++b) {
    const int group = old / g + b;
    for (int c = 0; c < HD; ++c) {
      float mn = INFINITY, mx = -INFINITY;
      for (int j = 0; j < g; ++j) {
        float x = k[((size_t)b * g + j) * HD + c];
        mn = std::min(mn, x);
        mx = std::max(mx, x);
      }
      float scale, zero;
      lowbit_params(mn, mx, bits, &scale, &zero);
      kscale_[(size_t)group * HD + c] = fp32_to_fp16(scale);
      kzero_[(size_t)group * HD + c] = fp32_to_fp16(zero);
      for (int j = 0; j < g; ++j) {
        const size_t tok = (size_t)group * g + j;
        pack_code(&kcodes_[tok * row_bytes_], c, lowbit_code(k[((size_t)b * g + j) * HD + c], scale, zero, bits), bits);
      }
    }
  }
  // Values: per token over each group of vgroup channels.
  for (int j = 0; j < n; ++j) {
    const size_t tok = (size_t)old + j;
    const float *row = v + (size_t)j * HD;
    for (int gi = 0; gi < nvg; ++gi) {
      const float *x = row + gi * vgroup_;
      float mn = INFINITY, mx = -INFINITY;
      for (int c = 0; c < vgroup_; ++c) {
        mn = std::min(mn, x[c]);
        mx = std::max(mx, x[c]);
      }
      float scale, zero;
      lowbit_params(mn, mx, bits, &scale, &zero);
      vscale_[tok * nvg + gi] = fp32_to_fp16(scale);
      vzero_[tok * nvg + gi] = fp32_to_fp16(zero);
      for (int c = 0; c < vgroup_; ++c)
        pack_code(&vcodes_[tok * row_bytes_], gi * vgroup_ + c, lowbit_code(x[c], scale, zero, bits), bits);
    }
  }
}

void LowbitStream::dequantize(int t0, int t1, float *k, float *v) const {
  const int g = cfg_.group, HD = cfg_.head_dim, nvg = HD / vgroup_;
  std::vector<float> codes(HD);
  for (int t = t0; t < t1; ++t) {
    const int group = t / g;
    float *kr = k + (size_t)(t - t0) * HD, *vr = v + (size_t)(t - t0) * HD;
    unpack_codes(&kcodes_[(size_t)t * row_bytes_], cfg_.bits, HD, codes.data());
    for (int c = 0; c < HD; ++c)
      kr[c] = f16(kscale_[(size_t)group * HD + c]) * codes[c] + f16(kzero_[(size_t)group * HD + c]);
    unpack_codes(&vcodes_[(size_t)t * row_bytes_], cfg_.bits, HD, codes.data());
    for (int c = 0; c < HD; ++c) {
      const int gi = c / vgroup_;
      vr[c] = f16(vscale_[(size_t)t * nvg + gi]) * codes[c] + f16(vzero_[(size_t)t * nvg + gi]);
    }
  }
}

namespace {

// ---- inner loops over one group of g tokens, scalar and AVX2 ---------------
// codes: [g][hd] floats (unpacked); qs: [hd]; w: [g][hd / vg] weights.

void scores_scalar(const float *qs, float qz, const float *codes, int g, int hd, float *out) {
  for (int j = 0; j < g; ++j) {
    float d = 0;
    for (int c = 0; c < hd; ++c) d += qs[c] * codes[(size_t)j * hd + c];
    out[j] = d + qz;
  }
}

void values_scalar(const float *w, const float *codes, int g, int hd, int vg, float *acc) {
  const int nvg = hd / vg;
  for (int j = 0; j < g; ++j)
    for (int c = 0; c < hd; ++c) acc[c] += w[(size_t)j * nvg + c / vg] * codes[(size_t)j * hd + c];
}

// x[i] = exp(x[i] - mx) (exp(-inf) = 0); returns Σ x.
float exp_sum_scalar(float *x, int n, float mx) {
  float sum = 0;
  for (int i = 0; i < n; ++i) {
    x[i] = x[i] == -INFINITY ? 0.0f : std::exp(x[i] - mx);
    sum += x[i];
  }
  return sum;
}

#if defined(__x86_64__)
#define LOWBIT_AVX2 __attribute__((target("avx2,fma")))

LOWBIT_AVX2 inline float hsum8(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

LOWBIT_AVX2 void scores_avx2(const float *qs, float qz, const float *codes, int g, int hd, float *out) {
  if (hd == 64) {  // the query stays in registers
    __m256 q0 = _mm256_loadu_ps(qs), q1 = _mm256_loadu_ps(qs + 8), q2 = _mm256_loadu_ps(qs + 16),
           q3 = _mm256_loadu_ps(qs + 24), q4 = _mm256_loadu_ps(qs + 32), q5 = _mm256_loadu_ps(qs + 40),
           q6 = _mm256_loadu_ps(qs + 48), q7 = _mm256_loadu_ps(qs + 56);
    for (int j = 0; j < g; ++j) {
      const float *k = codes + (size_t)j * 64;
      __m256 a = _mm256_mul_ps(q0, _mm256_loadu_ps(k));
      __m256 b = _mm256_mul_ps(q1, _mm256_loadu_ps(k + 8));
      a = _mm256_fmadd_ps(q2, _mm256_loadu_ps(k + 16), a);
      b = _mm256_fmadd_ps(q3, _mm256_loadu_ps(k + 24), b);
      a = _mm256_fmadd_ps(q4, _mm256_loadu_ps(k + 32), a);
      b = _mm256_fmadd_ps(q5, _mm256_loadu_ps(k + 40), b);
      a = _mm256_fmadd_ps(q6, _mm256_loadu_ps(k + 48), a);
      b = _mm256_fmadd_ps(q7, _mm256_loadu_ps(k + 56), b);
      out[j] = hsum8(_mm256_add_ps(a, b)) + qz;
    }
    return;
  }
  for (int j = 0; j < g; ++j) {
    const float *k = codes + (size_t)j * hd;
    __m256 a = _mm256_setzero_ps();
    for (int c = 0; c < hd; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qs + c), _mm256_loadu_ps(k + c), a);
    out[j] = hsum8(a) + qz;
  }
}

LOWBIT_AVX2 void values_avx2(const float *w, const float *codes, int g, int hd, int vg, float *acc) {
  const int nvg = hd / vg;
  for (int c0 = 0; c0 < hd; c0 += 64) {  // 64 channels of accumulators in registers
    const int nc = std::min(64, hd - c0) / 8;
    __m256 a[8];
    for (int i = 0; i < nc; ++i) a[i] = _mm256_loadu_ps(acc + c0 + 8 * i);
    for (int j = 0; j < g; ++j) {
      const float *v = codes + (size_t)j * hd + c0;
      const float *wj = w + (size_t)j * nvg;
      if (nvg == 1) {
        const __m256 ww = _mm256_set1_ps(wj[0]);
        for (int i = 0; i < nc; ++i) a[i] = _mm256_fmadd_ps(ww, _mm256_loadu_ps(v + 8 * i), a[i]);
      } else {
        for (int i = 0; i < nc; ++i)
          a[i] = _mm256_fmadd_ps(_mm256_set1_ps(wj[(c0 + 8 * i) / vg]), _mm256_loadu_ps(v + 8 * i), a[i]);
      }
    }
    for (int i = 0; i < nc; ++i) _mm256_storeu_ps(acc + c0 + 8 * i, a[i]);
  }
}

// Unpack one token's codes: each 32-bit word holds 16 two-bit (32 one-bit)
// codes, channel c at bit c * bits.
LOWBIT_AVX2 void unpack_avx2(const uint8_t *codes, int bits, int head_dim, float *out) {
  if (head_dim % 32 != 0) return unpack_codes(codes, bits, head_dim, out);  // whole words only
  const __m256i lo2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), three = _mm256_set1_epi32(3);
  const __m256i sh1 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
  const int per_word = 32 / bits;
  for (int c = 0; c < head_dim; c += per_word) {
    uint32_t word;
    std::memcpy(&word, codes + c * bits / 8, 4);
    const __m256i v = _mm256_set1_epi32((int)word);
    if (bits == 2) {
      _mm256_storeu_ps(out + c, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, lo2), three)));
      const __m256i hi = _mm256_add_epi32(lo2, _mm256_set1_epi32(16));
      _mm256_storeu_ps(out + c + 8, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, hi), three)));
    } else {
      for (int i = 0; i < 4; ++i) {
        const __m256i sh = _mm256_add_epi32(sh1, _mm256_set1_epi32(8 * i));
        _mm256_storeu_ps(out + c + 8 * i, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, sh), one)));
      }
    }
  }
}

// exp on 8 lanes (Cephes polynomial, relative error ~1e-7).
LOWBIT_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.3762626647949f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

LOWBIT_AVX2 float exp_sum_avx2(float *x, int n, float mx) {
  const __m256 m = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
  __m256 sum = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 e = _mm256_andnot_ps(_mm256_cmp_ps(v, ninf, _CMP_EQ_OQ), exp8(_mm256_sub_ps(v, m)));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float s = hsum8(sum);
  return s + exp_sum_scalar(x + i, n - i, mx);
}
#endif

struct GroupKernels {
  void (*unpack)(const uint8_t *, int, int, float *);
  void (*scores)(const float *, float, const float *, int, int, float *);
  void (*values)(const float *, const float *, int, int, int, float *);
  float (*exp_sum)(float *, int, float);
};

std::atomic<bool> g_force_scalar{false};

GroupKernels group_kernels() {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && !g_force_scalar.load(std::memory_order_relaxed))
    return {unpack_avx2, scores_avx2, values_avx2, exp_sum_avx2};
#endif
  return {unpack_codes, scores_scalar, values_scalar, exp_sum_scalar};
}

}  // namespace

void lowbit_force_scalar(bool on) { g_force_scalar.store(on); }

void lowbit_attend(const LowbitStream &s, int t0, int t1, const float *q, int n_rows, const uint64_t *skip, float *p,
                   float *m, float *l, float *acc, LowbitScratch &scratch) {
  const LowbitConfig &cfg = s.cfg_;
  const int g = cfg.group, HD = cfg.head_dim, bits = cfg.bits, vg = s.vgroup_, nvg = HD / vg;
  const int n = t1 - t0;
  assert(t0 % g == 0 && t1 % g == 0 && t1 <= s.n_);
  const GroupKernels kern = group_kernels();
  scratch.qs.resize(HD);
  scratch.codes.resize((size_t)g * HD);
  scratch.kscale.resize(HD);
  scratch.kzero.resize(HD);
  scratch.weights.resize((size_t)g * nvg);
  scratch.vparams.resize((size_t)g * nvg * 2);
  scratch.zacc.resize((size_t)n_rows * nvg);
  float *qs = scratch.qs.data(), *codes = scratch.codes.data(), *ks = scratch.kscale.data(), *kz = scratch.kzero.data();
  float *w = scratch.weights.data(), *vsz = scratch.vparams.data(), *zacc = scratch.zacc.data();

  // Scores, key group by key group: q·k = (q∘scale)·code + q·zero. The
  // group's codes are unpacked once for all rows.
  for (int group = t0 / g; group < t1 / g; ++group) {
    for (int c = 0; c < HD; ++c) {
      ks[c] = f16(s.kscale_[(size_t)group * HD + c]);
      kz[c] = f16(s.kzero_[(size_t)group * HD + c]);
    }
    const int first = group * g;
    for (int j = 0; j < g; ++j)
      kern.unpack(&s.kcodes_[(size_t)(first + j) * s.row_bytes_], bits, HD, codes + (size_t)j * HD);
    for (int r = 0; r < n_rows; ++r) {
      const float *qr = q + (size_t)r * HD;
      for (int c = 0; c < HD; ++c) qs[c] = qr[c] * ks[c];
      kern.scores(qs, dot_f32(qr, kz, HD), codes, g, HD, p + (size_t)r * n + (first - t0));
    }
    if (skip)
      for (int j = 0; j < g; ++j)
        if (skipped(skip, first + j))
          for (int r = 0; r < n_rows; ++r) p[(size_t)r * n + (first - t0) + j] = -INFINITY;
  }
  // Softmax piece per row.
  for (int r = 0; r < n_rows; ++r) {
    float *pr = p + (size_t)r * n;
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = std::max(mx, pr[j]);
    if (mx == -INFINITY) {
      std::fill(pr, pr + n, 0.0f);
      l[r] = 0;
    } else {
      l[r] = kern.exp_sum(pr, n, mx);
    }
    m[r] = mx;
  }
  // Values: Σ_j p_j (scale_j·code_j + zero_j) per value group, group of
  // tokens by group (skipped tokens have p = 0).
  std::memset(acc, 0, (size_t)n_rows * HD * sizeof(float));
  std::memset(zacc, 0, (size_t)n_rows * nvg * sizeof(float));
  for (int group = t0 / g; group < t1 / g; ++group) {
    const int first = group * g;
    for (int j = 0; j < g; ++j) {
      const size_t tok = (size_t)first + j;
      kern.unpack(&s.vcodes_[tok * s.row_bytes_], bits, HD, codes + (size_t)j * HD);
      for (int gi = 0; gi < nvg; ++gi) {
        vsz[((size_t)j * nvg + gi) * 2] = f16(s.vscale_[tok * nvg + gi]);
        vsz[((size_t)j * nvg + gi) * 2 + 1] = f16(s.vzero_[tok * nvg + gi]);
      }
    }
    for (int r = 0; r < n_rows; ++r) {
      const float *pr = p + (size_t)r * n + (first - t0);
      float *zr = zacc + (size_t)r * nvg;
      for (int gi = 0; gi < nvg; ++gi) {
        float z = 0;  // a local sum: no store-to-load chain through zr
        for (int j = 0; j < g; ++j) {
          w[(size_t)j * nvg + gi] = pr[j] * vsz[((size_t)j * nvg + gi) * 2];
          z += pr[j] * vsz[((size_t)j * nvg + gi) * 2 + 1];
        }
        zr[gi] += z;
      }
      kern.values(w, codes, g, HD, vg, acc + (size_t)r * HD);
    }
  }
  for (int r = 0; r < n_rows; ++r) {
    const float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
    for (int c = 0; c < HD; ++c)
      acc[(size_t)r * HD + c] = (acc[(size_t)r * HD + c] + zacc[(size_t)r * nvg + c / vg]) * inv;
  }
}

void softmax_merge(float *m_a, float *l_a, float *acc_a, float m_b, float l_b, const float *acc_b, int head_dim) {
  if (m_b == -INFINITY) return;
  if (*m_a == -INFINITY) {
    *m_a = m_b;
    *l_a = l_b;
    std::memcpy(acc_a, acc_b, head_dim * sizeof(float));
    return;
  }
  const float mx = std::max(*m_a, m_b);
  const float wa = *l_a * std::exp(*m_a - mx), wb = l_b * std::exp(m_b - mx), inv = 1.0f / (wa + wb);
  for (int c = 0; c < head_dim; ++c) acc_a[c] = (acc_a[c] * wa + acc_b[c] * wb) * inv;
  *l_a = wa + wb;
  *m_a = mx;
}

}  // namespace specode

#include "lowbit.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "ops.h"
#include "quant.h"

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

void lowbit_attend(const LowbitStream &s, int t0, int t1, const float *q, int n_rows, const uint64_t *skip, float *p,
                   float *m, float *l, float *acc, LowbitScratch &scratch) {
  const LowbitConfig &cfg = s.cfg_;
  const int g = cfg.group, HD = cfg.head_dim, bits = cfg.bits, vg = s.vgroup_, nvg = HD / vg;
  const int n = t1 - t0;
  assert(t0 % g == 0 && t1 % g == 0 && t1 <= s.n_);
  scratch.qs.resize((size_t)n_rows * HD);
  scratch.qz.resize(n_rows);
  scratch.codes.resize(HD);
  scratch.zacc.resize((size_t)n_rows * nvg);
  float *qs = scratch.qs.data(), *qz = scratch.qz.data(), *codes = scratch.codes.data(), *zacc = scratch.zacc.data();

  // Scores, key group by key group: q·k = (q∘scale)·code + q·zero.
  scratch.kscale.resize(HD);
  scratch.kzero.resize(HD);
  float *ks = scratch.kscale.data(), *kz = scratch.kzero.data();
  for (int group = t0 / g; group < t1 / g; ++group) {
    for (int c = 0; c < HD; ++c) {
      ks[c] = f16(s.kscale_[(size_t)group * HD + c]);
      kz[c] = f16(s.kzero_[(size_t)group * HD + c]);
    }
    for (int r = 0; r < n_rows; ++r) {
      const float *qr = q + (size_t)r * HD;
      for (int c = 0; c < HD; ++c) qs[(size_t)r * HD + c] = qr[c] * ks[c];
      qz[r] = dot_f32(qr, kz, HD);
    }
    for (int pos = group * g; pos < (group + 1) * g; ++pos) {
      const int j = pos - t0;
      if (skipped(skip, pos)) {
        for (int r = 0; r < n_rows; ++r) p[(size_t)r * n + j] = -INFINITY;
        continue;
      }
      unpack_codes(&s.kcodes_[(size_t)pos * s.row_bytes_], bits, HD, codes);
      for (int r = 0; r < n_rows; ++r) p[(size_t)r * n + j] = dot_f32(qs + (size_t)r * HD, codes, HD) + qz[r];
    }
  }
  // Softmax piece per row.
  for (int r = 0; r < n_rows; ++r) {
    float *pr = p + (size_t)r * n;
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = std::max(mx, pr[j]);
    float sum = 0;
    if (mx == -INFINITY) {
      std::fill(pr, pr + n, 0.0f);
    } else {
      for (int j = 0; j < n; ++j) {
        float e = pr[j] == -INFINITY ? 0.0f : std::exp(pr[j] - mx);
        pr[j] = e;
        sum += e;
      }
    }
    m[r] = mx;
    l[r] = sum;
  }
  // Values: Σ p_j (scale_j·code_j + zero_j), per value group.
  std::memset(acc, 0, (size_t)n_rows * HD * sizeof(float));
  std::memset(zacc, 0, (size_t)n_rows * nvg * sizeof(float));
  for (int pos = t0; pos < t1; ++pos) {
    if (skipped(skip, pos)) continue;
    const int j = pos - t0;
    unpack_codes(&s.vcodes_[(size_t)pos * s.row_bytes_], bits, HD, codes);
    const uint16_t *vs = &s.vscale_[(size_t)pos * nvg], *vz = &s.vzero_[(size_t)pos * nvg];
    for (int r = 0; r < n_rows; ++r) {
      const float w = p[(size_t)r * n + j];
      if (w == 0.0f) continue;
      for (int gi = 0; gi < nvg; ++gi) {
        axpy_f32(w * f16(vs[gi]), codes + gi * vg, acc + (size_t)r * HD + gi * vg, vg);
        zacc[(size_t)r * nvg + gi] += w * f16(vz[gi]);
      }
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

#include "lowbit.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "attention.h"
#include "lowbit_kernels.h"
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

// codes: [count * bits / 8] packed -> out: [count] floats (count a multiple of 8).
void unpack_codes(const uint8_t *codes, int bits, int64_t count, float *out) {
  const CodeTables &t = tables();
  if (bits == 2) {
    for (int64_t i = 0; i < count / 4; ++i) std::memcpy(out + 4 * i, t.two[codes[i]], sizeof(t.two[0]));
  } else {
    for (int64_t i = 0; i < count / 8; ++i) std::memcpy(out + 8 * i, t.one[codes[i]], sizeof(t.one[0]));
  }
}

// Code i of a packed stream (LSB first, 8 / bits codes to a byte).
inline void pack_code(uint8_t *stream, int i, int code, int bits) {
  const int per_byte = 8 / bits;
  stream[i / per_byte] |= (uint8_t)(code << ((i % per_byte) * bits));
}

inline float f16(uint16_t h) { return fp16_to_fp32(h); }

inline bool skipped(const uint64_t *skip, int pos) { return skip && ((skip[pos >> 6] >> (pos & 63)) & 1); }

}  // namespace

// The exact (unrounded) scale and zero of a group spanning [mn, mx] (see lowbit.h).
static void exact_params(float mn, float mx, int bits, float *scale, float *zero) {
  *scale = bits == 2 ? (mx - mn) / 3.0f : (mx - mn) / 2.0f;
  *zero = bits == 2 ? mn : (3.0f * mn + mx) / 4.0f;
}

void lowbit_params(float mn, float mx, int bits, float *scale, float *zero) {
  float s, z;
  exact_params(mn, mx, bits, &s, &z);
  s = std::min(s, 65504.0f);  // largest fp16
  *scale = fp16_to_fp32(fp32_to_fp16(s));
  *zero = fp16_to_fp32(fp32_to_fp16(z));
}

// The symmetric 2-bit value scale of a group whose largest magnitude is a: a / 1.5
// rounded up to the next fp16 whose 1.5 multiple is an fp16 too (at most 3 steps up).
static float sym_scale(float a) {
  const float s = std::min(a / 1.5f, 43000.0f);  // 1.5·s stays below the largest fp16
  if (!(s > 0.0f)) return 0.0f;
  uint16_t h = fp32_to_fp16(s);
  if (fp16_to_fp32(h) < s) ++h;  // round up: ±1.5·scale covers ±a (positive fp16 order = integer order)
  while (fp16_to_fp32(fp32_to_fp16(1.5f * fp16_to_fp32(h))) != 1.5f * fp16_to_fp32(h)) ++h;
  return fp16_to_fp32(h);
}

// ---- param_bits 8: scales and zeros coded on an 8-bit grid per block -------

namespace {

constexpr float kF16Max = 65504.0f;

// The fp16 nearest x, one step lower (higher) when it lies above (below) x.
uint16_t fp16_down(float x) {
  const uint16_t h = fp32_to_fp16(x);
  if (fp16_to_fp32(h) <= x) return h;
  if ((h & 0x7fff) == 0) return 0x8001;  // ±0 -> the negative subnormal nearest 0
  return (h & 0x8000) ? (uint16_t)(h + 1) : (uint16_t)(h - 1);
}
uint16_t fp16_up(float x) {
  const uint16_t h = fp32_to_fp16(x);
  if (fp16_to_fp32(h) >= x) return h;
  if ((h & 0x7fff) == 0) return 0x0001;
  return (h & 0x8000) ? (uint16_t)(h - 1) : (uint16_t)(h + 1);
}

// The fp16 values of n codes on the grid {lo, step}: lo + code·step (the product is
// exact in fp32, so a fused multiply-add rounds the same), rounded to fp16 by the row
// converter (F16C where there is one). Writer and reader both call this, so the codes
// are made against the very values attention uses.
void grid_decode(const uint16_t *grid, const uint8_t *codes, int n, uint16_t *out) {
  const float lo = fp16_to_fp32(grid[0]), step = fp16_to_fp32(grid[1]);
  float buf[64];
  for (int i0 = 0; i0 < n; i0 += 64) {
    const int m = std::min(64, n - i0);
    for (int i = 0; i < m; ++i) buf[i] = lo + (float)codes[i0 + i] * step;
    f32_to_f16_row(buf, out + i0, m);
  }
}

// A grid {lo, step} whose 256 points span [min x, max x] (lo rounded down, step up).
void grid_fit(const float *x, int n, uint16_t *grid) {
  float mn = INFINITY, mx = -INFINITY;
  for (int i = 0; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  grid[0] = fp16_down(std::max(mn, -kF16Max));
  grid[1] = fp16_up(std::min(std::max(0.0f, (mx - fp16_to_fp32(grid[0])) / 255.0f), kF16Max));
}

// The nearest grid point's code (clamped; 0 for a one-point grid or NaN).
int grid_code(float x, const uint16_t *grid) {
  const float step = fp16_to_fp32(grid[1]);
  if (!(step > 0.0f)) return 0;
  float c = std::floor((x - fp16_to_fp32(grid[0])) / step + 0.5f);
  c = c < 0.0f ? 0.0f : (c > 255.0f ? 255.0f : c);
  return c == c ? (int)c : 0;
}

// The params of n groups spanning [mn[i], mx[i]] at param_bits 8. The zeros go on
// their grid (grid[0..1]) first; each scale is then refitted so the top level stays
// where the exact rule puts it (2-bit: the max; 1-bit: the upper quartile) and goes
// on its own grid (grid[2..3]). Out: codes, and the fp16-exact scale and zero.
void params8(const float *mn, const float *mx, int n, int bits, uint16_t *grid, uint8_t *scode, uint8_t *zcode,
             float *scale, float *zero) {
  const float top = (float)((1 << bits) - 1);
  std::vector<float> z(n), t(n);
  std::vector<uint16_t> h(n);
  for (int i = 0; i < n; ++i) {
    float s;
    exact_params(mn[i], mx[i], bits, &s, &z[i]);
    t[i] = z[i] + top * s;
  }
  grid_fit(z.data(), n, grid);
  for (int i = 0; i < n; ++i) zcode[i] = (uint8_t)grid_code(z[i], grid);
  grid_decode(grid, zcode, n, h.data());
  for (int i = 0; i < n; ++i) {
    zero[i] = fp16_to_fp32(h[i]);
    t[i] = std::min(std::max(0.0f, (t[i] - zero[i]) / top), kF16Max);  // t now holds the refitted scales
  }
  grid_fit(t.data(), n, grid + 2);
  for (int i = 0; i < n; ++i) scode[i] = (uint8_t)grid_code(t[i], grid + 2);
  grid_decode(grid + 2, scode, n, h.data());
  for (int i = 0; i < n; ++i) scale[i] = fp16_to_fp32(h[i]);
}

}  // namespace

int lowbit_code(float x, float scale, float zero, int bits) {
  if (!(scale > 0.0f)) return 0;
  const float top = (float)((1 << bits) - 1);
  float c = std::floor((x - zero) / scale + 0.5f);
  c = c < 0.0f ? 0.0f : (c > top ? top : c);  // NaN compares false: stays NaN, caught below
  return c == c ? (int)c : 0;
}

void LowbitStream::init(const LowbitConfig &cfg) {
  assert(cfg.bits == 1 || cfg.bits == 2);
  assert(!cfg.sym_values || cfg.bits == 2);
  assert(cfg.param_bits == 16 || (cfg.param_bits == 8 && !cfg.sym_values && cfg.group <= 64));
  assert(cfg.group > 0 && cfg.group % 8 == 0 && cfg.head_dim % 8 == 0);  // whole bytes of codes
  cfg_ = cfg;
  vgroup_ = std::min(cfg.group, cfg.head_dim);
  assert(cfg.head_dim % vgroup_ == 0);
  row_bytes_ = cfg.head_dim * cfg.bits / 8;
  truncate(0);
}

uint64_t LowbitStream::bytes_for(const LowbitConfig &cfg, int64_t n_tokens) {
  const int64_t vg = std::min(cfg.group, cfg.head_dim);
  const int64_t codes = 2 * n_tokens * cfg.head_dim * cfg.bits / 8;                 // K and V codes
  const int64_t groups = n_tokens / cfg.group, nvg = cfg.head_dim / vg;
  if (cfg.param_bits == 8)  // 8-bit scale and zero codes, plus 4 fp16 per block
    return (uint64_t)(codes + groups * (cfg.head_dim * 2 + 8) + n_tokens * nvg * 2 + groups * nvg * 8);
  const int64_t key_params = groups * cfg.head_dim * 2 * 2;                        // fp16 scale + zero
  const int64_t value_params = n_tokens * nvg * 2 * (cfg.sym_values ? 1 : 2);       // fp16 scale (+ zero)
  return (uint64_t)(codes + key_params + value_params);
}

void LowbitStream::truncate(int n) {
  assert(n >= 0 && n <= n_ && n % cfg_.group == 0);
  n_ = n;
  kcodes_.resize((size_t)n * row_bytes_);
  vcodes_.resize((size_t)n * row_bytes_);
  resize_params();
}

void LowbitStream::resize_params() {
  const size_t kp = (size_t)(n_ / cfg_.group) * cfg_.head_dim, vp = (size_t)n_ * (cfg_.head_dim / vgroup_);
  const bool p8 = cfg_.param_bits == 8;
  kscale_.resize(p8 ? 0 : kp);
  kzero_.resize(p8 ? 0 : kp);
  vscale_.resize(p8 ? 0 : vp);
  vzero_.resize(p8 || cfg_.sym_values ? 0 : vp);
  kscale8_.resize(p8 ? kp : 0);
  kzero8_.resize(p8 ? kp : 0);
  kgrid_.resize(p8 ? (size_t)(n_ / cfg_.group) * 4 : 0);
  vscale8_.resize(p8 ? vp : 0);
  vzero8_.resize(p8 ? vp : 0);
  vgrid_.resize(p8 ? (size_t)(n_ / cfg_.group) * (cfg_.head_dim / vgroup_) * 4 : 0);
}

void LowbitStream::key_params(int group, std::vector<uint16_t> &out_scale, std::vector<uint16_t> &out_zero,
                              const uint16_t **scale, const uint16_t **zero) const {
  const int HD = cfg_.head_dim;
  if (cfg_.param_bits != 8) {
    *scale = &kscale_[(size_t)group * HD];
    *zero = &kzero_[(size_t)group * HD];
    return;
  }
  out_scale.resize(HD);
  out_zero.resize(HD);
  const uint16_t *grid = &kgrid_[(size_t)group * 4];
  grid_decode(grid, &kzero8_[(size_t)group * HD], HD, out_zero.data());
  grid_decode(grid + 2, &kscale8_[(size_t)group * HD], HD, out_scale.data());
  *scale = out_scale.data();
  *zero = out_zero.data();
}

void LowbitStream::value_params(int group, std::vector<uint16_t> &out_scale, std::vector<uint16_t> &out_zero,
                                const uint16_t **scale, const uint16_t **zero) const {
  const int g = cfg_.group, nvg = cfg_.head_dim / vgroup_;
  const size_t first = (size_t)group * g * nvg;
  if (cfg_.param_bits != 8 && cfg_.sym_values) {  // zero = -1.5·scale, an fp16 by construction (sym_scale)
    out_zero.resize((size_t)g * nvg);
    for (int i = 0; i < g * nvg; ++i) out_zero[i] = fp32_to_fp16(-1.5f * fp16_to_fp32(vscale_[first + i]));
    *scale = &vscale_[first];
    *zero = out_zero.data();
    return;
  }
  if (cfg_.param_bits != 8) {
    *scale = &vscale_[first];
    *zero = &vzero_[first];
    return;
  }
  out_scale.resize((size_t)g * nvg);
  out_zero.resize((size_t)g * nvg);
  uint16_t col[2][64];  // one value column's zeros and scales, g <= 64
  for (int gi = 0; gi < nvg; ++gi) {
    // Codes are block-major ([group][gi][g]); the kernels read [j][gi].
    const size_t block = ((size_t)group * nvg + gi) * g;
    const uint16_t *grid = &vgrid_[((size_t)group * nvg + gi) * 4];
    uint16_t *zd = nvg == 1 ? out_zero.data() : col[0], *sd = nvg == 1 ? out_scale.data() : col[1];
    grid_decode(grid, &vzero8_[block], g, zd);
    grid_decode(grid + 2, &vscale8_[block], g, sd);
    if (nvg > 1)
      for (int j = 0; j < g; ++j) {
        out_zero[(size_t)j * nvg + gi] = col[0][j];
        out_scale[(size_t)j * nvg + gi] = col[1][j];
      }
  }
  *scale = out_scale.data();
  *zero = out_zero.data();
}

void LowbitStream::append(const float *k, const float *v, int n) {
  const int g = cfg_.group, HD = cfg_.head_dim, bits = cfg_.bits, nvg = HD / vgroup_;
  assert(n % g == 0);
  const int old = n_;
  n_ += n;
  kcodes_.resize((size_t)n_ * row_bytes_, 0);
  vcodes_.resize((size_t)n_ * row_bytes_, 0);
  resize_params();
  const bool p8 = cfg_.param_bits == 8;
  // mn, mx: the ranges of one block (a group's channels, or a value column's tokens).
  std::vector<float> mn(std::max(HD, g)), mx(mn.size()), scale(mn.size()), zero(mn.size());
  std::vector<float> vscale((size_t)g * nvg), vzero(vscale.size());  // a group's value params, [j][gi]
  for (int b = 0; b < n / g; ++b) {
    const int group = old / g + b;
    const float *kb = k + (size_t)b * g * HD, *vb = v + (size_t)b * g * HD;
    // Keys: per channel over the group's g tokens.
    for (int c = 0; c < HD; ++c) {
      mn[c] = INFINITY;
      mx[c] = -INFINITY;
      for (int j = 0; j < g; ++j) {
        mn[c] = std::min(mn[c], kb[(size_t)j * HD + c]);
        mx[c] = std::max(mx[c], kb[(size_t)j * HD + c]);
      }
    }
    if (p8) {
      params8(mn.data(), mx.data(), HD, bits, &kgrid_[(size_t)group * 4], &kscale8_[(size_t)group * HD],
              &kzero8_[(size_t)group * HD], scale.data(), zero.data());
    } else {
      for (int c = 0; c < HD; ++c) {
        lowbit_params(mn[c], mx[c], bits, &scale[c], &zero[c]);
        kscale_[(size_t)group * HD + c] = fp32_to_fp16(scale[c]);
        kzero_[(size_t)group * HD + c] = fp32_to_fp16(zero[c]);
      }
    }
    for (int c = 0; c < HD; ++c) {
      uint8_t *dst = key_codes(group, c);
      for (int j = 0; j < g; ++j) pack_code(dst, j, lowbit_code(kb[(size_t)j * HD + c], scale[c], zero[c], bits), bits);
    }
    // Values: per token over each group of vgroup channels.
    for (int gi = 0; gi < nvg; ++gi) {
      for (int j = 0; j < g; ++j) {
        const float *x = vb + (size_t)j * HD + gi * vgroup_;
        mn[j] = INFINITY;
        mx[j] = -INFINITY;
        for (int c = 0; c < vgroup_; ++c) {
          mn[j] = std::min(mn[j], x[c]);
          mx[j] = std::max(mx[j], x[c]);
        }
      }
      if (p8) {
        const size_t block = ((size_t)group * nvg + gi) * g;  // codes block-major: [group][gi][g]
        params8(mn.data(), mx.data(), g, bits, &vgrid_[((size_t)group * nvg + gi) * 4], &vscale8_[block],
                &vzero8_[block], scale.data(), zero.data());
      } else {
        for (int j = 0; j < g; ++j) {
          const size_t at = ((size_t)group * g + j) * nvg + gi;
          if (cfg_.sym_values) {
            scale[j] = sym_scale(std::max(-mn[j], mx[j]));
            zero[j] = -1.5f * scale[j];
          } else {
            lowbit_params(mn[j], mx[j], bits, &scale[j], &zero[j]);
            vzero_[at] = fp32_to_fp16(zero[j]);
          }
          vscale_[at] = fp32_to_fp16(scale[j]);
        }
      }
      for (int j = 0; j < g; ++j) {
        vscale[(size_t)j * nvg + gi] = scale[j];
        vzero[(size_t)j * nvg + gi] = zero[j];
      }
    }
    for (int j = 0; j < g; ++j) {
      const size_t tok = (size_t)group * g + j;
      const float *row = vb + (size_t)j * HD;
      for (int c = 0; c < HD; ++c) {
        const size_t gi = (size_t)j * nvg + c / vgroup_;
        pack_code(&vcodes_[tok * row_bytes_], c, lowbit_code(row[c], vscale[gi], vzero[gi], bits), bits);
      }
    }
  }
}

void LowbitStream::dequantize(int t0, int t1, float *k, float *v) const {
  const int g = cfg_.group, HD = cfg_.head_dim, nvg = HD / vgroup_;
  std::vector<float> codes(std::max(HD, g));
  std::vector<uint16_t> ks, kz, vs, vz;
  const uint16_t *kscale = nullptr, *kzero = nullptr, *vscale = nullptr, *vzero = nullptr;
  for (int t = t0; t < t1; ++t) {
    const int group = t / g, j = t % g;
    if (t == t0 || j == 0) {
      key_params(group, ks, kz, &kscale, &kzero);
      value_params(group, vs, vz, &vscale, &vzero);
    }
    float *kr = k + (size_t)(t - t0) * HD, *vr = v + (size_t)(t - t0) * HD;
    for (int c = 0; c < HD; ++c) {
      unpack_codes(key_codes(group, c), cfg_.bits, g, codes.data());
      kr[c] = f16(kscale[c]) * codes[j] + f16(kzero[c]);
    }
    unpack_codes(&vcodes_[(size_t)t * row_bytes_], cfg_.bits, HD, codes.data());
    for (int c = 0; c < HD; ++c) {
      const int gi = (size_t)j * nvg + c / vgroup_;
      vr[c] = f16(vscale[gi]) * codes[c] + f16(vzero[gi]);
    }
  }
}

namespace {

// ---- scalar inner loops (the reference; see lowbit_kernels.h) --------------

void decode_keys_scalar(const uint8_t *packed, int bits, int g, int hd, const uint16_t *scale, const uint16_t *zero,
                        float *kd) {
  unpack_codes(packed, bits, (int64_t)g * hd, kd);
  for (int c = 0; c < hd; ++c) {
    const float s = f16(scale[c]), z = f16(zero[c]);
    for (int j = 0; j < g; ++j) kd[(size_t)c * g + j] = kd[(size_t)c * g + j] * s + z;
  }
}

void decode_values_scalar(const uint8_t *packed, int bits, int g, int hd, int vg, const uint16_t *scale,
                          const uint16_t *zero, float *vd) {
  const int nvg = hd / vg;
  unpack_codes(packed, bits, (int64_t)g * hd, vd);
  for (int j = 0; j < g; ++j)
    for (int c = 0; c < hd; ++c) {
      const size_t gi = (size_t)j * nvg + c / vg;
      vd[(size_t)j * hd + c] = vd[(size_t)j * hd + c] * f16(scale[gi]) + f16(zero[gi]);
    }
}

void scores_scalar(const float *q, int rows, const float *kd, int g, int hd, float *p, int64_t ldp) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < g; ++j) {
      float d = 0;
      for (int c = 0; c < hd; ++c) d += q[(size_t)r * hd + c] * kd[(size_t)c * g + j];
      p[(size_t)r * ldp + j] = d;
    }
}

void values_scalar(const float *p, int64_t ldp, int rows, const float *vd, int g, int hd, float *acc) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < g; ++j)
      for (int c = 0; c < hd; ++c) acc[(size_t)r * hd + c] += p[(size_t)r * ldp + j] * vd[(size_t)j * hd + c];
}

const LowbitKernels kLowbitScalar = {"scalar", 1, decode_keys_scalar, decode_values_scalar, scores_scalar, values_scalar};
std::atomic<bool> g_force_scalar{false};

// True when any position in [first, first + n) is set in the skip bitset.
bool any_skipped(const uint64_t *skip, int first, int n) {
  if (!skip) return false;
  for (int w = first >> 6; w <= (first + n - 1) >> 6; ++w) {
    uint64_t bits = skip[w];
    if (w == first >> 6) bits &= ~0ull << (first & 63);
    if (w == (first + n - 1) >> 6 && ((first + n) & 63)) bits &= ~(~0ull << ((first + n) & 63));
    if (bits) return true;
  }
  return false;
}

}  // namespace

#if defined(__x86_64__)
extern const LowbitKernels kLowbitW8, kLowbitW16, kLowbitW16Bf16;  // lowbit_avx2.cpp, lowbit_avx512.cpp, lowbit_avx512bf16.cpp
#endif
static std::atomic<bool> g_force_fp32{false};

// bf16 dot products unless the CPU lacks them, SPECODE_LOWBIT=fp32, or a test forces fp32.
static bool bf16_allowed() {
#if defined(__x86_64__)
  static const bool cpu = __builtin_cpu_supports("avx512bf16") != 0;
  static const bool env_off = [] {
    const char *e = std::getenv("SPECODE_LOWBIT");
    return e && !std::strcmp(e, "fp32");
  }();
  return cpu && !env_off && !g_force_fp32.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

const LowbitKernels &lowbit_kernels(int g, int head_dim) {
  if (g_force_scalar.load(std::memory_order_relaxed)) return kLowbitScalar;
#if defined(__x86_64__)
  // Follow the quant kernel set chosen for this CPU (and SPECODE_KERNELS). The
  // vector loops decode whole 32-bit words of codes per key channel (g) and
  // per value group (min(g, head_dim)), and need whole vectors of channels.
  const char *set = quant_kernel_set();
  const bool a512 = !std::strcmp(set, "avx512"), a2 = a512 || !std::strcmp(set, "avx2");
  const bool words = g % 32 == 0 && std::min(g, head_dim) % 32 == 0;
  if (a512 && words && head_dim % 32 == 0 && bf16_allowed()) return kLowbitW16Bf16;
  if (a512 && words && head_dim % 16 == 0) return kLowbitW16;
  if (a2 && words && head_dim % 8 == 0) return kLowbitW8;
#endif
  return kLowbitScalar;
}

void lowbit_force_scalar(bool on) { g_force_scalar.store(on); }
void lowbit_force_fp32(bool on) { g_force_fp32.store(on); }

bool lowbit_debias_default() {
  static const bool on = [] {
    const char *e = std::getenv("SPECODE_LOWBIT_DEBIAS");
    return !(e && *e == '0');
  }();
  return on;
}

// Subtracts σ_r²/2 from the scores of a key group for each query row r (LowbitConfig::debias).
// Why: the low-bit score is s + e with e the rounding error, and E[exp(s + e)] = exp(s)·E[e^e]
// > exp(s) (Jensen), so summed over the thousands of rows left in low bit the softmax
// denominator and the tail's weight come out too large; exp(ŝ - σ²/2) is unbiased for
// Gaussian e (the sum of head_dim independent uniform errors).
// q2t[c * n_rows + r] = q[r][c]² / 24: once per call.
static void debias_prepare(const float *q, int n_rows, int hd, std::vector<float> &q2t) {
  q2t.resize((size_t)hd * n_rows);
  for (int r = 0; r < n_rows; ++r)
    for (int c = 0; c < hd; ++c) q2t[(size_t)c * n_rows + r] = q[(size_t)r * hd + c] * q[(size_t)r * hd + c] * (1.0f / 24.0f);
}

// Per row r: shift[r] = Σ_c q2t[c][r] · Δ_c² (the rows are the vector lanes: no reduction
// order to keep, so the compiler vectorizes it), then the group's scores of row r lose it.
static void debias_group(const uint16_t *kscale, const float *q2t, int n_rows, int g, int hd, float *p, int64_t ldp,
                         float *shift) {
  std::fill(shift, shift + n_rows, 0.0f);
  for (int c = 0; c < hd; ++c) {
    const float d = f16(kscale[c]), d2 = d * d;
    const float *col = q2t + (size_t)c * n_rows;
    for (int r = 0; r < n_rows; ++r) shift[r] += col[r] * d2;
  }
  for (int r = 0; r < n_rows; ++r) {
    float *pr = p + (size_t)r * ldp;
    const float v = shift[r];
    for (int j = 0; j < g; ++j) pr[j] -= v;
  }
}

void lowbit_attend(const LowbitStream &s, int t0, int t1, const float *q, int n_rows, const uint64_t *skip, float *p,
                   float *m, float *l, float *acc, LowbitScratch &scratch) {
  const LowbitConfig &cfg = s.cfg_;
  const int g = cfg.group, HD = cfg.head_dim, bits = cfg.bits, vg = s.vgroup_;
  const int n = t1 - t0;
  assert(t0 % g == 0 && t1 % g == 0 && t1 <= s.n_);
  const LowbitKernels &kern = lowbit_kernels(g, HD);
  scratch.decoded.resize((size_t)g * HD);
  float *dec = scratch.decoded.data();
  const bool debias = cfg.debias;
  if (debias) {
    debias_prepare(q, n_rows, HD, scratch.q2t);
    scratch.shift.resize(n_rows);
  }

  // Scores, key group by key group, from the group decoded once for all rows.
  for (int group = t0 / g; group < t1 / g; ++group) {
    const int first = group * g;
    const uint16_t *kscale, *kzero;
    s.key_params(group, scratch.kscale, scratch.kzero, &kscale, &kzero);
    kern.decode_keys(s.key_codes(group, 0), bits, g, HD, kscale, kzero, dec);
    kern.scores(q, n_rows, dec, g, HD, p + (first - t0), n);
    if (debias) debias_group(kscale, scratch.q2t.data(), n_rows, g, HD, p + (first - t0), n, scratch.shift.data());
    if (any_skipped(skip, first, g))
      for (int j = 0; j < g; ++j)
        if (skipped(skip, first + j))
          for (int r = 0; r < n_rows; ++r) p[(size_t)r * n + (first - t0) + j] = -INFINITY;
  }
  // Softmax piece per row; skipped positions get exactly 0.
  const attn::AttnKernels &ak = attn::kernels_for(HD);
  const bool any_skip = any_skipped(skip, t0, n);
  for (int r = 0; r < n_rows; ++r) {
    float *pr = p + (size_t)r * n;
    const float mx = ak.max(pr, n);
    if (mx == -INFINITY) {
      std::fill(pr, pr + n, 0.0f);
      l[r] = 0;
    } else {
      float sum = ak.exp_sum(pr, n, mx);
      if (any_skip)
        for (int j = 0; j < n; ++j)
          if (skipped(skip, t0 + j)) {
            sum -= pr[j];
            pr[j] = 0.0f;
          }
      l[r] = sum;
    }
    m[r] = mx;
  }
  // Values: Σ_j p_j v_j over each decoded group (skipped tokens have p = 0).
  std::memset(acc, 0, (size_t)n_rows * HD * sizeof(float));
  for (int group = t0 / g; group < t1 / g; ++group) {
    const int first = group * g;
    const uint16_t *vscale, *vzero;
    s.value_params(group, scratch.vscale, scratch.vzero, &vscale, &vzero);
    kern.decode_values(&s.vcodes_[(size_t)first * s.row_bytes_], bits, g, HD, vg, vscale, vzero, dec);
    kern.values(p + (first - t0), n, n_rows, dec, g, HD, acc);
  }
  for (int r = 0; r < n_rows; ++r) {
    const float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
    for (int c = 0; c < HD; ++c) acc[(size_t)r * HD + c] *= inv;
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

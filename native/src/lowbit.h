// lowbit.h — the low-bit KV copy in KIVI's layout, and attention computed
// straight from its codes (the cache is never dequantized as a whole).
//
// Per (layer, kv head) stream:
//   keys   — per channel: a group is g consecutive tokens of one channel;
//   values — per token:   a group is vg = min(g, head_dim) consecutive channels.
// 2-bit: scale = (max - min)/3, zero = min, levels zero + scale·{0,1,2,3}.
// 1-bit: scale = (max - min)/2, zero = (3·min + max)/4: the threshold is the
//        midpoint and the two levels are the quartiles.
// code = clamp(floor((x - zero)/scale + 1/2), 0, 2^bits - 1) with the fp16
// scale and zero; every group stores its scale and zero in fp16.
//
// Attention from codes (lowbit_attend): one group of g tokens at a time is
// decoded (code·scale + zero, fp32) into an L1-sized buffer that every query
// row of the call reads — keys channel-major, so scores are a register-blocked
// outer product; values token-major. Only the group in flight is ever decoded;
// the cache is read as 1-2-bit codes. Kernels per SIMD width: lowbit_kernels.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace specode {

struct LowbitScratch;

struct LowbitConfig {
  int head_dim = 64;
  int bits = 2;    // 1 or 2
  int group = 64;  // g: tokens per key group; channels per value group = min(g, head_dim)
  // Scores estimate exp(true score) without bias: each low-bit score less σ²/2, σ² =
  // Σ_c q_c² Δ_c² / 12 the variance of its rounding error (Δ_c the key group's level
  // spacing in channel c; the error uniform in ±Δ_c/2). Off: plain dequantized scores.
  bool debias = false;
  // 2-bit only: values quantized symmetrically, one fp16 scale per value group and
  // no stored zero (zero = -1.5·scale: levels ±scale/2, ±3·scale/2, the scale
  // rounded up to an fp16 whose 1.5 multiple is an fp16 too). 2 bytes less per
  // token per value group; a departure from KIVI's min/max, measured and rejected
  // (docs/benchmarks.md, "Why 2-bit cannot reach 1/6 at 8k"): off by default.
  bool sym_values = false;
  // 16: every group's scale and zero in fp16 (KIVI, DESIGN.md). 8: an experiment
  // beyond DESIGN.md — the scales and the zeros of one block (a key group's
  // head_dim channels; a value group column over g tokens) are coded in 8 bits
  // each on a grid lo + code·step whose lo and step are fp16 (4 fp16 per block).
  // The kernels see the same fp16 values, decoded per group: ~2 bytes less per
  // token for keys and for values (36.25 B instead of 40 at 2 bits, g 64, head_dim 64).
  int param_bits = 16;
};

// The debias setting the KV policies use: on, unless SPECODE_LOWBIT_DEBIAS=0.
bool lowbit_debias_default();

// Scale and zero (fp16-rounded) of a group whose values span [mn, mx].
void lowbit_params(float mn, float mx, int bits, float *scale, float *zero);
// The clamped code of x for a group's (scale, zero); 0 when scale is 0.
int lowbit_code(float x, float scale, float zero, int bits);

class LowbitStream {
 public:
  LowbitStream() = default;
  explicit LowbitStream(const LowbitConfig &cfg) { init(cfg); }
  void init(const LowbitConfig &cfg);

  const LowbitConfig &config() const { return cfg_; }
  int size() const { return n_; }  // tokens held, a multiple of group
  // Appends n tokens (a multiple of group). k, v: [n][head_dim] fp32.
  void append(const float *k, const float *v, int n);
  // Keeps the first n tokens (a multiple of group).
  void truncate(int n);
  // Bytes held for size() tokens: codes plus fp16 scales and zeros.
  uint64_t bytes() const { return bytes_for(cfg_, n_); }
  static uint64_t bytes_for(const LowbitConfig &cfg, int64_t n_tokens);
  // Decoded rows [t0, t1): k, v: [t1 - t0][head_dim]. For tests and checks
  // only; attention never calls it.
  void dequantize(int t0, int t1, float *k, float *v) const;

 private:
  friend void lowbit_attend(const LowbitStream &, int, int, const float *, int, const uint64_t *, float *, float *,
                            float *, float *, LowbitScratch &);
  LowbitConfig cfg_;
  int vgroup_ = 0;     // channels per value group
  int row_bytes_ = 0;  // packed codes of one token: head_dim * bits / 8
  int n_ = 0;
  // Packed codes, LSB first, 8/bits to a byte. Keys channel-major within a
  // group (per group [head_dim][g], what a per-channel group reads), values
  // token-major ([n][head_dim]).
  uint8_t *key_codes(int group, int c) { return &kcodes_[((size_t)group * cfg_.head_dim + c) * cfg_.group * cfg_.bits / 8]; }
  const uint8_t *key_codes(int group, int c) const {
    return &kcodes_[((size_t)group * cfg_.head_dim + c) * cfg_.group * cfg_.bits / 8];
  }
  std::vector<uint8_t> kcodes_;           // [n / g][head_dim][g * bits / 8]
  std::vector<uint16_t> kscale_, kzero_;  // [n / group][head_dim] fp16
  std::vector<uint8_t> vcodes_;           // [n][row_bytes]
  std::vector<uint16_t> vscale_, vzero_;  // [n][head_dim / vgroup] fp16 (vzero_ empty with sym_values)
  void resize_params();  // every param array to size n_
  // param_bits 8 (the fp16 arrays above stay empty):
  std::vector<uint8_t> kscale8_, kzero8_;  // [n / group][head_dim] codes
  std::vector<uint16_t> kgrid_;            // [n / group][4] fp16: zero lo, zero step, scale lo, scale step
  std::vector<uint8_t> vscale8_, vzero8_;  // [n / group][head_dim / vgroup][group] codes (block-major)
  std::vector<uint16_t> vgrid_;            // [n / group][head_dim / vgroup][4] fp16, as kgrid_
  // A key group's fp16 scales and zeros ([head_dim] each), decoded into out_* when
  // param_bits is 8 (out_* then returned), else pointers into kscale_ / kzero_.
  void key_params(int group, std::vector<uint16_t> &out_scale, std::vector<uint16_t> &out_zero, const uint16_t **scale,
                  const uint16_t **zero) const;
  // The same for the values of the g tokens of key group `group` ([g][head_dim / vgroup]); with
  // sym_values the zeros (-1.5·scale) are made in out_zero.
  void value_params(int group, std::vector<uint16_t> &out_scale, std::vector<uint16_t> &out_zero,
                    const uint16_t **scale, const uint16_t **zero) const;
};

// Per-thread work space for lowbit_attend (grows on demand).
struct LowbitScratch {
  std::vector<float> decoded;  // [group * head_dim]: the current group, decoded (keys [c][j], values [j][c])
  std::vector<float> q2t, shift;  // debias: q² transposed [head_dim][rows]; a group's shift per row
  std::vector<uint16_t> kscale, kzero, vscale, vzero;  // a group's decoded fp16 params (8-bit params; sym_values zeros)
};

// One piece of a split softmax: attention of n_rows query rows over the
// stream's tokens [t0, t1) (multiples of group; t1 <= size()).
//   q:    [n_rows][head_dim] fp32, already multiplied by 1/sqrt(head_dim)
//   skip: bitset over positions (bit j of word j/64); a set bit means the row
//         is attended elsewhere in fp16 and is left out here; may be null
//   p:    [n_rows][t1 - t0] out: exp(score - m[r]), 0 for skipped positions
//   m, l: [n_rows] out: max score (-inf if nothing scored) and Σ p
//   acc:  [n_rows][head_dim] out: Σ_j p_j v_j / l (0 if nothing scored)
void lowbit_attend(const LowbitStream &s, int t0, int t1, const float *q, int n_rows, const uint64_t *skip, float *p,
                   float *m, float *l, float *acc, LowbitScratch &scratch);

// Tests: use the scalar inner loops even where AVX2 is available.
void lowbit_force_scalar(bool on);
// Tests: keep the vector kernels in fp32 (no bf16 dot products).
void lowbit_force_fp32(bool on);

// Merges the split-softmax piece (m_b, l_b, acc_b) into (m_a, l_a, acc_a):
// m the pieces' max score, l = Σ exp(score - m), acc the piece's normalized
// output. An empty piece (m = -inf) changes nothing, and merging into an
// empty piece copies, so a softmax made of one piece is bit-identical to it.
void softmax_merge(float *m_a, float *l_a, float *acc_a, float m_b, float l_b, const float *acc_b, int head_dim);

}  // namespace specode

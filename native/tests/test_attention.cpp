// Blocked causal attention (attention.h) against a double-precision reference,
// for every kernel width this CPU runs, head sizes 16/64/80/128, GQA groups,
// prefill tiles, decode with the key split, and fp16 and fp32 rows.
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "attention.h"
#include "quant.h"
#include "testing.h"

using namespace specode;

namespace {

struct Problem {
  KvShape sh;
  int pos0 = 0, n = 0;
  std::vector<float> q;         // [n][nh*hd]
  std::vector<uint16_t> k, v;   // [nkv][keys][hd] fp16
  std::vector<float> k32, v32;  // the same values in fp32
};

Problem make(int nh, int nkv, int hd, int pos0, int n, uint32_t seed) {
  Problem p;
  p.sh.n_layer = 1, p.sh.n_head = nh, p.sh.n_head_kv = nkv, p.sh.head_dim = hd, p.sh.n_ctx = pos0 + n;
  p.pos0 = pos0, p.n = n;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  p.q.resize((size_t)n * nh * hd);
  // A wide range of scores (scale 3) so the softmax is peaked in places, as real attention is.
  for (float &x : p.q) x = 3.0f * nd(rng);
  const size_t rows = (size_t)nkv * (pos0 + n) * hd;
  p.k.resize(rows), p.v.resize(rows), p.k32.resize(rows), p.v32.resize(rows);
  for (size_t i = 0; i < rows; ++i) {
    p.k[i] = fp32_to_fp16(nd(rng));
    p.v[i] = fp32_to_fp16(nd(rng));
    p.k32[i] = fp16_to_fp32(p.k[i]);
    p.v32[i] = fp16_to_fp32(p.v[i]);
  }
  return p;
}

std::vector<float> reference(const Problem &p) {
  const int hd = p.sh.head_dim, nh = p.sh.n_head, G = nh / p.sh.n_head_kv, keys = p.pos0 + p.n;
  std::vector<float> out((size_t)p.n * nh * hd);
  std::vector<double> s(keys), acc(hd);
  for (int t = 0; t < p.n; ++t)
    for (int h = 0; h < nh; ++h) {
      const int g = h / G, n_pos = p.pos0 + t + 1;
      const float *q = &p.q[((size_t)t * nh + h) * hd];
      double mx = -1e300;
      for (int j = 0; j < n_pos; ++j) {
        double d = 0;
        for (int c = 0; c < hd; ++c) d += (double)q[c] * p.k32[((size_t)g * keys + j) * hd + c];
        s[j] = d / std::sqrt((double)hd);
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int j = 0; j < n_pos; ++j) {
        const double e = std::exp(s[j] - mx);
        sum += e;
        for (int c = 0; c < hd; ++c) acc[c] += e * p.v32[((size_t)g * keys + j) * hd + c];
      }
      for (int c = 0; c < hd; ++c) out[((size_t)t * nh + h) * hd + c] = (float)(acc[c] / sum);
    }
  return out;
}

float max_diff(const std::vector<float> &a, const std::vector<float> &b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::vector<float> run(ThreadPool &pool, const Problem &p, bool f16) {
  const int hd = p.sh.head_dim, keys = p.pos0 + p.n;
  std::vector<float> out((size_t)p.n * p.sh.n_head * hd, -7.0f);
  if (f16)
    attn::causal_attention(
        pool, p.sh, p.pos0, p.n, p.q.data(), out.data(),
        [&](int g, int j) { return (const uint16_t *)&p.k[((size_t)g * keys + j) * hd]; },
        [&](int g, int j) { return (const uint16_t *)&p.v[((size_t)g * keys + j) * hd]; });
  else
    attn::causal_attention(
        pool, p.sh, p.pos0, p.n, p.q.data(), out.data(),
        [&](int g, int j) { return (const float *)&p.k32[((size_t)g * keys + j) * hd]; },
        [&](int g, int j) { return (const float *)&p.v32[((size_t)g * keys + j) * hd]; });
  return out;
}

}  // namespace

TEST(attention_matches_reference_every_width_and_shape) {
  ThreadPool pool(3);
  const std::string saved = quant_kernel_set();
  struct Shape { int nh, nkv, hd, pos0, n; };
  const Shape shapes[] = {
      {4, 2, 16, 0, 1},       // a single token
      {4, 2, 16, 0, 37},      // prefill, partial blocks
      {14, 2, 64, 0, 70},     // Qwen2.5-0.5B heads, several tiles
      {9, 3, 64, 100, 5},     // SmolLM2 heads, chunked prefill continuing a cache
      {14, 2, 64, 3000, 2},   // decode step with the key split (3002 keys)
      {14, 2, 64, 1200, 1},   // split with a short last chunk
      {8, 8, 128, 33, 40},    // no GQA, head size 128
      {12, 4, 80, 64, 9},     // head size 80: generic (not 64/128) path
  };
  for (const char *set : {"scalar", "avx2", "avx512"}) {
    if (!quant_force_kernel_set(set)) continue;
    for (const Shape &s : shapes) {
      Problem p = make(s.nh, s.nkv, s.hd, s.pos0, s.n, (uint32_t)(s.hd * 131 + s.pos0 + s.n));
      const std::vector<float> ref = reference(p);
      const float d16 = max_diff(run(pool, p, true), ref), d32 = max_diff(run(pool, p, false), ref);
      if (d16 > 2e-5f || d32 > 2e-5f)
        std::fprintf(stderr, "  %s (%s) heads %d/%d hd %d pos0 %d n %d: max |diff| fp16 %.2e fp32 %.2e\n", set,
                     attn::kernels_for(s.hd).name, s.nh, s.nkv, s.hd, s.pos0, s.n, d16, d32);
      CHECK(d16 <= 2e-5f);
      CHECK(d32 <= 2e-5f);
    }
  }
  quant_force_kernel_set(saved.c_str());
}

TEST(attention_same_bits_for_any_thread_count) {
  // Tasks are fixed by the problem shape, not by who runs them.
  Problem p = make(14, 2, 64, 40, 90, 7);
  ThreadPool one(1), three(3);
  const std::vector<float> a = run(one, p, true), b = run(three, p, true);
  CHECK(a == b);
  // A decode step that splits: the split depends on the pool size, the values
  // must still agree to rounding.
  Problem d = make(14, 2, 64, 4000, 1, 8);
  CHECK(max_diff(run(one, d, true), run(three, d, true)) <= 1e-6f);
}

TEST(attention_rows_attend_sees_only_each_rows_keys) {
  // rows_attend with per-row limits (the SpeCache fp16 piece): a row whose
  // limit is 0 sees nothing; others see exactly their prefix.
  Problem p = make(2, 1, 64, 50, 1, 9);
  const int hd = 64, keys = 51;
  const attn::AttnKernels &kr = attn::kernels_for(hd);
  attn::Worker &w = attn::worker();
  w.reserve(3, hd);
  const float scale = 1.0f / 8.0f;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < hd; ++c) w.q[(size_t)r * hd + c] = p.q[c] * scale;
  w.limit[0] = 0, w.limit[1] = 17, w.limit[2] = keys;
  std::vector<float> o(3 * hd), mx(3), l(3);
  attn::rows_attend(
      kr, hd, 3, w.q.data(), w.limit.data(), 0, keys, [&](int j) { return (const uint16_t *)&p.k[(size_t)j * hd]; },
      [&](int j) { return (const uint16_t *)&p.v[(size_t)j * hd]; }, o.data(), mx.data(), l.data(), w);
  CHECK(mx[0] == -INFINITY && l[0] == 0.0f && o[0] == 0.0f);
  for (int r = 1; r < 3; ++r) {
    // Reference for a prefix of w.limit[r] keys.
    const int n_pos = w.limit[r];
    std::vector<double> s(n_pos);
    double m = -1e300, sum = 0;
    for (int j = 0; j < n_pos; ++j) {
      double d = 0;
      for (int c = 0; c < hd; ++c) d += (double)p.q[c] * scale * p.k32[(size_t)j * hd + c];
      s[j] = d, m = std::max(m, d);
    }
    std::vector<double> acc(hd);
    for (int j = 0; j < n_pos; ++j) {
      const double e = std::exp(s[j] - m);
      sum += e;
      for (int c = 0; c < hd; ++c) acc[c] += e * p.v32[(size_t)j * hd + c];
    }
    CHECK_NEAR(mx[r], m, 1e-4);
    CHECK_NEAR(l[r], sum, 1e-4 * sum);
    std::vector<float> out(hd);
    attn::finish_row(&o[(size_t)r * hd], l[r], out.data(), hd);
    for (int c = 0; c < hd; ++c) CHECK_NEAR(out[c], acc[c] / sum, 2e-5);
  }
}

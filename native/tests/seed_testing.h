// seed_testing.h — helpers shared by test_gear.cpp, test_kvmerger.cpp and
// test_tailorkv.cpp: a structured K/V/Q stream, one forward pass's KV
// traffic, a double-precision attention reference, and a tiny GGUF model.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kv_cache.h"
#include "tiny_model.h"
#include "quant.h"
#include "specode.h"
#include "testing.h"
#include "threadpool.h"

namespace seedtest {

using namespace specode;

inline float f16r(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

// K/V rows with the structure real caches show: per-channel offsets (a few
// large "outlier channels" in K), a low-rank part that drifts smoothly with
// position, noise, and sparse large outliers. Q: noise + alignment with the
// keys of `heavy` positions (so attention is peaked, as real attention is).
struct Stream {
  KvShape sh;
  uint32_t seed = 1;
  float noise = 0.3f, outlier_p = 0.01f, outlier_mag = 6.0f, lowrank = 1.0f;
  bool walk = false;      // keys: a random walk (adjacent keys similar)
  bool offsets = true;    // keys: per-channel offsets (a few large outlier channels)
  std::set<int> heavy;    // positions every query attends to
  float gain = 2.0f;

  Stream(const KvShape &s, uint32_t sd) : sh(s), seed(sd) {}

  // A standard normal from a hash of the arguments (cheap and deterministic).
  static float hnorm(uint64_t x) {
    auto mix = [](uint64_t z) {
      z += 0x9E3779B97F4A7C15ull;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    const uint64_t a = mix(x), b = mix(a);
    const double u1 = ((a >> 11) + 1.0) / 9007199254740993.0, u2 = (b >> 11) / 9007199254740992.0;
    return (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  static uint64_t key(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e) {
    return (((a * 1000003ull + b) * 1000033ull + c) * 1000037ull + d) * 1000039ull + e;
  }
  float chan_offset(int layer, int h, int c) const {
    float o = 0.5f * hnorm(key(seed, 1, layer, h, c));
    if (c % 16 == 3) o += 5.0f;  // outlier channels
    return o;
  }
  // Smooth low-rank factor i at position pos.
  float factor(int layer, int h, int i, int pos) const {
    const float f = 0.013f * (i + 1) + 0.002f * layer + 0.001f * h;
    return std::sin(f * pos + i * 1.3f + seed);
  }
  float basis(int layer, int h, int i, int c, int what) const {
    return hnorm(key(seed, 2 + what, layer, h * 16 + i, c));
  }
  // K (what 0) or V (1) of one token: [nkv][hd]; Q (2): [nh][hd].
  std::vector<float> row(int what, int layer, int pos) const {
    const int heads = what == 2 ? sh.n_head : sh.n_head_kv, hd = sh.head_dim;
    std::vector<float> r((size_t)heads * hd);
    std::mt19937 rng(seed * 1000003u + (uint32_t)layer * 7919u + (uint32_t)pos * 31u + (uint32_t)what);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ud(0.0f, 1.0f);
    for (int h = 0; h < heads; ++h) {
      if (what == 2) {
        const int g = h / (sh.n_head / sh.n_head_kv);
        std::vector<float> dir((size_t)hd, 0.0f);
        for (int p : heavy) {
          auto k = row(0, layer, p);
          for (int c = 0; c < hd; ++c) dir[c] += k[(size_t)g * hd + c];
        }
        double n2 = 0;
        for (float x : dir) n2 += (double)x * x;
        const float sc = n2 > 0 ? gain * std::sqrt((float)hd) / (float)std::sqrt(n2) : 0.0f;
        for (int c = 0; c < hd; ++c) r[(size_t)h * hd + c] = nd(rng) + sc * dir[c];
        continue;
      }
      for (int c = 0; c < hd; ++c) {
        float x = what == 0 && offsets ? chan_offset(layer, h, c) : 0.0f;
        for (int i = 0; i < 4; ++i) x += lowrank * factor(layer, h, i, pos + 100 * what) * basis(layer, h, i, c, what);
        x += noise * nd(rng);
        if (ud(rng) < outlier_p) x += (ud(rng) < 0.5f ? -1.0f : 1.0f) * outlier_mag;
        if (what == 0 && walk) {
          // Adjacent keys alike: the key of a 16-token "phrase" plus a little noise.
          x = 2.0f * hnorm(key(seed, 9, layer, h * 100000 + pos / 16, c)) + 0.15f * nd(rng);
        }
        r[(size_t)h * hd + c] = f16r(x);
      }
    }
    return r;
  }
  std::vector<float> rows(int what, int layer, int pos0, int n) const {
    std::vector<float> out;
    for (int t = 0; t < n; ++t) {
      auto r = row(what, layer, pos0 + t);
      out.insert(out.end(), r.begin(), r.end());
    }
    return out;
  }
};

// One forward pass's KV traffic. Returns the attention outputs [layer][n * nh * hd].
inline std::vector<std::vector<float>> run_pass(KvCache &kv, ThreadPool &pool, const Stream &s, int pos0, int n,
                                                bool decode) {
  std::vector<int32_t> ids(n, 1);
  KvPass p;
  p.pos0 = pos0;
  p.n = p.n_keep = n;
  p.tokens = ids.data();
  p.decode = decode;
  CHECK(kv.begin_pass(p));
  std::vector<std::vector<float>> outs;
  for (int l = 0; l < s.sh.n_layer; ++l) {
    auto k = s.rows(0, l, pos0, n), v = s.rows(1, l, pos0, n), q = s.rows(2, l, pos0, n);
    kv.store(l, pos0, n, k.data(), v.data());
    std::vector<float> out((size_t)n * s.sh.n_head * s.sh.head_dim, -9.0f);
    kv.attend(l, pos0, n, q.data(), out.data(), pool);
    outs.push_back(std::move(out));
  }
  kv.end_pass();
  return outs;
}

// Double-precision attention of query q [hd] over rows k_of(i), v_of(i), i < n.
template <typename KOf, typename VOf>
std::vector<double> ref_attend(const float *q, int hd, int n, KOf k_of, VOf v_of) {
  std::vector<double> sc(n), acc(hd, 0.0);
  double mx = -1e300;
  for (int i = 0; i < n; ++i) {
    const float *k = k_of(i);
    double d = 0;
    for (int c = 0; c < hd; ++c) d += (double)q[c] * k[c];
    sc[i] = d / std::sqrt((double)hd);
    mx = std::max(mx, sc[i]);
  }
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const double e = std::exp(sc[i] - mx);
    sum += e;
    const float *v = v_of(i);
    for (int c = 0; c < hd; ++c) acc[c] += e * v[c];
  }
  for (double &x : acc) x /= sum;
  return acc;
}

inline bool same_bits(const std::vector<std::vector<float>> &a, const std::vector<std::vector<float>> &b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0)
      return false;
  return true;
}

// Mean over (layer, head) of |out - ref| / |ref| (L2 per head row).
inline double rel_error(const std::vector<std::vector<float>> &out, const std::vector<std::vector<float>> &ref, int hd) {
  double s = 0;
  int n = 0;
  for (size_t l = 0; l < out.size(); ++l)
    for (size_t r = 0; r + hd <= out[l].size(); r += hd) {
      double num = 0, den = 0;
      for (int c = 0; c < hd; ++c) {
        const double d = (double)out[l][r + c] - ref[l][r + c];
        num += d * d;
        den += (double)ref[l][r + c] * ref[l][r + c];
      }
      s += std::sqrt(num / std::max(den, 1e-30));
      ++n;
    }
  return n ? s / n : 0.0;
}

using tinygguf::kVocab;
using tinygguf::prompt;
using tinygguf::write_tiny_model;

struct TinyModel : tinygguf::TinyFile {
  explicit TinyModel(int n_layer, const char *tag, uint32_t wseed = 20260101) : TinyFile(n_layer, tag, wseed) {}
  specode_context *context(int policy, int n_ctx, int budget = 0, float ratio = 0.0f) {
    specode_context_params cp = specode_context_default_params();
    cp.n_ctx = n_ctx;
    cp.kv_policy = policy;
    cp.kv_budget = budget;
    cp.kv_budget_ratio = ratio;
    specode_context *ctx = nullptr;
    if (specode_context_init(model, &cp, &ctx) != SPECODE_OK) std::fprintf(stderr, "  init: %s\n", specode_last_error());
    return ctx;
  }
};


inline int32_t argmax(const float *x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace seedtest

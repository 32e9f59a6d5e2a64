// The baseline KV policies (baselines.h) on their own mechanisms:
//   streamingllm — keeps exactly the sinks and the newest window, attends
//                  exactly over them;
//   h2o          — accumulated attention equals the softmax sums, eviction
//                  drops the lowest scores and never the recent window, a
//                  truncate leaves every head the same count;
//   kivi         — codes decode within half a step, the split softmax equals
//                  attention over the decoded rows + the fp16 residual, and
//                  it is close to full on random data;
// and all three give full's bits when nothing is compressed (cache level
// and end to end through the C API on a tiny model).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "baselines.h"
#include "kv_cache.h"
#include "lowbit.h"
#include "quant.h"
#include "specode.h"
#include "testing.h"
#include "tiny_model.h"
#include "threadpool.h"

using namespace specode;

namespace {

// ---- a deterministic token stream of K/V/Q rows ------------------------------

struct Stream {
  KvShape sh;
  uint32_t seed = 1;
  std::set<int> heavy;     // positions whose keys align with every query
  float gain = 1.0f;       // how strongly
  std::vector<float> u;    // [hd] the shared direction (±1)

  Stream(const KvShape &s, uint32_t sd) : sh(s), seed(sd) {
    std::mt19937 rng(seed * 7u + 3u);
    u.resize(sh.head_dim);
    for (float &x : u) x = (rng() & 1) ? 1.0f : -1.0f;
  }
  // K or V (what = 0, 1) rows of one token: [nkv][hd]; Q: [nh][hd] (what = 2).
  std::vector<float> row(int what, int layer, int pos) const {
    const int heads = what == 2 ? sh.n_head : sh.n_head_kv, hd = sh.head_dim;
    std::mt19937 rng(seed * 1000003u + (uint32_t)layer * 7919u + (uint32_t)pos * 31u + (uint32_t)what);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> r((size_t)heads * hd);
    for (int h = 0; h < heads; ++h)
      for (int d = 0; d < hd; ++d) {
        float x = nd(rng);
        if (what == 0 && heavy.count(pos)) x = gain * u[d] + 0.1f * x;
        if (what == 2 && !heavy.empty()) x = 0.5f * x + 0.5f * u[d];
        // fp16-representable K/V, so a double reference sees what the cache holds.
        r[(size_t)h * hd + d] = what == 2 ? x : fp16_to_fp32(fp32_to_fp16(x));
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

// One forward pass's KV traffic: begin_pass, store + attend per layer, end_pass.
// Returns the attention outputs [layer][n][nh*hd].
std::vector<std::vector<float>> run_pass(KvCache &kv, ThreadPool &pool, const Stream &s, int pos0, int n, bool decode) {
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

// Double-precision attention of the query of (layer, token pos, head h) over
// the K/V rows of the given positions (rows from the stream, or from `k_of`).
template <typename KOf, typename VOf>
std::vector<double> ref_attend(const Stream &s, int layer, int pos, int h, const std::vector<int> &positions, KOf k_of,
                               VOf v_of) {
  const int hd = s.sh.head_dim, G = s.sh.n_head / s.sh.n_head_kv, g = h / G;
  auto q = s.row(2, layer, pos);
  std::vector<double> sc(positions.size()), acc(hd, 0.0);
  double mx = -1e300;
  for (size_t i = 0; i < positions.size(); ++i) {
    const float *k = k_of(g, positions[i]);
    double d = 0;
    for (int c = 0; c < hd; ++c) d += (double)q[(size_t)h * hd + c] * k[c];
    sc[i] = d / std::sqrt((double)hd);
    mx = std::max(mx, sc[i]);
  }
  double sum = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    const double e = std::exp(sc[i] - mx);
    sum += e;
    const float *v = v_of(g, positions[i]);
    for (int c = 0; c < hd; ++c) acc[c] += e * v[c];
  }
  for (double &x : acc) x /= sum;
  return acc;
}

// Max |out - reference| over every (layer, token, head) of a pass whose token
// t attends `held` plus the pass's tokens pos0..pos0+t, rows from the stream.
double pass_error(const Stream &s, const std::vector<std::vector<float>> &outs, int pos0, int n,
                  const std::vector<std::vector<int>> &held /* [layer * nkv + g] */) {
  const int hd = s.sh.head_dim, nh = s.sh.n_head, G = nh / s.sh.n_head_kv;
  double worst = 0;
  for (int l = 0; l < s.sh.n_layer; ++l)
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < nh; ++h) {
        const int g = h / G;
        std::vector<int> pos = held[(size_t)l * s.sh.n_head_kv + g];
        for (int i = 0; i <= t; ++i) pos.push_back(pos0 + i);
        std::vector<std::vector<float>> ks, vs;  // the rows of this KV head, in `pos` order
        for (int p : pos) {
          auto kr = s.row(0, l, p), vr = s.row(1, l, p);
          ks.emplace_back(kr.begin() + (size_t)g * hd, kr.begin() + (size_t)(g + 1) * hd);
          vs.emplace_back(vr.begin() + (size_t)g * hd, vr.begin() + (size_t)(g + 1) * hd);
        }
        std::vector<int> idx(pos.size());
        for (size_t i = 0; i < idx.size(); ++i) idx[i] = (int)i;
        auto ref = ref_attend(
            s, l, pos0 + t, h, idx, [&](int, int i) { return ks[i].data(); }, [&](int, int i) { return vs[i].data(); });
        const float *o = &outs[l][((size_t)t * nh + h) * hd];
        for (int c = 0; c < hd; ++c) worst = std::max(worst, std::fabs((double)o[c] - ref[c]));
      }
  return worst;
}

std::vector<std::vector<int>> held_of(const EvictingKvCache &kv, const KvShape &sh) {
  std::vector<std::vector<int>> out;
  for (int l = 0; l < sh.n_layer; ++l)
    for (int g = 0; g < sh.n_head_kv; ++g) {
      auto p = kv.held_positions(l, g);
      out.emplace_back(p.begin(), p.end());
    }
  return out;
}

bool same_bits(const std::vector<std::vector<float>> &a, const std::vector<std::vector<float>> &b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0)
      return false;
  return true;
}

const KvShape kShape{2, 4, 2, 64, 1024};  // 2 layers, GQA 4:2, head_dim 64

}  // namespace

// ---- streamingllm -----------------------------------------------------------

// The KIVI tests compare with attention over the decoded rows at 1e-4: keep
// the low-bit kernels in fp32 (the bf16 ones are bounded in test_lowbit.cpp).
struct Fp32Lowbit {
  Fp32Lowbit() { specode::lowbit_force_fp32(true); }
  ~Fp32Lowbit() { specode::lowbit_force_fp32(false); }
};

TEST(baselines_streamingllm_keeps_sinks_and_window) {
  ThreadPool pool(2);
  Stream s(kShape, 11);
  BaselineKvConfig cfg;
  cfg.policy = kKvStreamingLlm;
  cfg.budget = 24;
  cfg.sinks = 4;
  EvictingKvCache kv(kShape, cfg);
  CHECK(std::string(kv.policy()) == "streamingllm");
  // Prefill 100 tokens in chunks: exact, nothing evicted yet.
  int pos = 0;
  for (int chunk : {40, 40, 20}) {
    std::vector<std::vector<int>> before = held_of(kv, kShape);
    auto outs = run_pass(kv, pool, s, pos, chunk, false);
    CHECK(pass_error(s, outs, pos, chunk, before) < 1e-4);
    pos += chunk;
  }
  CHECK(kv.held() == 100);
  for (int step = 0; step < 12; ++step, ++pos) {
    // Before the step the cache is compressed to the budget: sinks + newest.
    auto outs = run_pass(kv, pool, s, pos, 1, true);
    // The token attended sinks 0..3 and the window of the 20 tokens before it.
    std::vector<int> expect_before = {0, 1, 2, 3};
    for (int p = pos - 20; p < pos; ++p) expect_before.push_back(p);
    std::vector<std::vector<int>> held(kShape.n_layer * kShape.n_head_kv, expect_before);
    const double err = pass_error(s, outs, pos, 1, held);
    CHECK(err < 1e-4);
    // After the step: exactly sinks + the newest 20 (the step's token included).
    std::vector<int32_t> expect = {0, 1, 2, 3};
    for (int p = pos - 19; p <= pos; ++p) expect.push_back(p);
    for (int l = 0; l < kShape.n_layer; ++l)
      for (int g = 0; g < kShape.n_head_kv; ++g) CHECK(kv.held_positions(l, g) == expect);
    CHECK(kv.held() == 24);
  }
  KvMetrics m;
  kv.metrics(&m);
  CHECK(m.device_full_bytes == (uint64_t)kShape.n_layer * kShape.n_head_kv * 24 * kShape.head_dim * 2 * 2);
  CHECK(m.device_lowbit_bytes == 0 && m.device_residual_bytes == 0);
  // Truncate: positions >= n_keep go, the sinks stay; the counts stay equal.
  kv.truncate(pos - 5);
  std::vector<int32_t> expect = {0, 1, 2, 3};
  for (int p = pos - 20; p < pos - 5; ++p) expect.push_back(p);
  for (int l = 0; l < kShape.n_layer; ++l)
    for (int g = 0; g < kShape.n_head_kv; ++g) CHECK(kv.held_positions(l, g) == expect);
}

TEST(baselines_streamingllm_ratio_budget) {
  BaselineKvConfig cfg;
  cfg.policy = kKvStreamingLlm;
  cfg.budget_ratio = 0.2f;
  EvictingKvCache kv(kShape, cfg);
  CHECK(kv.budget_for(1000) == 200);  // no float round-up to 201
  CHECK(kv.budget_for(1001) == 201);
  CHECK(kv.budget_for(10) == 5);      // at least sinks + 1
  cfg.policy = kKvH2O;
  EvictingKvCache h2o(kShape, cfg);
  CHECK(h2o.budget_for(10) == 2);
  CHECK(h2o.budget_for(1) == 1);
}

// ---- h2o --------------------------------------------------------------------

TEST(baselines_h2o_scores_are_accumulated_softmax) {
  ThreadPool pool(2);
  const KvShape sh{1, 4, 2, 64, 256};
  Stream s(sh, 5);
  BaselineKvConfig cfg;
  cfg.policy = kKvH2O;
  cfg.budget = 256;
  EvictingKvCache kv(sh, cfg);
  const int n = 70;
  run_pass(kv, pool, s, 0, 50, false);
  run_pass(kv, pool, s, 50, 20, false);
  const int G = sh.n_head / sh.n_head_kv, hd = sh.head_dim;
  double worst = 0;
  for (int g = 0; g < sh.n_head_kv; ++g) {
    std::vector<double> ref(n, 0.0);
    for (int t = 0; t < n; ++t)
      for (int hq = 0; hq < G; ++hq) {
        auto q = s.row(2, 0, t);
        std::vector<double> sc(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          auto k = s.row(0, 0, j);
          double d = 0;
          for (int c = 0; c < hd; ++c) d += (double)q[(size_t)(g * G + hq) * hd + c] * k[(size_t)g * hd + c];
          sc[j] = d / std::sqrt((double)hd);
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (int j = 0; j <= t; ++j) sum += std::exp(sc[j] - mx);
        for (int j = 0; j <= t; ++j) ref[j] += std::exp(sc[j] - mx) / sum;
      }
    double total = 0;
    for (int j = 0; j < n; ++j) {
      const float got = kv.score_of(0, g, j);
      total += got;
      worst = std::max(worst, std::fabs(got - ref[j]) / std::max(1.0, ref[j]));
    }
    CHECK_NEAR(total, (double)n * G, 1e-3 * n * G);  // every query row's probabilities sum to 1
  }
  CHECK(worst < 1e-4);
}

TEST(baselines_h2o_evicts_lowest_scores_never_the_recent_window) {
  ThreadPool pool(2);
  Stream s(kShape, 21);
  // Planted heavy hitters: their keys align with every query.
  for (int p : {3, 17, 40, 41, 77, 90, 123}) s.heavy.insert(p);
  BaselineKvConfig cfg;
  cfg.policy = kKvH2O;
  cfg.budget = 32;  // 16 heavy + 16 recent
  EvictingKvCache kv(kShape, cfg);
  const int n_prompt = 200;
  for (int pos = 0; pos < n_prompt; pos += 64) run_pass(kv, pool, s, pos, std::min(64, n_prompt - pos), false);
  CHECK(kv.held() == n_prompt);
  // Scores before the first generation step compresses the cache.
  std::vector<std::vector<float>> score(kShape.n_layer * kShape.n_head_kv);
  for (int l = 0; l < kShape.n_layer; ++l)
    for (int g = 0; g < kShape.n_head_kv; ++g)
      for (int p = 0; p < n_prompt; ++p) score[l * kShape.n_head_kv + g].push_back(kv.score_of(l, g, p));
  kv.compress(32);
  for (int l = 0; l < kShape.n_layer; ++l)
    for (int g = 0; g < kShape.n_head_kv; ++g) {
      const auto held = kv.held_positions(l, g);
      CHECK(held.size() == 32);
      std::set<int> hs(held.begin(), held.end());
      for (int p = n_prompt - 16; p < n_prompt; ++p) CHECK(hs.count(p) == 1);  // the recent window
      for (int p : s.heavy) CHECK(hs.count(p) == 1);                          // the planted hitters
      // The kept older rows are exactly the 16 best-scored of the older rows.
      const auto &sc = score[l * kShape.n_head_kv + g];
      std::vector<int> older(n_prompt - 16);
      for (int p = 0; p < n_prompt - 16; ++p) older[p] = p;
      std::stable_sort(older.begin(), older.end(), [&](int a, int b) { return sc[a] > sc[b]; });
      std::set<int> best(older.begin(), older.begin() + 16);
      for (int p = 0; p < n_prompt - 16; ++p) CHECK((hs.count(p) == 1) == (best.count(p) == 1));
    }
  // Generation: every step keeps the budget and never evicts its 16 newest.
  int pos = n_prompt;
  for (int step = 0; step < 40; ++step, ++pos) {
    const auto before = held_of(kv, kShape);
    auto outs = run_pass(kv, pool, s, pos, 1, true);
    CHECK(pass_error(s, outs, pos, 1, before) < 1e-4);  // exact attention over the held rows
    CHECK(kv.held() == 32);
    for (int l = 0; l < kShape.n_layer; ++l)
      for (int g = 0; g < kShape.n_head_kv; ++g) {
        const auto held = kv.held_positions(l, g);
        std::set<int> hs(held.begin(), held.end());
        for (int p = pos - 15; p <= pos; ++p) CHECK(hs.count(p) == 1);
        for (int p : s.heavy) CHECK(hs.count(p) == 1);
      }
  }
  // Heads choose on their own scores: the sets may differ, the counts may not.
  kv.truncate(pos - 10);
  const int c = kv.held();
  for (int l = 0; l < kShape.n_layer; ++l)
    for (int g = 0; g < kShape.n_head_kv; ++g) {
      const auto held = kv.held_positions(l, g);
      CHECK((int)held.size() == c);
      CHECK(held.empty() || held.back() < pos - 10);
    }
  const auto before = held_of(kv, kShape);
  auto outs = run_pass(kv, pool, s, pos - 10, 3, false);
  CHECK(pass_error(s, outs, pos - 10, 3, before) < 1e-4);
}

TEST(baselines_evicting_equal_full_when_budget_covers_context) {
  ThreadPool pool(2);
  const KvShape sh{2, 4, 2, 64, 600};
  Stream s(sh, 31);
  for (KvPolicy pol : {kKvStreamingLlm, kKvH2O}) {
    for (int variant = 0; variant < 2; ++variant) {
      BaselineKvConfig cfg;
      cfg.policy = pol;
      if (variant == 0) cfg.budget = sh.n_ctx;  // a budget above the context
      else cfg.budget_ratio = 1.0f;             // or all of it
      EvictingKvCache kv(sh, cfg);
      FullKvCache full(sh, true, 2);
      int pos = 0;
      bool same = true;
      for (int chunk : {256, 200, 1, 1, 1}) {
        const bool decode = chunk == 1;
        same = same && same_bits(run_pass(kv, pool, s, pos, chunk, decode), run_pass(full, pool, s, pos, chunk, decode));
        pos += chunk;
      }
      for (int step = 0; step < 30; ++step, ++pos)
        same = same && same_bits(run_pass(kv, pool, s, pos, 1, true), run_pass(full, pool, s, pos, 1, true));
      CHECK(same);
      CHECK(kv.held() == pos);
    }
  }
}

// ---- kivi -------------------------------------------------------------------

TEST(baselines_kivi_equals_full_while_everything_is_residual) {
  ThreadPool pool(2);
  const KvShape sh{2, 4, 2, 64, 512};
  Stream s(sh, 41);
  BaselineKvConfig cfg;
  cfg.policy = kKvKivi;
  KiviKvCache kv(sh, cfg);  // R = 128
  FullKvCache full(sh, true, 2);
  CHECK(same_bits(run_pass(kv, pool, s, 0, 100, false), run_pass(full, pool, s, 0, 100, false)));
  int pos = 100;
  bool same = true;
  for (; pos < 128; ++pos) same = same && same_bits(run_pass(kv, pool, s, pos, 1, true), run_pass(full, pool, s, pos, 1, true));
  CHECK(same);
  CHECK(kv.n_lowbit() == 0);
  // The step with 128 tokens held quantizes them: 1 token left in fp16.
  run_pass(kv, pool, s, pos++, 1, true);
  CHECK(kv.n_lowbit() == 128);
  KvMetrics m;
  kv.metrics(&m);
  CHECK(m.n_lowbit_tokens == 128 && m.n_residual_tokens == 1);
  CHECK(m.device_residual_bytes == (uint64_t)sh.n_layer * sh.n_head_kv * 128 * sh.head_dim * 2 * 2);
  CHECK(m.device_lowbit_bytes == (uint64_t)sh.n_layer * sh.n_head_kv * LowbitStream::bytes_for({64, 2, 64}, 128));
}

TEST(baselines_kivi_dequant_error_and_split_softmax) {
  const Fp32Lowbit exact_kernels;
  ThreadPool pool(2);
  const KvShape sh{2, 4, 2, 64, 1024};
  const int hd = sh.head_dim, nh = sh.n_head;
  Stream s(sh, 51);
  // A few keys every query attends to (as real attention is peaked), so the
  // output is not an average of hundreds of random values near zero.
  for (int p : {5, 100, 300, 450, 600, 650, 690, 701}) s.heavy.insert(p);
  s.gain = 1.5f;
  double rel_by_bits[2] = {0, 0};
  for (int bits : {2, 1}) {
    BaselineKvConfig cfg;
    cfg.policy = kKvKivi;
    cfg.bits = bits;
    KiviKvCache kv(sh, cfg);
    FullKvCache full(sh, true, 2);
    const int n_prompt = 700;
    for (int pos = 0; pos < n_prompt; pos += 256) {
      const int c = std::min(256, n_prompt - pos);
      CHECK(same_bits(run_pass(kv, pool, s, pos, c, false), run_pass(full, pool, s, pos, c, false)));  // prefill: exact
    }
    CHECK(kv.n_lowbit() == 0);
    double worst_ref = 0, rel_sum = 0;
    int rel_n = 0, pos = n_prompt;
    for (int step = 0; step < 6; ++step, ++pos) {
      auto outs = run_pass(kv, pool, s, pos, 1, true);
      auto fo = run_pass(full, pool, s, pos, 1, true);
      const int L = kv.n_lowbit();
      CHECK(L == pos / 128 * 128);  // 640: the newest 1..128 tokens stay fp16
      for (int l = 0; l < sh.n_layer; ++l) {
        std::vector<std::vector<float>> K(pos + 1), V(pos + 1);  // the stream's rows [nkv][hd] by position
        for (int p = 0; p <= pos; ++p) K[p] = s.row(0, l, p), V[p] = s.row(1, l, p);
        // Decoded low-bit rows, per KV head.
        std::vector<std::vector<float>> dk(sh.n_head_kv, std::vector<float>((size_t)L * hd)), dv = dk;
        for (int g = 0; g < sh.n_head_kv; ++g) kv.stream(l, g).dequantize(0, L, dk[g].data(), dv[g].data());
        if (step == 0) {
          // Dequantization error: at most half a step of each group (+ fp16 rounding of scale/zero).
          const int levels = bits == 2 ? 3 : 2;
          double worst_k = 0, worst_v = 0;
          for (int g = 0; g < sh.n_head_kv; ++g) {
            for (int grp = 0; grp < L / 64; ++grp)
              for (int c = 0; c < hd; ++c) {
                float mn = 1e30f, mx = -1e30f;
                for (int j = grp * 64; j < grp * 64 + 64; ++j) {
                  const float x = K[j][(size_t)g * hd + c];
                  mn = std::min(mn, x), mx = std::max(mx, x);
                }
                // 2-bit: levels at min + step·{0..3}, error <= step/2; 1-bit: quartiles, error <= range/4.
                const double bound = (bits == 2 ? (mx - mn) / levels / 2 : (mx - mn) / 4) * 1.01 + 5e-3;
                for (int j = grp * 64; j < grp * 64 + 64; ++j) {
                  const double e = std::fabs(dk[g][(size_t)j * hd + c] - K[j][(size_t)g * hd + c]);
                  worst_k = std::max(worst_k, e / bound);
                }
              }
            for (int j = 0; j < L; ++j) {
              const auto &vr = V[j];
              float mn = 1e30f, mx = -1e30f;
              for (int c = 0; c < hd; ++c) mn = std::min(mn, vr[(size_t)g * hd + c]), mx = std::max(mx, vr[(size_t)g * hd + c]);
              const double bound = (bits == 2 ? (mx - mn) / levels / 2 : (mx - mn) / 4) * 1.01 + 5e-3;
              for (int c = 0; c < hd; ++c)
                worst_v = std::max(worst_v, std::fabs(dv[g][(size_t)j * hd + c] - vr[(size_t)g * hd + c]) / bound);
            }
          }
          CHECK(worst_k <= 1.0);
          CHECK(worst_v <= 1.0);
        }
        // The split softmax equals attention over decoded rows + fp16 rows.
        for (int h = 0; h < nh; ++h) {
          std::vector<int> positions(pos + 1);
          for (int p = 0; p <= pos; ++p) positions[p] = p;
          auto k_of = [&](int g, int p) -> const float * {
            return p < L ? &dk[g][(size_t)p * hd] : &K[p][(size_t)g * hd];
          };
          auto v_of = [&](int g, int p) -> const float * {
            return p < L ? &dv[g][(size_t)p * hd] : &V[p][(size_t)g * hd];
          };
          auto ref = ref_attend(s, l, pos, h, positions, k_of, v_of);
          const float *o = &outs[l][(size_t)h * hd], *f = &fo[l][(size_t)h * hd];
          double num = 0, den = 0;
          for (int c = 0; c < hd; ++c) {
            worst_ref = std::max(worst_ref, std::fabs((double)o[c] - ref[c]));
            num += ((double)o[c] - f[c]) * ((double)o[c] - f[c]);
            den += (double)f[c] * f[c];
          }
          rel_sum += std::sqrt(num / den);
          ++rel_n;
        }
      }
    }
    std::fprintf(stderr, "  kivi %d-bit @%d tokens: |out - ref(decoded)| <= %.2e, mean |out - full| / |full| = %.3f\n",
                 bits, pos, worst_ref, rel_sum / rel_n);
    CHECK(worst_ref < 1e-4);
    rel_by_bits[bits - 1] = rel_sum / rel_n;
  }
  // On iid Gaussian rows a 2-bit code keeps about half of each value's
  // precision (the step is ~1.6 sigma), so the output is off by ~45% of its
  // norm at 2 bits and ~65% at 1 bit (zero output would be 100%); the exact
  // check above (against the decoded rows) is the tight one.
  CHECK(rel_by_bits[1] < 0.55);
  CHECK(rel_by_bits[0] < 0.8);
  CHECK(rel_by_bits[1] < rel_by_bits[0]);
}

TEST(baselines_kivi_long_context_split_over_threads) {
  const Fp32Lowbit exact_kernels;
  // 2.4k tokens of codes split into chunks across 4 threads, merged by
  // log-sum-exp: the same as attention over the decoded rows, for any pool.
  const KvShape sh{1, 4, 2, 64, 2600};
  const int hd = sh.head_dim;
  Stream s(sh, 71);
  for (int p : {10, 900, 1800, 2450}) s.heavy.insert(p);
  std::vector<std::vector<float>> outs_by_pool;
  for (int threads : {1, 4}) {
    ThreadPool pool(threads);
    BaselineKvConfig cfg;
    cfg.policy = kKvKivi;
    KiviKvCache kv(sh, cfg);
    for (int pos = 0; pos < 2500; pos += 256) run_pass(kv, pool, s, pos, std::min(256, 2500 - pos), false);
    auto outs = run_pass(kv, pool, s, 2500, 1, true);
    const int L = kv.n_lowbit();
    CHECK(L == 2432);
    std::vector<std::vector<float>> dk(2, std::vector<float>((size_t)L * hd)), dv = dk;
    for (int g = 0; g < 2; ++g) kv.stream(0, g).dequantize(0, L, dk[g].data(), dv[g].data());
    std::vector<std::vector<float>> K(2501), V(2501);
    for (int p = L; p <= 2500; ++p) K[p] = s.row(0, 0, p), V[p] = s.row(1, 0, p);
    std::vector<int> positions(2501);
    for (int p = 0; p <= 2500; ++p) positions[p] = p;
    double worst = 0;
    for (int h = 0; h < sh.n_head; ++h) {
      auto ref = ref_attend(
          s, 0, 2500, h, positions,
          [&](int g, int p) -> const float * { return p < L ? &dk[g][(size_t)p * hd] : &K[p][(size_t)g * hd]; },
          [&](int g, int p) -> const float * { return p < L ? &dv[g][(size_t)p * hd] : &V[p][(size_t)g * hd]; });
      for (int c = 0; c < hd; ++c) worst = std::max(worst, std::fabs((double)outs[0][(size_t)h * hd + c] - ref[c]));
    }
    CHECK(worst < 1e-4);
    outs_by_pool.push_back(outs[0]);
  }
  double d = 0;
  for (size_t i = 0; i < outs_by_pool[0].size(); ++i) d = std::max(d, (double)std::fabs(outs_by_pool[0][i] - outs_by_pool[1][i]));
  CHECK(d < 1e-5);  // chunking differs with the pool; only rounding may
}

TEST(baselines_kivi_truncate_into_the_codes) {
  const Fp32Lowbit exact_kernels;
  ThreadPool pool(2);
  const KvShape sh{1, 4, 2, 64, 1024};
  const int hd = sh.head_dim;
  Stream s(sh, 61);
  BaselineKvConfig cfg;
  cfg.policy = kKvKivi;
  KiviKvCache kv(sh, cfg);
  run_pass(kv, pool, s, 0, 400, false);
  run_pass(kv, pool, s, 400, 1, true);
  CHECK(kv.n_lowbit() == 384);
  // Decoded rows of [320, 384) before the cut.
  std::vector<std::vector<float>> dk(2, std::vector<float>(64 * hd)), dv = dk;
  for (int g = 0; g < 2; ++g) kv.stream(0, g).dequantize(320, 384, dk[g].data(), dv[g].data());
  kv.truncate(350);  // inside the group [320, 384)
  CHECK(kv.n_lowbit() == 320);
  KvMetrics m;
  kv.metrics(&m);
  CHECK(m.n_tokens == 350 && m.n_lowbit_tokens == 320 && m.n_residual_tokens == 30);
  // A prefill after the cut attends codes [0, 320) + the decoded-then-fp16 rows [320, 350) + itself.
  auto outs = run_pass(kv, pool, s, 350, 2, false);
  std::vector<std::vector<float>> ak(2, std::vector<float>(320 * hd)), av = ak;
  for (int g = 0; g < 2; ++g) kv.stream(0, g).dequantize(0, 320, ak[g].data(), av[g].data());
  double worst = 0;
  for (int t = 0; t < 2; ++t)
    for (int h = 0; h < sh.n_head; ++h) {
      std::vector<int> positions(350 + t + 1);
      for (size_t p = 0; p < positions.size(); ++p) positions[p] = (int)p;
      std::vector<float> kr, vr;
      std::vector<float> k16(hd), v16(hd);
      auto k_of = [&](int g, int p) -> const float * {
        if (p < 320) return &ak[g][(size_t)p * hd];
        if (p < 350) {  // fp16 of the decoded value
          for (int c = 0; c < hd; ++c) k16[c] = fp16_to_fp32(fp32_to_fp16(dk[g][(size_t)(p - 320) * hd + c]));
          return k16.data();
        }
        kr = s.row(0, 0, p);
        return &kr[(size_t)g * hd];
      };
      auto v_of = [&](int g, int p) -> const float * {
        if (p < 320) return &av[g][(size_t)p * hd];
        if (p < 350) {
          for (int c = 0; c < hd; ++c) v16[c] = fp16_to_fp32(fp32_to_fp16(dv[g][(size_t)(p - 320) * hd + c]));
          return v16.data();
        }
        vr = s.row(1, 0, p);
        return &vr[(size_t)g * hd];
      };
      auto ref = ref_attend(s, 0, 350 + t, h, positions, k_of, v_of);
      for (int c = 0; c < hd; ++c)
        worst = std::max(worst, std::fabs((double)outs[0][((size_t)t * sh.n_head + h) * hd + c] - ref[c]));
    }
  CHECK(worst < 1e-4);
}

// ---- end to end through the C API ------------------------------------------

namespace {

using tinygguf::kVocab;
using tinygguf::prompt;

struct TinyModel : tinygguf::TinyFile {
  TinyModel() : TinyFile(2, "baselines") {}
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


int32_t argmax(const float *x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace

TEST(baselines_engine_equal_full_when_nothing_is_compressed) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_ctx = 256, n_prompt = 100, n_steps = 24;  // 124 tokens: within kivi's residual of 128
  auto toks = prompt(n_prompt, 3);
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, n_ctx);
  std::vector<specode_context *> others = {
      tm.context(SPECODE_KV_POLICY_STREAMINGLLM, n_ctx, n_ctx), tm.context(SPECODE_KV_POLICY_H2O, n_ctx, n_ctx),
      tm.context(SPECODE_KV_POLICY_H2O, n_ctx, 0, 1.0f), tm.context(SPECODE_KV_POLICY_KIVI, n_ctx)};
  std::vector<float> lf(kVocab), lo(kVocab);
  CHECK(specode_decode(full, toks.data(), n_prompt, 0, lf.data()) == SPECODE_OK);
  std::vector<std::vector<float>> last(others.size(), std::vector<float>(kVocab));
  for (size_t i = 0; i < others.size(); ++i) {
    CHECK(others[i] != nullptr);
    if (!others[i]) return;
    CHECK(specode_decode(others[i], toks.data(), n_prompt, 0, last[i].data()) == SPECODE_OK);
    CHECK(std::memcmp(last[i].data(), lf.data(), kVocab * sizeof(float)) == 0);
  }
  bool same = true;
  for (int step = 0; step < n_steps; ++step) {
    const int32_t tok = argmax(lf.data(), kVocab);
    CHECK(specode_decode(full, &tok, 1, 0, lf.data()) == SPECODE_OK);
    for (size_t i = 0; i < others.size(); ++i) {
      int32_t spec = 7;
      CHECK(specode_decode_spec(others[i], tok, lo.data(), &spec) == SPECODE_OK);  // a plain step
      CHECK(spec == -1);
      same = same && std::memcmp(lo.data(), lf.data(), kVocab * sizeof(float)) == 0;
    }
  }
  CHECK(same);
  const char *names[] = {"streamingllm", "h2o", "h2o", "kivi"};
  for (size_t i = 0; i < others.size(); ++i) {
    specode_kv_metrics m;
    CHECK(specode_context_metrics(others[i], &m) == SPECODE_OK);
    CHECK(std::string(m.policy) == names[i]);
    CHECK(m.n_tokens == (uint64_t)(n_prompt + n_steps));
    CHECK(m.device_kv_bytes >= m.fp16_kv_bytes);  // nothing compressed
    specode_context_free(others[i]);
  }
  specode_context_free(full);
}

TEST(baselines_engine_compress_to_budget) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_ctx = 1024, n_prompt = 700, n_steps = 16;
  auto toks = prompt(n_prompt, 9);
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, n_ctx);
  specode_context *sl = tm.context(SPECODE_KV_POLICY_STREAMINGLLM, n_ctx);  // 20%, 4 sinks
  specode_context *h2o = tm.context(SPECODE_KV_POLICY_H2O, n_ctx);          // 20%
  specode_context *kivi = tm.context(SPECODE_KV_POLICY_KIVI, n_ctx);        // 2-bit, g 64, R 128
  std::vector<specode_context *> all = {full, sl, h2o, kivi};
  std::vector<std::vector<float>> lg(all.size(), std::vector<float>(kVocab));
  for (size_t i = 0; i < all.size(); ++i) CHECK(specode_decode(all[i], toks.data(), n_prompt, 0, lg[i].data()) == SPECODE_OK);
  std::vector<int> agree(all.size(), 0);
  for (int step = 0; step < n_steps; ++step) {
    const int32_t tok = argmax(lg[0].data(), kVocab);
    for (size_t i = 1; i < all.size(); ++i) agree[i] += argmax(lg[i].data(), kVocab) == tok ? 1 : 0;
    for (size_t i = 0; i < all.size(); ++i) CHECK(specode_decode(all[i], &tok, 1, 0, lg[i].data()) == SPECODE_OK);
    for (size_t i = 1; i < all.size(); ++i)
      for (float x : lg[i]) CHECK(std::isfinite(x));
  }
  const uint64_t row = 64 * 2 * 2, LH = 2 * 2;  // fp16 K+V bytes of one token per (layer, KV head)
  const int n = n_prompt + n_steps;
  specode_kv_metrics m;
  specode_context_metrics(sl, &m);
  CHECK(m.device_full_bytes == LH * row * (uint64_t)std::ceil(0.2 * n - 1e-4));
  CHECK(m.compression_ratio > 4.5);
  std::fprintf(stderr, "  streamingllm @%d: 1/%.2f of fp16, greedy agreement with full %d/%d\n", n,
               m.compression_ratio, agree[1], n_steps);
  specode_context_metrics(h2o, &m);
  CHECK(m.device_full_bytes == LH * row * (uint64_t)std::ceil(0.2 * n - 1e-4));
  std::fprintf(stderr, "  h2o @%d: 1/%.2f of fp16, greedy agreement with full %d/%d\n", n, m.compression_ratio,
               agree[2], n_steps);
  specode_context_metrics(kivi, &m);
  CHECK(std::string(m.policy) == "kivi");
  CHECK(m.n_lowbit_tokens == 640 && m.n_residual_tokens == (uint64_t)(n - 640));
  CHECK(m.device_full_bytes == 0 && m.device_lowbit_bytes > 0);
  CHECK(m.compression_ratio > 3.0);
  std::fprintf(stderr, "  kivi @%d: 1/%.2f of fp16, greedy agreement with full %d/%d\n", n, m.compression_ratio,
               agree[3], n_steps);
  CHECK(agree[3] >= n_steps / 2);  // 2-bit codes + residual stay close on this model
  // Rewind and continue: counts stay consistent.
  for (size_t i = 1; i < all.size(); ++i) {
    CHECK(specode_context_truncate(all[i], 650) == SPECODE_OK);
    const int32_t more[3] = {1, 2, 3};
    CHECK(specode_decode(all[i], more, 3, 0, lg[i].data()) == SPECODE_OK);
    int32_t tok = 5;
    CHECK(specode_decode(all[i], &tok, 1, 0, lg[i].data()) == SPECODE_OK);
    for (float x : lg[i]) CHECK(std::isfinite(x));
    CHECK(specode_context_n_past(all[i]) == 654);
  }
  for (auto *c : all) specode_context_free(c);
}

TEST(baselines_engine_rejects_bad_parameters) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  specode_context_params cp = specode_context_default_params();
  CHECK(cp.kv_sinks == 4 && cp.kv_budget == 0 && cp.kv_residual == 0);
  cp.n_ctx = 128;
  specode_context *ctx = nullptr;
  cp.kv_policy = 99;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_policy = SPECODE_KV_POLICY_STREAMINGLLM;
  cp.kv_budget = 4;  // no room for a window after 4 sinks
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  CHECK(std::string(specode_last_error()).find("kv_sinks") != std::string::npos);
  cp.kv_budget = 0;
  cp.kv_budget_ratio = 1.5f;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_policy = SPECODE_KV_POLICY_H2O;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  CHECK(std::string(specode_last_error()).find("kv_budget_ratio") != std::string::npos);
  cp.kv_budget_ratio = 0.1f;
  cp.kv_budget = -1;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_budget = 0;
  cp.kv_policy = SPECODE_KV_POLICY_KIVI;
  cp.kv_residual = 96;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_residual = 0;
  cp.kv_bits = 3;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_bits = 2;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_OK);
  specode_context_free(ctx);
  ctx = nullptr;
  cp.kv_policy = SPECODE_KV_POLICY_H2O;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_OK);
  specode_context_free(ctx);
}

// GEAR (gear.h) on its own mechanism: the power iteration finds a low-rank
// matrix; on K/V with real caches' structure (outlier channels, a smooth
// low-rank part, sparse outliers) the reconstruction S + Q + L is closer to
// the rows than plain 2-bit KIVI, and each term helps; attention is closer to
// full than KIVI's; full's bits while nothing is compressed; the buffer is
// recompressed every 64 tokens with the decode rank; truncate and read().
#include <cmath>
#include <cstdio>
#include <vector>

#include "baselines.h"
#include "gear.h"
#include "seed_testing.h"

using namespace specode;
using namespace seedtest;

namespace {

const KvShape kGearShape{2, 4, 2, 64, 1024};

double frob(const std::vector<float> &a, const std::vector<float> &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
  return std::sqrt(s);
}

SeedKvConfig gear_cfg() {
  SeedKvConfig c;
  c.policy = kKvGear;
  return c;
}

}  // namespace

TEST(gear_low_rank_power_iteration) {
  // R = a rank-3 matrix + small noise: rank 4, 3 iterations recover it.
  const int n = 300, cols = 64;
  std::vector<float> R((size_t)n * cols);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < cols; ++c) {
      float x = 0;
      for (int r = 0; r < 3; ++r) x += (float)(std::sin(0.05 * (r + 1) * i + r) * std::cos(0.3 * (r + 2) * c)) * (3 - r);
      R[(size_t)i * cols + c] = x + 1e-3f * Stream::hnorm(i * 1000 + c);
    }
  std::vector<float> A, B;
  gear_low_rank(R.data(), n, cols, 4, 3, &A, &B);
  std::vector<float> L((size_t)n * cols, 0.0f);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < cols; ++c)
      for (int r = 0; r < 4; ++r) L[(size_t)i * cols + c] += A[(size_t)i * 4 + r] * B[(size_t)c * 4 + r];
  double nr = 0;
  for (float x : R) nr += (double)x * x;
  const double rel = frob(L, R) / std::sqrt(nr);
  std::fprintf(stderr, "  rank-4 approximation of rank 3 + noise: relative error %.2e\n", rel);
  CHECK(rel < 0.01);
  // A's columns are orthonormal.
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) {
      double d = 0;
      for (int i = 0; i < n; ++i) d += (double)A[(size_t)i * 4 + a] * A[(size_t)i * 4 + b];
      CHECK_NEAR(d, a == b ? 1.0 : 0.0, 1e-3);
    }
  // Rank 2 of a rank-3 matrix: worse, but still better than nothing.
  gear_low_rank(R.data(), n, cols, 2, 3, &A, &B);
  std::vector<float> L2((size_t)n * cols, 0.0f);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < cols; ++c)
      for (int r = 0; r < 2; ++r) L2[(size_t)i * cols + c] += A[(size_t)i * 2 + r] * B[(size_t)c * 2 + r];
  const double rel2 = frob(L2, R) / std::sqrt(nr);
  CHECK(rel2 > rel && rel2 < 0.8);
}

TEST(gear_reconstruction_beats_plain_2bit_kivi) {
  ThreadPool pool(2);
  const KvShape sh = kGearShape;
  const int hd = sh.head_dim, n = 640;
  Stream s(sh, 7);
  GearKvCache gear(sh, gear_cfg());
  for (int pos = 0; pos < n; pos += 128) run_pass(gear, pool, s, pos, 128, false);
  gear.compress_all(n, pool);
  CHECK(gear.n_compressed(0) == n && gear.n_compressed(1) == n);
  double e_gear = 0, e_kivi = 0, e_noL = 0, e_noS = 0, norm = 0;
  for (int l = 0; l < sh.n_layer; ++l)
    for (int g = 0; g < sh.n_head_kv; ++g) {
      std::vector<float> K((size_t)n * hd), V(K.size());
      for (int p = 0; p < n; ++p) {
        auto kr = s.row(0, l, p), vr = s.row(1, l, p);
        std::copy(kr.begin() + g * hd, kr.begin() + (g + 1) * hd, K.begin() + (size_t)p * hd);
        std::copy(vr.begin() + g * hd, vr.begin() + (g + 1) * hd, V.begin() + (size_t)p * hd);
      }
      std::vector<float> gk(K.size()), gv(K.size()), lk(K.size()), lv(K.size());
      gear.reconstruct(l, g, 0, n, gk.data(), gv.data());
      e_gear += std::pow(frob(gk, K), 2) + std::pow(frob(gv, V), 2);
      gear.reconstruct(l, g, 0, n, lk.data(), lv.data(), false, true);
      e_noL += std::pow(frob(lk, K), 2) + std::pow(frob(lv, V), 2);
      gear.reconstruct(l, g, 0, n, lk.data(), lv.data(), true, false);
      e_noS += std::pow(frob(lk, K), 2) + std::pow(frob(lv, V), 2);
      // Plain 2-bit KIVI of the same rows.
      LowbitStream kivi(LowbitConfig{hd, 2, 64});
      kivi.append(K.data(), V.data(), n);
      kivi.dequantize(0, n, lk.data(), lv.data());
      e_kivi += std::pow(frob(lk, K), 2) + std::pow(frob(lv, V), 2);
      for (float x : K) norm += (double)x * x;
      for (float x : V) norm += (double)x * x;
    }
  const double rg = std::sqrt(e_gear / norm), rk = std::sqrt(e_kivi / norm), rl = std::sqrt(e_noL / norm),
               rs = std::sqrt(e_noS / norm);
  std::fprintf(stderr,
               "  relative K/V error @%d tokens: gear %.4f, kivi-2bit %.4f, gear without low-rank %.4f, "
               "without outliers %.4f\n",
               n, rg, rk, rl, rs);
  CHECK(rg < 0.6 * rk);  // outliers out of the groups' ranges + the residual's low-rank part
  CHECK(rg < rl);        // the low-rank term helps
  CHECK(rg < rs);        // the outlier term helps
  // Outliers are exact: the top 2% of entries, per layer, head, K and V.
  const uint64_t bytes = gear.compressed_bytes();
  const uint64_t kivi_bytes = (uint64_t)sh.n_layer * sh.n_head_kv * LowbitStream::bytes_for({hd, 2, 64}, n);
  const uint64_t fp16 = (uint64_t)sh.n_layer * sh.n_head_kv * n * hd * 2 * 2;
  std::fprintf(stderr, "  bytes: gear %llu, kivi %llu, fp16 %llu\n", (unsigned long long)bytes,
               (unsigned long long)kivi_bytes, (unsigned long long)fp16);
  const uint64_t outliers = 2 * (uint64_t)std::ceil(0.02 * n * hd) * sh.n_layer * sh.n_head_kv * 6;
  const uint64_t lowrank = (uint64_t)sh.n_layer * sh.n_head_kv * 2 * (n + hd) * 4 * 2;
  CHECK(bytes == kivi_bytes + outliers + lowrank);
  CHECK(fp16 > 3 * bytes);
}

TEST(gear_attention_close_to_full_and_closer_than_kivi) {
  ThreadPool pool(2);
  const KvShape sh = kGearShape;
  Stream s(sh, 9);
  s.noise = 0.1f;
  for (int p : {5, 77, 200, 333, 480, 590}) s.heavy.insert(p);
  GearKvCache gear(sh, gear_cfg());
  BaselineKvConfig kc;
  kc.policy = kKvKivi;
  kc.residual = 64;  // the same fp16 window as GEAR's buffer
  KiviKvCache kivi(sh, kc);
  FullKvCache full(sh, true, 2);
  const int n_prompt = 600;
  for (int pos = 0; pos < n_prompt; pos += 200) {
    auto a = run_pass(gear, pool, s, pos, 200, false), f = run_pass(full, pool, s, pos, 200, false);
    CHECK(same_bits(a, f));  // prefill: exact
    run_pass(kivi, pool, s, pos, 200, false);
  }
  double eg = 0, ek = 0;
  int pos = n_prompt;
  for (int step = 0; step < 80; ++step, ++pos) {
    auto a = run_pass(gear, pool, s, pos, 1, true), k = run_pass(kivi, pool, s, pos, 1, true),
         f = run_pass(full, pool, s, pos, 1, true);
    eg += rel_error(a, f, sh.head_dim);
    ek += rel_error(k, f, sh.head_dim);
    // Recompression every 64 tokens: 1..64 tokens stay fp16.
    CHECK(gear.n_compressed(0) == pos / 64 * 64);
    for (float x : a[0]) CHECK(std::isfinite(x));
  }
  eg /= 80, ek /= 80;
  std::fprintf(stderr, "  mean |out - full| / |full| over 80 steps: gear %.4f, kivi-2bit %.4f\n", eg, ek);
  // 2-bit codes of rows with this much spread stay coarse (the output follows
  // a few attended rows, so their error does not average out); GEAR's
  // outliers and low-rank term take a large share of KIVI's error off.
  CHECK(eg < 0.4);
  CHECK(eg < 0.7 * ek);
  KvMetrics m;
  gear.metrics(&m);
  CHECK(m.n_tokens == (uint64_t)pos && m.n_lowbit_tokens == (uint64_t)(pos / 64 * 64));
  CHECK(m.device_full_bytes == 0 && m.device_lowbit_bytes == gear.compressed_bytes());
  CHECK(m.device_residual_bytes == (uint64_t)sh.n_layer * sh.n_head_kv * 64 * sh.head_dim * 4);
}

TEST(gear_equals_full_until_compressed_then_truncate) {
  ThreadPool pool(2);
  const KvShape sh = kGearShape;
  Stream s(sh, 13);
  GearKvCache gear(sh, gear_cfg());
  FullKvCache full(sh, true, 2);
  CHECK(same_bits(run_pass(gear, pool, s, 0, 50, false), run_pass(full, pool, s, 0, 50, false)));
  bool same = true;
  int pos = 50;
  for (; pos < 64; ++pos) same = same && same_bits(run_pass(gear, pool, s, pos, 1, true), run_pass(full, pool, s, pos, 1, true));
  CHECK(same);
  CHECK(gear.n_compressed(0) == 0);
  // read(): the fp16 rows are there before compression ...
  std::vector<float> k((size_t)10 * 2 * 64), v(k.size());
  CHECK(gear.read(1, 20, 10, k.data(), v.data()));
  auto want = s.rows(0, 1, 20, 10);
  CHECK(std::memcmp(k.data(), want.data(), k.size() * sizeof(float)) == 0);
  // ... the step holding 64 tokens compresses them (the prompt block, rank 4) ...
  run_pass(gear, pool, s, pos++, 1, true);
  CHECK(gear.n_compressed(0) == 64);
  CHECK(!gear.read(1, 20, 10, k.data(), v.data()));
  CHECK(gear.read(1, 64, 1, k.data(), v.data()));
  for (; pos < 140; ++pos) run_pass(gear, pool, s, pos, 1, true);
  CHECK(gear.n_compressed(0) == 128);  // + one decode block [64, 128), rank 2
  const uint64_t before = gear.compressed_bytes();
  // Truncate inside the decode block: it goes, its kept rows come back in fp16.
  std::vector<float> rk(10 * 64), rv(rk.size());
  gear.reconstruct(0, 1, 90, 100, rk.data(), rv.data());
  gear.truncate(100);
  CHECK(gear.n_compressed(0) == 64 && gear.n_compressed(1) == 64);
  CHECK(gear.compressed_bytes() < before);
  CHECK(gear.read(0, 90, 10, k.data(), v.data()));
  for (int t = 0; t < 10; ++t)
    for (int c = 0; c < 64; ++c) CHECK_NEAR(k[((size_t)t * 2 + 1) * 64 + c], f16r(rk[(size_t)t * 64 + c]), 1e-6);
  // Continue: the next step recompresses [64, 64·floor(N/64)).
  auto out = run_pass(gear, pool, s, 100, 30, false);
  for (float x : out[1]) CHECK(std::isfinite(x));
  run_pass(gear, pool, s, 130, 1, true);
  CHECK(gear.n_compressed(0) == 128);
  gear.truncate(0);
  CHECK(gear.n_compressed(0) == 0 && gear.compressed_bytes() == 0);
}

TEST(gear_engine_policy) {
  TinyModel tm(2, "gear");
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_prompt = 300, steps = 12;
  auto toks = prompt(n_prompt, 5);
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, 512);
  specode_context *gear = tm.context(SPECODE_KV_POLICY_GEAR, 512);
  CHECK(gear != nullptr);
  if (!gear) return;
  std::vector<float> lf(kVocab), lg(kVocab);
  CHECK(specode_decode(full, toks.data(), n_prompt, 0, lf.data()) == SPECODE_OK);
  CHECK(specode_decode(gear, toks.data(), n_prompt, 0, lg.data()) == SPECODE_OK);
  CHECK(std::memcmp(lf.data(), lg.data(), sizeof(float) * kVocab) == 0);
  int agree = 0;
  for (int i = 0; i < steps; ++i) {
    const int32_t tok = argmax(lf.data(), kVocab);
    agree += argmax(lg.data(), kVocab) == tok;
    CHECK(specode_decode(full, &tok, 1, 0, lf.data()) == SPECODE_OK);
    CHECK(specode_decode(gear, &tok, 1, 0, lg.data()) == SPECODE_OK);
  }
  specode_kv_metrics m;
  CHECK(specode_context_metrics(gear, &m) == SPECODE_OK);
  CHECK(std::string(m.policy) == "gear");
  CHECK(m.n_lowbit_tokens == 256 && m.compression_ratio > 2.0);
  std::fprintf(stderr, "  gear @%d: 1/%.2f of fp16, greedy agreement with full %d/%d\n", n_prompt + steps,
               m.compression_ratio, agree, steps);
  CHECK(agree >= steps / 2);
  // Bad parameters.
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = 128;
  cp.kv_policy = SPECODE_KV_POLICY_GEAR;
  cp.kv_residual = 96;
  specode_context *bad = nullptr;
  CHECK(specode_context_init(tm.model, &cp, &bad) == SPECODE_ERR_ARGUMENT);
  specode_context_free(gear);
  specode_context_free(full);
}

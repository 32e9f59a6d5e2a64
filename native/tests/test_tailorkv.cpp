// TailorKV (tailorkv.h) on its own mechanism: the profile's measure and rule
// pick the layers the rule says on inputs whose answer is known; the profile
// is stored per model in the cache directory and read back; a sparse layer's
// step loads the sinks, the recent window and the rows the approximate score
// ranks highest, and attends exactly over them; dense layers hold the 1-bit
// copy; full's bits when the load covers the context.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "context.h"
#include "engine_internal_access.h"
#include "seed_testing.h"
#include "tailorkv.h"

using namespace specode;
using namespace seedtest;

TEST(tailorkv_outside_mass_and_rule) {
  std::vector<float> uni(100, 1.0f);
  CHECK_NEAR(tailorkv_outside_mass(uni.data(), 100), 0.95, 1e-9);  // top 5 of 100
  std::vector<float> peak(100, 1e-4f);
  peak[7] = 1.0f;
  CHECK(tailorkv_outside_mass(peak.data(), 100) < 0.01);
  std::vector<float> p3(10, 0.0f);
  p3[0] = 0.7f, p3[1] = 0.3f;  // top ceil(0.5) = 1 key: 0.3 outside
  CHECK_NEAR(tailorkv_outside_mass(p3.data(), 10), 0.3, 1e-6);
  auto d = tailorkv_dense_layers({0.95f, 0.01f, 0.2f, 0.21f});
  CHECK(d == std::vector<uint8_t>({1, 0, 0, 1}));  // > 0.2, not >=
}

TEST(tailorkv_profile_picks_the_layers_the_rule_says) {
  // Layer 0: zero queries, uniform attention (mass outside the top 5% ~0.95):
  // dense. Layer 1: queries aligned with a few planted keys (peaked): sparse.
  // Layer 2: uniform again: dense.
  ThreadPool pool(2);
  const KvShape sh{3, 4, 2, 64, 512};
  Stream s(sh, 29);
  for (int p : {0, 1, 2}) s.heavy.insert(p);
  s.gain = 6.0f;
  TailorProfileKvCache prof(sh, 63, 1);
  const int n = 400;
  for (int pos = 0; pos < n; pos += 100) {
    std::vector<int32_t> ids(100, 1);
    KvPass p;
    p.pos0 = pos;
    p.n = p.n_keep = 100;
    p.tokens = ids.data();
    prof.begin_pass(p);
    for (int l = 0; l < sh.n_layer; ++l) {
      auto k = s.rows(0, l, pos, 100), v = s.rows(1, l, pos, 100);
      auto q = l == 1 ? s.rows(2, l, pos, 100) : std::vector<float>((size_t)100 * sh.n_head * sh.head_dim, 0.0f);
      prof.store(l, pos, 100, k.data(), v.data());
      std::vector<float> out((size_t)100 * sh.n_head * sh.head_dim);
      prof.attend(l, pos, 100, q.data(), out.data(), pool);
    }
    prof.end_pass();
  }
  const auto mass = prof.outside_mass();
  // Uniform over N keys: 1 - ceil(0.05 N) / N, averaged over N = 64..400.
  double want = 0;
  for (int N = 64; N <= n; ++N) want += 1.0 - std::ceil(0.05 * N - 1e-6) / N;
  want /= (n - 63);
  CHECK_NEAR(mass[0], want, 1e-4);
  CHECK_NEAR(mass[2], want, 1e-4);
  CHECK(mass[1] < 0.2);
  std::fprintf(stderr, "  profile: outside mass %.3f %.3f %.3f\n", mass[0], mass[1], mass[2]);
  CHECK(tailorkv_dense_layers(mass) == std::vector<uint8_t>({1, 0, 1}));
}

namespace {

// The layers' kinds come from cfg.dense_layers.
SeedKvConfig tailor_cfg(std::vector<uint8_t> dense) {
  SeedKvConfig c;
  c.policy = kKvTailorKv;
  c.dense_layers = std::move(dense);
  return c;
}

}  // namespace

TEST(tailorkv_sparse_selection_sinks_recent_and_top) {
  ThreadPool pool(2);
  const KvShape sh{2, 4, 2, 64, 1024};
  const int hd = sh.head_dim, nh = sh.n_head, G = 2;
  Stream s(sh, 31);
  const std::vector<int> planted = {40, 100, 222, 300, 421, 500};
  for (int p : planted) s.heavy.insert(p);
  s.gain = 3.0f;
  // No shared per-channel key offsets here: channels every key shares a large
  // value in would win the |q|·max|K| channel choice and score nothing apart.
  s.offsets = false;
  s.lowrank = 0.0f, s.noise = 1.0f, s.outlier_p = 0.0f;  // iid keys: the planted ones stand apart
  TailorKvCache kv(sh, tailor_cfg({1, 0}));  // layer 0 dense, layer 1 sparse
  CHECK(kv.dense(0) && !kv.dense(1));
  FullKvCache full(sh, true, 2);
  const int n_prompt = 600;
  for (int pos = 0; pos < n_prompt; pos += 200)
    CHECK(same_bits(run_pass(kv, pool, s, pos, 200, false), run_pass(full, pool, s, pos, 200, false)));
  int pos = n_prompt;
  for (int step = 0; step < 5; ++step, ++pos) {
    auto outs = run_pass(kv, pool, s, pos, 1, true);
    const int N = pos + 1;
    for (int g = 0; g < sh.n_head_kv; ++g) {
      const auto &sel = kv.last_selection(1, g);
      CHECK((int)sel.size() == 8 + 56 + 128);
      CHECK(std::is_sorted(sel.begin(), sel.end()));
      std::set<int> ss(sel.begin(), sel.end());
      CHECK(ss.size() == sel.size());
      for (int p = 0; p < 8; ++p) CHECK(ss.count(p) == 1);       // sinks
      for (int p = N - 56; p < N; ++p) CHECK(ss.count(p) == 1);  // recent window, the step's token included
      // The middle rows are the top 128 by the approximate score, recomputed
      // here: per query head the 8 channels with the largest |q_c|·max|K_c|,
      // Σ q_c·K_jc over them; a key's score is the max over the group's heads.
      {
        auto q = s.row(2, 1, pos);
        std::vector<float> kmax(hd, 0.0f);
        std::vector<std::vector<float>> K(N);
        for (int p = 0; p < N; ++p) {
          auto kr = s.row(0, 1, p);
          K[p].assign(kr.begin() + g * hd, kr.begin() + (g + 1) * hd);
          for (int c = 0; c < hd; ++c) kmax[c] = std::max(kmax[c], std::fabs(K[p][c]));
        }
        std::vector<float> score(N - 64, -INFINITY);
        for (int hq = 0; hq < G; ++hq) {
          const float *qr = &q[(size_t)(g * G + hq) * hd];
          std::vector<int> ch(hd);
          for (int c = 0; c < hd; ++c) ch[c] = c;
          std::stable_sort(ch.begin(), ch.end(),
                           [&](int a, int b) { return std::fabs(qr[a]) * kmax[a] > std::fabs(qr[b]) * kmax[b]; });
          for (int j = 0; j < N - 64; ++j) {
            float sc = 0;
            for (int i = 0; i < 8; ++i) sc += qr[ch[i]] * K[8 + j][ch[i]];
            score[j] = std::max(score[j], sc);
          }
        }
        std::vector<int> order(N - 64);
        for (int j = 0; j < N - 64; ++j) order[j] = j;
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
        std::set<int> top;
        for (int i = 0; i < 128; ++i) top.insert(8 + order[i]);
        for (int p = 8; p < N - 56; ++p) CHECK((ss.count(p) == 1) == (top.count(p) == 1));
      }
      // ... and it finds what the queries attend to (an approximation: most of it, 4+ of the 6 planted rows).
      int found = 0;
      for (int p : planted) found += (int)ss.count(p);
      CHECK(found >= 4);  // 8 of 64 channels of a query aligned with 6 keys at once
      // Exactly attention over the loaded rows.
      for (int hq = 0; hq < G; ++hq) {
        const int h = g * G + hq;
        auto q = s.row(2, 1, pos);
        std::vector<std::vector<float>> K, V;
        for (int p : sel) {
          auto kr = s.row(0, 1, p), vr = s.row(1, 1, p);
          K.emplace_back(kr.begin() + g * hd, kr.begin() + (g + 1) * hd);
          V.emplace_back(vr.begin() + g * hd, vr.begin() + (g + 1) * hd);
        }
        auto ref = ref_attend(&q[(size_t)h * hd], hd, (int)sel.size(), [&](int i) { return K[i].data(); },
                              [&](int i) { return V[i].data(); });
        for (int c = 0; c < hd; ++c) CHECK_NEAR(outs[1][(size_t)h * hd + c], ref[c], 1e-4);
      }
    }
    (void)nh;
  }
  // Dense layer 0: the 1-bit copy of the prompt's whole residuals.
  CHECK(kv.dense_cache()->n_lowbit() == 512);
  CHECK(kv.dense_cache()->stream(0, 0).config().bits == 1);
  KvMetrics m;
  kv.metrics(&m);
  CHECK(m.n_tokens == (uint64_t)pos);
  CHECK(m.host_bytes == (uint64_t)pos * sh.n_head_kv * hd * 4);
  CHECK(m.device_prefetch_bytes == (uint64_t)sh.n_head_kv * (192 * hd * 4 + hd * 2));
  CHECK(m.fetch_bytes_total > 0);
  CHECK(m.device_lowbit_bytes == (uint64_t)sh.n_head_kv * LowbitStream::bytes_for({hd, 1, 64}, 512));
  // Sparse layers keep their rows: read() gives them back; dense layers do not.
  std::vector<float> k(2 * hd), v(k.size());
  CHECK(kv.read(1, 17, 1, k.data(), v.data()));
  auto want = s.row(0, 1, 17);
  CHECK(std::memcmp(k.data(), want.data(), k.size() * sizeof(float)) == 0);
  CHECK(!kv.read(0, 17, 1, k.data(), v.data()));
  // Truncate and go on.
  kv.truncate(300);
  auto o = run_pass(kv, pool, s, 300, 1, true);
  CHECK((int)kv.last_selection(1, 0).size() == 192);
  for (float x : o[1]) CHECK(std::isfinite(x));
}

TEST(tailorkv_equals_full_when_load_covers_context) {
  ThreadPool pool(2);
  const KvShape sh{2, 4, 2, 64, 400};
  Stream s(sh, 37);
  // All sparse: full's bits while the context fits the 192-row load; all
  // dense: while it fits the 128-token fp16 residual.
  for (int variant = 0; variant < 2; ++variant) {
    TailorKvCache kv(sh, tailor_cfg(variant == 0 ? std::vector<uint8_t>{0, 0} : std::vector<uint8_t>{1, 1}));
    FullKvCache full(sh, true, 2);
    const int limit = variant == 0 ? 192 : 128;
    bool same = same_bits(run_pass(kv, pool, s, 0, 100, false), run_pass(full, pool, s, 0, 100, false));
    for (int pos = 100; pos < limit; ++pos)
      same = same && same_bits(run_pass(kv, pool, s, pos, 1, true), run_pass(full, pool, s, pos, 1, true));
    CHECK(same);
    // One more token and it compresses.
    auto a = run_pass(kv, pool, s, limit, 1, true), f = run_pass(full, pool, s, limit, 1, true);
    CHECK(!same_bits(a, f));
  }
}

TEST(tailorkv_profile_stored_per_model_in_the_cache) {
  char dir[] = "/tmp/specode_tailorkv_cache_XXXXXX";
  CHECK(mkdtemp(dir) != nullptr);
  const char *old = std::getenv("SPECODE_CACHE");
  const std::string saved = old ? old : "";
  const std::string cache = std::string(dir) + "/sub";
  setenv("SPECODE_CACHE", cache.c_str(), 1);
  {
    TinyModel tm(3, "tailorkv");
    CHECK(tm.model != nullptr);
    if (tm.model) {
      Model *model = engine_model(tm.model);
      const std::string path = tailorkv_profile_path(*model);
      CHECK(path.rfind(cache + "/tailorkv-", 0) == 0);
      struct stat st;
      CHECK(stat(path.c_str(), &st) != 0);  // not there yet
      std::vector<float> m1, m2;
      std::string err;
      CHECK(tailorkv_profile(model, 2, &m1, &err));  // measures (logs) and writes
      CHECK(m1.size() == 3);
      CHECK(stat(path.c_str(), &st) == 0);
      for (float x : m1) CHECK(x >= 0.0f && x <= 1.0f);
      // The same measure as a direct run of the fixed sequence.
      TailorProfileKvCache *prof = nullptr;
      ContextConfig cc;
      cc.n_ctx = 1024;
      cc.n_threads = 2;
      cc.make_kv = [&](const KvShape &shape) {
        auto kv = std::make_unique<TailorProfileKvCache>(shape);
        prof = kv.get();
        return std::unique_ptr<KvCache>(std::move(kv));
      };
      Context ctx(model, cc);
      auto toks = tailorkv_profile_tokens(1024, kVocab, -1);
      std::string derr;
      CHECK(ctx.decode(toks.data(), 1024, false, nullptr, &derr) == 0);
      const auto direct = prof->outside_mass();
      for (int l = 0; l < 3; ++l) CHECK_NEAR(direct[l], m1[l], 1e-5);
      // Read back (edit the file: the values come from it, not a new run).
      {
        std::ofstream f(path);
        f << "specode tailorkv profile 1\nlayer 0 0.9\nlayer 1 0.1\nlayer 2 0.3\n";
      }
      CHECK(tailorkv_profile(model, 2, &m2, &err));
      CHECK(m2 == std::vector<float>({0.9f, 0.1f, 0.3f}));
      // A context of the policy uses it: layers 0 and 2 dense, 1 sparse.
      specode_context *ctxp = tm.context(SPECODE_KV_POLICY_TAILORKV, 512);
      CHECK(ctxp != nullptr);
      if (ctxp) {
        auto *tk = dynamic_cast<const TailorKvCache *>(&engine_context(ctxp)->kv());
        CHECK(tk != nullptr);
        if (tk) CHECK(tk->dense(0) && !tk->dense(1) && tk->dense(2));
        // Through the C API: full's bits while nothing is compressed.
        specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, 512);
        auto p = prompt(100, 3);
        std::vector<float> lf(kVocab), lt(kVocab);
        CHECK(specode_decode(full, p.data(), 100, 0, lf.data()) == SPECODE_OK);
        CHECK(specode_decode(ctxp, p.data(), 100, 0, lt.data()) == SPECODE_OK);
        bool same = std::memcmp(lf.data(), lt.data(), sizeof(float) * kVocab) == 0;
        for (int i = 0; i < 20; ++i) {
          const int32_t tok = argmax(lf.data(), kVocab);
          CHECK(specode_decode(full, &tok, 1, 0, lf.data()) == SPECODE_OK);
          CHECK(specode_decode(ctxp, &tok, 1, 0, lt.data()) == SPECODE_OK);
          same = same && std::memcmp(lf.data(), lt.data(), sizeof(float) * kVocab) == 0;
        }
        CHECK(same);
        // Past the load and the residual: compressed, still finite.
        auto more = prompt(200, 4);
        CHECK(specode_decode(ctxp, more.data(), 200, 0, lt.data()) == SPECODE_OK);
        int32_t tok = 1;
        for (int i = 0; i < 3; ++i) CHECK(specode_decode(ctxp, &tok, 1, 0, lt.data()) == SPECODE_OK);
        for (float x : lt) CHECK(std::isfinite(x));
        specode_kv_metrics m;
        CHECK(specode_context_metrics(ctxp, &m) == SPECODE_OK);
        CHECK(std::string(m.policy) == "tailorkv");
        CHECK(m.n_lowbit_tokens == 256 && m.host_kv_bytes > 0 && m.fetch_bytes_total > 0);
        specode_context_free(full);
        specode_context_free(ctxp);
      }
      // Bad budget.
      specode_context_params cp = specode_context_default_params();
      cp.n_ctx = 128;
      cp.kv_policy = SPECODE_KV_POLICY_TAILORKV;
      cp.kv_budget = 64;
      specode_context *bad = nullptr;
      CHECK(specode_context_init(tm.model, &cp, &bad) == SPECODE_ERR_ARGUMENT);
      unlink(path.c_str());
    }
  }
  rmdir(cache.c_str());
  rmdir(dir);
  if (old) setenv("SPECODE_CACHE", saved.c_str(), 1);
  else unsetenv("SPECODE_CACHE");
}

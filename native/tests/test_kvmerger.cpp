// KVMerger (kvmerger.h) on its own mechanism: Gaussian weights sum to 1 with
// the pivot's the largest; merging sets are contiguous, respect protection and
// join the most similar pairs first; a compressed cache holds the budget
// (50%, 35%), merged rows are the weighted sums around the highest-attention
// member, the first two and last layers are untouched; full's bits when the
// budget covers the context.
#include <cmath>
#include <cstdio>
#include <map>
#include <vector>

#include "kvmerger.h"
#include "seed_testing.h"

using namespace specode;
using namespace seedtest;

TEST(kvmerger_weights_sum_to_one_pivot_largest) {
  const int hd = 64;
  for (int m : {2, 3, 7, 20}) {
    std::vector<float> keys((size_t)m * hd);
    for (size_t i = 0; i < keys.size(); ++i) keys[i] = Stream::hnorm(m * 100000 + i);
    for (int pivot : {0, m / 2, m - 1}) {
      std::vector<float> w(m);
      kvmerger_weights(keys.data(), m, hd, pivot, w.data());
      double sum = 0;
      for (int i = 0; i < m; ++i) {
        sum += w[i];
        CHECK(w[i] > 0);
        if (i != pivot) CHECK(w[i] < w[pivot]);
      }
      CHECK_NEAR(sum, 1.0, 1e-6);
      // Nearer keys weigh more.
      std::vector<float> near = keys;
      const int other = (pivot + 1) % m;
      for (int c = 0; c < hd; ++c) near[(size_t)other * hd + c] = keys[(size_t)pivot * hd + c] + 0.01f;
      std::vector<float> w2(m);
      kvmerger_weights(near.data(), m, hd, pivot, w2.data());
      if (m > 2) CHECK(w2[other] > w[other]);
    }
  }
  // All keys equal: equal weights.
  std::vector<float> same(4 * hd, 0.5f), w(4);
  kvmerger_weights(same.data(), 4, hd, 1, w.data());
  for (float x : w) CHECK_NEAR(x, 0.25, 1e-7);
}

TEST(kvmerger_sets_contiguous_most_similar_first) {
  const int hd = 16, c = 40;
  // Four runs of 10 near-identical keys (cos ~1 inside a run, ~0 across).
  std::vector<float> keys((size_t)c * hd);
  for (int i = 0; i < c; ++i)
    for (int d = 0; d < hd; ++d) keys[(size_t)i * hd + d] = Stream::hnorm(i / 10 * 1000 + d) + 0.01f * Stream::hnorm(77777 + i * hd + d);
  std::vector<uint8_t> prot(c, 0);
  CHECK(kvmerger_rows_at_threshold(keys.data(), c, hd, prot, 0.9f) == 4);
  auto set = kvmerger_sets(keys.data(), c, hd, prot, 4);
  for (int i = 0; i < c; ++i) CHECK(set[i] == i / 10);
  // A protected row is a set of its own and splits its run.
  prot[15] = 1;
  CHECK(kvmerger_rows_at_threshold(keys.data(), c, hd, prot, 0.9f) == 6);
  set = kvmerger_sets(keys.data(), c, hd, prot, 6);
  std::map<int, int> size;
  for (int i = 0; i < c; ++i) size[set[i]]++;
  CHECK((int)size.size() == 6);
  CHECK(size[set[15]] == 1);
  CHECK(set[14] != set[15] && set[15] != set[16]);
  // Ids ascend (sets are contiguous).
  for (int i = 1; i < c; ++i) CHECK(set[i] == set[i - 1] || set[i] == set[i - 1] + 1);
  // A target above the threshold's rows joins only the most similar pairs.
  prot.assign(c, 0);
  set = kvmerger_sets(keys.data(), c, hd, prot, 30);
  int sets = set[c - 1] + 1;
  CHECK(sets == 30);
  for (int r = 0; r < 4; ++r) CHECK(set[r * 10 + 9] != set[(r + 1) * 10 % c] || r == 3);  // never across runs
}

namespace {

const KvShape kMergeShape{5, 4, 2, 64, 1024};

struct Snapshot {
  std::vector<int32_t> pos;
  std::vector<float> k, v, score;
};

Snapshot snap(const MergerKvCache &kv, int l, int g) {
  Snapshot s;
  s.pos = kv.held_positions(l, g);
  kv.held_rows(l, g, &s.k, &s.v);
  for (int p : s.pos) s.score.push_back(kv.score_of(l, g, p));
  return s;
}

}  // namespace

TEST(kvmerger_compress_budget_pivot_and_untouched_layers) {
  ThreadPool pool(2);
  const KvShape sh = kMergeShape;
  const int hd = sh.head_dim, n_prompt = 400;
  Stream s(sh, 17);
  s.walk = true;  // 16-token phrases of similar keys
  for (int p : {3, 90, 150, 222, 310}) s.heavy.insert(p);
  for (float ratio : {0.5f, 0.35f}) {
    SeedKvConfig cfg;
    cfg.policy = kKvMerger;
    cfg.budget_ratio = ratio;
    MergerKvCache kv(sh, cfg);
    FullKvCache full(sh, true, 2);
    for (int pos = 0; pos < n_prompt; pos += 100)
      CHECK(same_bits(run_pass(kv, pool, s, pos, 100, false), run_pass(full, pool, s, pos, 100, false)));
    std::vector<std::vector<Snapshot>> before(sh.n_layer);
    for (int l = 0; l < sh.n_layer; ++l)
      for (int g = 0; g < sh.n_head_kv; ++g) before[l].push_back(snap(kv, l, g));
    // The first generation step compresses.
    auto outs = run_pass(kv, pool, s, n_prompt, 1, true);
    auto fo = run_pass(full, pool, s, n_prompt, 1, true);
    const int B = kv.budget_for(n_prompt);
    CHECK(B == (int)std::ceil(ratio * n_prompt - 1e-4));
    for (int l = 0; l < sh.n_layer; ++l) {
      if (!kv.mergeable(l)) {
        // Untouched: every row, as stored, and attention exactly full's.
        CHECK(kv.held(l) == n_prompt + 1);
        CHECK(std::memcmp(outs[l].data(), fo[l].data(), outs[l].size() * sizeof(float)) == 0);
        std::vector<float> k((size_t)n_prompt * 2 * hd), v(k.size());
        CHECK(kv.read(l, 0, n_prompt, k.data(), v.data()));
        auto want = s.rows(0, l, 0, n_prompt);
        CHECK(std::memcmp(k.data(), want.data(), k.size() * sizeof(float)) == 0);
        continue;
      }
      CHECK(kv.held(l) <= B + 1);
      std::vector<float> k(2 * hd), v(k.size());
      CHECK(!kv.read(l, 0, 1, k.data(), v.data()));
      for (int g = 0; g < sh.n_head_kv; ++g) {
        CHECK((int)kv.held_positions(l, g).size() == kv.held(l));
        const Snapshot &b = before[l][g];
        std::map<int, int> idx;  // position -> row before
        for (size_t i = 0; i < b.pos.size(); ++i) idx[b.pos[i]] = (int)i;
        const auto &sets = kv.last_sets(l, g);
        CHECK(!sets.empty());
        const auto held = kv.held_positions(l, g);
        std::set<int> hs(held.begin(), held.end());
        // The newest B/4 rows are protected (kept, never merged).
        for (int p = n_prompt - B / 4; p < n_prompt; ++p) CHECK(hs.count(p) == 1);
        int members = 0;
        for (const auto &ms : sets) {
          members += (int)ms.members.size();
          double sum = 0;
          for (size_t i = 0; i < ms.weights.size(); ++i) {
            sum += ms.weights[i];
            if ((int)i != ms.pivot) CHECK(ms.weights[i] <= ms.weights[ms.pivot]);
          }
          CHECK_NEAR(sum, 1.0, 1e-5);
          // Contiguous, and the pivot is the member with the most attention.
          for (size_t i = 1; i < ms.members.size(); ++i) CHECK(ms.members[i] == ms.members[i - 1] + 1);
          const int pivot_pos = ms.members[ms.pivot];
          for (int p : ms.members) CHECK(b.score[idx[p]] <= b.score[idx[pivot_pos]]);
          for (int p : ms.members) CHECK(p < n_prompt - B / 4);
          // The merged row sits at the pivot and is Σ w_i k_i, Σ w_i v_i.
          CHECK(hs.count(pivot_pos) == 1);
          std::vector<float> mk(hd, 0.0f), mv(hd, 0.0f);
          for (size_t i = 0; i < ms.members.size(); ++i)
            for (int c = 0; c < hd; ++c) {
              mk[c] += ms.weights[i] * b.k[(size_t)idx[ms.members[i]] * hd + c];
              mv[c] += ms.weights[i] * b.v[(size_t)idx[ms.members[i]] * hd + c];
            }
          const Snapshot a = snap(kv, l, g);
          const int at = (int)(std::find(a.pos.begin(), a.pos.end(), pivot_pos) - a.pos.begin());
          for (int c = 0; c < hd; ++c) {
            CHECK_NEAR(a.k[(size_t)at * hd + c], f16r(mk[c]), 1e-6);
            CHECK_NEAR(a.v[(size_t)at * hd + c], f16r(mv[c]), 1e-6);
          }
          // Its score is the members' sum (+ what the step's own query gave it since).
          double total = 0;
          for (int p : ms.members) total += b.score[idx[p]];
          CHECK(a.score[at] >= total - 1e-3 && a.score[at] <= total + 2.0 + 1e-3);
        }
        // Rows held = rows before - (members - sets) (+ the step's token).
        CHECK((int)held.size() == n_prompt - (members - (int)sets.size()) + 1);
      }
    }
    std::fprintf(stderr, "  kvmerger %.0f%%: %d -> %d rows per merged layer, rel. error vs full %.4f\n",
                 ratio * 100, n_prompt, kv.held(2) - 1, rel_error(outs, fo, hd));
    // Generation appends unmerged; a truncate keeps the heads' counts equal.
    for (int pos = n_prompt + 1; pos < n_prompt + 10; ++pos) run_pass(kv, pool, s, pos, 1, true);
    CHECK(kv.held(2) <= B + 10);
    kv.truncate(300);
    for (int l = 0; l < sh.n_layer; ++l) {
      for (int g = 0; g < sh.n_head_kv; ++g) {
        CHECK((int)kv.held_positions(l, g).size() == kv.held(l));
        for (int p : kv.held_positions(l, g)) CHECK(p < 300);
      }
    }
    CHECK(kv.held(0) == 300);
    auto o = run_pass(kv, pool, s, 300, 5, false);
    for (float x : o[3]) CHECK(std::isfinite(x));
  }
}

TEST(kvmerger_equals_full_when_budget_covers_context) {
  ThreadPool pool(2);
  const KvShape sh{4, 4, 2, 64, 700};
  Stream s(sh, 23);
  s.walk = true;
  for (int variant = 0; variant < 2; ++variant) {
    SeedKvConfig cfg;
    cfg.policy = kKvMerger;
    if (variant == 0) cfg.budget = sh.n_ctx;
    else cfg.budget_ratio = 1.0f;
    MergerKvCache kv(sh, cfg);
    FullKvCache full(sh, true, 2);
    bool same = true;
    int pos = 0;
    for (int chunk : {256, 200, 1, 1}) {
      same = same && same_bits(run_pass(kv, pool, s, pos, chunk, chunk == 1), run_pass(full, pool, s, pos, chunk, chunk == 1));
      pos += chunk;
    }
    for (int i = 0; i < 20; ++i, ++pos) same = same && same_bits(run_pass(kv, pool, s, pos, 1, true), run_pass(full, pool, s, pos, 1, true));
    CHECK(same);
    CHECK(kv.held(2) == pos);
  }
}

TEST(kvmerger_engine_policy) {
  TinyModel tm(4, "kvmerger");
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_prompt = 300, steps = 10;
  auto toks = prompt(n_prompt, 11);
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, 512);
  specode_context *km = tm.context(SPECODE_KV_POLICY_KVMERGER, 512);          // 50% by default
  specode_context *km_all = tm.context(SPECODE_KV_POLICY_KVMERGER, 512, 512);  // budget covers it
  CHECK(km && km_all);
  if (!km || !km_all) return;
  std::vector<float> lf(kVocab), lk(kVocab), la(kVocab);
  CHECK(specode_decode(full, toks.data(), n_prompt, 0, lf.data()) == SPECODE_OK);
  CHECK(specode_decode(km, toks.data(), n_prompt, 0, lk.data()) == SPECODE_OK);
  CHECK(specode_decode(km_all, toks.data(), n_prompt, 0, la.data()) == SPECODE_OK);
  bool same = true;
  for (int i = 0; i < steps; ++i) {
    const int32_t tok = argmax(lf.data(), kVocab);
    CHECK(specode_decode(full, &tok, 1, 0, lf.data()) == SPECODE_OK);
    CHECK(specode_decode(km, &tok, 1, 0, lk.data()) == SPECODE_OK);
    CHECK(specode_decode(km_all, &tok, 1, 0, la.data()) == SPECODE_OK);
    same = same && std::memcmp(lf.data(), la.data(), sizeof(float) * kVocab) == 0;
    for (float x : lk) CHECK(std::isfinite(x));
  }
  CHECK(same);
  specode_kv_metrics m;
  CHECK(specode_context_metrics(km, &m) == SPECODE_OK);
  CHECK(std::string(m.policy) == "kvmerger");
  // Layers 0, 1, 3 hold everything; layer 2 at most 150 + the steps.
  const uint64_t row = 64 * 2 * 2 * 2;  // K+V fp16, 2 KV heads
  CHECK(m.device_full_bytes <= row * (3 * (n_prompt + steps) + 150 + steps));
  CHECK(m.device_full_bytes < m.fp16_kv_bytes);
  specode_context_free(km);
  specode_context_free(km_all);
  specode_context_free(full);
}

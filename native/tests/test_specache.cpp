// The paged KV policies end to end: specache with a top-k that covers the
// context gives full's greedy tokens and logits; offload-all is exactly full;
// device bytes against fp16 at long context; the speculative-step metrics
// (match rate, top-k overlap, fetched bytes, stall); prefix pages reused
// instead of recomputed; truncation rebuilds the low-bit copy from the host.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lowbit.h"
#include "quant.h"
#include "specache.h"
#include "specode.h"
#include "testing.h"
#include "tiny_model.h"
#include "threadpool.h"

namespace {

using tinygguf::kVocab;
using tinygguf::prompt;

struct TinyModel : tinygguf::TinyFile {
  TinyModel() : TinyFile(2, "specache") {}
  specode_context *context(int policy, int n_ctx, int topk, int bits = 2, int measure = 0, int kv_type = SPECODE_KV_F16,
                           int rerank = 1) {
    specode_context_params cp = specode_context_default_params();
    cp.kv_rerank = rerank;
    cp.n_ctx = n_ctx;
    cp.kv_policy = policy;
    cp.kv_topk = topk;
    cp.kv_bits = bits;
    cp.kv_measure = measure;
    cp.kv_type = kv_type;
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

float max_diff(const std::vector<float> &a, const std::vector<float> &b) {
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// Feeds ctx (n_ctx 256) and a fresh full context the same 200-token prompt, then 8 of
// full's greedy tokens, checking after each that the logits agree within 1e-3 (what a
// top-k that covers the context guarantees, whatever the low-bit copy holds).
void check_follows_full(TinyModel &tm, specode_context *ctx, uint32_t seed) {
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, 256, 0);
  CHECK(ctx != nullptr && full != nullptr);
  if (ctx && full) {
    const int n_prompt = 200;
    auto toks = prompt(n_prompt, seed);
    std::vector<float> lc(kVocab), lf(kVocab);
    CHECK(specode_decode(ctx, toks.data(), n_prompt, 0, lc.data()) == SPECODE_OK);
    CHECK(specode_decode(full, toks.data(), n_prompt, 0, lf.data()) == SPECODE_OK);
    for (int step = 0; step < 8; ++step) {
      const int32_t tok = argmax(lf.data(), kVocab);
      CHECK(specode_decode(ctx, &tok, 1, 0, lc.data()) == SPECODE_OK);
      CHECK(specode_decode(full, &tok, 1, 0, lf.data()) == SPECODE_OK);
      CHECK(max_diff(lc, lf) < 1e-3f);
    }
  }
  if (full) specode_context_free(full);
}

}  // namespace

TEST(specache_topk_covering_context_equals_full) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_prompt = 300, n_steps = 24, n_ctx = 512;
  auto toks = prompt(n_prompt, 5);
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, n_ctx, 0);
  specode_context *spec = tm.context(SPECODE_KV_POLICY_SPECACHE, n_ctx, n_ctx);  // top-k covers everything
  specode_context *sync = tm.context(SPECODE_KV_POLICY_SPECACHE_SYNC, n_ctx, n_ctx);
  specode_context *off = tm.context(SPECODE_KV_POLICY_OFFLOAD_ALL, n_ctx, 0);
  specode_context *ref = tm.context(SPECODE_KV_POLICY_FULL, n_ctx, 0);  // full's two-token step
  std::vector<float> lf(kVocab), ls(kVocab), ly(kVocab), lo(kVocab), lr(kVocab);
  CHECK(specode_decode(ref, toks.data(), n_prompt, 0, nullptr) == SPECODE_OK);
  CHECK(specode_decode(full, toks.data(), n_prompt, 0, lf.data()) == SPECODE_OK);
  CHECK(specode_decode(spec, toks.data(), n_prompt, 0, ls.data()) == SPECODE_OK);
  CHECK(specode_decode(sync, toks.data(), n_prompt, 0, ly.data()) == SPECODE_OK);
  CHECK(specode_decode(off, toks.data(), n_prompt, 0, lo.data()) == SPECODE_OK);
  // Prefill attention over the host pages is full's fp16 arithmetic.
  CHECK(max_diff(lf, ls) == 0.0f && max_diff(lf, ly) == 0.0f && max_diff(lf, lo) == 0.0f);
  float worst_spec = 0, worst_sync = 0, worst_off = 0;
  int same_tokens = 0;
  for (int step = 0; step < n_steps; ++step) {
    const int32_t tok = argmax(lf.data(), kVocab);
    same_tokens += tok == argmax(ls.data(), kVocab) && tok == argmax(ly.data(), kVocab) ? 1 : 0;
    int32_t guess = -2, ref_guess = -3, none = -4;
    CHECK(specode_decode(full, &tok, 1, 0, lf.data()) == SPECODE_OK);
    CHECK(specode_decode_spec(spec, tok, ls.data(), &guess) == SPECODE_OK);
    CHECK(specode_decode_spec(ref, tok, lr.data(), &ref_guess) == SPECODE_OK);
    CHECK(guess == ref_guess);
    CHECK(max_diff(lr, ls) == 0.0f);  // same batch shape, same fp16 rows: same bits
    CHECK(specode_decode_spec(off, tok, lo.data(), &none) == SPECODE_OK);  // a plain step
    CHECK(none == -1);
    CHECK(specode_context_truncate(off, specode_context_n_past(off) - 1) == SPECODE_OK);
    CHECK(specode_decode(sync, &tok, 1, 0, ly.data()) == SPECODE_OK);
    CHECK(specode_decode(off, &tok, 1, 0, lo.data()) == SPECODE_OK);
    CHECK(guess >= 0 && guess < kVocab);
    worst_spec = std::max(worst_spec, max_diff(lf, ls));
    worst_sync = std::max(worst_sync, max_diff(lf, ly));
    worst_off = std::max(worst_off, max_diff(lf, lo));
  }
  std::fprintf(stderr, "  max |logit diff| vs full over %d steps: specache %.2e, specache-sync %.2e, offload-all %.2e\n",
               n_steps, worst_spec, worst_sync, worst_off);
  CHECK(same_tokens == n_steps);
  CHECK(worst_spec <= 1e-3f);
  CHECK(worst_sync <= 1e-3f);
  CHECK(worst_off == 0.0f);  // offload-all attends the same fp16 rows in the same order
  CHECK(specode_context_n_past(spec) == (uint32_t)(n_prompt + n_steps));
  specode_kv_metrics m;
  CHECK(specode_context_metrics(spec, &m) == SPECODE_OK);
  CHECK(std::string(m.policy) == "specache");
  CHECK(m.steps == (uint64_t)n_steps);
  CHECK(m.spec_checked == (uint64_t)n_steps - 1);
  CHECK(m.n_lowbit_tokens + m.n_residual_tokens == m.n_tokens);
  specode_context_free(full);
  specode_context_free(spec);
  specode_context_free(sync);
  specode_context_free(off);
  specode_context_free(ref);
}

TEST(specache_metrics_overlap_match_fetch_stall) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_prompt = 700, n_steps = 16, K = 64;
  auto toks = prompt(n_prompt, 9);
  specode_context *spec = tm.context(SPECODE_KV_POLICY_SPECACHE, 1024, K, 2, /*measure=*/1);
  specode_context *off = tm.context(SPECODE_KV_POLICY_OFFLOAD_ALL, 1024, 0);
  std::vector<float> logits(kVocab);
  CHECK(specode_decode(spec, toks.data(), n_prompt, 0, logits.data()) == SPECODE_OK);
  CHECK(specode_decode(off, toks.data(), n_prompt, 0, nullptr) == SPECODE_OK);
  for (int step = 0; step < n_steps; ++step) {
    int32_t tok = argmax(logits.data(), kVocab);
    CHECK(specode_decode(spec, &tok, 1, 0, logits.data()) == SPECODE_OK);
    CHECK(specode_decode(off, &tok, 1, 0, nullptr) == SPECODE_OK);
  }
  specode_kv_metrics m, o;
  specode_context_metrics(spec, &m);
  specode_context_metrics(off, &o);
  const uint64_t L = 2, NKV = 2, row = 64 * 2;
  std::fprintf(stderr,
               "  specache k=%d @%d tokens: spec match %.3f (%llu/%llu), top-k overlap %.3f, mass recall %.3f, "
               "fetched %llu B/step (offload-all %llu B/step), stall %llu ns total / %llu ns in %llu steps "
               "(offload-all %llu ns)\n",
               K, n_prompt, m.spec_match_rate, (unsigned long long)m.spec_matched, (unsigned long long)m.spec_checked,
               m.topk_overlap, m.topk_mass_recall, (unsigned long long)m.fetch_bytes_last,
               (unsigned long long)o.fetch_bytes_last, (unsigned long long)m.stall_ns_total,
               (unsigned long long)m.step_ns_total, (unsigned long long)m.steps, (unsigned long long)o.stall_ns_total);
  CHECK(m.steps == (uint64_t)n_steps && m.spec_checked == (uint64_t)n_steps - 1);
  CHECK(m.spec_match_rate >= 0.0 && m.spec_match_rate <= 1.0);
  CHECK(m.overlap_samples == (uint64_t)n_steps * L * NKV);
  CHECK(m.topk_overlap > 0.0 && m.topk_overlap <= 1.0);
  CHECK(m.topk_mass_recall > 0.0 && m.topk_mass_recall <= 1.0 + 1e-6);
  CHECK(m.fetch_bytes_last == L * NKV * K * row * 2);  // k rows of K and V per layer per KV head
  CHECK(o.fetch_bytes_last == L * NKV * (uint64_t)(n_prompt + n_steps) * row * 2);
  CHECK(o.stall_ns_total > 0);  // offload-all waits for every copy
  CHECK(m.step_ns_total > 0 && m.step_ns_last > 0);
  CHECK(m.device_lowbit_bytes > 0 && m.host_kv_bytes >= m.fp16_kv_bytes);
  specode_context_reset_metrics(spec);
  specode_context_metrics(spec, &m);
  CHECK(m.steps == 0 && m.fetch_bytes_total == 0 && m.overlap_samples == 0 && m.device_lowbit_bytes > 0);
  specode_context_free(spec);
  specode_context_free(off);
}

TEST(specache_device_bytes_vs_fp16_at_long_context) {
  // One layer, two KV heads, head_dim 64 (the per-(layer, head) accounting is
  // the same for any model): 16k tokens, g 64, R 64, top-k 64.
  const int n = 16384, HD = 64, NKV = 2;
  for (int bits : {2, 1}) {
    specode::KvShape shape{1, NKV, NKV, HD, n};
    specode::PagedKvConfig pc;
    pc.policy = specode::KvPolicy::Specache;
    pc.bits = bits;
    auto kv = specode::make_paged_kv_cache(shape, pc);
    std::mt19937 rng(bits);
    std::normal_distribution<float> nd;
    const int chunk = 1024;
    std::vector<float> k((size_t)chunk * NKV * HD), v(k.size());
    std::vector<int32_t> ids(chunk);
    for (int pos0 = 0; pos0 < n; pos0 += chunk) {
      for (auto &x : k) x = nd(rng);
      for (auto &x : v) x = nd(rng);
      for (int i = 0; i < chunk; ++i) ids[i] = (int32_t)(rng() % 1000);
      specode::KvPass pass;
      pass.pos0 = pos0;
      pass.n = pass.n_keep = chunk;
      pass.tokens = ids.data();
      CHECK(kv->begin_pass(pass));
      kv->store(0, pos0, chunk, k.data(), v.data());
      kv->end_pass();
    }
    specode::KvMetrics m;
    kv->metrics(&m);
    const double fp16 = (double)n * NKV * HD * 2 * 2;
    const double device = (double)(m.device_lowbit_bytes + m.device_residual_bytes + m.device_prefetch_bytes);
    std::fprintf(stderr, "  %d-bit @%d tokens: device %.0f B (low-bit %llu, residual %llu, prefetch %llu) vs fp16 %.0f: 1/%.2f\n",
                 bits, n, device, (unsigned long long)m.device_lowbit_bytes,
                 (unsigned long long)m.device_residual_bytes, (unsigned long long)m.device_prefetch_bytes, fp16,
                 fp16 / device);
    CHECK(m.n_lowbit_tokens == (uint64_t)(n - 64) && m.n_residual_tokens == 64);
    CHECK(m.device_lowbit_bytes == (uint64_t)NKV * (n - 64) * (bits == 2 ? 40 : 24));
    CHECK(fp16 / device >= (bits == 2 ? 6.0 : 9.0));
    CHECK(m.host_bytes >= (uint64_t)fp16);
  }
}

TEST(specache_prefix_pages_are_reused_not_recomputed) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  auto toks = prompt(200, 17);
  for (int policy : {SPECODE_KV_POLICY_SPECACHE, SPECODE_KV_POLICY_OFFLOAD_ALL}) {
    specode_context *ctx = tm.context(policy, 512, 64);
    std::vector<float> first(kVocab), again(kVocab);
    CHECK(specode_decode(ctx, toks.data(), 200, 0, first.data()) == SPECODE_OK);
    uint32_t cached = 0;
    CHECK(specode_context_cached_prefix(ctx, toks.data(), 200, &cached) == SPECODE_OK && cached == 200);
    CHECK(specode_context_truncate(ctx, 0) == SPECODE_OK);
    CHECK(specode_context_cached_prefix(ctx, toks.data(), 200, &cached) == SPECODE_OK && cached == 192);
    // The same prompt again: three full pages (192 tokens) come from the cache.
    CHECK(specode_decode(ctx, toks.data(), 200, 0, again.data()) == SPECODE_OK);
    specode_kv_metrics m;
    specode_context_metrics(ctx, &m);
    CHECK(m.prefix_reused_tokens == 192);
    CHECK(specode_context_n_past(ctx) == 200);
    CHECK(max_diff(first, again) <= 1e-4f);
    // Cut in the middle of a page; the page that continues it is still
    // cached, so only the last 8 tokens are recomputed.
    CHECK(specode_context_truncate(ctx, 150) == SPECODE_OK);
    CHECK(specode_decode(ctx, toks.data() + 150, 50, 0, again.data()) == SPECODE_OK);
    specode_context_metrics(ctx, &m);
    CHECK(m.prefix_reused_tokens == 192 + 42);
    CHECK(max_diff(first, again) <= 1e-4f);
    // A different token inside the last full page: only the pages before it.
    std::vector<int32_t> edited = toks;
    edited[130] = (edited[130] + 1) % kVocab;
    CHECK(specode_context_truncate(ctx, 0) == SPECODE_OK);
    CHECK(specode_decode(ctx, edited.data(), 200, 0, again.data()) == SPECODE_OK);
    specode_context_metrics(ctx, &m);
    CHECK(m.prefix_reused_tokens == 192 + 42 + 128);
    CHECK(max_diff(first, again) > 0.0f);
    specode_context_free(ctx);
  }
}

TEST(specache_truncate_rebuilds_device_tier_from_host) {
  // Cache A holds 300 tokens then is cut to 170; cache B was only ever given
  // the first 170. Their decode attention must agree bit for bit.
  const int HD = 64, NKV = 2, NH = 4, ctx = 512;
  specode::KvShape shape{1, NH, NKV, HD, ctx};
  specode::PagedKvConfig pc;
  pc.policy = specode::KvPolicy::Specache;
  pc.topk = 16;
  pc.n_threads = 2;
  auto a = specode::make_paged_kv_cache(shape, pc), b = specode::make_paged_kv_cache(shape, pc);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> k((size_t)300 * NKV * HD), v(k.size());
  for (auto &x : k) x = nd(rng);
  for (auto &x : v) x = nd(rng);
  std::vector<int32_t> ids(300);
  for (int i = 0; i < 300; ++i) ids[i] = i % 50;
  auto fill = [&](specode::KvCache &kv, int n) {
    specode::KvPass pass;
    pass.n = pass.n_keep = n;
    pass.tokens = ids.data();
    CHECK(kv.begin_pass(pass));
    kv.store(0, 0, n, k.data(), v.data());
    kv.end_pass();
  };
  fill(*a, 300);
  a->truncate(170);
  fill(*b, 170);
  specode::KvMetrics ma, mb;
  a->metrics(&ma);
  b->metrics(&mb);
  CHECK(ma.n_lowbit_tokens == 128 && ma.n_residual_tokens == 42);
  CHECK(ma.n_lowbit_tokens == mb.n_lowbit_tokens && ma.device_lowbit_bytes == mb.device_lowbit_bytes);
  specode::ThreadPool pool(2);
  std::vector<float> q((size_t)2 * NH * HD), kn((size_t)2 * NKV * HD), vn(kn.size()), oa(q.size()), ob(q.size());
  int32_t pair[2] = {7, 8};
  for (int step = 0; step < 4; ++step) {
    for (auto &x : q) x = nd(rng);
    for (auto &x : kn) x = nd(rng);
    for (auto &x : vn) x = nd(rng);
    for (specode::KvCache *kv : {a.get(), b.get()}) {
      specode::KvPass pass;
      pass.pos0 = 170 + std::max(0, step - 1);
      pass.n_keep = step == 0 ? 0 : 1;  // a pre-decode, then speculative steps
      pass.n = step == 0 ? 1 : 2;
      pass.tokens = pair;
      pass.decode = true;
      pass.select_row = pass.n - 1;
      CHECK(kv->begin_pass(pass));
      kv->store(0, pass.pos0, pass.n, kn.data(), vn.data());
      kv->attend(0, pass.pos0, pass.n, q.data(), kv == a.get() ? oa.data() : ob.data(), pool);
      kv->end_pass();
    }
    CHECK(max_diff(oa, ob) == 0.0f);
  }
}

TEST(specache_stall_is_the_wait_for_a_late_fetch) {
  // A link that takes 3 ms per layer fetch, and steps that take far less:
  // every layer waits, and the wait is what the stall counter holds.
  const int HD = 64, NKV = 2, NH = 4, L = 2, n0 = 256;
  specode::KvShape shape{L, NH, NKV, HD, 512};
  specode::PagedKvConfig pc;
  pc.policy = specode::KvPolicy::Specache;
  pc.topk = 8;
  pc.fetch_delay_ns = 3000000;
  auto kv = specode::make_paged_kv_cache(shape, pc);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> k((size_t)n0 * NKV * HD), v(k.size());
  for (auto &x : k) x = nd(rng);
  for (auto &x : v) x = nd(rng);
  std::vector<int32_t> ids(n0, 1);
  specode::KvPass fill;
  fill.n = fill.n_keep = n0;
  fill.tokens = ids.data();
  CHECK(kv->begin_pass(fill));
  for (int l = 0; l < L; ++l) kv->store(l, 0, n0, k.data(), v.data());
  kv->end_pass();
  specode::ThreadPool pool(1);
  std::vector<float> q((size_t)2 * NH * HD), out(q.size());
  for (auto &x : q) x = nd(rng);
  const int steps = 4;
  for (int step = 0; step <= steps; ++step) {
    specode::KvPass pass;
    pass.pos0 = n0 + std::max(0, step - 1);
    pass.n_keep = step == 0 ? 0 : 1;
    pass.n = step == 0 ? 1 : 2;
    pass.tokens = ids.data();
    pass.decode = true;
    pass.select_row = pass.n - 1;
    CHECK(kv->begin_pass(pass));
    for (int l = 0; l < L; ++l) {
      kv->store(l, pass.pos0, pass.n, k.data(), v.data());
      kv->attend(l, pass.pos0, pass.n, q.data(), out.data(), pool);
    }
    kv->end_pass();
  }
  specode::KvMetrics m;
  kv->metrics(&m);
  // Every layer of the 4 speculative steps waited most of the 3 ms.
  std::fprintf(stderr, "  stall with a 3 ms/layer link: %.1f ms over %d steps x %d layers\n", m.stall_ns_total / 1e6, steps, L);
  CHECK(m.stall_ns_total > (uint64_t)steps * L * 2000000);
  CHECK(m.fetch_bytes_total == (uint64_t)(steps + 1) * L * NKV * 8 * HD * 2 * 2);
}

TEST(specache_select_topk) {
  std::vector<float> s = {0.1f, 0.9f, 0.3f, 0.9f, 0.5f, 0.0f, 0.7f};
  int32_t out[7];
  CHECK(specode::select_topk(s.data(), 7, 3, out) == 3);
  CHECK(out[0] == 1 && out[1] == 3 && out[2] == 6);  // ascending positions
  CHECK(specode::select_topk(s.data(), 7, 2, out) == 2);
  CHECK(out[0] == 1 && out[1] == 3);
  CHECK(specode::select_topk(s.data(), 3, 5, out) == 3);
  CHECK(out[0] == 0 && out[2] == 2);
  std::vector<float> ties(10, 1.0f);
  CHECK(specode::select_topk(ties.data(), 10, 4, out) == 4);
  CHECK(out[0] == 0 && out[3] == 3);  // ties: lower positions win
  // Randomized against a full sort.
  std::mt19937 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    // k small against n (the heap) and k near n (the linear selection), many ties.
    int n = 1 + (int)(rng() % 500), k = 1 + (int)(rng() % (trial % 2 ? 80 : 600));
    std::vector<float> x(n);
    for (auto &e : x) e = (float)(rng() % 97);
    std::vector<int32_t> got(std::min(n, k)), idx(n);
    int c = specode::select_topk(x.data(), n, k, got.data());
    for (int i = 0; i < n; ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return x[a] > x[b]; });
    idx.resize(c);
    std::sort(idx.begin(), idx.end());
    CHECK(std::vector<int32_t>(got.begin(), got.begin() + c) == idx);
  }
}

TEST(specache_rejects_bad_parameters) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = 128;
  specode_context *ctx = nullptr;
  cp.kv_policy = 99;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_policy = SPECODE_KV_POLICY_SPECACHE;
  cp.kv_bits = 3;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  CHECK(std::string(specode_last_error()).find("kv_bits") != std::string::npos);
  cp.kv_bits = 1;
  cp.kv_group = 48;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_group = 64;
  cp.kv_residual = 96;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_residual = 128;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_OK);
  int32_t t = 3;
  CHECK(specode_decode_spec(ctx, t, nullptr, nullptr) == SPECODE_ERR_ARGUMENT);  // nothing decoded yet
  specode_context_free(ctx);
}

TEST(specache_symmetric_values_option) {
  // kv_sym_values: 2-bit only (refused at 1 bit and for other policies, saying
  // why); the low-bit copy holds 2 bytes less per token, layer and KV head (one
  // value group of 64 channels); with a top-k that covers the context the
  // logits are still full's, since every row attended low-bit is then fetched.
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = 256;
  cp.kv_policy = SPECODE_KV_POLICY_SPECACHE;
  cp.kv_sym_values = 1;
  cp.kv_bits = 1;
  specode_context *ctx = nullptr;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  CHECK(std::string(specode_last_error()).find("2-bit") != std::string::npos);
  cp.kv_bits = 2;
  cp.kv_policy = SPECODE_KV_POLICY_KIVI;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_policy = SPECODE_KV_POLICY_SPECACHE;
  cp.kv_sym_values = 2;
  CHECK(specode_context_init(tm.model, &cp, &ctx) == SPECODE_ERR_ARGUMENT);
  cp.kv_sym_values = 1;
  cp.backend = SPECODE_BACKEND_CUDA;
  CHECK(specode_context_init(tm.model, &cp, &ctx) != SPECODE_OK);  // CPU only (or no CUDA here at all)
  cp.backend = SPECODE_BACKEND_CPU;
  cp.kv_topk = 256;
  cp.kv_rerank = 1;
  specode_context *sym = nullptr, *plain = nullptr;
  CHECK(specode_context_init(tm.model, &cp, &sym) == SPECODE_OK);
  cp.kv_sym_values = 0;
  cp.kv_param_bits = 16;  // KIVI's fp16 scale and zero (the automatic choice at 2 bits is 8-bit params)
  CHECK(specode_context_init(tm.model, &cp, &plain) == SPECODE_OK);
  if (!sym || !plain) return;
  check_follows_full(tm, sym, 9);
  check_follows_full(tm, plain, 9);  // the same tokens: the same number held low-bit
  specode_kv_metrics ms, mp;
  specode_context_metrics(sym, &ms);
  specode_context_metrics(plain, &mp);
  CHECK(ms.n_lowbit_tokens == mp.n_lowbit_tokens && ms.n_lowbit_tokens > 0);
  specode_model_info info;
  specode_model_get_info(tm.model, &info);
  const uint64_t groups = (uint64_t)info.head_dim / std::min(64, info.head_dim);
  CHECK(mp.device_lowbit_bytes - ms.device_lowbit_bytes == ms.n_lowbit_tokens * info.n_layer * info.n_head_kv * groups * 2);
  specode_context_free(sym);
  specode_context_free(plain);
}

TEST(specache_8bit_params_option) {
  // kv_param_bits 8: specache* only (refused for other policies, for values other
  // than 8 and 16, with kv_sym_values, and on CUDA, saying why); the low-bit copy
  // holds what LowbitStream::bytes_for says; with a top-k that covers the context
  // the logits are full's (every row attended low-bit is then fetched). The
  // default, 0, picks 8 for the 2-bit copy on the CPU and 16 for the others.
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  specode_context_params cp = specode_context_default_params();
  CHECK(cp.kv_param_bits == 0);
  cp.n_ctx = 256;
  // Refused with an argument error whose message names `what`.
  const auto refused = [&](const char *what) {
    specode_context *c = nullptr;
    const int32_t st = specode_context_init(tm.model, &cp, &c);
    if (c) specode_context_free(c);
    return st == SPECODE_ERR_ARGUMENT && std::string(specode_last_error()).find(what) != std::string::npos;
  };
  cp.kv_param_bits = 8;
  for (int policy : {SPECODE_KV_POLICY_FULL, SPECODE_KV_POLICY_OFFLOAD_ALL, SPECODE_KV_POLICY_KIVI}) {
    cp.kv_policy = policy;
    CHECK(refused("specache and specache-sync only"));
  }
  cp.kv_policy = SPECODE_KV_POLICY_SPECACHE;
  cp.kv_param_bits = 4;
  CHECK(refused("must be 16"));
  cp.kv_param_bits = 8;
  cp.kv_sym_values = 1;
  CHECK(refused("cannot be combined"));
  cp.kv_sym_values = 0;
  cp.backend = SPECODE_BACKEND_CUDA;
  specode_context *ctx = nullptr;
  CHECK(specode_context_init(tm.model, &cp, &ctx) != SPECODE_OK);  // CPU only (or no CUDA here at all)
  cp.backend = SPECODE_BACKEND_CPU;
  specode_model_info info;
  specode_model_get_info(tm.model, &info);
  for (int bits : {1, 2}) {
    cp.kv_bits = bits;
    cp.kv_topk = 256;
    cp.kv_rerank = 1;
    for (int param_bits : {8, 16, 0}) {
      cp.kv_param_bits = param_bits;
      specode_context *c = nullptr;
      CHECK(specode_context_init(tm.model, &cp, &c) == SPECODE_OK);
      if (!c) return;
      check_follows_full(tm, c, 13);
      specode_kv_metrics m;
      specode_context_metrics(c, &m);
      CHECK(m.n_lowbit_tokens > 0);
      const int used = param_bits ? param_bits : bits == 2 ? 8 : 16;
      CHECK(m.lowbit_param_bits == used);
      const specode::LowbitConfig lc{info.head_dim, bits, 64, false, false, used};
      CHECK(m.device_lowbit_bytes ==
            (uint64_t)info.n_layer * info.n_head_kv * specode::LowbitStream::bytes_for(lc, m.n_lowbit_tokens));
      specode_context_free(c);
    }
  }
  // The automatic choice leaves symmetric values and the policies without a copy alone.
  cp.kv_param_bits = 0;
  cp.kv_sym_values = 1;
  specode_context *sym = nullptr, *full = nullptr;
  CHECK(specode_context_init(tm.model, &cp, &sym) == SPECODE_OK);
  cp.kv_sym_values = 0;
  cp.kv_policy = SPECODE_KV_POLICY_FULL;
  CHECK(specode_context_init(tm.model, &cp, &full) == SPECODE_OK);
  if (!sym || !full) return;
  specode_kv_metrics ms, mf;
  specode_context_metrics(sym, &ms);
  specode_context_metrics(full, &mf);
  CHECK(ms.lowbit_param_bits == 16 && mf.lowbit_param_bits == 0);
  specode_context_free(sym);
  specode_context_free(full);
}

TEST(specache_context_copy_equals_own_prefill) {
  // A specache context that copies a full context's prefill then decodes exactly
  // like one that ran the prefill itself; full copies back from a paged context.
  TinyModel tm;
  const int n_prompt = 200, n_ctx = 384, n_steps = 12;
  auto toks = prompt(n_prompt, 11);
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, n_ctx, 0);
  specode_context *own = tm.context(SPECODE_KV_POLICY_SPECACHE, n_ctx, 16);
  specode_context *copy = tm.context(SPECODE_KV_POLICY_SPECACHE, n_ctx, 16);
  specode_context *back = tm.context(SPECODE_KV_POLICY_FULL, n_ctx, 0);
  std::vector<float> lf(kVocab), lo(kVocab), lc(kVocab), lb(kVocab);
  CHECK(specode_decode(full, toks.data(), n_prompt, 0, lf.data()) == SPECODE_OK);
  CHECK(specode_decode(own, toks.data(), n_prompt, 0, lo.data()) == SPECODE_OK);
  CHECK(specode_decode(copy, toks.data(), 10, 0, nullptr) == SPECODE_OK);  // dropped by the copy
  CHECK(specode_context_copy(copy, full) == SPECODE_OK);
  CHECK(specode_context_n_past(copy) == (uint32_t)n_prompt);
  const float *copied = specode_context_logits(copy);
  CHECK(copied != nullptr && std::equal(lf.begin(), lf.end(), copied));
  specode_kv_metrics mo, mc;
  specode_context_metrics(own, &mo);
  specode_context_metrics(copy, &mc);
  CHECK(mo.n_lowbit_tokens == mc.n_lowbit_tokens && mo.device_lowbit_bytes == mc.device_lowbit_bytes);
  for (int step = 0; step < n_steps; ++step) {
    const int32_t tok = argmax(lo.data(), kVocab);
    CHECK(specode_decode(own, &tok, 1, 0, lo.data()) == SPECODE_OK);
    CHECK(specode_decode(copy, &tok, 1, 0, lc.data()) == SPECODE_OK);
    CHECK(max_diff(lo, lc) == 0.0f);
  }
  CHECK(specode_context_copy(back, copy) == SPECODE_OK);
  CHECK(specode_context_n_past(back) == (uint32_t)(n_prompt + n_steps));
  // A context too small for the source is refused and says so.
  specode_context *small = tm.context(SPECODE_KV_POLICY_FULL, 64, 0);
  CHECK(specode_context_copy(small, full) == SPECODE_ERR_ARGUMENT);
  CHECK(std::string(specode_last_error()).find("n_ctx") != std::string::npos);
  CHECK(specode_context_copy(nullptr, full) == SPECODE_ERR_ARGUMENT);
  for (specode_context *c : {full, own, copy, back, small}) specode_context_free(c);
}

TEST(specache_attention_readout) {
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_prompt = 700, n_steps = 6, L = 2, NKV = 2;
  auto toks = prompt(n_prompt, 21);
  specode_context *spec = tm.context(SPECODE_KV_POLICY_SPECACHE, 1024, 64);
  specode_context *full = tm.context(SPECODE_KV_POLICY_FULL, 1024, 0);
  CHECK(specode_context_track_attention(full, 1) == SPECODE_ERR_UNSUPPORTED);
  std::vector<float> mass(1024, -1.0f), logits(kVocab);
  CHECK(specode_context_attention_mass(full, mass.data(), 1024) == SPECODE_ERR_UNSUPPORTED);
  CHECK(specode_decode(spec, toks.data(), n_prompt, 0, logits.data()) == SPECODE_OK);
  CHECK(specode_context_track_attention(spec, 1) == SPECODE_OK);
  // The prompt's prefill is not a generation step: nothing is summed yet.
  CHECK(specode_context_attention_mass(spec, mass.data(), 1024) == 1024);
  double total = 0;
  for (float x : mass) total += x;
  CHECK(total == 0.0);
  for (int step = 0; step < n_steps; ++step) {
    int32_t tok = argmax(logits.data(), kVocab);
    CHECK(specode_decode(spec, &tok, 1, 0, logits.data()) == SPECODE_OK);
  }
  CHECK(specode_context_attention_mass(spec, mass.data(), 1024) == 1024);
  specode_kv_metrics m;
  specode_context_metrics(spec, &m);
  // Every forward pass that chooses rows (each step, plus the pre-decode of
  // the first step) adds, per layer and KV head, probabilities of one query
  // over a subset of the positions: at most 1 each, and most of it (the
  // residual and the newest tokens are outside the read-out).
  const int passes = n_steps + 1;
  total = 0;
  bool finite = true, beyond_zero = true;
  for (int j = 0; j < 1024; ++j) {
    finite = finite && std::isfinite(mass[j]) && mass[j] >= 0.0f;
    if (j >= (int)m.n_lowbit_tokens + 64) beyond_zero = beyond_zero && mass[j] == 0.0f;
    total += mass[j];
  }
  std::fprintf(stderr, "  read-out over %d steps: total %.3f of at most %d (low-bit tokens %llu)\n", n_steps, total,
               passes * L * NKV, (unsigned long long)m.n_lowbit_tokens);
  CHECK(finite);
  CHECK(beyond_zero);
  CHECK(total > 0.3 * passes * L * NKV && total <= passes * L * NKV * (1 + 1e-4));
  // Turning it on again starts from zero; a shorter read copies fewer positions.
  CHECK(specode_context_track_attention(spec, 1) == SPECODE_OK);
  CHECK(specode_context_attention_mass(spec, mass.data(), 10) == 10);
  CHECK(mass[0] == 0.0f && mass[9] == 0.0f);
  specode_context_free(spec);
  specode_context_free(full);
}

TEST(specache_automatic_rerank_is_16_at_one_bit_and_4_at_two) {
  // kv_rerank 0 (the default) resolves per width: the same rows, logits and metrics as
  // the explicit 16 at 1 bit and 4 at 2 bits; with k 128 the 1-bit width drops to 8
  // (at most 1024 candidates), and a run with a different width differs.
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  CHECK(specode_context_default_params().kv_rerank == 0);
  CHECK(specode::auto_rerank(1, 64) == 16 && specode::auto_rerank(2, 64) == 4);
  CHECK(specode::auto_rerank(1, 128) == 8 && specode::auto_rerank(2, 512) == 2 && specode::auto_rerank(1, 4096) == 1);
  const int n_prompt = 900, n_steps = 10, K = 16;
  auto toks = prompt(n_prompt, 41);
  auto run = [&](int bits, int rerank, specode_kv_metrics *m, std::vector<float> *logits) {
    specode_context *ctx = tm.context(SPECODE_KV_POLICY_SPECACHE, 1024, K, bits, /*measure=*/1, SPECODE_KV_F16, rerank);
    CHECK(ctx != nullptr);
    if (!ctx) return;
    logits->assign(kVocab, 0.0f);
    CHECK(specode_decode(ctx, toks.data(), n_prompt, 0, logits->data()) == SPECODE_OK);
    for (int step = 0; step < n_steps; ++step) {
      int32_t tok = toks[(step * 53) % n_prompt];
      CHECK(specode_decode(ctx, &tok, 1, 0, logits->data()) == SPECODE_OK);
    }
    specode_context_metrics(ctx, m);
    specode_context_free(ctx);
  };
  for (int bits : {1, 2}) {
    specode_kv_metrics a{}, b{}, c{};
    std::vector<float> la, lb, lc;
    run(bits, 0, &a, &la);
    run(bits, bits == 1 ? 16 : 4, &b, &lb);
    run(bits, 1, &c, &lc);
    std::fprintf(stderr, "  %d-bit k=%d: overlap auto %.4f, explicit %.4f, one stage %.4f\n", bits, K, a.topk_overlap,
                 b.topk_overlap, c.topk_overlap);
    CHECK(a.overlap_samples > 0 && a.overlap_samples == b.overlap_samples);
    CHECK(a.topk_overlap == b.topk_overlap && a.topk_mass_recall == b.topk_mass_recall);
    CHECK(max_diff(la, lb) == 0.0f);
    CHECK(a.topk_overlap != c.topk_overlap || max_diff(la, lc) > 0.0f);
  }
}

TEST(specache_rerank_raises_topk_overlap) {
  // Two-stage choice: the 4k best by low-bit scores, re-scored exactly from the
  // host rows. Same prompt and tokens; the rows fetched match the real token's
  // true top-k at least as often, and the steps stay exact where they must.
  TinyModel tm;
  CHECK(tm.model != nullptr);
  if (!tm.model) return;
  const int n_prompt = 900, n_steps = 12, K = 32;
  auto toks = prompt(n_prompt, 33);
  specode_context *one = tm.context(SPECODE_KV_POLICY_SPECACHE, 1024, K, 1, /*measure=*/1);
  specode_context *two = tm.context(SPECODE_KV_POLICY_SPECACHE, 1024, K, 1, /*measure=*/1, SPECODE_KV_F16, /*rerank=*/4);
  std::vector<float> l1(kVocab), l2(kVocab);
  CHECK(specode_decode(one, toks.data(), n_prompt, 0, l1.data()) == SPECODE_OK);
  CHECK(specode_decode(two, toks.data(), n_prompt, 0, l2.data()) == SPECODE_OK);
  for (int step = 0; step < n_steps; ++step) {
    int32_t tok = toks[(step * 37) % n_prompt];  // the same tokens for both
    CHECK(specode_decode(one, &tok, 1, 0, l1.data()) == SPECODE_OK);
    CHECK(specode_decode(two, &tok, 1, 0, l2.data()) == SPECODE_OK);
  }
  specode_kv_metrics m1, m2;
  specode_context_metrics(one, &m1);
  specode_context_metrics(two, &m2);
  std::fprintf(stderr, "  1-bit k=%d: top-k overlap %.3f -> %.3f, mass recall %.3f -> %.3f with rerank 4\n", K, m1.topk_overlap,
               m2.topk_overlap, m1.topk_mass_recall, m2.topk_mass_recall);
  CHECK(m1.overlap_samples > 0 && m2.overlap_samples == m1.overlap_samples);
  CHECK(m2.topk_overlap > m1.topk_overlap);
  CHECK(m2.topk_mass_recall >= m1.topk_mass_recall);
  specode_context_params cp = specode_context_default_params();
  cp.kv_policy = SPECODE_KV_POLICY_SPECACHE;
  cp.n_ctx = 256;
  cp.kv_rerank = 17;
  specode_context *bad = nullptr;
  CHECK(specode_context_init(tm.model, &cp, &bad) == SPECODE_ERR_ARGUMENT);
  specode_context_free(one);
  specode_context_free(two);
}

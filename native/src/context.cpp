#include "context.h"

#include "kv_disk.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "baselines.h"
#include "ops.h"
#include "seed_policies.h"
#include "specode.h"
#include "tailorkv.h"

namespace specode {

namespace {

// y_i = W_i x for weights sharing one input: the activations are prepared once
// per distinct type and all rows of all weights are split across the threads.
struct MatmulJob {
  const Weight *w;
  float *y;  // [n][w->rows]
};

void matmul_group(ThreadPool &pool, const MatmulJob *jobs, int n_jobs, const float *x, int n,
                  std::vector<uint8_t> &act) {
  const int64_t cols = jobs[0].w->cols;
  // Activations: one prepared copy per distinct weight type (usually one).
  DType types[4];
  size_t offsets[4];
  int n_types = 0;
  size_t total = 0;
  int type_of[8];
  for (int j = 0; j < n_jobs; ++j) {
    int found = -1;
    for (int t = 0; t < n_types; ++t)
      if (types[t] == jobs[j].w->type) found = t;
    if (found < 0) {
      found = n_types++;
      types[found] = jobs[j].w->type;
      offsets[found] = total;
      total += (matmul_act_bytes(types[found], cols, n) + 63) & ~size_t(63);
    }
    type_of[j] = found;
  }
  if (act.size() < total + 64) act.resize(total + 64);
  uint8_t *base = reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(act.data()) + 63) & ~uintptr_t(63));
  const int nth = pool.size();
  if (n < 4 || nth == 1) {
    for (int t = 0; t < n_types; ++t) matmul_prepare(types[t], x, cols, 0, n, base + offsets[t]);
  } else {
    pool.run([&](int ith, int nth_) {
      int64_t t0 = (int64_t)n * ith / nth_, t1 = (int64_t)n * (ith + 1) / nth_;
      for (int t = 0; t < n_types; ++t)
        if (t1 > t0) matmul_prepare(types[t], x, cols, t0, t1, base + offsets[t]);
    });
  }
  // Row chunks over all jobs, taken dynamically.
  int64_t total_rows = 0;
  for (int j = 0; j < n_jobs; ++j) total_rows += jobs[j].w->rows;
  int64_t chunk = std::max<int64_t>(16, total_rows / (nth * 16));
  chunk = (chunk + 15) & ~int64_t(15);
  std::atomic<int64_t> next{0};
  pool.run([&](int, int) {
    for (int64_t r0; (r0 = next.fetch_add(chunk, std::memory_order_relaxed)) < total_rows;) {
      int64_t r1 = std::min(total_rows, r0 + chunk);
      // Map [r0, r1) across the jobs' row ranges.
      int64_t off = 0;
      for (int j = 0; j < n_jobs && r0 < r1; ++j) {
        const Weight &w = *jobs[j].w;
        int64_t lo = std::max(r0, off), hi = std::min(r1, off + w.rows);
        if (lo < hi)
          matmul_rows(w.type, w.data, cols, base + offsets[type_of[j]], n, jobs[j].y, w.rows, lo - off, hi - off);
        off += w.rows;
      }
    }
  });
}

void matmul(ThreadPool &pool, const Weight &w, const float *x, int n, float *y, std::vector<uint8_t> &act) {
  MatmulJob job{&w, y};
  matmul_group(pool, &job, 1, x, n, act);
}

void add_bias(float *y, const Weight &b, int n, int64_t dim) {
  if (!b) return;
  for (int t = 0; t < n; ++t) add_inplace(y + (size_t)t * dim, b.f32(), dim);
}

}  // namespace

Context::Context(Model *model, const ContextConfig &cfg) : model_(model), cfg_(cfg) {
  const Hparams &hp = model->hp;
  if (cfg_.n_ctx <= 0) cfg_.n_ctx = hp.n_ctx_train;
  if (cfg_.n_batch <= 0) cfg_.n_batch = 256;
  cfg_.n_batch = std::min(cfg_.n_batch, cfg_.n_ctx);
  if (cfg_.n_threads > 0 && cfg_.n_threads != model->n_threads)
    own_pool_ = std::make_unique<ThreadPool>(cfg_.n_threads);
  KvShape shape{hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim, cfg_.n_ctx};
  if (cfg_.make_kv) {
    kv_ = cfg_.make_kv(shape);
  } else if (cfg_.policy == KvPolicy::Full) {
    kv_ = std::make_unique<FullKvCache>(shape, cfg_.kv_f16, pool().size());
  } else if (is_baseline_policy(cfg_.policy)) {
    BaselineKvConfig bc;
    bc.policy = cfg_.policy;
    bc.budget = cfg_.kv_budget;
    bc.budget_ratio = cfg_.kv_budget_ratio;
    bc.sinks = cfg_.kv_sinks;
    bc.bits = cfg_.kv_bits;
    bc.group = cfg_.kv_group;
    bc.residual = cfg_.kv_residual;
    kv_ = make_baseline_kv_cache(shape, bc);
  } else if (is_seed_policy(cfg_.policy)) {
    SeedKvConfig sc;
    sc.policy = cfg_.policy;
    sc.bits = cfg_.kv_bits;
    sc.group = cfg_.kv_group;
    sc.buffer = cfg_.kv_residual;
    sc.budget = cfg_.kv_budget;
    sc.budget_ratio = cfg_.kv_budget_ratio;
    if (cfg_.policy == kKvTailorKv) {
      if (cfg_.kv_budget > 0) sc.tk_topk = cfg_.kv_budget - sc.tk_sinks - sc.tk_recent;
      sc.tk_group = cfg_.kv_group;
      sc.tk_residual = cfg_.kv_residual;
      std::vector<float> mass;
      std::string err;
      if (tailorkv_profile(model, pool().size(), &mass, &err)) {
        sc.dense_layers = tailorkv_dense_layers(mass);
      } else {
        std::fprintf(stderr, "specode: tailorkv: %s; every layer runs sparse\n", err.c_str());
        sc.dense_layers.assign(hp.n_layer, 0);
      }
    }
    kv_ = make_seed_kv_cache(shape, sc);
  } else {
    PagedKvConfig pc;
    pc.policy = cfg_.policy;
    pc.page_tokens = cfg_.kv_page_tokens;
    pc.bits = cfg_.kv_bits;
    pc.group = cfg_.kv_group;
    pc.topk = cfg_.kv_topk;
    pc.rerank = cfg_.kv_rerank;
    pc.sym_values = cfg_.kv_sym_values;
    pc.param_bits = cfg_.kv_param_bits;
    pc.residual = cfg_.kv_residual;
    pc.measure = cfg_.kv_measure;
    pc.n_threads = pool().size();
    if (!cfg_.kv_disk_dir.empty()) {
      pc.disk_dir = cfg_.kv_disk_dir;
      pc.disk_max_bytes = cfg_.kv_disk_max_bytes;
      std::call_once(model->disk_id_once, [model] { model->disk_id = KvDisk::model_identity(model->file.bytes(), model->file.file_size()); });
      pc.model_id = model->disk_id;
    }
    kv_ = make_paged_kv_cache(shape, pc);
  }

  inv_freq_.resize(hp.head_dim / 2);
  for (int i = 0; i < hp.head_dim / 2; ++i)
    inv_freq_[i] = (float)(1.0 / std::pow((double)hp.rope_base, 2.0 * i / hp.head_dim));

  // A speculative step runs two tokens, whatever n_batch is.
  const size_t nb = std::max(cfg_.n_batch, 2), E = hp.n_embd, Q = (size_t)hp.n_head * hp.head_dim,
               KV = (size_t)hp.n_head_kv * hp.head_dim, FF = hp.n_ff;
  x_.resize(nb * E);
  xn_.resize(nb * E);
  q_.resize(nb * Q);
  k_.resize(nb * KV);
  v_.resize(nb * KV);
  attn_.resize(nb * Q);
  proj_.resize(nb * E);
  gate_.resize(nb * FF);
  up_.resize(nb * FF);
  logits_.resize(hp.n_vocab);
  publish_metrics();
}

int Context::truncate(int n_keep, std::string *err) {
  if (n_keep < 0) {
    *err = "truncate: n_keep must be >= 0";
    return SPECODE_ERR_ARGUMENT;
  }
  if (n_keep < n_past_) {
    n_past_ = n_keep;
    tokens_.resize(n_keep);
    kv_->truncate(n_keep);
    has_logits_ = false;
    forget_speculation();
    publish_metrics();
  }
  return SPECODE_OK;
}

int Context::copy_from(const Context &src, std::string *err) {
  if (&src == this) return SPECODE_OK;
  if (src.model_ != model_) {
    *err = "context_copy: the two contexts belong to different models";
    return SPECODE_ERR_ARGUMENT;
  }
  const int n = src.n_past_;
  if (n > cfg_.n_ctx) {
    *err = "context_copy: the source holds " + std::to_string(n) + " tokens, more than this context's n_ctx " +
           std::to_string(cfg_.n_ctx);
    return SPECODE_ERR_ARGUMENT;
  }
  const Hparams &hp = model_->hp;
  const int KV = hp.n_head_kv * hp.head_dim;
  std::lock_guard<std::mutex> lock(model_->pool_mutex);
  if (n_past_ > 0) {
    n_past_ = 0;
    tokens_.clear();
    kv_->truncate(0);
  }
  has_logits_ = false;
  forget_speculation();
  std::vector<float> k((size_t)cfg_.n_batch * KV), v(k.size());
  for (int done = 0; done < n;) {
    const int chunk = std::min(cfg_.n_batch, n - done);
    KvPass pass;
    pass.pos0 = done;
    pass.n = pass.n_keep = chunk;
    pass.tokens = src.tokens_.data() + done;
    if (!kv_->begin_pass(pass)) {
      publish_metrics();
      *err = "context_copy: the KV cache has no free page left for " + std::to_string(chunk) + " more tokens";
      return SPECODE_ERR_NOMEM;
    }
    for (int l = 0; l < hp.n_layer; ++l) {
      if (!src.kv_->read(l, done, chunk, k.data(), v.data())) {
        kv_->end_failed_pass();
        publish_metrics();
        *err = std::string("context_copy: the source policy '") + src.kv_->policy() + "' keeps no full-precision rows to copy";
        return SPECODE_ERR_UNSUPPORTED;
      }
      kv_->store(l, done, chunk, k.data(), v.data());
    }
    kv_->end_pass();
    n_past_ += chunk;
    tokens_.insert(tokens_.end(), pass.tokens, pass.tokens + chunk);
    done += chunk;
  }
  if (src.has_logits_) {
    logits_ = src.logits_;
    has_logits_ = true;
  }
  publish_metrics();
  return SPECODE_OK;
}

int Context::cached_prefix(const int32_t *tokens, int n) const {
  int same = 0;
  while (same < n && same < n_past_ && tokens_[same] == tokens[same]) ++same;
  return std::max(same, std::min(n, kv_->cached_prefix(tokens, n)));
}

int Context::check_tokens(const int32_t *tokens, int n, std::string *err) const {
  return check_decode_tokens(model_->hp, n_past_, cfg_.n_ctx, tokens, n, err);
}

void StepCounters::publish(const Hparams &hp, specode_kv_metrics *m) const {
  m->device_kv_bytes = m->device_lowbit_bytes + m->device_residual_bytes + m->device_prefetch_bytes + m->device_full_bytes;
  m->fp16_kv_bytes = m->n_tokens * hp.n_layer * hp.n_head_kv * hp.head_dim * 2 * 2;
  m->compression_ratio = m->device_kv_bytes ? (double)m->fp16_kv_bytes / (double)m->device_kv_bytes : 0.0;
  m->fetch_bytes_last = fetch_last;
  m->stall_ns_last = stall_last;
  m->step_ns_total = step_ns_total;
  m->step_ns_last = step_ns_last;
  m->steps = steps;
  m->spec_checked = spec_checked;
  m->spec_matched = spec_matched;
  m->spec_match_rate = spec_checked ? (double)spec_matched / (double)spec_checked : 0.0;
}

int check_decode_tokens(const Hparams &hp, int n_past, int n_ctx, const int32_t *tokens, int n, std::string *err) {
  if (n <= 0) {
    *err = "decode: no tokens given (the prompt is empty)";
    return SPECODE_ERR_ARGUMENT;
  }
  if ((int64_t)n_past + n > n_ctx) {
    *err = "decode: " + std::to_string(n) + " tokens after " + std::to_string(n_past) +
           " cached ones exceed the context size " + std::to_string(n_ctx) +
           " (use a larger n_ctx or a shorter prompt)";
    return SPECODE_ERR_CONTEXT_FULL;
  }
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
      *err = "decode: token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
             " is outside the vocabulary [0, " + std::to_string(hp.n_vocab) + ")";
      return SPECODE_ERR_ARGUMENT;
    }
  return SPECODE_OK;
}

int Context::decode(const int32_t *tokens, int n, bool all_logits, float *logits_out, std::string *err) {
  cancel_.store(false);
  const Hparams &hp = model_->hp;
  int st = check_tokens(tokens, n, err);
  if (st != SPECODE_OK) return st;
  std::lock_guard<std::mutex> lock(model_->pool_mutex);
  // One token after a prompt is a generation step (the speculative step
  // under specache); its row of logits is all there is either way.
  if (n == 1 && n_past_ > 0)
    return step_locked(tokens[0], cfg_.policy == KvPolicy::Specache, logits_out, nullptr, err);
  has_logits_ = false;
  forget_speculation();
  int done = 0;
  // Pages cached from an earlier pass over the same prefix are adopted, not
  // recomputed (the last token always runs: its logits are the output).
  if (!all_logits) {
    done = kv_->adopt_cached(tokens, n - 1);
    tokens_.insert(tokens_.end(), tokens, tokens + done);
    n_past_ += done;
  }
  while (done < n) {
    if (cancel_.load()) {
      publish_metrics();
      *err = "decode cancelled after " + std::to_string(done) + " of " + std::to_string(n) + " tokens";
      return SPECODE_ERR_CANCELLED;
    }
    int chunk = std::min(cfg_.n_batch, n - done);
    bool last_chunk = done + chunk == n;
    // Logits: every row into logits_out when all_logits, else only the last
    // chunk's last row (kept in logits_); earlier chunks skip the output matmul.
    float *out_all = all_logits && logits_out ? logits_out + (size_t)done * hp.n_vocab : nullptr;
    KvPass pass;
    pass.pos0 = n_past_;
    pass.n = pass.n_keep = chunk;
    pass.tokens = tokens + done;
    if (!forward(pass, out_all ? 2 : (last_chunk ? 1 : 0), out_all)) {
      publish_metrics();
      *err = "decode: the KV cache has no free page left for " + std::to_string(chunk) + " more tokens";
      return SPECODE_ERR_NOMEM;
    }
    done += chunk;
  }
  has_logits_ = true;
  if (logits_out && !all_logits) std::memcpy(logits_out, logits_.data(), logits_.size() * sizeof(float));
  publish_metrics();
  return SPECODE_OK;
}

int Context::decode_step(int32_t token, float *logits_out, int32_t *spec_out, std::string *err) {
  cancel_.store(false);
  int st = check_tokens(&token, 1, err);
  if (st != SPECODE_OK) return st;
  if (n_past_ == 0) {
    *err = "decode_spec: the context is empty; decode a prompt first";
    return SPECODE_ERR_ARGUMENT;
  }
  std::lock_guard<std::mutex> lock(model_->pool_mutex);
  // full runs the same two-token step with exact attention: the reference
  // for specache's speculative token.
  const bool speculate = cfg_.policy == KvPolicy::Specache || cfg_.policy == KvPolicy::Full;
  return step_locked(token, speculate, logits_out, spec_out, err);
}

int Context::step_locked(int32_t token, bool speculate, float *logits_out, int32_t *spec_out, std::string *err) {
  const int n_vocab = model_->hp.n_vocab;
  const auto t0 = std::chrono::steady_clock::now();
  KvMetrics before;
  kv_->metrics(&before);
  has_logits_ = false;
  if (spec_out) *spec_out = -1;
  KvPass pass;
  pass.pos0 = n_past_;
  pass.decode = true;
  bool ok = true;
  if (speculate) counters_.check_guess(token, last_guess_);
  if (speculate && n_past_ + 2 > cfg_.n_ctx) {
    // The last position: no room for the speculative row; a plain step.
    speculate = false;
    forget_speculation();
  }
  if (!speculate) {
    pass.n = pass.n_keep = 1;
    pass.tokens = &token;
    ok = forward(pass, 1, nullptr);
  } else {
    if (next_spec_ < 0) {
      // Pre-decode: the token over the low-bit copy alone; its K/V is
      // dropped, its output is the first speculative token and its
      // attention row the first fetch set.
      KvPass pre = pass;
      pre.n = 1;
      pre.n_keep = 0;
      pre.tokens = &token;
      pre.select_row = 0;
      ok = forward(pre, 1, nullptr);
      next_spec_ = argmax(logits_.data(), n_vocab);
    }
    const int32_t pair[2] = {token, next_spec_};
    pass.n = 2;
    pass.n_keep = 1;
    pass.tokens = pair;
    pass.select_row = 1;
    if (step_logits_.size() < (size_t)2 * n_vocab) step_logits_.resize((size_t)2 * n_vocab);
    ok = ok && forward(pass, 2, step_logits_.data());
    if (ok) {
      std::memcpy(logits_.data(), step_logits_.data(), (size_t)n_vocab * sizeof(float));
      if (spec_out) *spec_out = next_spec_;
      last_guess_ = next_spec_;
      next_spec_ = argmax(step_logits_.data() + n_vocab, n_vocab);
    }
  }
  if (!ok) {
    forget_speculation();
    publish_metrics();
    *err = "decode: the KV cache has no free page left for one more token";
    return SPECODE_ERR_NOMEM;
  }
  KvMetrics after;
  kv_->metrics(&after);
  counters_.fetch_last = after.fetch_bytes_total - before.fetch_bytes_total;
  counters_.stall_last = after.stall_ns_total - before.stall_ns_total;
  counters_.add_step((uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(
                         std::chrono::steady_clock::now() - t0).count());
  has_logits_ = true;
  if (logits_out) std::memcpy(logits_out, logits_.data(), (size_t)n_vocab * sizeof(float));
  publish_metrics();
  return SPECODE_OK;
}

void Context::publish_metrics() {
  KvMetrics k;
  kv_->metrics(&k);
  const Hparams &hp = model_->hp;
  specode_kv_metrics m{};
  std::snprintf(m.policy, sizeof m.policy, "%s", kv_->policy());
  std::snprintf(m.backend, sizeof m.backend, "cpu");
  m.device_weight_bytes = model_->file.data_bytes();
  m.device_lowbit_bytes = k.device_lowbit_bytes;
  m.device_residual_bytes = k.device_residual_bytes;
  m.device_prefetch_bytes = k.device_prefetch_bytes;
  m.device_full_bytes = k.device_full_bytes;
  m.host_kv_bytes = k.host_bytes;
  m.n_tokens = (uint64_t)n_past_;
  m.n_lowbit_tokens = k.n_lowbit_tokens;
  m.n_residual_tokens = k.n_residual_tokens;
  m.fetch_bytes_total = k.fetch_bytes_total;
  m.stall_ns_total = k.stall_ns_total;
  counters_.publish(hp, &m);
  m.overlap_samples = k.overlap_samples;
  m.topk_overlap = k.overlap_samples ? k.overlap_sum / (double)k.overlap_samples : 0.0;
  m.topk_mass_recall = k.overlap_samples ? k.mass_recall_sum / (double)k.overlap_samples : 0.0;
  m.prefix_reused_tokens = k.prefix_reused_tokens;
  m.host_pages_referenced = k.host_pages_referenced;
  m.host_pages_cached = k.host_pages_cached;
  m.disk_pages_loaded = k.disk_pages_loaded;
  m.disk_pages_saved = k.disk_pages_saved;
  m.disk_pages_rejected = k.disk_pages_rejected;
  m.disk_bytes = k.disk_bytes;
  m.lowbit_param_bits = k.lowbit_param_bits;
  std::lock_guard<std::mutex> lock(metrics_mutex_);
  snapshot_ = m;
}

void Context::metrics(specode_kv_metrics *out) const {
  std::lock_guard<std::mutex> lock(metrics_mutex_);
  *out = snapshot_;
}

void Context::reset_metrics() {
  kv_->reset_metrics();
  counters_ = StepCounters{};
  publish_metrics();
}

bool Context::forward(const KvPass &pass, int logits_mode, float *out_all) {
  const Hparams &hp = model_->hp;
  const Model &m = *model_;
  ThreadPool &tp = pool();
  const int E = hp.n_embd, HD = hp.head_dim, NH = hp.n_head, NKV = hp.n_head_kv;
  const int Q = NH * HD, KV = NKV * HD, FF = hp.n_ff;
  const int pos0 = n_past_, n = pass.n;
  const int32_t *tokens = pass.tokens;
  if (!kv_->begin_pass(pass)) return false;

  for (int t = 0; t < n; ++t)
    dequantize_row(m.tok_embd.type, m.tok_embd.data + (size_t)tokens[t] * m.tok_embd.row_bytes,
                   &x_[(size_t)t * E], E);

  for (int l = 0; l < hp.n_layer; ++l) {
    const LayerWeights &w = m.layers[l];
    for (int t = 0; t < n; ++t) rmsnorm(&x_[(size_t)t * E], w.attn_norm.f32(), &xn_[(size_t)t * E], E, hp.rms_eps);
    MatmulJob qkv[3] = {{&w.wq, q_.data()}, {&w.wk, k_.data()}, {&w.wv, v_.data()}};
    matmul_group(tp, qkv, 3, xn_.data(), n, act_);
    add_bias(q_.data(), w.bq, n, Q);
    add_bias(k_.data(), w.bk, n, KV);
    add_bias(v_.data(), w.bv, n, KV);
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < NH; ++h) rope_apply(&q_[(size_t)t * Q + h * HD], HD, pos0 + t, inv_freq_.data(), hp.rope_neox);
      for (int h = 0; h < NKV; ++h) rope_apply(&k_[(size_t)t * KV + h * HD], HD, pos0 + t, inv_freq_.data(), hp.rope_neox);
    }
    kv_->store(l, pos0, n, k_.data(), v_.data());
    kv_->attend(l, pos0, n, q_.data(), attn_.data(), tp);
    MatmulJob o[1] = {{&w.wo, proj_.data()}};
    matmul_group(tp, o, 1, attn_.data(), n, act_);
    add_inplace(x_.data(), proj_.data(), (int64_t)n * E);

    for (int t = 0; t < n; ++t) rmsnorm(&x_[(size_t)t * E], w.ffn_norm.f32(), &xn_[(size_t)t * E], E, hp.rms_eps);
    MatmulJob gu[2] = {{&w.w_gate, gate_.data()}, {&w.w_up, up_.data()}};
    matmul_group(tp, gu, 2, xn_.data(), n, act_);
    tp.run([&](int ith, int nth) {  // split on 64-element boundaries
      const int64_t total = (int64_t)n * FF, chunks = (total + 63) / 64;
      const int64_t a = std::min(total, chunks * ith / nth * 64), b = std::min(total, chunks * (ith + 1) / nth * 64);
      swiglu(gate_.data() + a, up_.data() + a, gate_.data() + a, b - a);
    });
    MatmulJob down[1] = {{&w.w_down, proj_.data()}};
    matmul_group(tp, down, 1, gate_.data(), n, act_);
    add_inplace(x_.data(), proj_.data(), (int64_t)n * E);
  }
  kv_->end_pass();
  n_past_ += pass.n_keep;
  tokens_.insert(tokens_.end(), tokens, tokens + pass.n_keep);

  if (logits_mode == 0) return true;
  const int first = logits_mode == 2 ? 0 : n - 1;
  const int rows = n - first;
  for (int t = first; t < n; ++t)
    rmsnorm(&x_[(size_t)t * E], m.output_norm.f32(), &xn_[(size_t)(t - first) * E], E, hp.rms_eps);
  if (logits_mode == 2) {
    MatmulJob out[1] = {{&m.output, out_all}};
    matmul_group(tp, out, 1, xn_.data(), rows, act_);
    std::memcpy(logits_.data(), out_all + (size_t)(rows - 1) * hp.n_vocab, hp.n_vocab * sizeof(float));
  } else {
    matmul(tp, m.output, xn_.data() + (size_t)(rows - 1) * E, 1, logits_.data(), act_);
  }
  return true;
}

}  // namespace specode

#include "context.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "ops.h"
#include "specode.h"

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
  kv_ = std::make_unique<FullKvCache>(shape, cfg_.kv_f16, pool().size());

  inv_freq_.resize(hp.head_dim / 2);
  for (int i = 0; i < hp.head_dim / 2; ++i)
    inv_freq_[i] = (float)(1.0 / std::pow((double)hp.rope_base, 2.0 * i / hp.head_dim));

  const size_t nb = cfg_.n_batch, E = hp.n_embd, Q = (size_t)hp.n_head * hp.head_dim,
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
}

int Context::truncate(int n_keep, std::string *err) {
  if (n_keep < 0) {
    *err = "truncate: n_keep must be >= 0";
    return SPECODE_ERR_ARGUMENT;
  }
  if (n_keep < n_past_) {
    n_past_ = n_keep;
    kv_->truncate(n_keep);
    has_logits_ = false;
  }
  return SPECODE_OK;
}

int Context::decode(const int32_t *tokens, int n, bool all_logits, float *logits_out, std::string *err) {
  cancel_.store(false);
  const Hparams &hp = model_->hp;
  if (n <= 0) {
    *err = "decode: no tokens given (the prompt is empty)";
    return SPECODE_ERR_ARGUMENT;
  }
  if ((int64_t)n_past_ + n > cfg_.n_ctx) {
    *err = "decode: " + std::to_string(n) + " tokens after " + std::to_string(n_past_) +
           " cached ones exceed the context size " + std::to_string(cfg_.n_ctx) +
           " (use a larger n_ctx or a shorter prompt)";
    return SPECODE_ERR_CONTEXT_FULL;
  }
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
      *err = "decode: token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
             " is outside the vocabulary [0, " + std::to_string(hp.n_vocab) + ")";
      return SPECODE_ERR_ARGUMENT;
    }
  std::lock_guard<std::mutex> lock(model_->pool_mutex);
  has_logits_ = false;
  for (int done = 0; done < n;) {
    if (cancel_.load()) {
      *err = "decode cancelled after " + std::to_string(done) + " of " + std::to_string(n) + " tokens";
      return SPECODE_ERR_CANCELLED;
    }
    int chunk = std::min(cfg_.n_batch, n - done);
    bool last_chunk = done + chunk == n;
    // Logits: every row into logits_out when all_logits, else only the last
    // chunk's last row (kept in logits_); earlier chunks skip the output matmul.
    float *out_all = all_logits && logits_out ? logits_out + (size_t)done * hp.n_vocab : nullptr;
    forward(tokens + done, chunk, out_all ? 2 : (last_chunk ? 1 : 0), out_all);
    done += chunk;
  }
  has_logits_ = true;
  if (logits_out && !all_logits) std::memcpy(logits_out, logits_.data(), logits_.size() * sizeof(float));
  return SPECODE_OK;
}

void Context::forward(const int32_t *tokens, int n, int logits_mode, float *out_all) {
  const Hparams &hp = model_->hp;
  const Model &m = *model_;
  ThreadPool &tp = pool();
  const int E = hp.n_embd, HD = hp.head_dim, NH = hp.n_head, NKV = hp.n_head_kv;
  const int Q = NH * HD, KV = NKV * HD, FF = hp.n_ff;
  const int pos0 = n_past_;

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
    matmul(tp, w.wo, attn_.data(), n, proj_.data(), act_);
    add_inplace(x_.data(), proj_.data(), (int64_t)n * E);

    for (int t = 0; t < n; ++t) rmsnorm(&x_[(size_t)t * E], w.ffn_norm.f32(), &xn_[(size_t)t * E], E, hp.rms_eps);
    MatmulJob gu[2] = {{&w.w_gate, gate_.data()}, {&w.w_up, up_.data()}};
    matmul_group(tp, gu, 2, xn_.data(), n, act_);
    swiglu(gate_.data(), up_.data(), gate_.data(), (int64_t)n * FF);
    matmul(tp, w.w_down, gate_.data(), n, proj_.data(), act_);
    add_inplace(x_.data(), proj_.data(), (int64_t)n * E);
  }
  n_past_ += n;

  if (logits_mode == 0) return;
  const int first = logits_mode == 2 ? 0 : n - 1;
  const int rows = n - first;
  for (int t = first; t < n; ++t)
    rmsnorm(&x_[(size_t)t * E], m.output_norm.f32(), &xn_[(size_t)(t - first) * E], E, hp.rms_eps);
  if (logits_mode == 2) {
    matmul(tp, m.output, xn_.data(), rows, out_all, act_);
    std::memcpy(logits_.data(), out_all + (size_t)(rows - 1) * hp.n_vocab, hp.n_vocab * sizeof(float));
  } else {
    matmul(tp, m.output, xn_.data() + (size_t)(rows - 1) * E, 1, logits_.data(), act_);
  }
}

}  // namespace specode

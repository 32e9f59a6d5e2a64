// tailorkv.cpp — TailorKV: the offline layer profile, 1-bit dense layers,
// host-side sparse layers with an approximate top-k load (tailorkv.h).
#include "tailorkv.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "attention.h"
#include "context.h"
#include "model.h"
#include "ops.h"
#include "quant.h"

namespace specode {

// ---- the profile -------------------------------------------------------------

double tailorkv_outside_mass(const float *p, int n, float top_fraction) {
  if (n <= 0) return 0.0;
  // ceil(top_fraction · n), forgiving the float fraction's rounding (0.05f · 100 is 5.0000001).
  const int m = std::min(n, std::max(1, (int)std::ceil((double)top_fraction * n - 1e-7 * n - 1e-9)));
  std::vector<float> s(p, p + n);
  std::nth_element(s.begin(), s.begin() + (m - 1), s.end(), std::greater<float>());
  double top = 0, all = 0;
  for (int i = 0; i < m; ++i) top += s[i];
  for (int i = 0; i < n; ++i) all += s[i];
  return all > 0 ? std::max(0.0, (all - top) / all) : 0.0;
}

std::vector<uint8_t> tailorkv_dense_layers(const std::vector<float> &outside_mass, float threshold) {
  std::vector<uint8_t> d(outside_mass.size());
  for (size_t l = 0; l < d.size(); ++l) d[l] = outside_mass[l] > threshold ? 1 : 0;
  return d;
}

TailorProfileKvCache::TailorProfileKvCache(const KvShape &shape, int min_pos, int stride)
    : min_pos_(min_pos), stride_(std::max(1, stride)) {
  shape_ = shape;
  k_.resize((size_t)shape.n_layer * shape.n_head_kv * shape.n_ctx * shape.head_dim);
  v_.resize(k_.size());
  sum_.assign(shape.n_layer, 0.0);
  count_.assign(shape.n_layer, 0);
}

void TailorProfileKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      const size_t dst = (((size_t)layer * nkv + h) * shape_.n_ctx + pos0 + t) * hd;
      std::memcpy(&k_[dst], k + ((size_t)t * nkv + h) * hd, hd * sizeof(float));
      std::memcpy(&v_[dst], v + ((size_t)t * nkv + h) * hd, hd * sizeof(float));
    }
}

void TailorProfileKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  const int hd = shape_.head_dim, nh = shape_.n_head, nkv = shape_.n_head_kv, G = nh / nkv;
  auto krow = [&](int g, int j) -> const float * { return &k_[(((size_t)layer * nkv + g) * shape_.n_ctx + j) * hd]; };
  auto vrow = [&](int g, int j) -> const float * { return &v_[(((size_t)layer * nkv + g) * shape_.n_ctx + j) * hd]; };
  attn::causal_attention(pool, shape_, pos0, n, q, out, krow, vrow);
  // The measured rows, one task per (row, query head); partial sums reduced in order.
  std::vector<int> rows;
  for (int t = 0; t < n; ++t)
    if (pos0 + t >= min_pos_ && (pos0 + t) % stride_ == 0) rows.push_back(t);
  const int n_tasks = (int)rows.size() * nh;
  if (n_tasks == 0) return;
  std::vector<double> part(n_tasks);
  const float scale = 1.0f / std::sqrt((float)hd);
  std::atomic<int> next{0};
  pool.run([&](int, int) {
    std::vector<float> s;
    for (int task; (task = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int t = rows[task / nh], h = task % nh, g = h / G, keys = pos0 + t + 1;
      const float *qr = q + ((size_t)t * nh + h) * hd;
      s.resize(keys);
      float mx = -INFINITY;
      for (int j = 0; j < keys; ++j) {
        const float *kr = krow(g, j);
        float d = 0;
        for (int c = 0; c < hd; ++c) d += qr[c] * kr[c];
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      for (int j = 0; j < keys; ++j) s[j] = std::exp(s[j] - mx);
      part[task] = tailorkv_outside_mass(s.data(), keys);
    }
  });
  for (double x : part) sum_[layer] += x;
  count_[layer] += n_tasks;
}

std::vector<float> TailorProfileKvCache::outside_mass() const {
  std::vector<float> m(shape_.n_layer, 0.0f);
  for (int l = 0; l < shape_.n_layer; ++l) m[l] = count_[l] ? (float)(sum_[l] / (double)count_[l]) : 0.0f;
  return m;
}

// The engine has no tokenizer, so the profile's "fixed prompt" is a fixed
// synthetic sequence: Zipf-like draws from 256 ids of the vocabulary's common
// range (past the byte tokens), with earlier 16..47-token phrases repeated
// now and then (the structure induction/copy heads attend to).
std::vector<int32_t> tailorkv_profile_tokens(int n, int n_vocab, int bos) {
  uint32_t s = 0x2545F491u;
  auto next = [&]() {
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;
    return s;
  };
  int lo = std::min(256, n_vocab / 4), hi = std::min(n_vocab, 20000);
  if (hi - lo < 2) lo = 0, hi = n_vocab;
  std::vector<int32_t> common(256);
  for (auto &id : common) id = lo + (int32_t)(next() % (uint32_t)(hi - lo));
  std::vector<int32_t> t;
  if (bos >= 0 && bos < n_vocab) t.push_back(bos);
  while ((int)t.size() < n) {
    if (t.size() >= 64 && next() % 8 == 0) {
      const int len = 16 + (int)(next() % 32);
      const int from = (int)(next() % (uint32_t)(t.size() - len));
      for (int i = 0; i < len && (int)t.size() < n; ++i) t.push_back(t[from + i]);
    } else {
      const double u = (double)(next() >> 8) / (double)(1u << 24);
      t.push_back(common[std::min(255, (int)(256.0 * u * u * u))]);
    }
  }
  return t;
}

namespace {

constexpr int kProfileTokens = 1024;

uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = static_cast<const uint8_t *>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

std::string cache_dir() {
  const char *c = std::getenv("SPECODE_CACHE");
  if (c && *c) return c;
  const char *home = std::getenv("HOME");
  if (home && *home) return std::string(home) + "/.cache/specode";
  return "/tmp/specode-cache";
}

bool mkdirs(const std::string &dir) {
  std::string cur;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) return false;
    }
    if (i < dir.size()) cur += dir[i];
  }
  return true;
}

std::string layer_list(const std::vector<uint8_t> &dense) {
  std::string s;
  for (size_t l = 0; l < dense.size(); ++l)
    if (dense[l]) s += (s.empty() ? "" : " ") + std::to_string(l);
  return s.empty() ? "none" : s;
}

}  // namespace

std::string tailorkv_profile_path(const Model &model) {
  const Hparams &hp = model.hp;
  uint64_t h = 1469598103934665603ull;
  const uint64_t size = model.file.file_size();
  const int32_t dims[5] = {hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_vocab};
  h = fnv(h, &size, sizeof size);
  h = fnv(h, dims, sizeof dims);
  h = fnv(h, hp.arch.data(), hp.arch.size());
  h = fnv(h, hp.name.data(), hp.name.size());
  // Some weight bytes: two files of the same shape and size still differ here.
  for (const GgufTensor *t : {model.file.tensors().empty() ? nullptr : &model.file.tensors().front(),
                              model.file.tensors().empty() ? nullptr : &model.file.tensors().back()})
    if (t && t->data) h = fnv(h, t->data, std::min<uint64_t>(t->bytes, 1 << 16));
  char name[64];
  std::snprintf(name, sizeof name, "tailorkv-%016llx.profile", (unsigned long long)h);
  return cache_dir() + "/" + name;
}

bool tailorkv_profile(Model *model, int n_threads, std::vector<float> *outside_mass, std::string *err) {
  const Hparams &hp = model->hp;
  const std::string path = tailorkv_profile_path(*model);
  const std::string label = hp.name.empty() ? model->file.path() : hp.name;
  {
    std::ifstream in(path);
    std::string line;
    if (in && std::getline(in, line) && line == "specode tailorkv profile 1") {
      std::vector<float> m(hp.n_layer, -1.0f);
      while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string word;
        int l = -1;
        float x = -1.0f;
        if (ls >> word >> l >> x && word == "layer" && l >= 0 && l < hp.n_layer) m[l] = x;
      }
      if (std::all_of(m.begin(), m.end(), [](float x) { return x >= 0.0f; })) {
        *outside_mass = m;
        std::fprintf(stderr, "specode: tailorkv: layer profile of '%s' from %s; dense (1-bit) layers: %s\n",
                     label.c_str(), path.c_str(), layer_list(tailorkv_dense_layers(m)).c_str());
        return true;
      }
    }
  }
  const int n = std::max(2, std::min(kProfileTokens, hp.n_ctx_train > 0 ? hp.n_ctx_train : kProfileTokens));
  std::fprintf(stderr,
               "specode: tailorkv: profiling the attention of '%s' (%d layers) on a fixed %d-token sequence, "
               "once per model ...\n",
               label.c_str(), hp.n_layer, n);
  std::fflush(stderr);
  const int bos = (int)model->file.get_int("tokenizer.ggml.bos_token_id", -1);
  const std::vector<int32_t> tokens = tailorkv_profile_tokens(n, hp.n_vocab, bos);
  TailorProfileKvCache *prof = nullptr;
  ContextConfig cc;
  cc.n_ctx = n;
  cc.n_batch = 256;
  cc.n_threads = n_threads;
  cc.make_kv = [&](const KvShape &shape) {
    auto kv = std::make_unique<TailorProfileKvCache>(shape);
    prof = kv.get();
    return std::unique_ptr<KvCache>(std::move(kv));
  };
  Context ctx(model, cc);
  std::string derr;
  if (ctx.decode(tokens.data(), n, false, nullptr, &derr) != 0 || !prof) {
    *err = "tailorkv: the profile prefill failed: " + derr;
    return false;
  }
  *outside_mass = prof->outside_mass();
  const std::vector<uint8_t> dense = tailorkv_dense_layers(*outside_mass);
  std::string saved = "not saved: cannot create " + cache_dir();
  if (mkdirs(cache_dir())) {
    const std::string tmp = path + ".tmp";
    std::ofstream out(tmp);
    out << "specode tailorkv profile 1\n";
    out << "# model " << label << "; attention mass outside the top 5% of keys, mean over query rows and heads;\n";
    out << "# dense (1-bit, quantize-only) when > " << kTailorDenseThreshold << "; " << n << " tokens\n";
    for (int l = 0; l < hp.n_layer; ++l) out << "layer " << l << " " << (*outside_mass)[l] << "\n";
    out.close();
    if (out && std::rename(tmp.c_str(), path.c_str()) == 0) saved = "saved to " + path;
    else saved = "not saved: cannot write " + path;
  }
  std::fprintf(stderr, "specode: tailorkv: dense (1-bit) layers: %s (mass outside the top 5%% of keys > %.1f); %s\n",
               layer_list(dense).c_str(), kTailorDenseThreshold, saved.c_str());
  return true;
}

// ---- the cache -----------------------------------------------------------------

TailorKvCache::TailorKvCache(const KvShape &shape, const SeedKvConfig &cfg) : cfg_(cfg) {
  shape_ = shape;
  dense_idx_.assign(shape.n_layer, -1);
  sparse_idx_.assign(shape.n_layer, -1);
  int nd = 0;
  for (int l = 0; l < shape.n_layer; ++l) {
    const bool d = l < (int)cfg.dense_layers.size() && cfg.dense_layers[l];
    (d ? dense_idx_[l] : sparse_idx_[l]) = d ? nd++ : n_sparse_++;
  }
  if (nd > 0) {
    KvShape ds = shape;
    ds.n_layer = nd;
    BaselineKvConfig bc;
    bc.policy = kKvKivi;
    bc.bits = 1;
    bc.group = cfg.tk_group;
    bc.residual = cfg.tk_residual;
    kivi_ = std::make_unique<KiviKvCache>(ds, bc);
  }
  k_.resize((size_t)n_sparse_ * shape.n_head_kv * shape.n_ctx * shape.head_dim);
  v_.resize(k_.size());
  kmax_.assign((size_t)shape.n_layer * shape.n_head_kv * shape.head_dim, 0.0f);
  sel_.resize((size_t)shape.n_layer * shape.n_head_kv);
}

bool TailorKvCache::begin_pass(const KvPass &pass) {
  pass_ = pass;
  n_tokens_ = pass.pos0;
  if (kivi_) kivi_->begin_pass(pass);
  return true;
}

void TailorKvCache::end_pass() {
  n_tokens_ = pass_.pos0 + pass_.n_keep;
  if (kivi_) kivi_->end_pass();
}

void TailorKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  if (dense(layer)) {
    kivi_->store(dense_idx_[layer], pos0, n, k, v);
    return;
  }
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      const float *kr = k + ((size_t)t * nkv + h) * hd;
      f32_to_f16_row(kr, &k_[row(layer, h, pos0 + t)], hd);
      f32_to_f16_row(v + ((size_t)t * nkv + h) * hd, &v_[row(layer, h, pos0 + t)], hd);
      float *mx = &kmax_[lh(layer, h) * hd];
      // A speculative row would leave its max behind; the channel choice
      // only ranks channels, so an over-estimate there is harmless.
      for (int c = 0; c < hd; ++c) mx[c] = std::max(mx[c], std::fabs(kr[c]));
    }
}

// The rows (layer, kv head g) loads for the query at position n_tokens - 1:
// sinks, the approximate top-k of the middle, the recent window (ascending).
void TailorKvCache::select(int layer, int g, int n_tokens, const float *q) {
  const int hd = shape_.head_dim, nh = shape_.n_head, G = nh / shape_.n_head_kv;
  const int S = cfg_.tk_sinks, R = cfg_.tk_recent, C = std::min(cfg_.tk_channels, hd);
  const int m0 = S, m1 = n_tokens - R, mid = m1 - m0;
  std::vector<float> score(mid, -INFINITY);
  const float *mx = &kmax_[lh(layer, g) * hd];
  std::vector<int> ch(hd);
  std::vector<float> w(hd);
  for (int hq = 0; hq < G; ++hq) {
    const float *qr = q + (size_t)(g * G + hq) * hd;
    // The C channels with the largest |q_c| · max|K_c| (ties: the lower channel).
    for (int c = 0; c < hd; ++c) ch[c] = c, w[c] = std::fabs(qr[c]) * mx[c];
    std::partial_sort(ch.begin(), ch.begin() + C, ch.end(),
                      [&](int a, int b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
    for (int j = 0; j < mid; ++j) {
      const uint16_t *kr = &k_[row(layer, g, m0 + j)];
      float s = 0;
      for (int i = 0; i < C; ++i) s += qr[ch[i]] * fp16_to_fp32(kr[ch[i]]);
      score[j] = std::max(score[j], s);
    }
  }
  std::vector<int32_t> top(std::min(mid, cfg_.tk_topk));
  const int got = select_topk(score.data(), mid, cfg_.tk_topk, top.data());
  std::vector<int32_t> &sel = sel_[lh(layer, g)];
  sel.clear();
  for (int p = 0; p < S; ++p) sel.push_back(p);
  for (int i = 0; i < got; ++i) sel.push_back(m0 + top[i]);
  for (int p = m1; p < n_tokens; ++p) sel.push_back(p);
}

void TailorKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  if (dense(layer)) {
    kivi_->attend(dense_idx_[layer], pos0, n, q, out, pool);
    return;
  }
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv, N = pos0 + n, L = load_rows();
  auto kf = [&](int g, int j) -> const uint16_t * { return &k_[row(layer, g, j)]; };
  auto vf = [&](int g, int j) -> const uint16_t * { return &v_[row(layer, g, j)]; };
  // Prefill, and steps whose context fits the load: every row, exactly.
  if (!pass_.decode || n != 1 || N <= L) {
    attn::causal_attention(pool, shape_, pos0, n, q, out, kf, vf);
    return;
  }
  // Selection with this layer's own query (not the next layer's; tailorkv.h).
  bk_.resize((size_t)nkv * L * hd);
  bv_.resize(bk_.size());
  std::vector<uint64_t> fetched(nkv, 0);
  std::atomic<int> next{0};
  pool.run([&](int, int) {
    for (int g; (g = next.fetch_add(1, std::memory_order_relaxed)) < nkv;) {
      std::vector<int32_t> prev = sel_[lh(layer, g)];
      select(layer, g, N, q);
      const std::vector<int32_t> &sel = sel_[lh(layer, g)];
      for (int i = 0; i < L; ++i) {
        std::memcpy(&bk_[((size_t)g * L + i) * hd], kf(g, sel[i]), hd * sizeof(uint16_t));
        std::memcpy(&bv_[((size_t)g * L + i) * hd], vf(g, sel[i]), hd * sizeof(uint16_t));
        // Rows the buffer held last step need no copy over the link.
        if (!std::binary_search(prev.begin(), prev.end(), sel[i])) fetched[g] += (uint64_t)hd * 2 * sizeof(uint16_t);
      }
    }
  });
  for (uint64_t f : fetched) fetch_total_ += f;
  attn::causal_attention(
      pool, shape_, L - 1, 1, q, out, [&](int g, int j) -> const uint16_t * { return &bk_[((size_t)g * L + j) * hd]; },
      [&](int g, int j) -> const uint16_t * { return &bv_[((size_t)g * L + j) * hd]; });
}

void TailorKvCache::truncate(int n_keep) {
  if (n_keep >= n_tokens_) return;
  n_keep = std::max(0, n_keep);
  n_tokens_ = n_keep;
  if (kivi_) kivi_->truncate(n_keep);
  const int hd = shape_.head_dim;
  for (int l = 0; l < shape_.n_layer; ++l) {
    if (dense(l)) continue;
    for (int h = 0; h < shape_.n_head_kv; ++h) {
      float *mx = &kmax_[lh(l, h) * hd];
      std::fill(mx, mx + hd, 0.0f);
      for (int p = 0; p < n_keep; ++p) {
        const uint16_t *kr = &k_[row(l, h, p)];
        for (int c = 0; c < hd; ++c) mx[c] = std::max(mx[c], std::fabs(fp16_to_fp32(kr[c])));
      }
      sel_[lh(l, h)].clear();
    }
  }
}

bool TailorKvCache::read(int layer, int pos0, int n, float *k, float *v) const {
  if (dense(layer) || pos0 + n > n_tokens_) return false;  // dense layers keep no full-precision copy
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h)
      for (int c = 0; c < hd; ++c) {
        k[((size_t)t * nkv + h) * hd + c] = fp16_to_fp32(k_[row(layer, h, pos0 + t) + c]);
        v[((size_t)t * nkv + h) * hd + c] = fp16_to_fp32(v_[row(layer, h, pos0 + t) + c]);
      }
  return true;
}

uint64_t TailorKvCache::bytes() const {
  KvMetrics m;
  metrics(&m);
  return m.device_lowbit_bytes + m.device_residual_bytes + m.device_prefetch_bytes + m.device_full_bytes;
}

void TailorKvCache::metrics(KvMetrics *out) const {
  *out = KvMetrics{};
  if (kivi_) {
    KvMetrics d;
    kivi_->metrics(&d);
    out->device_lowbit_bytes = d.device_lowbit_bytes;
    out->device_residual_bytes = d.device_residual_bytes;
    out->n_lowbit_tokens = d.n_lowbit_tokens;
    out->n_residual_tokens = d.n_residual_tokens;
  }
  const uint64_t row2 = (uint64_t)shape_.head_dim * 2 * sizeof(uint16_t);  // one K+V fp16 row
  // Sparse layers: the load buffer (sinks + recent + top-k rows) and the
  // per-channel max |K| (fp16) on the device; every row on the host.
  out->device_prefetch_bytes =
      (uint64_t)n_sparse_ * shape_.n_head_kv * ((uint64_t)load_rows() * row2 + shape_.head_dim * sizeof(uint16_t));
  out->host_bytes = (uint64_t)n_sparse_ * shape_.n_head_kv * (uint64_t)n_tokens_ * row2;
  out->n_tokens = (uint64_t)n_tokens_;
  out->fetch_bytes_total = fetch_total_;
}

}  // namespace specode

// Engine-level tests: GGUF reader and loader errors on bad files, the sampler,
// the thread pool. Real-model checks live in the TypeScript tests.
#include <unistd.h>

#include <cstdio>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gguf.h"
#include "quant.h"
#include "specode.h"
#include "testing.h"
#include "threadpool.h"

namespace {

// Minimal GGUF writer for test files.
struct GgufWriter {
  std::vector<uint8_t> b;
  template <typename T>
  void put(T v) {
    const uint8_t *p = reinterpret_cast<const uint8_t *>(&v);
    b.insert(b.end(), p, p + sizeof(T));
  }
  void str(const std::string &s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void kv_str(const std::string &k, const std::string &v) { str(k); put<uint32_t>(8); str(v); }
  void kv_u32(const std::string &k, uint32_t v) { str(k); put<uint32_t>(4); put<uint32_t>(v); }
  void kv_f32(const std::string &k, float v) { str(k); put<uint32_t>(6); put<float>(v); }
};

struct TensorSpec {
  std::string name;
  uint32_t type;
  std::vector<int64_t> ne;
};

// A structurally valid tiny llama model (random-ish weights, F32/F16).
std::vector<uint8_t> tiny_model(const std::string &arch, uint32_t weight_type, int n_layer = 1) {
  const int E = 32, FF = 64, V = 64, H = 4, HKV = 2, HD = E / H;
  std::vector<TensorSpec> ts = {{"token_embd.weight", weight_type, {E, V}}, {"output_norm.weight", 0, {E}}};
  for (int l = 0; l < n_layer; ++l) {
    std::string p = "blk." + std::to_string(l) + ".";
    ts.push_back({p + "attn_norm.weight", 0, {E}});
    ts.push_back({p + "attn_q.weight", weight_type, {E, H * HD}});
    ts.push_back({p + "attn_k.weight", weight_type, {E, HKV * HD}});
    ts.push_back({p + "attn_v.weight", weight_type, {E, HKV * HD}});
    ts.push_back({p + "attn_output.weight", weight_type, {H * HD, E}});
    ts.push_back({p + "ffn_norm.weight", 0, {E}});
    ts.push_back({p + "ffn_gate.weight", weight_type, {E, FF}});
    ts.push_back({p + "ffn_up.weight", weight_type, {E, FF}});
    ts.push_back({p + "ffn_down.weight", weight_type, {FF, E}});
  }
  GgufWriter w;
  w.put<uint32_t>(0x46554747u);
  w.put<uint32_t>(3);
  w.put<uint64_t>(ts.size());
  w.put<uint64_t>(8);
  w.kv_str("general.architecture", arch);
  w.kv_u32(arch + ".embedding_length", E);
  w.kv_u32(arch + ".block_count", n_layer);
  w.kv_u32(arch + ".attention.head_count", H);
  w.kv_u32(arch + ".attention.head_count_kv", HKV);
  w.kv_u32(arch + ".feed_forward_length", FF);
  w.kv_u32(arch + ".context_length", 128);
  w.kv_f32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
  uint64_t off = 0;
  std::vector<uint64_t> sizes;
  for (auto &t : ts) {
    w.str(t.name);
    w.put<uint32_t>(t.ne.size());
    int64_t n = 1;
    for (auto d : t.ne) w.put<uint64_t>(d), n *= d;
    w.put<uint32_t>(t.type);
    w.put<uint64_t>(off);
    uint64_t bytes = t.type == 0 ? n * 4 : specode::dtype_row_bytes((specode::DType)t.type, t.ne[0]) * (n / t.ne[0]);
    sizes.push_back(bytes);
    off += (bytes + 31) / 32 * 32;
  }
  while (w.b.size() % 32) w.b.push_back(0);
  uint32_t seed = 1;
  for (size_t i = 0; i < ts.size(); ++i) {
    size_t start = w.b.size();
    const auto &t = ts[i];
    int64_t n = sizes[i] / (t.type == 0 ? 4 : 2);
    for (int64_t j = 0; j < n; ++j) {
      seed = seed * 1664525u + 1013904223u;
      float v = ((seed >> 9) / 8388608.0f - 0.5f) * 0.5f;
      if (t.ne.size() == 1) v = 1.0f;
      if (t.type == 0) w.put<float>(v);
      else w.put<uint16_t>(specode::fp32_to_fp16(v));
    }
    while ((w.b.size() - start) % 32) w.b.push_back(0);
  }
  return w.b;
}

std::string write_temp(const std::vector<uint8_t> &bytes, const char *tag) {
  char path[256];
  std::snprintf(path, sizeof path, "/tmp/specode_test_%d_%s.gguf", (int)getpid(), tag);
  FILE *f = std::fopen(path, "wb");
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
  return path;
}

// Loads path with n_threads; *m is null (and the status says why) on failure.
int32_t load(const std::string &path, int n_threads, specode_model **m) {
  specode_model_params p = specode_model_default_params();
  p.path = path.c_str();
  p.n_threads = n_threads;
  *m = nullptr;
  return specode_model_load(&p, m);
}

int32_t try_load(const std::string &path, std::string *msg) {
  specode_model *m = nullptr;
  int32_t st = load(path, 1, &m);
  *msg = specode_last_error();
  if (m) specode_model_free(m);
  return st;
}

bool contains(const std::string &s, const char *what) { return s.find(what) != std::string::npos; }

}  // namespace

TEST(load_missing_file_names_it) {
  std::string msg;
  CHECK(try_load("/nonexistent/model.gguf", &msg) == SPECODE_ERR_IO);
  CHECK(contains(msg, "/nonexistent/model.gguf"));
}

TEST(load_bad_magic) {
  std::vector<uint8_t> junk(4096, 'x');
  std::string path = write_temp(junk, "magic"), msg;
  CHECK(try_load(path, &msg) == SPECODE_ERR_FORMAT);
  CHECK(contains(msg, "bad magic"));
  CHECK(contains(msg, path.c_str()));
  unlink(path.c_str());
}

TEST(load_truncated_anywhere_never_crashes) {
  auto full = tiny_model("llama", 0);
  // Every cut point in the header and a sample in the data must fail cleanly.
  int failures = 0;
  for (size_t cut = 0; cut < full.size(); cut += (cut < 2048 ? 7 : 997)) {
    std::vector<uint8_t> part(full.begin(), full.begin() + cut);
    std::string path = write_temp(part, "trunc"), msg;
    int32_t st = try_load(path, &msg);
    if (st == SPECODE_OK) ++failures;
    CHECK(!msg.empty());
    unlink(path.c_str());
  }
  CHECK(failures == 0);
  std::string path = write_temp(full, "full"), msg;
  CHECK(try_load(path, &msg) == SPECODE_OK);
  unlink(path.c_str());
}

TEST(load_unsupported_arch) {
  std::string path = write_temp(tiny_model("mamba", 0), "arch"), msg;
  CHECK(try_load(path, &msg) == SPECODE_ERR_UNSUPPORTED);
  CHECK(contains(msg, "mamba"));
  unlink(path.c_str());
}

TEST(load_unsupported_quant_type) {
  // Type 16 (IQ2_XXS) is not run by specode.
  auto bytes = tiny_model("llama", 0);
  // Patch the first tensor's type field: find "token_embd.weight" then skip dims.
  std::string name = "token_embd.weight";
  auto it = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  CHECK(it != bytes.end());
  size_t at = (it - bytes.begin()) + name.size() + 4 + 2 * 8;
  uint32_t t = 16;
  std::memcpy(&bytes[at], &t, 4);
  std::string path = write_temp(bytes, "quant"), msg;
  int32_t st = try_load(path, &msg);
  CHECK(st == SPECODE_ERR_UNSUPPORTED || st == SPECODE_ERR_FORMAT);
  CHECK(contains(msg, "token_embd.weight") || contains(msg, "type"));
  unlink(path.c_str());
}

TEST(decode_errors_are_reported) {
  std::string path = write_temp(tiny_model("llama", 1), "decode"), msg;
  specode_model *m = nullptr;
  CHECK(load(path, 2, &m) == SPECODE_OK);
  if (!m) return;
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = 16;
  specode_context *ctx = nullptr;
  CHECK(specode_context_init(m, &cp, &ctx) == SPECODE_OK);
  int32_t toks[20] = {1, 2, 3};
  CHECK(specode_decode(ctx, toks, 0, 0, nullptr) == SPECODE_ERR_ARGUMENT);  // empty prompt
  int32_t bad[1] = {999};
  CHECK(specode_decode(ctx, bad, 1, 0, nullptr) == SPECODE_ERR_ARGUMENT);   // id outside vocab
  CHECK(contains(specode_last_error(), "999"));
  CHECK(specode_decode(ctx, toks, 17, 0, nullptr) == SPECODE_ERR_CONTEXT_FULL);  // longer than n_ctx
  std::vector<float> logits(64 * 3);
  CHECK(specode_decode(ctx, toks, 3, 1, logits.data()) == SPECODE_OK);
  CHECK(specode_context_n_past(ctx) == 3);
  // Token-by-token gives the same last logits as the batch (f16 KV both ways).
  specode_context *ctx2 = nullptr;
  CHECK(specode_context_init(m, &cp, &ctx2) == SPECODE_OK);
  std::vector<float> one(64);
  for (int i = 0; i < 3; ++i) CHECK(specode_decode(ctx2, toks + i, 1, 0, one.data()) == SPECODE_OK);
  float maxdiff = 0;
  for (int i = 0; i < 64; ++i) maxdiff = std::max(maxdiff, std::fabs(one[i] - logits[2 * 64 + i]));
  CHECK(maxdiff < 1e-4f);
  // Truncate and redo gives the same logits again.
  CHECK(specode_context_truncate(ctx2, 2) == SPECODE_OK);
  CHECK(specode_decode(ctx2, toks + 2, 1, 0, one.data()) == SPECODE_OK);
  maxdiff = 0;
  for (int i = 0; i < 64; ++i) maxdiff = std::max(maxdiff, std::fabs(one[i] - logits[2 * 64 + i]));
  CHECK(maxdiff < 1e-4f);
  specode_context_free(ctx2);
  specode_context_free(ctx);
  specode_model_free(m);
  unlink(path.c_str());
}

TEST(sampler_greedy_and_penalty) {
  specode_sampler_params p = specode_sampler_default_params();
  p.temperature = 0;
  specode_sampler *s = nullptr;
  CHECK(specode_sampler_init(&p, &s) == SPECODE_OK);
  float logits[5] = {0.1f, 2.0f, 1.9f, -1.0f, 2.0f};
  CHECK(specode_sampler_sample(s, logits, 5) == 1);  // ties go to the lower id
  specode_sampler_free(s);

  p.repeat_penalty = 1.5f;
  CHECK(specode_sampler_init(&p, &s) == SPECODE_OK);
  specode_sampler_accept(s, 1);
  specode_sampler_accept(s, 4);
  CHECK(specode_sampler_sample(s, logits, 5) == 2);  // 2.0/1.5 < 1.9
  specode_sampler_free(s);
}

TEST(sampler_top_k_top_p_temperature) {
  specode_sampler_params p = specode_sampler_default_params();
  p.temperature = 1.0f;
  p.min_p = 0;
  p.top_p = 1.0f;
  p.top_k = 2;
  p.seed = 42;
  specode_sampler *s = nullptr;
  CHECK(specode_sampler_init(&p, &s) == SPECODE_OK);
  float logits[4] = {1.0f, 3.0f, 2.9f, 0.5f};
  std::map<int, int> counts;
  for (int i = 0; i < 2000; ++i) counts[specode_sampler_sample(s, logits, 4)]++;
  CHECK(counts[0] == 0 && counts[3] == 0);            // outside the top 2
  CHECK(counts[1] > 900 && counts[2] > 800);           // ~52% / 48%
  specode_sampler_free(s);

  p.top_k = 0;
  p.top_p = 0.5f;  // only the best token covers 50%
  CHECK(specode_sampler_init(&p, &s) == SPECODE_OK);
  float sharp[3] = {5.0f, 1.0f, 0.0f};
  for (int i = 0; i < 200; ++i) CHECK(specode_sampler_sample(s, sharp, 3) == 0);
  specode_sampler_free(s);

  // Same seed, same sequence.
  p.top_p = 1.0f;
  specode_sampler *a = nullptr, *b = nullptr;
  specode_sampler_init(&p, &a);
  specode_sampler_init(&p, &b);
  bool same = true;
  for (int i = 0; i < 100; ++i) same &= specode_sampler_sample(a, logits, 4) == specode_sampler_sample(b, logits, 4);
  CHECK(same);
  specode_sampler_free(a);
  specode_sampler_free(b);
}

TEST(threadpool_runs_every_thread) {
  specode::ThreadPool pool(3);
  for (int rep = 0; rep < 1000; ++rep) {
    std::atomic<int> mask{0};
    pool.run([&](int ith, int nth) {
      CHECK(nth == 3);
      mask.fetch_or(1 << ith);
    });
    CHECK(mask.load() == 7);
  }
}

// A generation step at the last position has no room for a speculative row: full and
// specache run a plain step there, with the logits a larger context gives (an earlier
// version stored the speculative row one past the cache).
TEST(step_at_the_last_position_is_exact) {
  std::string path = write_temp(tiny_model("llama", 0, 2), "lastpos");
  specode_model *m = nullptr;
  CHECK(load(path, 2, &m) == SPECODE_OK);
  if (!m) return;
  for (int policy : {SPECODE_KV_POLICY_FULL, SPECODE_KV_POLICY_SPECACHE}) {
    specode_context_params cp = specode_context_default_params();
    cp.kv_policy = policy;
    cp.kv_topk = 256;  // every row: specache's logits are full's
    specode_context *small = nullptr, *big = nullptr;
    cp.n_ctx = 40;
    CHECK(specode_context_init(m, &cp, &small) == SPECODE_OK);
    cp.n_ctx = 80;
    CHECK(specode_context_init(m, &cp, &big) == SPECODE_OK);
    if (!small || !big) break;
    std::vector<int32_t> prompt(37);
    for (int i = 0; i < 37; ++i) prompt[i] = (i * 5 + 1) % 64;
    CHECK(specode_decode(small, prompt.data(), 37, 0, nullptr) == SPECODE_OK);
    CHECK(specode_decode(big, prompt.data(), 37, 0, nullptr) == SPECODE_OK);
    std::vector<float> a(64), b(64);
    float worst = 0;
    for (int i = 0; i < 3; ++i) {  // positions 37, 38, 39: the last one has no room for a pair
      int32_t sa = -2;
      CHECK(specode_decode_spec(small, 7 + i, a.data(), &sa) == SPECODE_OK);
      CHECK(specode_decode_spec(big, 7 + i, b.data(), nullptr) == SPECODE_OK);
      if (i == 2) CHECK(sa == -1);
      for (int j = 0; j < 64; ++j) worst = std::max(worst, std::fabs(a[j] - b[j]));
    }
    CHECK(worst < 1e-5f);
    CHECK(specode_context_n_past(small) == 40);
    CHECK(specode_decode_spec(small, 3, a.data(), nullptr) == SPECODE_ERR_CONTEXT_FULL);
    specode_context_free(small);
    specode_context_free(big);
  }
  specode_model_free(m);
  unlink(path.c_str());
}

// The CUDA probe answers on any machine: a device, or the reason there is none.
TEST(cuda_probe_says_what_it_found_or_why_not) {
  specode_cuda_info info;
  CHECK(specode_cuda_probe(&info) == SPECODE_OK);
  if (info.available) {
    CHECK(info.device_count > 0 && info.name[0] != 0 && info.total_bytes > 0);
  } else {
    CHECK(info.device_count == 0 && info.reason[0] != 0);
  }
  std::printf("  %s\n", info.available ? info.name : info.reason);
  CHECK(specode_cuda_probe(nullptr) == SPECODE_ERR_ARGUMENT);
}

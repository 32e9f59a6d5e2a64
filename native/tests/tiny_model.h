// tiny_model.h — a tiny F32 llama GGUF written at test time (real-model head geometry:
// head_dim 64, GQA 4/2) and a prompt with repeating motifs; shared by the native tests.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "specode.h"

namespace tinygguf {

struct Writer {
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

constexpr int kVocab = 96;

// n_layer layers, 4 heads, 2 KV heads, head_dim 64; `tag` makes the file's name unique.
inline std::string write_tiny_model(int L, const char *tag, uint32_t wseed = 20260101) {
  const int E = 256, H = 4, HKV = 2, HD = E / H, FF = 256, V = kVocab;
  struct T {
    std::string name;
    std::vector<int64_t> ne;
    float scale;
  };
  std::vector<T> ts = {{"token_embd.weight", {E, V}, 1.0f}, {"output_norm.weight", {E}, 0}};
  for (int l = 0; l < L; ++l) {
    std::string p = "blk." + std::to_string(l) + ".";
    ts.push_back({p + "attn_norm.weight", {E}, 0});
    ts.push_back({p + "attn_q.weight", {E, H * HD}, 0.25f});
    ts.push_back({p + "attn_k.weight", {E, HKV * HD}, 0.25f});
    ts.push_back({p + "attn_v.weight", {E, HKV * HD}, 0.12f});
    ts.push_back({p + "attn_output.weight", {H * HD, E}, 0.12f});
    ts.push_back({p + "ffn_norm.weight", {E}, 0});
    ts.push_back({p + "ffn_gate.weight", {E, FF}, 0.12f});
    ts.push_back({p + "ffn_up.weight", {E, FF}, 0.12f});
    ts.push_back({p + "ffn_down.weight", {FF, E}, 0.12f});
  }
  Writer w;
  w.put<uint32_t>(0x46554747u);
  w.put<uint32_t>(3);
  w.put<uint64_t>(ts.size());
  w.put<uint64_t>(8);
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.embedding_length", E);
  w.kv_u32("llama.block_count", L);
  w.kv_u32("llama.attention.head_count", H);
  w.kv_u32("llama.attention.head_count_kv", HKV);
  w.kv_u32("llama.feed_forward_length", FF);
  w.kv_u32("llama.context_length", 4096);
  w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  uint64_t off = 0;
  for (auto &t : ts) {
    w.str(t.name);
    w.put<uint32_t>(t.ne.size());
    int64_t n = 1;
    for (auto d : t.ne) w.put<uint64_t>(d), n *= d;
    w.put<uint32_t>(0);
    w.put<uint64_t>(off);
    off += (n * 4 + 31) / 32 * 32;
  }
  while (w.b.size() % 32) w.b.push_back(0);
  std::mt19937 rng(wseed);
  std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
  for (auto &t : ts) {
    size_t start = w.b.size();
    int64_t n = 1;
    for (auto d : t.ne) n *= d;
    for (int64_t j = 0; j < n; ++j) w.put<float>(t.ne.size() == 1 ? 1.0f : ud(rng) * t.scale);
    while ((w.b.size() - start) % 32) w.b.push_back(0);
  }
  char path[256];
  std::snprintf(path, sizeof path, "/tmp/specode_%s_%d.gguf", tag, (int)getpid());
  FILE *f = std::fopen(path, "wb");
  std::fwrite(w.b.data(), 1, w.b.size(), f);
  std::fclose(f);
  return path;
}

// Repeating motifs, so attention has something to find.
inline std::vector<int32_t> prompt(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i % 37 < 20) ? (int32_t)((i % 37) * 3 % kVocab) : (int32_t)(rng() % kVocab);
  return t;
}

// The tiny model written and loaded (2 threads); removed again on destruction.
struct TinyFile {
  std::string path;
  specode_model *model = nullptr;
  explicit TinyFile(int n_layer, const char *tag, uint32_t wseed = 20260101) {
    path = write_tiny_model(n_layer, tag, wseed);
    specode_model_params p = specode_model_default_params();
    p.path = path.c_str();
    p.n_threads = 2;
    if (specode_model_load(&p, &model) != SPECODE_OK) std::fprintf(stderr, "  load: %s\n", specode_last_error());
  }
  ~TinyFile() {
    specode_model_free(model);
    unlink(path.c_str());
  }
  TinyFile(const TinyFile &) = delete;
  TinyFile &operator=(const TinyFile &) = delete;
};

}  // namespace tinygguf

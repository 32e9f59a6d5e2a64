// model.h — a loaded Llama/Qwen2 model: hyper-parameters and weight views
// into the memory-mapped GGUF (weights are never copied or dequantized whole).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gguf.h"
#include "quant.h"
#include "threadpool.h"

namespace specode {

struct Hparams {
  std::string arch;      // "llama" | "qwen2"
  std::string name;      // general.name
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_ctx_train = 0;
  float rope_base = 10000.f;
  float rms_eps = 1e-5f;
  bool rope_neox = false;  // qwen2: rotate halves; llama (as converted to GGUF): adjacent pairs
};

// A weight matrix [rows][cols] (GGUF ne[0] = cols, ne[1] = rows) or a vector [cols].
struct Weight {
  const uint8_t *data = nullptr;
  DType type = DType::F32;
  int64_t cols = 0;
  int64_t rows = 1;
  size_t row_bytes = 0;
  explicit operator bool() const { return data != nullptr; }
  const float *f32() const { return reinterpret_cast<const float *>(data); }
};

struct LayerWeights {
  Weight attn_norm;        // [n_embd] f32
  Weight wq, wk, wv, wo;   // [n_head*hd][n_embd], [n_kv*hd][n_embd] x2, [n_embd][n_head*hd]
  Weight bq, bk, bv;       // optional biases (qwen2): [n_head*hd], [n_kv*hd] x2, f32
  Weight ffn_norm;         // [n_embd] f32
  Weight w_gate, w_up;     // [n_ff][n_embd]
  Weight w_down;           // [n_embd][n_ff]
};

struct Model {
  GgufFile file;
  Hparams hp;
  Weight tok_embd;     // [n_vocab][n_embd]
  Weight output_norm;  // [n_embd] f32
  Weight output;       // [n_vocab][n_embd]; = tok_embd when tied
  std::vector<LayerWeights> layers;
  std::string dominant_type;
  int n_threads = 1;
  std::unique_ptr<ThreadPool> pool;
  std::mutex pool_mutex;  // one forward pass at a time uses the pool
  // Identity of the weights for the KV disk tier (KvDisk::model_identity), computed by the
  // first context that uses the tier and kept for the next ones.
  std::once_flag disk_id_once;
  uint64_t disk_id = 0;
};

// Loads path into *out. On failure returns a specode_status and sets *err.
int model_load(const std::string &path, int n_threads, std::unique_ptr<Model> *out, std::string *err);

}  // namespace specode

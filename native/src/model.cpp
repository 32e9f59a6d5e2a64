#include "model.h"

#include <map>

#include "specode.h"

namespace specode {

namespace {

struct Loader {
  const GgufFile &f;
  std::string err;
  int status = SPECODE_OK;

  bool failed() const { return status != SPECODE_OK; }
  void fail(int st, const std::string &msg) {
    if (failed()) return;
    status = st;
    err = f.path() + ": " + msg;
  }

  // Finds tensor name and checks its shape: cols x rows (rows = 0: a vector).
  Weight get(const std::string &name, int64_t cols, int64_t rows, bool required = true) {
    Weight w;
    const GgufTensor *t = f.tensor(name);
    if (!t) {
      if (required) fail(SPECODE_ERR_FORMAT, "missing tensor '" + name + "'");
      return w;
    }
    if (!dtype_supported(t->type)) {
      fail(SPECODE_ERR_UNSUPPORTED, "tensor '" + name + "' has quant type " + dtype_name(t->type) +
                                        ", which specode does not run (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, "
                                        "Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)");
      return w;
    }
    int64_t want_rows = rows == 0 ? 1 : rows;
    if (t->ne[0] != cols || t->ne[1] != want_rows || t->ne[2] != 1 || t->ne[3] != 1) {
      fail(SPECODE_ERR_FORMAT, "tensor '" + name + "' has shape [" + std::to_string(t->ne[0]) + ", " +
                                   std::to_string(t->ne[1]) + "], expected [" + std::to_string(cols) + ", " +
                                   std::to_string(want_rows) + "]");
      return w;
    }
    if (rows == 0 && t->type != (uint32_t)DType::F32) {
      fail(SPECODE_ERR_UNSUPPORTED, "tensor '" + name + "' must be F32, is " + dtype_name(t->type));
      return w;
    }
    w.data = t->data;
    w.type = (DType)t->type;
    w.cols = cols;
    w.rows = want_rows;
    w.row_bytes = dtype_row_bytes(w.type, cols);
    return w;
  }
};

}  // namespace

int model_load(const std::string &path, int n_threads, std::unique_ptr<Model> *out, std::string *err) {
  auto m = std::make_unique<Model>();
  int status = SPECODE_OK;
  if (!m->file.open(path, err, &status)) return status;
  const GgufFile &f = m->file;
  Hparams &hp = m->hp;
  hp.arch = f.get_str("general.architecture");
  if (hp.arch.empty()) {
    *err = path + ": no general.architecture in the metadata (not a model file?)";
    return SPECODE_ERR_FORMAT;
  }
  if (hp.arch != "llama" && hp.arch != "qwen2") {
    *err = path + ": architecture '" + hp.arch + "' is not supported (specode runs llama and qwen2)";
    return SPECODE_ERR_UNSUPPORTED;
  }
  const std::string a = hp.arch + ".";
  hp.name = f.get_str("general.name");
  hp.n_embd = (int)f.get_int(a + "embedding_length", 0);
  hp.n_layer = (int)f.get_int(a + "block_count", 0);
  hp.n_head = (int)f.get_int(a + "attention.head_count", 0);
  hp.n_head_kv = (int)f.get_int(a + "attention.head_count_kv", hp.n_head);
  hp.n_ff = (int)f.get_int(a + "feed_forward_length", 0);
  hp.n_ctx_train = (int)f.get_int(a + "context_length", 2048);
  hp.rope_base = (float)f.get_num(a + "rope.freq_base", 10000.0);
  hp.rms_eps = (float)f.get_num(a + "attention.layer_norm_rms_epsilon", 1e-5);
  hp.rope_neox = hp.arch == "qwen2";
  if (hp.n_embd <= 0 || hp.n_layer <= 0 || hp.n_head <= 0 || hp.n_head_kv <= 0 || hp.n_ff <= 0 ||
      hp.n_embd % hp.n_head != 0 || hp.n_head % hp.n_head_kv != 0) {
    *err = path + ": inconsistent hyper-parameters (embedding " + std::to_string(hp.n_embd) + ", layers " +
           std::to_string(hp.n_layer) + ", heads " + std::to_string(hp.n_head) + "/" + std::to_string(hp.n_head_kv) +
           ", ffn " + std::to_string(hp.n_ff) + ")";
    return SPECODE_ERR_FORMAT;
  }
  hp.head_dim = hp.n_embd / hp.n_head;
  int rope_dims = (int)f.get_int(a + "rope.dimension_count", hp.head_dim);
  if (rope_dims != hp.head_dim || hp.head_dim % 2 != 0) {
    *err = path + ": partial rotary embeddings (rope.dimension_count " + std::to_string(rope_dims) +
           " != head_dim " + std::to_string(hp.head_dim) + ") are not supported";
    return SPECODE_ERR_UNSUPPORTED;
  }
  if (hp.head_dim % 4 != 0 || hp.head_dim > 256) {
    *err = path + ": head size " + std::to_string(hp.head_dim) +
           " is not supported (the attention kernels take multiples of 4 up to 256)";
    return SPECODE_ERR_UNSUPPORTED;
  }
  if (f.get("llama.rope.scaling.type") || f.get("qwen2.rope.scaling.type")) {
    std::string t = f.get_str(a + "rope.scaling.type", "none");
    if (t != "none") {
      *err = path + ": RoPE scaling '" + t + "' is not supported yet";
      return SPECODE_ERR_UNSUPPORTED;
    }
  }

  const GgufTensor *te = f.tensor("token_embd.weight");
  if (!te) {
    *err = path + ": missing tensor 'token_embd.weight'";
    return SPECODE_ERR_FORMAT;
  }
  hp.n_vocab = (int)te->ne[1];

  Loader L{f, {}, SPECODE_OK};
  const int E = hp.n_embd, HD = hp.head_dim, Q = hp.n_head * HD, KV = hp.n_head_kv * HD;
  m->tok_embd = L.get("token_embd.weight", E, hp.n_vocab);
  m->output_norm = L.get("output_norm.weight", E, 0);
  m->output = L.get("output.weight", E, hp.n_vocab, false);
  if (!m->output) m->output = m->tok_embd;
  m->layers.resize(hp.n_layer);
  std::map<std::string, uint64_t> bytes_by_type;
  for (int l = 0; l < hp.n_layer && !L.failed(); ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights &w = m->layers[l];
    w.attn_norm = L.get(p + "attn_norm.weight", E, 0);
    w.wq = L.get(p + "attn_q.weight", E, Q);
    w.wk = L.get(p + "attn_k.weight", E, KV);
    w.wv = L.get(p + "attn_v.weight", E, KV);
    w.wo = L.get(p + "attn_output.weight", Q, E);
    w.bq = L.get(p + "attn_q.bias", Q, 0, false);
    w.bk = L.get(p + "attn_k.bias", KV, 0, false);
    w.bv = L.get(p + "attn_v.bias", KV, 0, false);
    w.ffn_norm = L.get(p + "ffn_norm.weight", E, 0);
    w.w_gate = L.get(p + "ffn_gate.weight", E, hp.n_ff);
    w.w_up = L.get(p + "ffn_up.weight", E, hp.n_ff);
    w.w_down = L.get(p + "ffn_down.weight", hp.n_ff, E);
    for (const Weight *x : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down})
      if (*x) bytes_by_type[dtype_name((uint32_t)x->type)] += x->row_bytes * x->rows;
  }
  if (L.failed()) {
    *err = L.err;
    return L.status;
  }
  uint64_t best = 0;
  for (auto &kv : bytes_by_type)
    if (kv.second > best) best = kv.second, m->dominant_type = kv.first;
  m->n_threads = n_threads > 0 ? n_threads : hardware_threads();
  m->pool = std::make_unique<ThreadPool>(m->n_threads);
  *out = std::move(m);
  return SPECODE_OK;
}

}  // namespace specode

// addon.cpp — Node-API binding: a thin layer over specode.h.
// Long work (model load, decode) runs on the libuv pool and settles a Promise;
// nothing blocks the JS thread. Node-API only, so the same binary loads in
// plain Node and in VS Code's extension host.
#include <node_api.h>

#include <cstring>
#include <string>
#include <vector>

#include "specode.h"

namespace {

#define NAPI_OK(env, call)                                                  \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      const napi_extended_error_info *info_ = nullptr;                      \
      napi_get_last_error_info((env), &info_);                              \
      bool pending_ = false;                                                \
      napi_is_exception_pending((env), &pending_);                          \
      if (!pending_)                                                        \
        napi_throw_error((env), "INTERNAL",                                 \
                         info_ && info_->error_message ? info_->error_message : "napi call failed"); \
      return nullptr;                                                       \
    }                                                                       \
  } while (0)

const char *status_code(int32_t st) {
  switch (st) {
    case SPECODE_ERR_IO: return "IO";
    case SPECODE_ERR_FORMAT: return "FORMAT";
    case SPECODE_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case SPECODE_ERR_ARGUMENT: return "ARGUMENT";
    case SPECODE_ERR_CONTEXT_FULL: return "CONTEXT_FULL";
    case SPECODE_ERR_CANCELLED: return "CANCELLED";
    case SPECODE_ERR_NOMEM: return "NOMEM";
    default: return "UNKNOWN";
  }
}

napi_value make_error(napi_env env, int32_t st, const std::string &msg) {
  napi_value code, text, err;
  napi_create_string_utf8(env, status_code(st), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg.c_str(), msg.size(), &text);
  napi_create_error(env, code, text, &err);
  return err;
}

void throw_error(napi_env env, int32_t st, const std::string &msg) { napi_throw(env, make_error(env, st, msg)); }

// ---- argument helpers -----------------------------------------------------

bool get_prop(napi_env env, napi_value obj, const char *name, napi_value *out) {
  napi_valuetype t;
  if (!obj || napi_typeof(env, obj, &t) != napi_ok || t != napi_object) return false;
  bool has = false;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) return false;
  if (napi_get_named_property(env, obj, name, out) != napi_ok) return false;
  napi_typeof(env, *out, &t);
  return t != napi_undefined && t != napi_null;
}

double opt_num(napi_env env, napi_value obj, const char *name, double fallback) {
  napi_value v;
  double d;
  if (get_prop(env, obj, name, &v) && napi_get_value_double(env, v, &d) == napi_ok) return d;
  return fallback;
}

bool opt_bool(napi_env env, napi_value obj, const char *name, bool fallback) {
  napi_value v;
  bool b;
  if (get_prop(env, obj, name, &v) && napi_get_value_bool(env, v, &b) == napi_ok) return b;
  return fallback;
}

std::string opt_str(napi_env env, napi_value obj, const char *name, const std::string &fallback) {
  napi_value v;
  size_t n = 0;
  if (!get_prop(env, obj, name, &v) || napi_get_value_string_utf8(env, v, nullptr, 0, &n) != napi_ok) return fallback;
  std::string s(n, '\0');
  napi_get_value_string_utf8(env, v, &s[0], n + 1, &n);
  return s;
}

void set_fn(napi_env env, napi_value obj, const char *name, napi_callback cb, void *data) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, data, &fn);
  napi_set_named_property(env, obj, name, fn);
}

void set_num(napi_env env, napi_value obj, const char *name, double v) {
  napi_value x;
  napi_create_double(env, v, &x);
  napi_set_named_property(env, obj, name, x);
}

void set_str(napi_env env, napi_value obj, const char *name, const char *v) {
  napi_value x;
  napi_create_string_utf8(env, v, NAPI_AUTO_LENGTH, &x);
  napi_set_named_property(env, obj, name, x);
}

// ---- handles ----------------------------------------------------------------

// Lifetimes: the native object is freed when the user called free() (or the
// JS object was collected) and nothing uses it any more; the box itself is
// deleted only once its JS object is gone too (finalizers still point at it).
struct ModelBox {
  specode_model *model = nullptr;
  int contexts = 0;       // live contexts using the model
  bool released = false;  // free() called or JS object collected
  bool js_alive = true;   // the JS model object still exists
  void settle() {
    if (released && contexts == 0 && model) {
      specode_model_free(model);
      model = nullptr;
    }
    if (!js_alive && contexts == 0) delete this;
  }
};

struct ContextBox {
  specode_context *ctx = nullptr;
  ModelBox *model = nullptr;
  int32_t n_vocab = 0;
  bool busy = false;      // a decode is running on the pool
  bool released = false;  // free() called or JS object collected
  bool js_alive = true;   // the JS context object still exists
  void settle() {
    if (released && !busy && ctx) {
      specode_context_free(ctx);
      ctx = nullptr;
      model->contexts--;
      model->settle();
    }
    if (!js_alive && !busy && !ctx) delete this;
  }
};

struct SamplerBox {
  specode_sampler *sampler = nullptr;
};

template <typename T>
T *this_box(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_value self;
  void *data = nullptr;
  if (napi_get_cb_info(env, info, argc, argv, &self, &data) != napi_ok) return nullptr;
  return static_cast<T *>(data);
}

// The context of a method that needs it alive and idle (no decode running);
// nullptr after throwing the error that says which is not the case.
ContextBox *idle_context(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv, const char *what) {
  auto *box = this_box<ContextBox>(env, info, argc, argv);
  if (!box || box->released) return throw_error(env, SPECODE_ERR_ARGUMENT, std::string(what) + ": the context was freed"), nullptr;
  if (box->busy) return throw_error(env, SPECODE_ERR_ARGUMENT, std::string(what) + ": a decode is running"), nullptr;
  return box;
}

// ---- context ------------------------------------------------------------

struct DecodeWork {
  napi_async_work work = nullptr;
  napi_deferred deferred = nullptr;
  ContextBox *box = nullptr;
  std::vector<int32_t> tokens;
  bool all_logits = false;
  bool want_logits = true;
  bool spec = false;         // decodeSpec: one generation step, resolves {logits, specToken}
  int32_t spec_token = -1;
  std::vector<float> logits;
  int32_t status = SPECODE_OK;
  std::string error;
};

void decode_execute(napi_env, void *data) {
  auto *w = static_cast<DecodeWork *>(data);
  size_t rows = w->want_logits ? (w->all_logits ? w->tokens.size() : 1) : 0;
  try {
    w->logits.resize(rows * (size_t)w->box->n_vocab);
  } catch (...) {
    w->status = SPECODE_ERR_NOMEM;
    w->error = "decode: out of memory for the logits";
    return;
  }
  if (w->spec)
    w->status = specode_decode_spec(w->box->ctx, w->tokens[0], w->logits.data(), &w->spec_token);
  else
    w->status = specode_decode(w->box->ctx, w->tokens.data(), (uint32_t)w->tokens.size(), w->all_logits ? 1 : 0,
                               rows ? w->logits.data() : nullptr);
  if (w->status != SPECODE_OK) w->error = specode_last_error();
}

void decode_complete(napi_env env, napi_status, void *data) {
  auto *w = static_cast<DecodeWork *>(data);
  w->box->busy = false;
  if (w->status != SPECODE_OK) {
    napi_reject_deferred(env, w->deferred, make_error(env, w->status, w->error));
  } else if (!w->want_logits) {
    napi_value nul;
    napi_get_null(env, &nul);
    napi_resolve_deferred(env, w->deferred, nul);
  } else {
    napi_value ab, arr;
    void *buf = nullptr;
    size_t bytes = w->logits.size() * sizeof(float);
    napi_create_arraybuffer(env, bytes, &buf, &ab);
    std::memcpy(buf, w->logits.data(), bytes);
    napi_create_typedarray(env, napi_float32_array, w->logits.size(), ab, 0, &arr);
    if (w->spec) {
      napi_value o;
      napi_create_object(env, &o);
      napi_set_named_property(env, o, "logits", arr);
      set_num(env, o, "specToken", w->spec_token);
      arr = o;
    }
    napi_resolve_deferred(env, w->deferred, arr);
  }
  napi_delete_async_work(env, w->work);
  ContextBox *box = w->box;
  delete w;
  box->settle();
}

napi_value ctx_decode(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2] = {nullptr, nullptr};
  auto *box = this_box<ContextBox>(env, info, &argc, argv);
  if (!box || box->released) return throw_error(env, SPECODE_ERR_ARGUMENT, "decode: the context was freed"), nullptr;
  if (box->busy)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "decode: a decode is already running on this context"), nullptr;
  bool is_ta = false;
  if (argc < 1 || napi_is_typedarray(env, argv[0], &is_ta) != napi_ok || !is_ta)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "decode: tokens must be an Int32Array"), nullptr;
  napi_typedarray_type type;
  size_t length;
  void *data;
  NAPI_OK(env, napi_get_typedarray_info(env, argv[0], &type, &length, &data, nullptr, nullptr));
  if (type != napi_int32_array)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "decode: tokens must be an Int32Array"), nullptr;
  auto *w = new DecodeWork();
  w->box = box;
  w->tokens.assign(static_cast<int32_t *>(data), static_cast<int32_t *>(data) + length);
  napi_value opts = argc > 1 ? argv[1] : nullptr;
  w->all_logits = opt_bool(env, opts, "allLogits", false);
  w->want_logits = opt_bool(env, opts, "wantLogits", true);
  napi_value promise, name;
  NAPI_OK(env, napi_create_promise(env, &w->deferred, &promise));
  napi_create_string_utf8(env, "specode.decode", NAPI_AUTO_LENGTH, &name);
  NAPI_OK(env, napi_create_async_work(env, nullptr, name, decode_execute, decode_complete, w, &w->work));
  box->busy = true;
  NAPI_OK(env, napi_queue_async_work(env, w->work));
  return promise;
}

napi_value ctx_decode_spec(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1] = {nullptr};
  auto *box = this_box<ContextBox>(env, info, &argc, argv);
  if (!box || box->released)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "decodeSpec: the context was freed"), nullptr;
  if (box->busy)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "decodeSpec: a decode is already running on this context"), nullptr;
  int32_t token = 0;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &token) != napi_ok)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "decodeSpec: token must be a number"), nullptr;
  auto *w = new DecodeWork();
  w->box = box;
  w->tokens.assign(1, token);
  w->spec = true;
  napi_value promise, name;
  NAPI_OK(env, napi_create_promise(env, &w->deferred, &promise));
  napi_create_string_utf8(env, "specode.decodeSpec", NAPI_AUTO_LENGTH, &name);
  NAPI_OK(env, napi_create_async_work(env, nullptr, name, decode_execute, decode_complete, w, &w->work));
  box->busy = true;
  NAPI_OK(env, napi_queue_async_work(env, w->work));
  return promise;
}

napi_value ctx_truncate(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  auto *box = idle_context(env, info, &argc, argv, "truncate");
  if (!box) return nullptr;
  double n = 0;
  if (argc < 1 || napi_get_value_double(env, argv[0], &n) != napi_ok || n < 0)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "truncate: nKeep must be a number >= 0"), nullptr;
  int32_t st = specode_context_truncate(box->ctx, (uint32_t)n);
  if (st != SPECODE_OK) throw_error(env, st, specode_last_error());
  return nullptr;
}

// copyFrom(src): synchronous (it copies rows, it runs no model); see specode_context_copy.
napi_value ctx_copy_from(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  auto *box = this_box<ContextBox>(env, info, &argc, argv);
  if (!box || box->released) return throw_error(env, SPECODE_ERR_ARGUMENT, "copyFrom: the context was freed"), nullptr;
  void *raw = nullptr;
  if (argc < 1 || napi_unwrap(env, argv[0], &raw) != napi_ok || !raw)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "copyFrom: the argument must be a context"), nullptr;
  auto *src = static_cast<ContextBox *>(raw);
  if (src->released) return throw_error(env, SPECODE_ERR_ARGUMENT, "copyFrom: the source context was freed"), nullptr;
  if (box->busy || src->busy) return throw_error(env, SPECODE_ERR_ARGUMENT, "copyFrom: a decode is running"), nullptr;
  int32_t st = specode_context_copy(box->ctx, src->ctx);
  if (st != SPECODE_OK) throw_error(env, st, specode_last_error());
  return nullptr;
}

napi_value ctx_cancel(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *box = this_box<ContextBox>(env, info, &argc, nullptr);
  if (box && !box->released) specode_context_cancel(box->ctx);
  return nullptr;
}

napi_value ctx_n_past(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *box = this_box<ContextBox>(env, info, &argc, nullptr);
  napi_value v;
  napi_create_uint32(env, box && !box->released && !box->busy ? specode_context_n_past(box->ctx) : 0, &v);
  return v;
}

napi_value ctx_metrics(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *box = this_box<ContextBox>(env, info, &argc, nullptr);
  if (!box || box->released) return throw_error(env, SPECODE_ERR_ARGUMENT, "metrics: the context was freed"), nullptr;
  // A snapshot as of the last finished decode: safe while one runs.
  specode_kv_metrics m;
  int32_t st = specode_context_metrics(box->ctx, &m);
  if (st != SPECODE_OK) return throw_error(env, st, specode_last_error()), nullptr;
  napi_value o;
  napi_create_object(env, &o);
  set_str(env, o, "policy", m.policy);
  set_str(env, o, "backend", m.backend);
  set_num(env, o, "deviceWeightBytes", (double)m.device_weight_bytes);
  set_num(env, o, "deviceLowbitBytes", (double)m.device_lowbit_bytes);
  set_num(env, o, "deviceResidualBytes", (double)m.device_residual_bytes);
  set_num(env, o, "devicePrefetchBytes", (double)m.device_prefetch_bytes);
  set_num(env, o, "deviceFullBytes", (double)m.device_full_bytes);
  set_num(env, o, "deviceKvBytes", (double)m.device_kv_bytes);
  set_num(env, o, "deviceWorkspaceBytes", (double)m.device_workspace_bytes);
  set_num(env, o, "deviceFreeBytes", (double)m.device_free_bytes);
  set_num(env, o, "deviceTotalBytes", (double)m.device_total_bytes);
  set_num(env, o, "hostKvBytes", (double)m.host_kv_bytes);
  set_num(env, o, "fp16KvBytes", (double)m.fp16_kv_bytes);
  set_num(env, o, "compressionRatio", m.compression_ratio);
  set_num(env, o, "nTokens", (double)m.n_tokens);
  set_num(env, o, "nLowbitTokens", (double)m.n_lowbit_tokens);
  set_num(env, o, "nResidualTokens", (double)m.n_residual_tokens);
  set_num(env, o, "fetchBytesTotal", (double)m.fetch_bytes_total);
  set_num(env, o, "fetchBytesLast", (double)m.fetch_bytes_last);
  set_num(env, o, "stallNsTotal", (double)m.stall_ns_total);
  set_num(env, o, "stallNsLast", (double)m.stall_ns_last);
  set_num(env, o, "stepNsTotal", (double)m.step_ns_total);
  set_num(env, o, "stepNsLast", (double)m.step_ns_last);
  set_num(env, o, "steps", (double)m.steps);
  set_num(env, o, "specChecked", (double)m.spec_checked);
  set_num(env, o, "specMatched", (double)m.spec_matched);
  set_num(env, o, "specMatchRate", m.spec_match_rate);
  set_num(env, o, "overlapSamples", (double)m.overlap_samples);
  set_num(env, o, "topkOverlap", m.topk_overlap);
  set_num(env, o, "topkMassRecall", m.topk_mass_recall);
  set_num(env, o, "prefixReusedTokens", (double)m.prefix_reused_tokens);
  set_num(env, o, "hostPagesReferenced", (double)m.host_pages_referenced);
  set_num(env, o, "hostPagesCached", (double)m.host_pages_cached);
  set_num(env, o, "diskPagesLoaded", (double)m.disk_pages_loaded);
  set_num(env, o, "diskPagesSaved", (double)m.disk_pages_saved);
  set_num(env, o, "diskPagesRejected", (double)m.disk_pages_rejected);
  set_num(env, o, "diskBytes", (double)m.disk_bytes);
  set_num(env, o, "lowbitParamBits", (double)m.lowbit_param_bits);
  return o;
}

napi_value ctx_reset_metrics(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *box = idle_context(env, info, &argc, nullptr, "resetMetrics");
  if (!box) return nullptr;
  specode_context_reset_metrics(box->ctx);
  return nullptr;
}

// trackAttention(on: boolean): see specode_context_track_attention.
napi_value ctx_track_attention(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1] = {nullptr};
  auto *box = idle_context(env, info, &argc, argv, "trackAttention");
  if (!box) return nullptr;
  bool on = false;
  if (argc < 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "trackAttention: argument must be a boolean"), nullptr;
  const int32_t st = specode_context_track_attention(box->ctx, on ? 1 : 0);
  if (st != SPECODE_OK) return throw_error(env, st, specode_last_error()), nullptr;
  return nullptr;
}

// attentionMass(n: number): Float32Array of the read-out's sums for positions [0, n).
napi_value ctx_attention_mass(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1] = {nullptr};
  auto *box = idle_context(env, info, &argc, argv, "attentionMass");
  if (!box) return nullptr;
  uint32_t n = 0;
  if (argc < 1 || napi_get_value_uint32(env, argv[0], &n) != napi_ok)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "attentionMass: argument must be a token count"), nullptr;
  std::vector<float> mass(n);
  const int32_t got = specode_context_attention_mass(box->ctx, mass.data(), n);
  if (got < 0) return throw_error(env, got, specode_last_error()), nullptr;
  void *data = nullptr;
  napi_value ab, arr;
  napi_create_arraybuffer(env, (size_t)got * sizeof(float), &data, &ab);
  if (got > 0) std::memcpy(data, mass.data(), (size_t)got * sizeof(float));
  napi_create_typedarray(env, napi_float32_array, (size_t)got, ab, 0, &arr);
  return arr;
}

napi_value ctx_cached_prefix(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1] = {nullptr};
  auto *box = idle_context(env, info, &argc, argv, "cachedPrefix");
  if (!box) return nullptr;
  bool is_ta = false;
  napi_typedarray_type type;
  size_t length = 0;
  void *data = nullptr;
  if (argc < 1 || napi_is_typedarray(env, argv[0], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, argv[0], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_int32_array)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "cachedPrefix: tokens must be an Int32Array"), nullptr;
  uint32_t n = 0;
  int32_t st = specode_context_cached_prefix(box->ctx, static_cast<const int32_t *>(data), (uint32_t)length, &n);
  if (st != SPECODE_OK) return throw_error(env, st, specode_last_error()), nullptr;
  napi_value v;
  napi_create_uint32(env, n, &v);
  return v;
}

napi_value ctx_free(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *box = this_box<ContextBox>(env, info, &argc, nullptr);
  if (box && !box->released) {
    if (box->busy) specode_context_cancel(box->ctx);
    box->released = true;
    box->settle();
  }
  return nullptr;
}

// ---- model ------------------------------------------------------------------

napi_value model_info(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *h = this_box<ModelBox>(env, info, &argc, nullptr);
  if (!h || h->released) return throw_error(env, SPECODE_ERR_ARGUMENT, "info: the model was freed"), nullptr;
  specode_model_info mi;
  specode_model_get_info(h->model, &mi);
  napi_value o;
  napi_create_object(env, &o);
  set_str(env, o, "arch", mi.arch);
  set_str(env, o, "name", mi.name);
  set_num(env, o, "nVocab", mi.n_vocab);
  set_num(env, o, "nEmbd", mi.n_embd);
  set_num(env, o, "nLayer", mi.n_layer);
  set_num(env, o, "nHead", mi.n_head);
  set_num(env, o, "nHeadKv", mi.n_head_kv);
  set_num(env, o, "headDim", mi.head_dim);
  set_num(env, o, "nFf", mi.n_ff);
  set_num(env, o, "nCtxTrain", mi.n_ctx_train);
  set_num(env, o, "ropeFreqBase", mi.rope_freq_base);
  set_num(env, o, "rmsEps", mi.rms_eps);
  napi_value b;
  napi_get_boolean(env, mi.rope_neox != 0, &b);
  napi_set_named_property(env, o, "ropeNeox", b);
  set_num(env, o, "weightBytes", (double)mi.weight_bytes);
  set_str(env, o, "fileType", mi.file_type);
  return o;
}

void context_finalize(napi_env, void *data, void *) {
  auto *box = static_cast<ContextBox *>(data);
  if (!box->released) {
    box->released = true;
    box->settle();
  }
}

napi_value model_create_context(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1] = {nullptr};
  auto *h = this_box<ModelBox>(env, info, &argc, argv);
  if (!h || h->released)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "createContext: the model was freed"), nullptr;
  napi_value opts = argc > 0 ? argv[0] : nullptr;
  specode_context_params p = specode_context_default_params();
  p.n_ctx = (uint32_t)opt_num(env, opts, "nCtx", 0);
  p.n_batch = (uint32_t)opt_num(env, opts, "nBatch", 256);
  p.n_threads = (int32_t)opt_num(env, opts, "threads", 0);
  std::string kv = opt_str(env, opts, "kvType", "f16");
  if (kv != "f16" && kv != "f32")
    return throw_error(env, SPECODE_ERR_ARGUMENT, "createContext: kvType must be 'f16' or 'f32', got '" + kv + "'"),
           nullptr;
  p.kv_type = kv == "f32" ? SPECODE_KV_F32 : SPECODE_KV_F16;
  std::string policy = opt_str(env, opts, "policy", "full");
  if (policy == "full") p.kv_policy = SPECODE_KV_POLICY_FULL;
  else if (policy == "offload-all") p.kv_policy = SPECODE_KV_POLICY_OFFLOAD_ALL;
  else if (policy == "specache") p.kv_policy = SPECODE_KV_POLICY_SPECACHE;
  else if (policy == "specache-sync") p.kv_policy = SPECODE_KV_POLICY_SPECACHE_SYNC;
  else if (policy == "streamingllm") p.kv_policy = SPECODE_KV_POLICY_STREAMINGLLM;
  else if (policy == "h2o") p.kv_policy = SPECODE_KV_POLICY_H2O;
  else if (policy == "kivi") p.kv_policy = SPECODE_KV_POLICY_KIVI;
  else if (policy == "tailorkv") p.kv_policy = SPECODE_KV_POLICY_TAILORKV;
  else if (policy == "gear") p.kv_policy = SPECODE_KV_POLICY_GEAR;
  else if (policy == "kvmerger") p.kv_policy = SPECODE_KV_POLICY_KVMERGER;
  else
    return throw_error(env, SPECODE_ERR_ARGUMENT,
                       "createContext: policy must be 'full', 'offload-all', 'specache', 'specache-sync', "
                       "'streamingllm', 'h2o', 'kivi', 'tailorkv', 'gear' or 'kvmerger', got '" +
                           policy + "'"),
           nullptr;
  p.kv_bits = (int32_t)opt_num(env, opts, "bits", p.kv_bits);
  p.kv_group = (int32_t)opt_num(env, opts, "group", p.kv_group);
  p.kv_topk = (int32_t)opt_num(env, opts, "topk", p.kv_topk);
  p.kv_rerank = (int32_t)opt_num(env, opts, "rerank", p.kv_rerank);
  p.kv_residual = (int32_t)opt_num(env, opts, "residual", p.kv_residual);
  p.kv_page_tokens = (int32_t)opt_num(env, opts, "pageTokens", p.kv_page_tokens);
  p.kv_measure = opt_bool(env, opts, "measure", false) ? 1 : 0;
  p.kv_sym_values = opt_bool(env, opts, "symValues", false) ? 1 : 0;
  p.kv_param_bits = (int32_t)opt_num(env, opts, "paramBits", p.kv_param_bits);
  p.kv_budget = (int32_t)opt_num(env, opts, "budget", p.kv_budget);
  p.kv_budget_ratio = (float)opt_num(env, opts, "budgetRatio", p.kv_budget_ratio);
  p.kv_sinks = (int32_t)opt_num(env, opts, "sinks", p.kv_sinks);
  const std::string disk_dir = opt_str(env, opts, "diskCacheDir", "");
  p.kv_disk_dir = disk_dir.c_str();
  p.kv_disk_max_bytes = (uint64_t)opt_num(env, opts, "diskCacheMaxBytes", 0);
  const std::string backend = opt_str(env, opts, "backend", "cpu");
  if (backend == "cpu") p.backend = SPECODE_BACKEND_CPU;
  else if (backend == "auto") p.backend = SPECODE_BACKEND_AUTO;
  else if (backend == "cuda") p.backend = SPECODE_BACKEND_CUDA;
  else
    return throw_error(env, SPECODE_ERR_ARGUMENT, "createContext: backend must be 'cpu', 'auto' or 'cuda', got '" + backend + "'"),
           nullptr;
  p.device_budget_bytes = (uint64_t)opt_num(env, opts, "deviceBudgetBytes", 0);
  specode_context *ctx = nullptr;
  int32_t st = specode_context_init(h->model, &p, &ctx);
  if (st != SPECODE_OK) return throw_error(env, st, specode_last_error()), nullptr;
  auto *box = new ContextBox();
  box->ctx = ctx;
  box->model = h;
  specode_model_info mi;
  specode_model_get_info(h->model, &mi);
  box->n_vocab = mi.n_vocab;
  h->contexts++;
  napi_value o;
  napi_create_object(env, &o);
  set_fn(env, o, "decode", ctx_decode, box);
  set_fn(env, o, "truncate", ctx_truncate, box);
  set_fn(env, o, "copyFrom", ctx_copy_from, box);
  set_fn(env, o, "cancel", ctx_cancel, box);
  set_fn(env, o, "decodeSpec", ctx_decode_spec, box);
  set_fn(env, o, "metrics", ctx_metrics, box);
  set_fn(env, o, "resetMetrics", ctx_reset_metrics, box);
  set_fn(env, o, "trackAttention", ctx_track_attention, box);
  set_fn(env, o, "attentionMass", ctx_attention_mass, box);
  set_fn(env, o, "cachedPrefix", ctx_cached_prefix, box);
  set_fn(env, o, "free", ctx_free, box);
  napi_property_descriptor getter = {"nPast", nullptr, nullptr, ctx_n_past, nullptr, nullptr, napi_enumerable, box};
  napi_define_properties(env, o, 1, &getter);
  specode_backend_info bi;
  specode_context_backend(ctx, &bi);
  napi_value b;
  napi_create_object(env, &b);
  set_str(env, b, "name", bi.name);
  set_str(env, b, "device", bi.device);
  set_str(env, b, "reason", bi.reason);
  napi_set_named_property(env, o, "backend", b);
  napi_wrap(env, o, box, context_finalize, nullptr, nullptr);
  return o;
}

napi_value model_free(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *h = this_box<ModelBox>(env, info, &argc, nullptr);
  if (h && !h->released) {
    h->released = true;
    h->settle();
  }
  return nullptr;
}

void model_finalize(napi_env, void *data, void *) {
  auto *h = static_cast<ModelBox *>(data);
  h->released = true;
  h->js_alive = false;
  h->settle();
}

struct LoadWork {
  napi_async_work work = nullptr;
  napi_deferred deferred = nullptr;
  std::string path;
  int32_t threads = 0;
  specode_model *model = nullptr;
  int32_t status = SPECODE_OK;
  std::string error;
};

void load_execute(napi_env, void *data) {
  auto *w = static_cast<LoadWork *>(data);
  specode_model_params p = specode_model_default_params();
  p.path = w->path.c_str();
  p.n_threads = w->threads;
  w->status = specode_model_load(&p, &w->model);
  if (w->status != SPECODE_OK) w->error = specode_last_error();
}

void load_complete(napi_env env, napi_status, void *data) {
  auto *w = static_cast<LoadWork *>(data);
  if (w->status != SPECODE_OK) {
    napi_reject_deferred(env, w->deferred, make_error(env, w->status, w->error));
  } else {
    auto *h = new ModelBox();
    h->model = w->model;
    napi_value o;
    napi_create_object(env, &o);
    set_fn(env, o, "info", model_info, h);
    set_fn(env, o, "createContext", model_create_context, h);
    set_fn(env, o, "free", model_free, h);
    napi_wrap(env, o, h, model_finalize, nullptr, nullptr);
    napi_resolve_deferred(env, w->deferred, o);
  }
  napi_delete_async_work(env, w->work);
  delete w;
}

napi_value load_model(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2] = {nullptr, nullptr};
  NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  napi_valuetype t = napi_undefined;
  if (argc > 0) napi_typeof(env, argv[0], &t);
  if (t != napi_string) return throw_error(env, SPECODE_ERR_ARGUMENT, "loadModel: path must be a string"), nullptr;
  auto *w = new LoadWork();
  size_t n = 0;
  napi_get_value_string_utf8(env, argv[0], nullptr, 0, &n);
  w->path.resize(n);
  napi_get_value_string_utf8(env, argv[0], &w->path[0], n + 1, &n);
  w->threads = (int32_t)opt_num(env, argc > 1 ? argv[1] : nullptr, "threads", 0);
  napi_value promise, name;
  NAPI_OK(env, napi_create_promise(env, &w->deferred, &promise));
  napi_create_string_utf8(env, "specode.loadModel", NAPI_AUTO_LENGTH, &name);
  NAPI_OK(env, napi_create_async_work(env, nullptr, name, load_execute, load_complete, w, &w->work));
  NAPI_OK(env, napi_queue_async_work(env, w->work));
  return promise;
}

// ---- sampler ----------------------------------------------------------------

napi_value sampler_accept(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  auto *s = this_box<SamplerBox>(env, info, &argc, argv);
  int32_t tok = 0;
  if (!s || !s->sampler) return throw_error(env, SPECODE_ERR_ARGUMENT, "accept: the sampler was freed"), nullptr;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &tok) != napi_ok)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "accept: token must be a number"), nullptr;
  specode_sampler_accept(s->sampler, tok);
  return nullptr;
}

napi_value sample_from(napi_env env, SamplerBox *s, const float *logits, int32_t n_vocab) {
  if (!s || !s->sampler) return throw_error(env, SPECODE_ERR_ARGUMENT, "sample: the sampler was freed"), nullptr;
  int32_t tok = specode_sampler_sample(s->sampler, logits, n_vocab);
  if (tok < 0) return throw_error(env, tok, specode_last_error()), nullptr;
  napi_value v;
  napi_create_int32(env, tok, &v);
  return v;
}

napi_value sampler_sample(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  auto *s = this_box<SamplerBox>(env, info, &argc, argv);
  ContextBox *box = nullptr;
  if (argc < 1 || napi_unwrap(env, argv[0], reinterpret_cast<void **>(&box)) != napi_ok || !box)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "sample: argument must be a context"), nullptr;
  if (box->released || box->busy)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "sample: the context is freed or busy"), nullptr;
  const float *logits = specode_context_logits(box->ctx);
  if (!logits) return throw_error(env, SPECODE_ERR_ARGUMENT, "sample: the context has no logits yet"), nullptr;
  return sample_from(env, s, logits, box->n_vocab);
}

napi_value sampler_sample_logits(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  auto *s = this_box<SamplerBox>(env, info, &argc, argv);
  bool is_ta = false;
  napi_typedarray_type type;
  size_t length = 0;
  void *data = nullptr;
  if (argc < 1 || napi_is_typedarray(env, argv[0], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, argv[0], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_float32_array || length == 0)
    return throw_error(env, SPECODE_ERR_ARGUMENT, "sampleLogits: argument must be a non-empty Float32Array"), nullptr;
  return sample_from(env, s, static_cast<const float *>(data), (int32_t)length);
}

napi_value sampler_free(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  auto *s = this_box<SamplerBox>(env, info, &argc, nullptr);
  if (s && s->sampler) {
    specode_sampler_free(s->sampler);
    s->sampler = nullptr;
  }
  return nullptr;
}

void sampler_finalize(napi_env, void *data, void *) {
  auto *s = static_cast<SamplerBox *>(data);
  if (s->sampler) specode_sampler_free(s->sampler);
  delete s;
}

napi_value create_sampler(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1] = {nullptr};
  NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  napi_value o = argc > 0 ? argv[0] : nullptr;
  specode_sampler_params p = specode_sampler_default_params();
  p.temperature = (float)opt_num(env, o, "temperature", p.temperature);
  p.top_k = (int32_t)opt_num(env, o, "topK", p.top_k);
  p.top_p = (float)opt_num(env, o, "topP", p.top_p);
  p.min_p = (float)opt_num(env, o, "minP", p.min_p);
  p.repeat_penalty = (float)opt_num(env, o, "repeatPenalty", p.repeat_penalty);
  p.repeat_last_n = (int32_t)opt_num(env, o, "repeatLastN", p.repeat_last_n);
  p.seed = (uint64_t)opt_num(env, o, "seed", (double)p.seed);
  specode_sampler *s = nullptr;
  int32_t st = specode_sampler_init(&p, &s);
  if (st != SPECODE_OK) return throw_error(env, st, specode_last_error()), nullptr;
  auto *box = new SamplerBox{s};
  napi_value obj;
  napi_create_object(env, &obj);
  set_fn(env, obj, "accept", sampler_accept, box);
  set_fn(env, obj, "sample", sampler_sample, box);
  set_fn(env, obj, "sampleLogits", sampler_sample_logits, box);
  set_fn(env, obj, "free", sampler_free, box);
  napi_wrap(env, obj, box, sampler_finalize, nullptr, nullptr);
  return obj;
}

napi_value cuda_probe(napi_env env, napi_callback_info) {
  specode_cuda_info info;
  specode_cuda_probe(&info);
  napi_value o;
  napi_create_object(env, &o);
  napi_value b;
  napi_get_boolean(env, info.available != 0, &b);
  napi_set_named_property(env, o, "available", b);
  set_num(env, o, "deviceCount", (double)info.device_count);
  set_num(env, o, "driverVersion", (double)info.driver_version);
  set_num(env, o, "totalBytes", (double)info.total_bytes);
  napi_value s;
  napi_create_string_utf8(env, info.name, NAPI_AUTO_LENGTH, &s);
  napi_set_named_property(env, o, "name", s);
  napi_create_string_utf8(env, info.reason, NAPI_AUTO_LENGTH, &s);
  napi_set_named_property(env, o, "reason", s);
  napi_get_boolean(env, info.backend_built != 0, &b);
  napi_set_named_property(env, o, "backendBuilt", b);
  return o;
}

napi_value cpu_kernels(napi_env env, napi_callback_info) {
  napi_value v;
  napi_create_string_utf8(env, specode_cpu_kernels(), NAPI_AUTO_LENGTH, &v);
  return v;
}

napi_value init(napi_env env, napi_value exports) {
  set_fn(env, exports, "loadModel", load_model, nullptr);
  set_fn(env, exports, "createSampler", create_sampler, nullptr);
  set_fn(env, exports, "cpuKernels", cpu_kernels, nullptr);
  set_fn(env, exports, "cudaProbe", cuda_probe, nullptr);
  return exports;
}

}  // namespace

NAPI_MODULE(specode, init)

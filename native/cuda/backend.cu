// backend.cu — the CUDA backend behind the C API (src/gpu_backend.h): a
// DeviceContext (forward.cu) driven the way the CPU's Context drives its KV
// policy — prefill in batches with cancellation, SpeCache's pre-decode and
// (real, speculative) steps, truncation for prefix reuse — with the metrics the
// status bar shows, taken from the device's own accounting and CUDA events.
#include <chrono>
#include <cstring>
#include <mutex>
#include <vector>

#include "context.h"
#include "cuda_forward.h"
#include "gpu_backend.h"
#include "lowbit.h"
#include "ops.h"

namespace specode {

namespace {

using cuda::DeviceContext;
using cuda::DeviceModel;

class CudaWeights final : public GpuWeights {
 public:
  std::unique_ptr<DeviceModel> model;
};

std::string cuda_message(const char *what) {
  const char *e = cuda::last_error();
  return std::string(what) + (e && *e ? std::string(": ") + e : std::string());
}

class CudaContext final : public GpuContext {
 public:
  CudaContext(std::shared_ptr<CudaWeights> w, std::unique_ptr<DeviceContext> dc, KvPolicy policy)
      : weights_(std::move(w)), dc_(std::move(dc)), policy_(policy), n_vocab_(weights_->model->hp.n_vocab) {
    logits_.resize(n_vocab_);
    step_logits_.resize((size_t)DeviceContext::kMaxStepTokens * n_vocab_);
    dc_->set_cancel(&cancel_);
    publish_metrics();
  }

  int decode(const int32_t *tokens, int n, bool all_logits, float *logits_out, std::string *err) override {
    cancel_.store(false);
    if (broken(err)) return SPECODE_ERR_UNSUPPORTED;
    int st = check_decode_tokens(weights_->model->hp, dc_->n_past(), dc_->n_ctx(), tokens, n, err);
    if (st != SPECODE_OK) return st;
    if (n == 1 && dc_->n_past() > 0) return step(tokens[0], policy_ == KvPolicy::Specache, logits_out, nullptr, err);
    has_logits_ = false;
    forget_speculation();
    const int before = dc_->n_past();
    st = all_logits && logits_out ? dc_->prefill(tokens, n, logits_out, true) : dc_->prefill(tokens, n, logits_.data());
    tokens_.insert(tokens_.end(), tokens, tokens + (dc_->n_past() - before));
    if (st == SPECODE_ERR_CANCELLED) {
      *err = "decode cancelled after " + std::to_string(dc_->n_past() - before) + " of " + std::to_string(n) + " tokens";
    } else if (st != SPECODE_OK) {
      *err = fail(cuda_message("decode: the CUDA prefill failed"));
    } else {
      if (all_logits && logits_out) std::memcpy(logits_.data(), logits_out + (size_t)(n - 1) * n_vocab_, n_vocab_ * sizeof(float));
      else if (logits_out) std::memcpy(logits_out, logits_.data(), n_vocab_ * sizeof(float));
      has_logits_ = true;
    }
    publish_metrics();
    return st;
  }

  int decode_step(int32_t token, float *logits_out, int32_t *spec_out, std::string *err) override {
    cancel_.store(false);
    if (broken(err)) return SPECODE_ERR_UNSUPPORTED;
    int st = check_decode_tokens(weights_->model->hp, dc_->n_past(), dc_->n_ctx(), &token, 1, err);
    if (st != SPECODE_OK) return st;
    if (dc_->n_past() == 0) {
      *err = "decode_spec: the context is empty; decode a prompt first";
      return SPECODE_ERR_ARGUMENT;
    }
    // full runs the two-token step with exact attention, as on the CPU (a reference for the
    // speculative token); offload-all a plain step.
    return step(token, policy_ != KvPolicy::OffloadAll, logits_out, spec_out, err);
  }

  int truncate(int n_keep, std::string *err) override {
    if (n_keep < 0) {
      *err = "truncate: n_keep must be >= 0";
      return SPECODE_ERR_ARGUMENT;
    }
    if (broken(err)) return SPECODE_ERR_UNSUPPORTED;
    if (n_keep >= dc_->n_past()) return SPECODE_OK;
    const int st = dc_->truncate(n_keep);
    tokens_.resize(dc_->n_past());
    has_logits_ = false;
    forget_speculation();
    publish_metrics();
    if (st != SPECODE_OK) *err = fail(cuda_message("truncate: the CUDA context failed"));
    return st;
  }

  int cached_prefix(const int32_t *tokens, int n) const override {
    int same = 0;
    while (same < n && same < (int)tokens_.size() && tokens_[same] == tokens[same]) ++same;
    return same;
  }

  void metrics(specode_kv_metrics *out) const override {
    std::lock_guard<std::mutex> lock(metrics_mutex_);
    *out = snapshot_;
  }

  void reset_metrics() override {
    counters_ = StepCounters{};
    fetch_total_ = stall_total_ = 0;
    publish_metrics();
  }

  int n_past() const override { return dc_->n_past(); }
  int n_ctx() const override { return dc_->n_ctx(); }
  const float *last_logits() const override { return has_logits_ ? logits_.data() : nullptr; }
  void cancel() override { cancel_.store(true); }

 private:
  void forget_speculation() { next_spec_ = last_guess_ = -1; }

  // A CUDA failure part way through a pass can leave the device state (residual window,
  // low-bit copy, position count) out of step; the context refuses further work rather than
  // decode from it.
  std::string fail(std::string msg) {
    failed_ = msg;
    return msg;
  }
  bool broken(std::string *err) const {
    if (failed_.empty()) return false;
    *err = "the CUDA context failed earlier (" + failed_ + "); free it and create a new one";
    return true;
  }

  // One generation step (context.cpp step_locked on the device).
  int step(int32_t token, bool speculate, float *logits_out, int32_t *spec_out, std::string *err) {
    const auto t0 = std::chrono::steady_clock::now();
    has_logits_ = false;
    if (spec_out) *spec_out = -1;
    if (speculate) counters_.check_guess(token, last_guess_);
    if (speculate && dc_->n_past() + 2 > dc_->n_ctx()) {
      // The last position: no room for a speculative row; a plain step (held rows stay).
      speculate = false;
      forget_speculation();
    }
    uint64_t fetched = 0;
    double stall_ms = 0;
    auto pass = [&](const int32_t *tokens, int n, int n_keep, int select_row, float *logits) {
      const int r = dc_->step(tokens, n, n_keep, select_row, logits);
      fetched += dc_->last_step().fetched_bytes;
      stall_ms += dc_->last_step().stall_ms;
      return r;
    };
    int st = SPECODE_OK;
    if (!speculate) {
      st = pass(&token, 1, 1, -1, logits_.data());
    } else {
      const bool specache = policy_ == KvPolicy::Specache;
      if (next_spec_ < 0) {
        // Pre-decode: the token alone, not kept; its output is the first speculative token and
        // (specache) its attention row picks the first rows to fetch.
        st = pass(&token, 1, 0, specache ? 0 : -1, logits_.data());
        if (st == SPECODE_OK) next_spec_ = argmax(logits_.data(), n_vocab_);
      }
      if (st == SPECODE_OK) {
        const int32_t pair[2] = {token, next_spec_};
        st = pass(pair, 2, 1, specache ? 1 : -1, step_logits_.data());
      }
      if (st == SPECODE_OK) {
        std::memcpy(logits_.data(), step_logits_.data(), n_vocab_ * sizeof(float));
        if (spec_out) *spec_out = next_spec_;
        last_guess_ = next_spec_;
        next_spec_ = argmax(step_logits_.data() + n_vocab_, n_vocab_);
      }
    }
    if (st != SPECODE_OK) {
      forget_speculation();
      publish_metrics();
      *err = fail(cuda_message("decode: the CUDA step failed"));
      return st;
    }
    tokens_.push_back(token);
    counters_.fetch_last = fetched;
    fetch_total_ += fetched;
    counters_.stall_last = (uint64_t)(stall_ms * 1e6);
    stall_total_ += counters_.stall_last;
    counters_.add_step(
        (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
    has_logits_ = true;
    if (logits_out) std::memcpy(logits_out, logits_.data(), n_vocab_ * sizeof(float));
    publish_metrics(false);
    return SPECODE_OK;
  }

  void publish_metrics(bool refresh_free = true) {
    const cuda::DeviceMemory &mem = dc_->memory();
    const Hparams &hp = weights_->model->hp;
    specode_kv_metrics m{};
    std::snprintf(m.policy, sizeof m.policy, "%s", kv_policy_name(policy_));
    std::snprintf(m.backend, sizeof m.backend, "cuda");
    m.device_weight_bytes = mem.weights;
    switch (policy_) {
      case KvPolicy::Specache:
        m.device_lowbit_bytes = mem.kv_lowbit;
        m.device_residual_bytes = mem.kv_residual;
        m.device_prefetch_bytes = mem.buffers;
        m.n_lowbit_tokens = (uint64_t)dc_->n_lowbit();
        m.n_residual_tokens = (uint64_t)dc_->n_residual();
        m.lowbit_param_bits = 16;  // fp16 scales and zeros (kv_param_bits 8 is CPU-only)
        break;
      case KvPolicy::OffloadAll:
        m.device_full_bytes = mem.buffers;  // one layer's rows staged
        break;
      default:
        m.device_full_bytes = mem.kv;
        break;
    }
    m.device_workspace_bytes = mem.activations;
    // The device's free memory changes with allocations (context creation, a prefill's staging),
    // not with steps: asked for outside the step path only.
    if (refresh_free) {
      size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) == cudaSuccess) {
        device_free_ = free;
        device_total_ = total;
      } else {
        cudaGetLastError();
      }
    }
    m.device_free_bytes = device_free_;
    m.device_total_bytes = device_total_;
    m.host_kv_bytes = mem.host_pinned;
    m.n_tokens = (uint64_t)dc_->n_past();
    m.fetch_bytes_total = fetch_total_;
    m.stall_ns_total = stall_total_;
    counters_.publish(hp, &m);
    std::lock_guard<std::mutex> lock(metrics_mutex_);
    snapshot_ = m;
  }

  std::shared_ptr<CudaWeights> weights_;
  std::unique_ptr<DeviceContext> dc_;
  KvPolicy policy_;
  int n_vocab_;
  std::atomic<bool> cancel_{false};
  bool has_logits_ = false;
  std::vector<float> logits_, step_logits_;
  std::vector<int32_t> tokens_;
  int32_t next_spec_ = -1, last_guess_ = -1;
  std::string failed_;
  StepCounters counters_;
  uint64_t fetch_total_ = 0, stall_total_ = 0, device_free_ = 0, device_total_ = 0;
  mutable std::mutex metrics_mutex_;
  specode_kv_metrics snapshot_{};
};

}  // namespace

bool gpu_backend_built() { return true; }

int gpu_context_create(const Model &model, std::shared_ptr<GpuWeights> *weights, const GpuContextConfig &cfg,
                       std::unique_ptr<GpuContext> *out, std::string *err) {
  int count = 0;
  const cudaError_t probe = cudaGetDeviceCount(&count);
  if (probe != cudaSuccess || count == 0) {
    cudaGetLastError();
    *err = std::string("no CUDA device: ") + (probe != cudaSuccess ? cudaGetErrorString(probe) : "none found");
    return SPECODE_ERR_UNSUPPORTED;
  }
  if (cfg.policy != KvPolicy::Full && cfg.policy != KvPolicy::OffloadAll && cfg.policy != KvPolicy::Specache) {
    *err = std::string("the KV policy '") + kv_policy_name(cfg.policy) +
           "' runs on the CPU backend only (CUDA has full, offload-all and specache)";
    return SPECODE_ERR_UNSUPPORTED;
  }
  auto w = std::dynamic_pointer_cast<CudaWeights>(*weights);
  if (!w) {
    const uint64_t file_bytes = model.file.data_bytes();
    if (cfg.budget_bytes && file_bytes > cfg.budget_bytes) {
      *err = "cuda: the weights alone need " + std::to_string(file_bytes >> 20) + " MiB, more than the device budget of " +
             std::to_string(cfg.budget_bytes >> 20) + " MiB; raise the budget or use a smaller model";
      return SPECODE_ERR_NOMEM;
    }
    w = std::make_shared<CudaWeights>();
    const int st = DeviceModel::upload(model, &w->model, err);
    if (st != SPECODE_OK) return st;
  }
  cuda::DeviceKvConfig kc;
  kc.policy = cfg.policy == KvPolicy::Full         ? cuda::DevicePolicy::Full
              : cfg.policy == KvPolicy::OffloadAll ? cuda::DevicePolicy::OffloadAll
                                                   : cuda::DevicePolicy::Specache;
  kc.bits = cfg.bits;
  kc.group = cfg.group;
  kc.topk = cfg.topk;
  kc.rerank = cfg.rerank;
  kc.residual = cfg.residual;
  kc.debias = lowbit_debias_default();  // as the CPU's low-bit copy
  std::unique_ptr<DeviceContext> dc;
  const int st = DeviceContext::create(*w->model, cfg.n_ctx, kc, cfg.budget_bytes, &dc, err);
  if (st != SPECODE_OK) {
    if (err->empty()) *err = cuda_message("cuda: creating the context failed");
    return st;
  }
  // The model keeps its weights on the device only once a context runs there (a refused
  // context does not leave them holding VRAM while the CPU decodes).
  *weights = w;
  *out = std::make_unique<CudaContext>(std::move(w), std::move(dc), cfg.policy);
  return SPECODE_OK;
}

}  // namespace specode

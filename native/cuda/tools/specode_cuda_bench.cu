// specode_cuda_bench — decode step time of the CUDA backend per KV policy and context
// size (issue #4), run by `specode bench speed --backend cuda` (which tokenizes real
// source code into --ids) or by hand:
//
//   specode_cuda_bench --model M.gguf --ids ids.bin --ctx 4096,32768
//                      [--policies full,offload-all,specache] [--steps 32] [--warmup 4]
//                      [--bits 2] [--topk 64] [--rerank 0 (auto)] [--group 64] [--residual 64]
//                      [--budget-mib N]
//
// ids.bin: int32 little-endian token ids (at least the largest --ctx). Per (policy, ctx):
// a batched prefill of ctx - 1 ids, then `warmup` untimed and `steps` timed greedy steps
// (specache: a pre-decode, then real + speculative passes), each timed by CUDA events.
// Prints one JSON object on stdout; progress on stderr. Exit 2 without a CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_forward.h"
#include "engine_internal_access.h"
#include "specache.h"

namespace {

using namespace specode::cuda;

std::vector<std::string> split(const std::string &s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

std::string json_str(const std::string &s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if ((unsigned char)c < 0x20) continue;
    o += c;
  }
  return o + "\"";
}

int argmax(const float *x, int n) { return (int)(std::max_element(x, x + n) - x); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char **argv) {
  std::string model_path, ids_path, ctxs = "4096", policies = "full,offload-all,specache";
  int steps = 32, warmup = 4;
  DeviceKvConfig base;
  base.rerank = 0;  // automatic unless --rerank says otherwise
  uint64_t budget = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model_path = v;
    else if (k == "--ids") ids_path = v;
    else if (k == "--ctx") ctxs = v;
    else if (k == "--policies") policies = v;
    else if (k == "--steps") steps = std::atoi(v.c_str());
    else if (k == "--warmup") warmup = std::atoi(v.c_str());
    else if (k == "--bits") base.bits = std::atoi(v.c_str());
    else if (k == "--topk") base.topk = std::atoi(v.c_str());
    else if (k == "--rerank") base.rerank = std::atoi(v.c_str());
    else if (k == "--group") base.group = std::atoi(v.c_str());
    else if (k == "--residual") base.residual = std::atoi(v.c_str());
    else if (k == "--budget-mib") budget = (uint64_t)std::atoll(v.c_str()) << 20;
    else {
      std::fprintf(stderr, "specode_cuda_bench: unknown option %s\n", k.c_str());
      return 1;
    }
  }
  if (base.rerank <= 0) base.rerank = specode::auto_rerank(base.bits, base.topk);
  if (model_path.empty() || ids_path.empty()) {
    std::fprintf(stderr, "usage: specode_cuda_bench --model M.gguf --ids ids.bin [--ctx 4096,32768] [--policies ...]\n");
    return 1;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::fprintf(stderr, "specode_cuda_bench: no CUDA device (%s)\n", cudaGetErrorString(cudaGetLastError()));
    return 2;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  int mem_clock_khz = 0, bus_bits = 0;
  cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, 0);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0);
  const double peak_gb_s = 2.0 * mem_clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // double data rate

  std::ifstream f(ids_path, std::ios::binary);
  std::vector<int32_t> ids;
  for (int32_t x; f.read(reinterpret_cast<char *>(&x), 4);) ids.push_back(x);
  specode_model_params mp = specode_model_default_params();
  mp.path = model_path.c_str();
  specode_model *model = nullptr;
  if (specode_model_load(&mp, &model) != SPECODE_OK) {
    std::fprintf(stderr, "specode_cuda_bench: %s\n", specode_last_error());
    return 1;
  }
  std::unique_ptr<DeviceModel> dm;
  std::string err;
  if (DeviceModel::upload(*engine_model(model), &dm, &err) != SPECODE_OK) {
    std::fprintf(stderr, "specode_cuda_bench: %s\n", err.c_str());
    return 1;
  }
  const specode::Hparams &hp = dm->hp;
  const int V = hp.n_vocab;
  std::string rows;
  for (const std::string &pname : split(policies)) {
    DeviceKvConfig cfg = base;
    if (pname == "full") cfg.policy = DevicePolicy::Full;
    else if (pname == "offload-all") cfg.policy = DevicePolicy::OffloadAll;
    else if (pname == "specache") cfg.policy = DevicePolicy::Specache;
    else {
      std::fprintf(stderr, "specode_cuda_bench: unknown policy %s (full, offload-all, specache)\n", pname.c_str());
      return 1;
    }
    const bool spec = cfg.policy == DevicePolicy::Specache;
    for (const std::string &cs : split(ctxs)) {
      const int ctx = std::atoi(cs.c_str());
      std::string row = "{\"policy\":" + json_str(pname) + ",\"ctx\":" + std::to_string(ctx);
      if (spec) row += ",\"bits\":" + std::to_string(cfg.bits) + ",\"topk\":" + std::to_string(cfg.topk) + ",\"rerank\":" + std::to_string(cfg.rerank);
      if ((int)ids.size() < ctx) {
        rows += (rows.empty() ? "" : ",") + row + ",\"error\":" + json_str("--ids holds " + std::to_string(ids.size()) + " tokens") + "}";
        continue;
      }
      std::unique_ptr<DeviceContext> dc;
      const int n_ctx = ctx + warmup + steps + 4;
      if (DeviceContext::create(*dm, n_ctx, cfg, budget, &dc, &err) != SPECODE_OK) {
        std::fprintf(stderr, "%s ctx %d: %s\n", pname.c_str(), ctx, err.c_str());
        rows += (rows.empty() ? "" : ",") + row + ",\"error\":" + json_str(err) + "}";
        continue;
      }
      std::vector<float> lg((size_t)2 * V);
      // Wall time of the whole prefill call (batches, the transient rows' allocation, the
      // low-bit copy's build): what a user waits for.
      const auto t0 = std::chrono::steady_clock::now();
      int st = dc->prefill(ids.data(), ctx - 1, lg.data());
      const float prefill_ms = std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "%s ctx %d: prefill %.0f ms (%s)\n", pname.c_str(), ctx, prefill_ms, st ? last_error() : "ok");
      int32_t real = ids[ctx - 1], guess = -1;
      if (st == 0 && spec && (st = dc->step(&real, 1, 0, 0, lg.data())) == 0) guess = argmax(lg.data(), V);
      std::vector<double> step_ms, stall_ms, fetched;
      int spec_hits = 0, spec_steps = 0;
      for (int i = 0; st == 0 && i < warmup + steps; ++i) {
        const int32_t pair[2] = {real, guess};
        st = spec ? dc->step(pair, 2, 1, 1, lg.data()) : dc->step(pair, 1, 1, -1, lg.data());
        if (st) break;
        const int32_t next = argmax(lg.data(), V);
        if (i >= warmup) {
          step_ms.push_back(dc->last_step().step_ms);
          stall_ms.push_back(dc->last_step().stall_ms);
          fetched.push_back((double)dc->last_step().fetched_bytes);
          if (spec) {
            spec_hits += guess == next;
            ++spec_steps;
          }
        }
        real = next;
        if (spec) guess = argmax(lg.data() + V, V);
      }
      if (st) {
        rows += (rows.empty() ? "" : ",") + row + ",\"error\":" + json_str(std::string("step failed: ") + last_error()) + "}";
        continue;
      }
      const DeviceMemory &m = dc->memory();
      double sum = 0, stall = 0, bytes = 0;
      for (size_t i = 0; i < step_ms.size(); ++i) {
        sum += step_ms[i];
        stall += stall_ms[i];
        bytes += fetched[i];
      }
      const double n = (double)std::max<size_t>(1, step_ms.size()), mean = sum / n;
      // What a step reads from VRAM at least once: the weights and the resident K/V and buffers.
      const double hbm_bytes = (double)(m.weights + m.kv + m.buffers);
      char buf[1400];
      std::snprintf(buf, sizeof buf,
                    ",\"prefill_wall_ms\":%.1f,\"prefill_tok_s\":%.1f,\"step_ms_mean\":%.4f,\"step_ms_p50\":%.4f,"
                    "\"decode_tok_s\":%.2f,\"stall_ms_mean\":%.4f,\"stall_frac\":%.4f,\"pcie_bytes_per_step\":%.0f,"
                    "\"spec_match\":%s,\"vram\":{\"weights\":%llu,\"kv\":%llu,\"kv_lowbit\":%llu,\"kv_residual\":%llu,"
                    "\"buffers\":%llu,\"activations\":%llu,\"prefill_transient\":%llu,\"free_before\":%llu,\"total\":%llu},"
                    "\"host_pinned_bytes\":%llu,\"hbm_bytes_per_step\":%.0f,\"hbm_gb_s\":%.1f,\"hbm_frac_of_peak\":%.3f}",
                    prefill_ms, (ctx - 1) / (prefill_ms / 1e3), mean, median(step_ms), 1e3 / mean, stall / n,
                    sum > 0 ? stall / sum : 0.0, bytes / n,
                    spec_steps ? std::to_string((double)spec_hits / spec_steps).c_str() : "null",
                    (unsigned long long)m.weights, (unsigned long long)m.kv, (unsigned long long)m.kv_lowbit,
                    (unsigned long long)m.kv_residual, (unsigned long long)m.buffers, (unsigned long long)m.activations,
                    (unsigned long long)m.prefill, (unsigned long long)m.free, (unsigned long long)m.total,
                    (unsigned long long)m.host_pinned, hbm_bytes, hbm_bytes / (mean / 1e3) / 1e9,
                    peak_gb_s > 0 ? hbm_bytes / (mean / 1e3) / 1e9 / peak_gb_s : 0.0);
      rows += (rows.empty() ? "" : ",") + row + buf;
      std::fprintf(stderr, "%s ctx %d: step %.3f ms (p50 %.3f), stall %.3f ms, %.0f bytes over the bus a step\n", pname.c_str(),
                   ctx, mean, median(step_ms), stall / n, bytes / n);
    }
  }
  std::printf("{\"device\":{\"name\":%s,\"sm\":\"%d%d\",\"vram_bytes\":%llu,\"hbm_peak_gb_s\":%.1f},"
              "\"model\":{\"path\":%s,\"n_layer\":%d,\"n_head\":%d,\"n_head_kv\":%d,\"head_dim\":%d,\"n_ctx_train\":%d},"
              "\"steps\":%d,\"warmup\":%d,\"rows\":[%s]}\n",
              json_str(prop.name).c_str(), prop.major, prop.minor, (unsigned long long)prop.totalGlobalMem, peak_gb_s,
              json_str(model_path).c_str(), hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ctx_train, steps, warmup,
              rows.c_str());
  specode_model_free(model);
  return 0;
}

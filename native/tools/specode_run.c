/* specode-run — drive the engine from C, without Node (proves specode.h is
 * enough). Greedy-decodes from token ids and prints the ids and timings.
 *
 *   specode-run MODEL.gguf [-t THREADS] [-n N_GEN] [-c N_CTX] [-p N_PROMPT] [ids...]
 *
 * With -p N and no ids, a synthetic prompt of N ids (i*7 % 1000 + 100) is used.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "specode.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fprintf(stderr,
            "usage: specode-run MODEL.gguf [-t THREADS] [-n N_GEN] [-c N_CTX] [-p N_PROMPT] [-b cpu|auto|cuda]\n"
            "                  [-k full|offload-all|specache] [-q BITS] [-r RERANK] [-P PARAM_BITS] [ids...]\n"
            "  -P: bits of the low-bit copy's scales and zeros, 16 or 8 (default: the engine's choice)\n");
    return argc < 2 ? 2 : 0;
  }
  int threads = 0, n_gen = 16, n_ctx = 4096, n_prompt = 0;
  int backend = SPECODE_BACKEND_CPU, policy = SPECODE_KV_POLICY_FULL, bits = 2, rerank = 0, param_bits = 0;
  int32_t *ids = calloc((size_t)argc + 65536, sizeof(int32_t));
  int n_ids = 0;
  for (int i = 2; i < argc; ++i) {
    if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-n") && i + 1 < argc) n_gen = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-c") && i + 1 < argc) n_ctx = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-p") && i + 1 < argc) n_prompt = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-q") && i + 1 < argc) bits = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-r") && i + 1 < argc) rerank = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-P") && i + 1 < argc) param_bits = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-b") && i + 1 < argc) {
      const char *b = argv[++i];
      backend = !strcmp(b, "cuda") ? SPECODE_BACKEND_CUDA : !strcmp(b, "auto") ? SPECODE_BACKEND_AUTO : SPECODE_BACKEND_CPU;
      if (strcmp(b, "cpu") && backend == SPECODE_BACKEND_CPU) {
        fprintf(stderr, "specode-run: -b takes cpu, auto or cuda, not '%s'\n", b);
        return 2;
      }
    } else if (!strcmp(argv[i], "-k") && i + 1 < argc) {
      const char *k = argv[++i];
      policy = !strcmp(k, "specache") ? SPECODE_KV_POLICY_SPECACHE
               : !strcmp(k, "offload-all") ? SPECODE_KV_POLICY_OFFLOAD_ALL
                                           : SPECODE_KV_POLICY_FULL;
      if (strcmp(k, "full") && policy == SPECODE_KV_POLICY_FULL) {
        fprintf(stderr, "specode-run: -k takes full, offload-all or specache, not '%s'\n", k);
        return 2;
      }
    } else ids[n_ids++] = atoi(argv[i]);
  }
  if (n_ids == 0) {
    if (n_prompt <= 0) n_prompt = 8;
    if (n_prompt > 65536) n_prompt = 65536;
    for (int i = 0; i < n_prompt; ++i) ids[n_ids++] = (i * 7) % 1000 + 100;
  }
  specode_model_params mp = specode_model_default_params();
  mp.path = argv[1];
  mp.n_threads = threads;
  specode_model *model = NULL;
  double t0 = now_s();
  if (specode_model_load(&mp, &model) != SPECODE_OK) {
    fprintf(stderr, "specode-run: %s\n", specode_last_error());
    return 1;
  }
  specode_model_info info;
  specode_model_get_info(model, &info);
  fprintf(stderr, "model %s (%s) layers=%d embd=%d heads=%d/%d vocab=%d type=%s kernels=%s load=%.2fs\n", info.name,
          info.arch, info.n_layer, info.n_embd, info.n_head, info.n_head_kv, info.n_vocab, info.file_type,
          specode_cpu_kernels(), now_s() - t0);
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = (uint32_t)n_ctx;
  cp.backend = backend;
  cp.kv_policy = policy;
  cp.kv_bits = bits;
  cp.kv_rerank = rerank;
  cp.kv_param_bits = param_bits;
  specode_context *ctx = NULL;
  if (specode_context_init(model, &cp, &ctx) != SPECODE_OK) {
    fprintf(stderr, "specode-run: %s\n", specode_last_error());
    return 1;
  }
  specode_backend_info bi;
  specode_context_backend(ctx, &bi);
  fprintf(stderr, "backend %s (%s): %s\n", bi.name, bi.device, bi.reason);
  float *logits = malloc(sizeof(float) * (size_t)info.n_vocab);
  t0 = now_s();
  if (specode_decode(ctx, ids, (uint32_t)n_ids, 0, logits) != SPECODE_OK) {
    fprintf(stderr, "specode-run: %s\n", specode_last_error());
    return 1;
  }
  double t_prefill = now_s() - t0;
  specode_sampler_params sp = specode_sampler_default_params();
  specode_sampler *sampler = NULL;
  specode_sampler_init(&sp, &sampler);
  t0 = now_s();
  for (int i = 0; i < n_gen; ++i) {
    int32_t tok = specode_sampler_sample(sampler, logits, info.n_vocab);
    printf("%d%c", tok, i + 1 == n_gen ? '\n' : ' ');
    if (i + 1 == n_gen) break;
    if (specode_decode(ctx, &tok, 1, 0, logits) != SPECODE_OK) {
      fprintf(stderr, "specode-run: %s\n", specode_last_error());
      return 1;
    }
  }
  double t_decode = now_s() - t0;
  fprintf(stderr, "prefill %d tokens: %.1f tok/s; decode %d tokens: %.2f tok/s\n", n_ids, n_ids / t_prefill,
          n_gen - 1, n_gen > 1 ? (n_gen - 1) / t_decode : 0.0);
  specode_sampler_free(sampler);
  specode_context_free(ctx);
  specode_model_free(model);
  free(logits);
  free(ids);
  return 0;
}

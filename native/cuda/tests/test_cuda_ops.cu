// specode_cuda_tests — the CUDA low-bit op family against the CPU engine, op by op:
// quantization gives the CPU's bytes (checked through the dequantized rows, which
// must be equal), attention from the codes matches the CPU's split-softmax piece,
// top-k picks the CPU's positions, the zero-copy gather copies pinned host rows.
// Without a CUDA device it prints "skipped: ..." and exits 0 (this machine, CI).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_forward.h"
#include "cuda_ops.h"
#include "engine_internal_access.h"
#include "tiny_model.h"
#include "lowbit.h"
#include "quant.h"
#include "specache.h"

namespace {

int g_pass = 0, g_fail = 0;

void report(const char *name, bool ok, const char *detail) {
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name, detail[0] ? ": " : "", detail);
  (ok ? g_pass : g_fail)++;
}

#define CK(call)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (call);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::printf("FAIL %s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));     \
      ++g_fail;                                                                                   \
      return;                                                                                     \
    }                                                                                             \
  } while (0)

template <typename T>
T *to_device(const std::vector<T> &h) {
  T *d = nullptr;
  if (cudaMalloc(&d, h.size() * sizeof(T) + 16) != cudaSuccess) return nullptr;
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

template <typename T>
std::vector<T> to_host(const T *d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

std::vector<float> rows(int n, int hd, uint32_t seed, float outlier) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x((size_t)n * hd);
  for (int t = 0; t < n; ++t)
    for (int c = 0; c < hd; ++c) x[(size_t)t * hd + c] = nd(rng) * (c % 13 == 0 ? outlier : 1.0f) + (c % 7) * 0.5f;
  return x;
}

int code_at(const uint8_t *stream, int i, int bits) {
  const int per_byte = 8 / bits;
  return (stream[i / per_byte] >> ((i % per_byte) * bits)) & ((1 << bits) - 1);
}

void quantize_and_attend(int bits, int g, bool debias) {
  const int hd = 64, n = 6 * 64, rows_q = 7, vg = std::min(g, hd), nvg = hd / vg;
  auto k = rows(n, hd, 11 * bits + g, 8.0f), v = rows(n, hd, 5 + g, 1.0f);
  specode::LowbitStream s(specode::LowbitConfig{hd, bits, g, debias});
  s.append(k.data(), v.data(), n);
  std::vector<float> kd((size_t)n * hd), vd((size_t)n * hd);
  s.dequantize(0, n, kd.data(), vd.data());

  float *dk = to_device(k), *dv = to_device(v);
  uint8_t *kc, *vc;
  __half *ks, *kz, *vs, *vz;
  CK(cudaMalloc(&kc, (size_t)n * hd * bits / 8));
  CK(cudaMalloc(&vc, (size_t)n * hd * bits / 8));
  CK(cudaMalloc(&ks, (size_t)(n / g) * hd * sizeof(__half)));
  CK(cudaMalloc(&kz, (size_t)(n / g) * hd * sizeof(__half)));
  CK(cudaMalloc(&vs, (size_t)n * nvg * sizeof(__half)));
  CK(cudaMalloc(&vz, (size_t)n * nvg * sizeof(__half)));
  int st = specode::cuda::lowbit_quantize(dk, dv, n, g, hd, bits, kc, ks, kz, vc, vs, vz, 0);
  CK(cudaDeviceSynchronize());
  // Dequantize the device bytes on the host: must equal the CPU stream's rows exactly.
  auto hkc = to_host(kc, (size_t)n * hd * bits / 8), hvc = to_host(vc, (size_t)n * hd * bits / 8);
  auto hks = to_host(ks, (size_t)(n / g) * hd), hkz = to_host(kz, (size_t)(n / g) * hd);
  auto hvs = to_host(vs, (size_t)n * nvg), hvz = to_host(vz, (size_t)n * nvg);
  int diff = 0;
  for (int t = 0; t < n; ++t)
    for (int c = 0; c < hd; ++c) {
      const int grp = t / g;
      const float kk = code_at(&hkc[((size_t)grp * hd + c) * g * bits / 8], t % g, bits) * __half2float(hks[(size_t)grp * hd + c]) +
                       __half2float(hkz[(size_t)grp * hd + c]);
      const float vv = code_at(&hvc[(size_t)t * hd * bits / 8], c, bits) * __half2float(hvs[(size_t)t * nvg + c / vg]) +
                       __half2float(hvz[(size_t)t * nvg + c / vg]);
      diff += kk != kd[(size_t)t * hd + c] || vv != vd[(size_t)t * hd + c];
    }
  char detail[160];
  std::snprintf(detail, sizeof detail, "%d-bit g%d: status %d, %d of %d elements differ from the CPU's", bits, g, st, diff, 2 * n * hd);
  report("quantize_matches_cpu", st == 0 && diff == 0, detail);

  // Attention piece over [g, n) with a skip set, against the CPU's fp32 kernels.
  std::mt19937 rng(3 + bits + g);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  std::vector<float> q((size_t)rows_q * hd);
  for (auto &x : q) x = nd(rng);
  std::vector<uint64_t> skip((n + 63) / 64, 0);
  for (int pos = 5; pos < n; pos += 19) skip[pos >> 6] |= 1ull << (pos & 63);
  const int t0 = g, t1 = n, m_tok = t1 - t0;
  specode::lowbit_force_fp32(true);
  specode::LowbitScratch scratch;
  std::vector<float> p((size_t)rows_q * m_tok), m(rows_q), l(rows_q), acc((size_t)rows_q * hd);
  specode::lowbit_attend(s, t0, t1, q.data(), rows_q, skip.data(), p.data(), m.data(), l.data(), acc.data(), scratch);
  specode::lowbit_force_fp32(false);
  float *dq = to_device(q), *dp, *dm, *dl, *dacc;
  uint64_t *dskip = to_device(skip);
  CK(cudaMalloc(&dp, p.size() * sizeof(float)));
  CK(cudaMalloc(&dm, rows_q * sizeof(float)));
  CK(cudaMalloc(&dl, rows_q * sizeof(float)));
  CK(cudaMalloc(&dacc, acc.size() * sizeof(float)));
  st = specode::cuda::lowbit_attend(kc, ks, kz, vc, vs, vz, g, hd, bits, t0, t1, dq, rows_q, dskip, debias, dp, dm, dl, dacc, 0);
  CK(cudaDeviceSynchronize());
  auto gm = to_host(dm, rows_q), gl = to_host(dl, rows_q), gacc = to_host(dacc, acc.size());
  double worst = 0;
  for (int r = 0; r < rows_q; ++r) {
    // Compare the piece's mass l·e^m (log) and the normalized output.
    worst = std::fmax(worst, std::fabs((std::log(gl[r]) + gm[r]) - (std::log(l[r]) + m[r])));
    for (int c = 0; c < hd; ++c) worst = std::fmax(worst, std::fabs(gacc[(size_t)r * hd + c] - acc[(size_t)r * hd + c]));
  }
  std::snprintf(detail, sizeof detail, "%d-bit g%d debias %d: status %d, worst |difference| %.2e (log mass, output)", bits, g, debias, st, worst);
  report("lowbit_attend_matches_cpu", st == 0 && worst < 1e-4, detail);
  for (void *ptr : {(void *)dk, (void *)dv, (void *)kc, (void *)vc, (void *)ks, (void *)kz, (void *)vs, (void *)vz, (void *)dq,
                    (void *)dp, (void *)dm, (void *)dl, (void *)dacc, (void *)dskip})
    cudaFree(ptr);
}

void topk_matches_cpu(int n, int k) {
  std::mt19937 rng(n + k);
  std::uniform_int_distribution<int> ud(0, 999);  // many ties: the tie rule is checked too
  std::vector<float> score(n);
  for (auto &x : score) x = (float)ud(rng);
  for (int i = 0; i < n; i += 7) score[i] = -INFINITY;  // select_topk returns -inf positions too when n is small
  std::vector<int32_t> want(std::min(n, k));
  const int nw = specode::select_topk(score.data(), n, k, want.data());
  float *ds = to_device(score);
  int *out, *count;
  CK(cudaMalloc(&out, (size_t)k * sizeof(int)));
  CK(cudaMalloc(&count, sizeof(int)));
  const int st = specode::cuda::topk(ds, n, k, out, count, 0);
  CK(cudaDeviceSynchronize());
  const int got_n = to_host(count, 1)[0];
  auto got = to_host(out, (size_t)std::max(got_n, 0));
  bool same = st == 0 && got_n == nw;
  for (int i = 0; same && i < nw; ++i) same = got[i] == want[i];
  char detail[120];
  std::snprintf(detail, sizeof detail, "n %d k %d: status %d, %d picked (CPU %d)", n, k, st, got_n, nw);
  report("topk_matches_cpu", same, detail);
  for (void *ptr : {(void *)ds, (void *)out, (void *)count}) cudaFree(ptr);
}

void gather_from_pinned_host() {
  const int hd = 64, n_pages = 3, rows_per_page = 64, picks = 40;
  uint16_t *host = nullptr;
  CK(cudaHostAlloc((void **)&host, (size_t)n_pages * rows_per_page * hd * sizeof(uint16_t), cudaHostAllocMapped));
  for (size_t i = 0; i < (size_t)n_pages * rows_per_page * hd; ++i) host[i] = (uint16_t)(i * 2654435761u >> 16);
  uint16_t *dev_view = nullptr;
  CK(cudaHostGetDevicePointer((void **)&dev_view, host, 0));
  std::vector<const uint16_t *> src(picks);
  std::vector<int> chosen(picks);
  for (int i = 0; i < picks; ++i) {
    chosen[i] = (i * 37) % (n_pages * rows_per_page);
    src[i] = dev_view + (size_t)chosen[i] * hd;
  }
  const uint16_t **dsrc = nullptr;
  uint16_t *dst = nullptr;
  CK(cudaMalloc((void **)&dsrc, picks * sizeof(void *)));
  CK(cudaMemcpy(dsrc, src.data(), picks * sizeof(void *), cudaMemcpyHostToDevice));
  CK(cudaMalloc(&dst, (size_t)picks * hd * sizeof(uint16_t)));
  const int st = specode::cuda::gather_rows(dsrc, dst, picks, hd, 0);
  CK(cudaDeviceSynchronize());
  auto got = to_host(dst, (size_t)picks * hd);
  int bad = 0;
  for (int i = 0; i < picks; ++i) bad += std::memcmp(&got[(size_t)i * hd], host + (size_t)chosen[i] * hd, hd * sizeof(uint16_t)) != 0;
  char detail[100];
  std::snprintf(detail, sizeof detail, "status %d, %d of %d rows wrong", st, bad, picks);
  report("gather_rows_from_pinned_host", st == 0 && bad == 0, detail);
  cudaFree(dsrc);
  cudaFree(dst);
  cudaFreeHost(host);
}

// Random but valid blocks of `type` (fp16 scale fields set to small finite values).
std::vector<uint8_t> random_rows(uint32_t type, int64_t rows, int64_t cols, uint32_t seed) {
  const auto t = (specode::DType)type;
  const size_t row_bytes = specode::dtype_row_bytes(t, cols), bb = specode::dtype_block_bytes(t);
  std::vector<uint8_t> w((size_t)rows * row_bytes);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto &b : w) b = (uint8_t)byte(rng);
  auto put16 = [&](uint8_t *p, float f) {
    const uint16_t h = specode::fp32_to_fp16(f);
    std::memcpy(p, &h, 2);
  };
  const size_t n_blocks = w.size() / bb;
  for (size_t i = 0; i < n_blocks; ++i) {
    uint8_t *b = &w[i * bb];
    switch (type) {
      case 0: { const float f = nd(rng); std::memcpy(b, &f, 4); break; }
      case 1: put16(b, nd(rng)); break;
      case 3: put16(b, 0.01f + 0.02f * std::fabs(nd(rng))); put16(b + 2, -0.1f * std::fabs(nd(rng))); break;
      case 6: case 8: put16(b, 0.01f + 0.02f * std::fabs(nd(rng))); break;
      case 12: put16(b, 0.001f + 0.002f * std::fabs(nd(rng))); put16(b + 2, 0.001f * std::fabs(nd(rng))); break;
      case 14: put16(b + 208, 0.001f + 0.002f * std::fabs(nd(rng))); break;
    }
  }
  return w;
}

void matvec_matches_cpu(uint32_t type, int n_tokens) {
  const int64_t rows = 96, cols = 512;
  auto w = random_rows(type, rows, cols, 17 + type);
  std::mt19937 rng(type * 7 + n_tokens);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x((size_t)n_tokens * cols);
  for (auto &v : x) v = nd(rng);
  // CPU reference: dequantize_row, then a double-precision dot.
  const size_t row_bytes = specode::dtype_row_bytes((specode::DType)type, cols);
  std::vector<float> row(cols);
  std::vector<double> want((size_t)n_tokens * rows);
  for (int64_t r = 0; r < rows; ++r) {
    specode::dequantize_row((specode::DType)type, &w[(size_t)r * row_bytes], row.data(), cols);
    for (int t = 0; t < n_tokens; ++t) {
      double d = 0;
      for (int64_t c = 0; c < cols; ++c) d += (double)row[c] * x[(size_t)t * cols + c];
      want[(size_t)t * rows + r] = d;
    }
  }
  uint8_t *dw = to_device(w);
  float *dx = to_device(x), *dy;
  CK(cudaMalloc(&dy, want.size() * sizeof(float)));
  const int st = specode::cuda::matvec(type, dw, rows, cols, dx, n_tokens, dy, rows, 0);
  CK(cudaDeviceSynchronize());
  auto got = to_host(dy, want.size());
  double worst = 0, scale = 1e-6;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::fmax(worst, std::fabs(got[i] - want[i]));
    scale = std::fmax(scale, std::fabs(want[i]));
  }
  char detail[120];
  std::snprintf(detail, sizeof detail, "%s, %d tokens: status %d, worst |error| %.2e of max |y| %.2e", specode::dtype_name(type), n_tokens, st, worst, scale);
  report("matvec_matches_cpu", st == 0 && worst <= 1e-4 * scale, detail);
  cudaFree(dw);
  cudaFree(dx);
  cudaFree(dy);
}

// The fp16 piece (fetched rows, residual, causal new tokens) against a double-precision
// softmax, then the merge with a second piece against the CPU's softmax_merge.
void fp16_piece_and_merge_match_cpu() {
  const int hd = 64, rows_q = 4, n_seg[3] = {48, 40, 4};
  std::mt19937 rng(99);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<std::vector<uint16_t>> kh(3), vh(3);
  std::vector<std::vector<float>> kf(3), vf(3);
  for (int s = 0; s < 3; ++s)
    for (int i = 0; i < n_seg[s] * hd; ++i) {
      kh[s].push_back(specode::fp32_to_fp16(nd(rng)));
      vh[s].push_back(specode::fp32_to_fp16(nd(rng)));
      kf[s].push_back(specode::fp16_to_fp32(kh[s].back()));
      vf[s].push_back(specode::fp16_to_fp32(vh[s].back()));
    }
  std::vector<float> q((size_t)rows_q * hd);
  for (auto &x : q) x = 0.2f * nd(rng);
  const std::vector<int> visible = {1, 2, 3, 4};
  specode::cuda::Fp16Segments seg{};
  for (int s = 0; s < 3; ++s) {
    seg.k[s] = (const __half *)to_device(kh[s]);
    seg.v[s] = (const __half *)to_device(vh[s]);
    seg.n[s] = n_seg[s];
  }
  float *dq = to_device(q), *dm, *dl, *dacc;
  int *dvis = to_device(visible);
  CK(cudaMalloc(&dm, rows_q * sizeof(float)));
  CK(cudaMalloc(&dl, rows_q * sizeof(float)));
  CK(cudaMalloc(&dacc, (size_t)rows_q * hd * sizeof(float)));
  int st = specode::cuda::fp16_attend(seg, dq, rows_q, hd, dvis, dm, dl, dacc, 0);
  CK(cudaDeviceSynchronize());
  auto gm = to_host(dm, rows_q), gl = to_host(dl, rows_q), gacc = to_host(dacc, (size_t)rows_q * hd);
  double worst = 0;
  std::vector<float> cm(rows_q), cl(rows_q), cacc((size_t)rows_q * hd);
  for (int r = 0; r < rows_q; ++r) {
    std::vector<double> sc;
    std::vector<const float *> vrow;
    for (int s = 0; s < 3; ++s)
      for (int i = 0; i < (s == 2 ? visible[r] : n_seg[s]); ++i) {
        double d = 0;
        for (int c = 0; c < hd; ++c) d += (double)q[(size_t)r * hd + c] * kf[s][(size_t)i * hd + c];
        sc.push_back(d);
        vrow.push_back(&vf[s][(size_t)i * hd]);
      }
    double mx = -INFINITY, sum = 0;
    for (double x : sc) mx = std::fmax(mx, x);
    std::vector<double> out(hd, 0.0);
    for (size_t j = 0; j < sc.size(); ++j) {
      const double e = std::exp(sc[j] - mx);
      sum += e;
      for (int c = 0; c < hd; ++c) out[c] += e * vrow[j][c];
    }
    worst = std::fmax(worst, std::fabs((std::log(gl[r]) + gm[r]) - (std::log(sum) + mx)));
    for (int c = 0; c < hd; ++c) worst = std::fmax(worst, std::fabs(gacc[(size_t)r * hd + c] - out[c] / sum));
    cm[r] = gm[r];
    cl[r] = gl[r];
    for (int c = 0; c < hd; ++c) cacc[(size_t)r * hd + c] = gacc[(size_t)r * hd + c];
  }
  char detail[120];
  std::snprintf(detail, sizeof detail, "status %d, worst |difference| %.2e (log mass, output)", st, worst);
  report("fp16_piece_matches_double_softmax", st == 0 && worst < 1e-4, detail);
  // Merge with a second piece (random m, l, acc; one row empty on each side).
  std::vector<float> m2 = {0.5f, -INFINITY, 2.0f, -1.0f}, l2 = {3.0f, 0.0f, 1.5f, 7.0f}, acc2((size_t)rows_q * hd);
  for (auto &x : acc2) x = nd(rng);
  std::vector<float> m1 = cm, l1 = cl, acc1 = cacc;
  m1[3] = -INFINITY;
  l1[3] = 0;
  float *am = to_device(m1), *al = to_device(l1), *aacc = to_device(acc1), *bm = to_device(m2), *bl = to_device(l2), *bacc = to_device(acc2);
  st = specode::cuda::softmax_merge(am, al, aacc, bm, bl, bacc, rows_q, hd, 0);
  CK(cudaDeviceSynchronize());
  auto rm = to_host(am, rows_q), rl = to_host(al, rows_q), racc = to_host(aacc, (size_t)rows_q * hd);
  worst = 0;
  for (int r = 0; r < rows_q; ++r) {
    float m = m1[r], l = l1[r];
    std::vector<float> a(acc1.begin() + (size_t)r * hd, acc1.begin() + (size_t)(r + 1) * hd);
    specode::softmax_merge(&m, &l, a.data(), m2[r], l2[r], &acc2[(size_t)r * hd], hd);
    worst = std::fmax(worst, std::fabs(rm[r] - m) + std::fabs(rl[r] - l) / std::fmax(1.0f, l));
    for (int c = 0; c < hd; ++c) worst = std::fmax(worst, std::fabs(racc[(size_t)r * hd + c] - a[c]));
  }
  std::snprintf(detail, sizeof detail, "status %d, worst |difference| %.2e", st, worst);
  report("softmax_merge_matches_cpu", st == 0 && worst < 1e-5, detail);
  for (int s = 0; s < 3; ++s) {
    cudaFree((void *)seg.k[s]);
    cudaFree((void *)seg.v[s]);
  }
  for (void *ptr : {(void *)dq, (void *)dm, (void *)dl, (void *)dacc, (void *)dvis, (void *)am, (void *)al, (void *)aacc, (void *)bm, (void *)bl, (void *)bacc})
    cudaFree(ptr);
}

// The decode step on the device against the CPU engine (policy full), token by token:
// logits' worst difference relative to their range, and the greedy choices over `steps`
// steps (each side fed its own argmax; they must agree throughout).
void forward_matches_cpu(specode_model *model, const char *name, const std::vector<int32_t> &prompt, int steps, double tol) {
  specode::Model *m = engine_model(model);
  std::unique_ptr<specode::cuda::DeviceModel> dm;
  std::string err;
  int st = specode::cuda::DeviceModel::upload(*m, &dm, &err);
  if (st != 0) {
    report("forward_matches_cpu", false, err.c_str());
    return;
  }
  std::unique_ptr<specode::cuda::DeviceContext> dc;
  const int n_ctx = (int)prompt.size() + steps + 1;
  st = specode::cuda::DeviceContext::create(*dm, n_ctx, 0, &dc, &err);
  // A budget below the weights: refused with a message, nothing allocated, no crash.
  {
    std::unique_ptr<specode::cuda::DeviceContext> none;
    std::string why;
    const int refused = specode::cuda::DeviceContext::create(*dm, n_ctx, dm->weight_bytes() / 2 + 1, &none, &why);
    report("context_over_budget_is_refused", refused == SPECODE_ERR_NOMEM && !none && why.find("At most") != std::string::npos, why.c_str());
  }
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = (uint32_t)n_ctx;
  cp.kv_type = SPECODE_KV_F16;  // as the device cache
  specode_context *ctx = nullptr;
  if (st != 0 || specode_context_init(model, &cp, &ctx) != SPECODE_OK) {
    report("forward_matches_cpu", false, "context");
    return;
  }
  const int V = m->hp.n_vocab;
  std::vector<float> lc(V), lg(V);
  double worst = 0;
  int agree = 0, total = 0;
  auto argmax = [&](const std::vector<float> &x) { return (int32_t)(std::max_element(x.begin(), x.end()) - x.begin()); };
  int32_t tok = prompt[0];
  for (int i = 0; i + 1 < (int)prompt.size() + steps; ++i) {
    if (specode_decode(ctx, &tok, 1, 0, lc.data()) != SPECODE_OK || dc->decode(tok, lg.data()) != 0) {
      report("forward_matches_cpu", false, "decode failed");
      specode_context_free(ctx);
      return;
    }
    float lo = lc[0], hi = lc[0];
    double d = 0;
    for (int v = 0; v < V; ++v) {
      lo = std::fmin(lo, lc[v]);
      hi = std::fmax(hi, lc[v]);
      d = std::fmax(d, std::fabs(lc[v] - lg[v]));
    }
    worst = std::fmax(worst, d / std::fmax(1e-6f, hi - lo));
    if (i + 1 < (int)prompt.size()) {
      tok = prompt[i + 1];
    } else {
      const int32_t a = argmax(lc), b = argmax(lg);
      agree += a == b;
      ++total;
      tok = a;
    }
  }
  specode_context_free(ctx);
  char detail[200];
  std::snprintf(detail, sizeof detail, "%s: worst |logit difference| / logit range %.2e (tolerance %.0e); greedy %d/%d steps agree", name, worst, tol, agree, total);
  report("forward_matches_cpu", worst <= tol && agree == total, detail);
}


// Causal attention over an fp16 cache (prefill and decode shapes, keys split across blocks)
// against a double-precision reference.
void flash_attend_matches_reference(int n_q, int pos0, int n_ctx, int hd) {
  const int NH = 4, NKV = 2, G = NH / NKV, n_keys = pos0 + n_q;
  std::mt19937 rng(7 + n_q + pos0);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint16_t> k((size_t)NKV * n_ctx * hd), v(k.size());
  for (auto &x : k) x = specode::fp32_to_fp16(nd(rng));
  for (auto &x : v) x = specode::fp32_to_fp16(nd(rng));
  std::vector<float> q((size_t)n_q * NH * hd);
  for (auto &x : q) x = nd(rng) * 0.3f;
  std::vector<double> want(q.size());
  for (int i = 0; i < n_q; ++i)
    for (int h = 0; h < NH; ++h) {
      const int kvh = h / G, vis = std::min(n_keys, pos0 + i + 1);
      std::vector<double> sc(vis);
      double mx = -1e300;
      for (int j = 0; j < vis; ++j) {
        double d = 0;
        for (int c = 0; c < hd; ++c)
          d += (double)q[((size_t)i * NH + h) * hd + c] * specode::fp16_to_fp32(k[((size_t)kvh * n_ctx + j) * hd + c]);
        sc[j] = d;
        mx = std::max(mx, d);
      }
      double sum = 0;
      for (double &x : sc) sum += (x = std::exp(x - mx));
      for (int c = 0; c < hd; ++c) {
        double a = 0;
        for (int j = 0; j < vis; ++j) a += sc[j] * specode::fp16_to_fp32(v[((size_t)kvh * n_ctx + j) * hd + c]);
        want[((size_t)i * NH + h) * hd + c] = a / sum;
      }
    }
  const __half *dk = (const __half *)to_device(k), *dv = (const __half *)to_device(v);
  float *dq = to_device(q), *dout = nullptr, *work = nullptr;
  const size_t wf = specode::cuda::flash_work_floats(n_q, NH, hd, n_keys);
  cudaMalloc(&dout, q.size() * sizeof(float));
  cudaMalloc(&work, wf * sizeof(float));
  const int st = specode::cuda::flash_attend(specode::cuda::KvView{dk, dv, (int64_t)n_ctx * hd}, NH, NKV, hd, dq, n_q, pos0,
                                             n_keys, dout, work, wf, 0);
  cudaDeviceSynchronize();
  auto got = to_host(dout, q.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
  char detail[160];
  std::snprintf(detail, sizeof detail, "n_q %d at %d over %d keys, hd %d: status %d, max |diff| %.2e (tolerance 1e-4)", n_q,
                pos0, n_keys, hd, st, worst);
  report("flash_attend_matches_reference", st == 0 && worst <= 1e-4, detail);
  for (void *ptr : {(void *)dk, (void *)dv, (void *)dq, (void *)dout, (void *)work}) cudaFree(ptr);
}

double rel_diff(const float *a, const float *b, int n) {
  float lo = a[0], hi = a[0];
  double d = 0;
  for (int i = 0; i < n; ++i) {
    lo = std::fmin(lo, a[i]);
    hi = std::fmax(hi, a[i]);
    d = std::fmax(d, std::fabs(a[i] - b[i]));
  }
  return d / std::fmax(1e-6f, hi - lo);
}

int32_t argmax_of(const float *x, int n) { return (int32_t)(std::max_element(x, x + n) - x); }

// A device context's greedy generation after a batched prefill. specache's schedule (as the
// CPU's specode_decode_spec): a pre-decode of the first token, then (real, speculative) steps.
// Returns the real tokens' logits, step by step.
bool device_generate(specode::cuda::DeviceContext &dc, const std::vector<int32_t> &prompt, int steps, int V,
                     std::vector<std::vector<float>> *logits, std::vector<int32_t> *tokens, std::string *why) {
  std::vector<float> lg((size_t)2 * V);
  if (dc.prefill(prompt.data(), (int)prompt.size(), lg.data()) != 0) {
    *why = std::string("prefill: ") + specode::cuda::last_error();
    return false;
  }
  int32_t real = argmax_of(lg.data(), V);
  const bool spec = dc.config().policy == specode::cuda::DevicePolicy::Specache;
  int32_t guess = -1;
  if (spec) {
    if (dc.step(&real, 1, 0, 0, lg.data()) != 0) {
      *why = "pre-decode";
      return false;
    }
    guess = argmax_of(lg.data(), V);
  }
  for (int i = 0; i < steps; ++i) {
    tokens->push_back(real);
    const int32_t pair[2] = {real, guess};
    const int st = spec ? dc.step(pair, 2, 1, 1, lg.data()) : dc.step(pair, 1, 1, -1, lg.data());
    if (st != 0) {
      *why = std::string("step: ") + specode::cuda::last_error();
      return false;
    }
    logits->emplace_back(lg.begin(), lg.begin() + V);
    real = argmax_of(lg.data(), V);
    if (spec) guess = argmax_of(lg.data() + V, V);
  }
  return true;
}

// The device's policies on one model and prompt, against the CPU engine's: a batched prefill
// then `steps` greedy steps, each side fed its own choices. specache on the CPU and the device
// run the same schedule and choose rows the same way, so tokens must agree throughout and the
// logits stay within tol of the CPU's (relative to their range).
void policy_matches_cpu(specode_model *model, const char *name, specode::cuda::DeviceKvConfig cfg, int prompt_len,
                        int steps, double tol) {
  using namespace specode::cuda;
  specode::Model *m = engine_model(model);
  std::unique_ptr<DeviceModel> dm;
  std::string err;
  if (DeviceModel::upload(*m, &dm, &err) != 0) {
    report("policy_matches_cpu", false, err.c_str());
    return;
  }
  const int V = m->hp.n_vocab, n_ctx = prompt_len + steps + 4;
  const auto prompt = tinygguf::prompt(prompt_len, 9);
  std::unique_ptr<DeviceContext> dc;
  if (DeviceContext::create(*dm, n_ctx, cfg, 0, &dc, &err) != 0) {
    report("policy_matches_cpu", false, err.c_str());
    return;
  }
  std::vector<std::vector<float>> dev_logits;
  std::vector<int32_t> dev_tokens;
  std::string why;
  const bool ran = device_generate(*dc, prompt, steps, V, &dev_logits, &dev_tokens, &why);
  const double stall = dc->last_step().stall_ms, bytes = (double)dc->last_step().fetched_bytes;
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = (uint32_t)n_ctx;
  cp.kv_type = SPECODE_KV_F16;
  cp.kv_policy = cfg.policy == DevicePolicy::Full ? SPECODE_KV_POLICY_FULL
                 : cfg.policy == DevicePolicy::OffloadAll ? SPECODE_KV_POLICY_OFFLOAD_ALL
                                                          : SPECODE_KV_POLICY_SPECACHE;
  cp.kv_bits = cfg.bits;
  cp.kv_group = cfg.group;
  cp.kv_topk = cfg.topk;
  cp.kv_rerank = cfg.rerank;
  cp.kv_residual = cfg.residual;
  cp.kv_param_bits = 16;  // the device's fp16 scales and zeros (the CPU's automatic choice at 2 bits is 8)
  specode_context *ctx = nullptr;
  if (!ran || specode_context_init(model, &cp, &ctx) != SPECODE_OK) {
    report("policy_matches_cpu", false, ran ? "cpu context" : why.c_str());
    return;
  }
  std::vector<float> lc(V);
  specode_decode(ctx, prompt.data(), (uint32_t)prompt.size(), 0, lc.data());
  int32_t real = argmax_of(lc.data(), V);
  double worst = 0;
  int agree = 0;
  for (int i = 0; i < steps; ++i) {
    if (specode_decode_spec(ctx, real, lc.data(), nullptr) != SPECODE_OK) break;
    worst = std::max(worst, rel_diff(lc.data(), dev_logits[i].data(), V));
    agree += i < (int)dev_tokens.size() && dev_tokens[i] == real;
    real = argmax_of(lc.data(), V);
  }
  specode_context_free(ctx);
  char detail[300];
  std::snprintf(detail, sizeof detail,
                "%s: worst |logit difference| / range %.2e (tolerance %.0e); %d/%d steps on the same token; last step "
                "%.3f ms, stall %.3f ms, %.0f bytes fetched",
                name, worst, tol, agree, steps, dc->last_step().step_ms, stall, bytes);
  report("policy_matches_cpu", worst <= tol && agree == steps, detail);
}

// With a top-k covering every candidate, specache fetches every low-bit position and its
// logits are full's (up to summation order).
void specache_with_all_rows_is_full(specode_model *model) {
  using namespace specode::cuda;
  specode::Model *m = engine_model(model);
  std::unique_ptr<DeviceModel> dm;
  std::string err;
  if (DeviceModel::upload(*m, &dm, &err) != 0) {
    report("specache_with_all_rows_is_full", false, err.c_str());
    return;
  }
  const int V = m->hp.n_vocab, steps = 24, plen = 300, n_ctx = plen + steps + 4;
  const auto prompt = tinygguf::prompt(plen, 3);
  DeviceKvConfig full, all;
  all.policy = DevicePolicy::Specache;
  all.topk = 1024;
  all.rerank = 1;
  std::unique_ptr<DeviceContext> a, b;
  std::vector<std::vector<float>> la, lb;
  std::vector<int32_t> ta, tb;
  std::string why;
  const bool ok = DeviceContext::create(*dm, n_ctx, full, 0, &a, &err) == 0 &&
                  DeviceContext::create(*dm, n_ctx, all, 0, &b, &err) == 0 &&
                  device_generate(*a, prompt, steps, V, &la, &ta, &why) && device_generate(*b, prompt, steps, V, &lb, &tb, &why);
  double worst = 0;
  for (size_t i = 0; ok && i < la.size() && i < lb.size(); ++i) worst = std::max(worst, rel_diff(la[i].data(), lb[i].data(), V));
  char detail[200];
  std::snprintf(detail, sizeof detail, "%s worst |logit difference| / range %.2e (tolerance 1e-4); tokens %s", ok ? "" : why.c_str(),
                worst, ta == tb ? "equal" : "differ");
  report("specache_with_all_rows_is_full", ok && worst <= 1e-4 && ta == tb, detail);
}

// The engine's C API with backend CUDA against the same calls with backend CPU: a prompt,
// generation steps (specode_decode_spec: specache's pre-decode and two-token steps), a
// truncate into the prompt and a re-decode (the server's prefix reuse), a batch with every
// row's logits; the same greedy tokens and logits within tol, and the backend, metrics and
// refusals a caller sees.
void c_api_matches_cpu(specode_model *model, int policy, double tol) {
  const char *names[] = {"full", "offload-all", "specache"};
  specode::lowbit_force_fp32(true);  // the CPU's low-bit dot products in fp32, as the device's
  const int V = engine_model(model)->hp.n_vocab, plen = 600, steps = 24;
  const auto prompt = tinygguf::prompt(plen, 11);
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = 1024;
  cp.kv_policy = policy;
  cp.kv_topk = 16;
  if (policy == SPECODE_KV_POLICY_SPECACHE) cp.kv_param_bits = 16;  // the device's format on both backends
  specode_context *cpu = nullptr, *gpu = nullptr;
  char detail[400];
  if (specode_context_init(model, &cp, &cpu) != SPECODE_OK) {
    report("c_api_matches_cpu", false, specode_last_error());
    return;
  }
  cp.backend = SPECODE_BACKEND_CUDA;
  if (specode_context_init(model, &cp, &gpu) != SPECODE_OK) {
    report("c_api_matches_cpu", false, specode_last_error());
    specode_context_free(cpu);
    return;
  }
  specode_backend_info bi;
  specode_context_backend(gpu, &bi);
  double worst = 0;
  int agree = 0, total = 0, spec_agree = 0;
  bool ok = std::strcmp(bi.name, "cuda") == 0;
  std::string why = ok ? "" : std::string("backend ") + bi.name + ": " + bi.reason;
  std::vector<float> la(V), lb(V);
  // Greedy steps on both, each fed the CPU's token (so one early flip does not cascade).
  auto run_steps = [&](int n) {
    int32_t real = argmax_of(la.data(), V);
    for (int i = 0; i < n && ok; ++i) {
      int32_t sa = -1, sb = -1;
      if (specode_decode_spec(cpu, real, la.data(), &sa) != SPECODE_OK || specode_decode_spec(gpu, real, lb.data(), &sb) != SPECODE_OK) {
        ok = false;
        why = std::string("decode_spec: ") + specode_last_error();
        break;
      }
      worst = std::max(worst, rel_diff(la.data(), lb.data(), V));
      agree += argmax_of(la.data(), V) == argmax_of(lb.data(), V);
      spec_agree += sa == sb;
      ++total;
      real = argmax_of(la.data(), V);
    }
  };
  auto prefill = [&](const int32_t *t, int n) {
    if (!ok) return;
    if (specode_decode(cpu, t, (uint32_t)n, 0, la.data()) != SPECODE_OK || specode_decode(gpu, t, (uint32_t)n, 0, lb.data()) != SPECODE_OK) {
      ok = false;
      why = std::string("decode: ") + specode_last_error();
      return;
    }
    worst = std::max(worst, rel_diff(la.data(), lb.data(), V));
  };
  prefill(prompt.data(), plen);
  run_steps(steps);
  // Prefix reuse: keep 550 prompt tokens, decode a different tail, generate again.
  uint32_t cached = 0;
  std::vector<int32_t> edited(prompt.begin(), prompt.begin() + 550);
  for (int i = 0; i < 40; ++i) edited.push_back((int32_t)((i * 7 + 3) % V));
  specode_context_cached_prefix(gpu, edited.data(), (uint32_t)edited.size(), &cached);
  if (ok && cached != 550) {
    ok = false;
    why = "cached_prefix " + std::to_string(cached) + ", expected 550";
  }
  if (ok && (specode_context_truncate(cpu, 550) != SPECODE_OK || specode_context_truncate(gpu, 550) != SPECODE_OK)) {
    ok = false;
    why = std::string("truncate: ") + specode_last_error();
  }
  prefill(edited.data() + 550, 40);
  run_steps(steps);
  // A one-token specode_decode after a prompt is a generation step too.
  for (int i = 0; i < 4 && ok; ++i) {
    const int32_t t = argmax_of(la.data(), V);
    if (specode_decode(cpu, &t, 1, 0, la.data()) != SPECODE_OK || specode_decode(gpu, &t, 1, 0, lb.data()) != SPECODE_OK) {
      ok = false;
      why = std::string("one-token decode: ") + specode_last_error();
    }
    worst = std::max(worst, rel_diff(la.data(), lb.data(), V));
    agree += argmax_of(la.data(), V) == argmax_of(lb.data(), V);
    spec_agree += 1;
    ++total;
  }
  // Every row's logits over two prefill batches (300 tokens after a truncate to 300).
  const int na = 300;
  std::vector<float> all_a((size_t)na * V), all_b((size_t)na * V);
  if (ok && (specode_context_truncate(cpu, 300) != SPECODE_OK || specode_context_truncate(gpu, 300) != SPECODE_OK ||
             specode_decode(cpu, prompt.data() + 300, na, 1, all_a.data()) != SPECODE_OK ||
             specode_decode(gpu, prompt.data() + 300, na, 1, all_b.data()) != SPECODE_OK)) {
    ok = false;
    why = std::string("all_logits: ") + specode_last_error();
  }
  for (int r = 0; ok && r < na; ++r) worst = std::max(worst, rel_diff(all_a.data() + (size_t)r * V, all_b.data() + (size_t)r * V, V));
  specode_kv_metrics m{};
  specode_context_metrics(gpu, &m);
  const bool metrics_ok = std::strcmp(m.backend, "cuda") == 0 && m.device_total_bytes > 0 && m.device_kv_bytes > 0 &&
                          m.device_weight_bytes > 0 && m.steps == (uint64_t)(2 * steps + 4) &&
                          (policy != SPECODE_KV_POLICY_SPECACHE || (m.device_lowbit_bytes > 0 && m.fetch_bytes_total > 0));
  if (ok && !metrics_ok) {
    ok = false;
    why = "metrics: backend " + std::string(m.backend) + ", steps " + std::to_string(m.steps) + ", device total " +
          std::to_string(m.device_total_bytes) + ", low-bit " + std::to_string(m.device_lowbit_bytes);
  }
  const bool copy_refused = specode_context_copy(gpu, cpu) == SPECODE_ERR_UNSUPPORTED;
  specode_context_free(cpu);
  specode_context_free(gpu);
  std::snprintf(detail, sizeof detail,
                "%s: %s worst |logit difference| / range %.2e (tolerance %.0e); %d/%d steps on the same token, %d/%d "
                "speculative tokens equal%s",
                names[policy], why.c_str(), worst, tol, agree, total, spec_agree, total,
                copy_refused ? "" : "; context_copy not refused");
  report("c_api_matches_cpu", ok && worst <= tol && agree == total && spec_agree == total && copy_refused, detail);
}

// What the C API says about backends: auto moves a CPU-only policy to the CPU with the reason;
// cuda refuses it; a device budget too small is refused with the context that would fit.
void c_api_backend_choice(specode_model *model) {
  specode_context_params cp = specode_context_default_params();
  cp.n_ctx = 512;
  cp.kv_policy = SPECODE_KV_POLICY_H2O;
  cp.backend = SPECODE_BACKEND_AUTO;
  specode_context *ctx = nullptr;
  specode_backend_info bi{};
  bool ok = specode_context_init(model, &cp, &ctx) == SPECODE_OK;
  if (ok) {
    specode_context_backend(ctx, &bi);
    ok = std::strcmp(bi.name, "cpu") == 0 && std::strstr(bi.reason, "CPU backend only");
    specode_context_free(ctx);
  }
  cp.backend = SPECODE_BACKEND_CUDA;
  const bool refused = specode_context_init(model, &cp, &ctx) == SPECODE_ERR_UNSUPPORTED;
  cp.kv_policy = SPECODE_KV_POLICY_FULL;
  cp.device_budget_bytes = 1 << 20;  // 1 MiB: not even the weights' share
  const bool small = specode_context_init(model, &cp, &ctx) == SPECODE_ERR_NOMEM && std::strstr(specode_last_error(), "budget");
  const std::string small_msg = specode_last_error();
  cp.device_budget_bytes = 0;
  cp.backend = SPECODE_BACKEND_AUTO;
  bool auto_cuda = specode_context_init(model, &cp, &ctx) == SPECODE_OK;
  if (auto_cuda) {
    specode_context_backend(ctx, &bi);
    auto_cuda = std::strcmp(bi.name, "cuda") == 0;
    specode_context_free(ctx);
  }
  char detail[400];
  std::snprintf(detail, sizeof detail, "auto+h2o → cpu with reason: %s; cuda+h2o refused: %s; 1 MiB budget: %s; auto+full → cuda: %s",
                ok ? "yes" : "no", refused ? "yes" : "no", small ? "refused" : small_msg.c_str(), auto_cuda ? "yes" : "no");
  report("c_api_backend_choice", ok && refused && small && auto_cuda, detail);
}

}  // namespace

int main() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("skipped: no CUDA device (%s)\n0 passed, 0 failed\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  for (int bits : {1, 2})
    for (int g : {32, 64})
      for (bool debias : {false, true}) quantize_and_attend(bits, g, debias);
  topk_matches_cpu(1000, 64);
  topk_matches_cpu(20000, 64);
  topk_matches_cpu(50, 64);
  topk_matches_cpu(131072, 256);  // a 128k context, rerank 4 × k 64
  topk_matches_cpu(300, 300);
  gather_from_pinned_host();
  fp16_piece_and_merge_match_cpu();
  for (int n_q : {1, 2, 37})
    for (int pos0 : {0, 5, 3000}) flash_attend_matches_reference(n_q, pos0, pos0 + n_q + 3, 64);
  flash_attend_matches_reference(2, 20000, 20010, 128);
  flash_attend_matches_reference(300, 0, 300, 128);
  {
    tinygguf::TinyFile tiny(2, "cuda");
    if (tiny.model) {
      forward_matches_cpu(tiny.model, "tiny F32 llama", tinygguf::prompt(24, 5), 32, 1e-4);
      // The CPU side in fp32 throughout (no bf16 dot products), as the device computes.
      specode::lowbit_force_fp32(true);
      specache_with_all_rows_is_full(tiny.model);
    } else {
      report("forward_matches_cpu", false, "tiny model did not load");
    }
  }
  {
    // Eight layers, so the copy stream's per-layer events are exercised across a real depth.
    tinygguf::TinyFile tiny8(8, "cuda8");
    if (tiny8.model) {
      using specode::cuda::DeviceKvConfig;
      using specode::cuda::DevicePolicy;
      DeviceKvConfig full, offload, spec2, spec1, slow;
      offload.policy = DevicePolicy::OffloadAll;
      spec2.policy = spec1.policy = slow.policy = DevicePolicy::Specache;
      spec2.topk = spec1.topk = slow.topk = 16;
      spec2.debias = spec1.debias = slow.debias = specode::lowbit_debias_default();  // as the CPU's
      spec1.bits = 1;
      slow.fetch_delay_us = 300;  // every fetch lands late: the waits, not luck, must order the streams
      policy_matches_cpu(tiny8.model, "tiny 8 layers, full, batched prefill of 600", full, 600, 32, 1e-4);
      policy_matches_cpu(tiny8.model, "tiny 8 layers, offload-all", offload, 600, 32, 1e-4);
      policy_matches_cpu(tiny8.model, "tiny 8 layers, specache 2-bit k 16", spec2, 600, 48, 1e-3);
      policy_matches_cpu(tiny8.model, "tiny 8 layers, specache 1-bit k 16", spec1, 600, 48, 1e-3);
      policy_matches_cpu(tiny8.model, "tiny 8 layers, specache 2-bit k 16, fetch 300 us late", slow, 600, 24, 1e-3);
      c_api_matches_cpu(tiny8.model, SPECODE_KV_POLICY_FULL, 1e-4);
      c_api_matches_cpu(tiny8.model, SPECODE_KV_POLICY_OFFLOAD_ALL, 1e-4);
      c_api_matches_cpu(tiny8.model, SPECODE_KV_POLICY_SPECACHE, 1e-3);
      c_api_backend_choice(tiny8.model);
    } else {
      report("policy_matches_cpu", false, "tiny 8-layer model did not load");
    }
  }
  // A real GGUF (e.g. smollm2-135m, qwen2.5-coder-0.5b): SPECODE_CUDA_TEST_MODEL=path. Activations
  // are fp32 here and Q8 on the CPU for quantized weights, hence the looser tolerance.
  if (const char *path = std::getenv("SPECODE_CUDA_TEST_MODEL")) {
    specode_model_params mp = specode_model_default_params();
    mp.path = path;
    specode_model *model = nullptr;
    if (specode_model_load(&mp, &model) == SPECODE_OK) {
      std::vector<int32_t> ids;
      for (int i = 0; i < 32; ++i) ids.push_back(100 + (i * 37) % 1000);
      forward_matches_cpu(model, path, ids, 64, 2e-2);
      specode_model_free(model);
    } else {
      report("forward_matches_cpu", false, specode_last_error());
    }
  }
  for (uint32_t type : {0u, 1u, 3u, 6u, 8u, 12u, 14u})
    for (int n_tokens : {1, 2, 11}) matvec_matches_cpu(type, n_tokens);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}

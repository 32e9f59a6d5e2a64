// cuda_ops.h — launchers of the CUDA op families (issue #4). Each takes a
// stream, checks every CUDA call and returns a specode_status (the message in
// specode::cuda::last_error()). Pointers are device pointers unless named host.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda_common.h"

namespace specode::cuda {

// norm_rope.cu
int32_t rmsnorm(const float *x, const float *w, float *out, int n_rows, int n, float eps, cudaStream_t stream);
int32_t rope(float *x, const int32_t *pos, const float *inv_freq, int n_tokens, int n_heads, int head_dim, bool neox,
             cudaStream_t stream);
int32_t swiglu(const float *gate, const float *up, float *out, size_t n, cudaStream_t stream);

// fp16_attn.cu — one split-softmax piece over up to three fp16 segments ([n][hd] each: the
// fetched rows, the residual, the pass's new tokens); row r sees the third segment's first
// visible[r] rows (visible may be null: all). q scaled by 1/sqrt(hd). At most 12,288 keys.
struct Fp16Segments {
  const __half *k[3];
  const __half *v[3];
  int n[3];
};
int32_t fp16_attend(const Fp16Segments &seg, const float *q, int n_rows, int hd, const int *visible, float *m, float *l,
                    float *acc, cudaStream_t stream);
// The same for n_heads KV heads in one launch (grid.y = head): head h's segment i at
// k[i] / v[i] + h · seg[i], its queries at q + h · q, outputs at m, l + h · ml, acc + h · acc.
struct Fp16HeadStrides {
  int64_t seg[3] = {0, 0, 0};
  int64_t q = 0, ml = 0, acc = 0;
};
int32_t fp16_attend_heads(const Fp16Segments &seg, const Fp16HeadStrides &st, int n_heads, const float *q, int n_rows,
                          int hd, const int *visible, float *m, float *l, float *acc, cudaStream_t stream);
// Causal attention over a K/V cache in fp16: row j of KV head h at k + h·head_stride + j·hd.
// q: [n_q][n_head][hd] fp32, scaled by 1/sqrt(hd); query i sits at position pos0 + i and sees
// keys [0, min(n_keys, pos0 + i + 1)). out: [n_q][n_head][hd]. Keys are split across blocks
// (flash-decoding) when there are few query rows; work: flash_work_floats(...) floats.
struct KvView {
  const __half *k, *v;
  int64_t head_stride;
};
size_t flash_work_floats(int n_q, int n_head, int hd, int n_keys);
int32_t flash_attend(KvView kv, int n_head, int n_head_kv, int hd, const float *q, int n_q, int pos0, int n_keys,
                     float *out, float *work, size_t work_floats, cudaStream_t stream);
// (m_a, l_a, acc_a) ← the softmax over pieces a and b, row by row (src/lowbit.cpp softmax_merge).
int32_t softmax_merge(float *m_a, float *l_a, float *acc_a, const float *m_b, const float *l_b, const float *acc_b,
                      int n_rows, int hd, cudaStream_t stream);
// The same for n_heads (grid.y): head h's m, l at + h · ml_stride, acc at + h · acc_stride.
int32_t softmax_merge_heads(float *m_a, float *l_a, float *acc_a, const float *m_b, const float *l_b, const float *acc_b,
                            int n_rows, int hd, int n_heads, int64_t ml_stride, int64_t acc_stride, cudaStream_t stream);

// matvec.cu — y[t * y_stride + r] = Σ_c W[r][c] · x[t * cols + c] for rows r < rows and tokens
// t < n_tokens; W row-major in its GGUF type (F32, F16, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K), each
// block dequantized inside the kernel. SPECODE_ERR_UNSUPPORTED for other types.
bool matvec_supported(uint32_t type);
int32_t matvec(uint32_t type, const void *w, int64_t rows, int64_t cols, const float *x, int64_t n_tokens, float *y,
               int64_t y_stride, cudaStream_t stream);

// Several KV heads in one launch: head h's arrays sit at base + h · stride (elements).
struct HeadStrides {
  int64_t q = 0;     // floats between heads' query rows
  int64_t skip = 0;  // 64-bit words between heads' skip sets
  int64_t p = 0;     // floats between heads' score arrays
  int64_t ml = 0;    // floats between heads' m and l
  int64_t acc = 0;   // floats between heads' outputs
};
struct LowbitView {  // one layer's low-bit streams, head h at base + h · *_stride
  const uint8_t *kcodes;
  const __half *kscale, *kzero;
  const uint8_t *vcodes;
  const __half *vscale, *vzero;
  int64_t kcodes_stride, kparam_stride, vcodes_stride, vparam_stride;
};

// lowbit_attn.cu — the low-bit copy in the CPU's byte layout (src/lowbit.h).
// Quantizes n_tokens (whole groups) of fp32 K and V rows ([n][hd]) into the stream
// arrays at their first new group / token.
int32_t lowbit_quantize(const float *k, const float *v, int n_tokens, int g, int hd, int bits, uint8_t *kcodes,
                        __half *kscale, __half *kzero, uint8_t *vcodes, __half *vscale, __half *vzero,
                        cudaStream_t stream);
// One split-softmax piece over tokens [t0, t1) (whole groups) for n_rows query rows
// (q scaled by 1/sqrt(hd)): p [n_rows][t1 - t0] out exp(score - m), m and l per row, acc
// [n_rows][hd] the piece's normalized output; skip: positions attended elsewhere (may be null).
int32_t lowbit_attend(const uint8_t *kcodes, const __half *kscale, const __half *kzero, const uint8_t *vcodes,
                      const __half *vscale, const __half *vzero, int g, int hd, int bits, int t0, int t1,
                      const float *q, int n_rows, const uint64_t *skip, bool debias, float *p, float *m, float *l,
                      float *acc, cudaStream_t stream, float *work = nullptr, size_t work_floats = 0);
// lowbit_attend for n_heads KV heads at once (grid.y = head); work needs n_heads times
// lowbit_work_floats to split the value pass.
int32_t lowbit_attend_heads(const LowbitView &lv, int n_heads, int g, int hd, int bits, int t0, int t1, const float *q,
                            int n_rows, const uint64_t *skip, bool debias, float *p, float *m, float *l, float *acc,
                            const HeadStrides &hs, cudaStream_t stream, float *work, size_t work_floats);
// Raw scores (debiased when asked) of tokens [t0, t1) (whole groups) for n_rows query rows:
// p[r][ldp], column j = token t0 + j (lowbit_attend's first stage, no skip, no softmax).
int32_t lowbit_scores(const uint8_t *kcodes, const __half *kscale, const __half *kzero, int g, int hd, int bits, int t0,
                      int t1, const float *q, int n_rows, bool debias, float *p, int64_t ldp, cudaStream_t stream);
// Work that lets lowbit_attend split the value pass over positions (many blocks a row).
size_t lowbit_work_floats(int n_rows, int hd, int n_tokens);
// The k largest of score[0..n) in ascending position order (ties: lower position), k <= 1024:
// min(n, k) positions to out, the count to *count (device). One block, radix select.
int32_t topk(const float *score, int n, int k, int *out, int *count, cudaStream_t stream);
// dst[i][0..hd) = src_rows[i][0..hd): src_rows are device-visible pointers into pinned, mapped
// host pages (cudaHostGetDevicePointer), so the copy reads over PCIe without a staging copy.
int32_t gather_rows(const uint16_t *const *src_rows, uint16_t *dst, int n_rows, int hd, cudaStream_t stream);

}  // namespace specode::cuda

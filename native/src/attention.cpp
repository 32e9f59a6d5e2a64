// attention.cpp — the portable (width-4) attention kernels, the run-time
// choice among the compiled widths, and the per-thread scratch.
#include "attention.h"

#include <cstring>

#include "quant.h"

#define ATTN_W 4
#define ATTN_NAME kAttnW4
#define ATTN_LABEL "w4"
#include "attention_body.h"

namespace specode {
namespace attn {

#if defined(__x86_64__)
extern const AttnKernels kAttnW8, kAttnW16;  // attention_avx2.cpp, attention_avx512.cpp
#endif

const AttnKernels &kernels_for(int head_dim) {
#if defined(__x86_64__)
  // The quant kernel set was chosen for this CPU (and SPECODE_KERNELS); follow it.
  const char *set = quant_kernel_set();
  if (!std::strcmp(set, "avx512") && head_dim % 16 == 0) return kAttnW16;
  if ((!std::strcmp(set, "avx512") || !std::strcmp(set, "avx2")) && head_dim % 8 == 0) return kAttnW8;
#endif
  return kAttnW4;
}

void Worker::reserve(int m, int hd) {
  if (q.size() < (size_t)m * hd) {
    q.resize((size_t)m * hd);
    o.resize((size_t)m * hd);
  }
  if (mx.size() < (size_t)m) {
    mx.resize(m);
    l.resize(m);
    limit.resize(m);
  }
  if (S.size() < (size_t)m * kBlock) S.resize((size_t)m * kBlock);
  if (Kt.size() < (size_t)hd * kBlock) {
    Kt.resize((size_t)hd * kBlock);
    Vf.resize((size_t)hd * kBlock);
  }
  if (kp.size() < (size_t)kBlock) {
    kp.resize(kBlock);
    vp.resize(kBlock);
  }
}

Worker &worker() {
  static thread_local Worker w;
  return w;
}

}  // namespace attn
}  // namespace specode

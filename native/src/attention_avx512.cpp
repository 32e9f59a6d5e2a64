// attention_avx512.cpp — the attention kernels at width 16 (built with the avx512 flags).
#if defined(__x86_64__)
#include <immintrin.h>

#define ATTN_W 16
#define ATTN_NAME kAttnW16
#define ATTN_LABEL "w16"
#include "attention_body.h"
#endif

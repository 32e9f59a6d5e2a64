// attention_avx2.cpp — the attention kernels at width 8 (built with the avx2 flags).
#if defined(__x86_64__)
#include <immintrin.h>

#define ATTN_W 8
#define ATTN_NAME kAttnW8
#define ATTN_LABEL "w8"
#include "attention_body.h"
#endif

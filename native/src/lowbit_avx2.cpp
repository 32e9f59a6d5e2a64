// lowbit_avx2.cpp — lowbit_attend's inner loops at width 8 (built with the avx2 flags).
#if defined(__x86_64__)
#define LOWBIT_W 8
#define LOWBIT_NAME kLowbitW8
#include "lowbit_body.h"
#endif

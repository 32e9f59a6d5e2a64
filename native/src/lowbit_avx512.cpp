// lowbit_avx512.cpp — lowbit_attend's inner loops at width 16 (built with the avx512 flags).
#if defined(__x86_64__)
#define LOWBIT_W 16
#define LOWBIT_NAME kLowbitW16
#include "lowbit_body.h"
#endif

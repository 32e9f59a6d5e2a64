// cuda_common.h — error checking and launch helpers shared by the CUDA op files.
// Every CUDA call goes through CUDA_CHECK, which records file:line and the
// runtime's message; launchers return a specode_status instead of aborting.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>

#include "specode.h"

namespace specode::cuda {

// Blocks of 256 threads covering n elements.
inline unsigned blocks_for(size_t n) { return (unsigned)((n + 255) / 256); }

// Last CUDA failure on this thread, "" when none.
const char *last_error();
void set_error(const char *file, int line, const char *what, cudaError_t err);

}  // namespace specode::cuda

#define CUDA_CHECK(call)                                                        \
  do {                                                                          \
    cudaError_t err_ = (call);                                                  \
    if (err_ != cudaSuccess) {                                                  \
      ::specode::cuda::set_error(__FILE__, __LINE__, #call, err_);              \
      return SPECODE_ERR_UNSUPPORTED;                                           \
    }                                                                           \
  } while (0)

// After a kernel launch: catches bad launch configurations at once.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

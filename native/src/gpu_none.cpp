// gpu_none.cpp — the CUDA backend's entry points in a build without nvcc
// (SPECODE_WITH_CUDA undefined): every request says so; native/cuda/backend.cu
// defines them otherwise.
#ifndef SPECODE_WITH_CUDA

#include "gpu_backend.h"

namespace specode {

bool gpu_backend_built() { return false; }

int gpu_context_create(const Model &, std::shared_ptr<GpuWeights> *, const GpuContextConfig &,
                       std::unique_ptr<GpuContext> *, std::string *err) {
  *err = "this engine was built without the CUDA backend (nvcc was not found at install time; install the CUDA "
         "toolkit and run npm install again)";
  return SPECODE_ERR_UNSUPPORTED;
}

}  // namespace specode

#endif

// engine_internal.h — what the C API's opaque handles are (engine.cpp), shared with
// the tests that reach the C++ objects behind them (tests/engine_internal_access.h):
// one definition, so the two agree.
#pragma once

#include <memory>
#include <mutex>

#include "context.h"
#include "gpu_backend.h"
#include "model.h"
#include "specode.h"

struct specode_model {
  std::unique_ptr<specode::Model> impl;
  std::mutex gpu_mutex;
  std::shared_ptr<specode::GpuWeights> gpu_weights;  // uploaded by the first CUDA context
};
// Exactly one of impl (CPU) and gpu (CUDA) is set.
struct specode_context {
  std::unique_ptr<specode::Context> impl;
  std::unique_ptr<specode::GpuContext> gpu;
  specode_backend_info backend{};
};

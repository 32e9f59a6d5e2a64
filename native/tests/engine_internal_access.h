// engine_internal_access.h — tests: the C API's handles are these structs in
// engine.cpp (the same definitions, so the ODR holds); reach the C++ objects.
#pragma once

#include <memory>

#include "context.h"
#include "model.h"
#include "specode.h"

struct specode_model {
  std::unique_ptr<specode::Model> impl;
};
struct specode_context {
  std::unique_ptr<specode::Context> impl;
};

inline specode::Model *engine_model(specode_model *m) { return m->impl.get(); }
inline specode::Context *engine_context(specode_context *c) { return c->impl.get(); }

// engine_internal_access.h — tests: reach the C++ objects behind the C API's
// handles (defined once, in src/engine_internal.h). CPU contexts only.
#pragma once

#include "engine_internal.h"

inline specode::Model *engine_model(specode_model *m) { return m->impl.get(); }
inline specode::Context *engine_context(specode_context *c) { return c->impl.get(); }

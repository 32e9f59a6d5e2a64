// cuda_probe.cpp — is there a CUDA device, and if not, why: the NVIDIA driver
// library is opened at run time (dlopen libcuda.so.1; nothing CUDA is linked
// into the engine or the addon, which must load on machines without it), then
// cuInit / cuDeviceGetCount / cuDeviceGetName / cuDeviceTotalMem describe
// device 0, so the backend choice can be reported with its reason even in a
// build without the CUDA backend.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>

#include "gpu_backend.h"
#include "specode.h"

namespace {
using CUresult = int;
using CUdevice = int;
using cuInit_t = CUresult (*)(unsigned);
using cuDeviceGetCount_t = CUresult (*)(int *);
using cuDeviceGet_t = CUresult (*)(CUdevice *, int);
using cuDeviceGetName_t = CUresult (*)(char *, int, CUdevice);
using cuDeviceTotalMem_t = CUresult (*)(size_t *, CUdevice);
using cuDriverGetVersion_t = CUresult (*)(int *);
using cuGetErrorString_t = CUresult (*)(CUresult, const char **);

void reason(specode_cuda_info *out, const char *fmt, const char *a = "", int b = 0) {
  std::snprintf(out->reason, sizeof out->reason, fmt, a, b);
}
}  // namespace

int32_t specode_cuda_probe(specode_cuda_info *out) {
  if (!out) return SPECODE_ERR_ARGUMENT;
  std::memset(out, 0, sizeof *out);
  out->backend_built = specode::gpu_backend_built() ? 1 : 0;
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    reason(out, "no NVIDIA driver (libcuda.so.1 not found)%s", "");
    return SPECODE_OK;
  }
  auto sym = [&](const char *name) { return dlsym(lib, name); };
  auto init = (cuInit_t)sym("cuInit");
  auto count = (cuDeviceGetCount_t)sym("cuDeviceGetCount");
  auto get = (cuDeviceGet_t)sym("cuDeviceGet");
  auto name = (cuDeviceGetName_t)sym("cuDeviceGetName");
  auto mem = (cuDeviceTotalMem_t)sym("cuDeviceTotalMem_v2");
  auto ver = (cuDriverGetVersion_t)sym("cuDriverGetVersion");
  auto err = (cuGetErrorString_t)sym("cuGetErrorString");
  if (!init || !count || !get || !name || !mem) {
    reason(out, "the NVIDIA driver library lacks the functions needed%s", "");
    dlclose(lib);
    return SPECODE_OK;
  }
  if (ver) ver(&out->driver_version);
  CUresult r = init(0);
  if (r != 0) {
    const char *msg = nullptr;
    if (err) err(r, &msg);
    reason(out, "the NVIDIA driver did not start: %s (error %d)", msg ? msg : "unknown", r);
    dlclose(lib);
    return SPECODE_OK;
  }
  int n = 0;
  if (count(&n) != 0 || n == 0) {
    reason(out, "no CUDA device%s", "");
    dlclose(lib);
    return SPECODE_OK;
  }
  out->device_count = n;
  CUdevice dev = 0;
  size_t total = 0;
  if (get(&dev, 0) == 0) {
    name(out->name, (int)sizeof out->name, dev);
    if (mem(&total, dev) == 0) out->total_bytes = total;
  }
  out->available = 1;
  dlclose(lib);
  return SPECODE_OK;
}

// quant.h — GGUF tensor types, block layouts and the matrix kernels that
// dequantize inside the dot product (never to a full fp32 copy of a weight).
//
// Numbering follows the GGUF/ggml type ids so a file's type field maps 1:1.
#pragma once

#include <cstddef>
#include <cstdint>

namespace specode {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

// "Q4_K", "F16", ... or "type#N" for an unknown id (static storage).
const char *dtype_name(uint32_t type);
// True for the weight types the kernels run.
bool dtype_supported(uint32_t type);
// Elements per block (1 for F32/F16/BF16, 32 for Q4_0..Q8_1, 256 for K-quants).
int64_t dtype_block_elems(DType t);
// Bytes per block.
size_t dtype_block_bytes(DType t);
// Bytes of one row of n elements (n must be a multiple of the block size).
size_t dtype_row_bytes(DType t, int64_t n);

// fp16 <-> fp32 (IEEE half, round to nearest even).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);

// Decode one row: src holds n elements of type t, dst gets n floats.
void dequantize_row(DType t, const void *src, float *dst, int64_t n);

// ---- matrix product y = W x for a batch of activation rows ----------------
//
// W: [rows][cols] of type wtype, row r starts at (const char*)w + r*dtype_row_bytes(wtype, cols).
// X: [n_tokens][cols] fp32.
// The activations are first converted once per product to the form the
// weight type's dot kernel wants (e.g. Q8_0 or Q8_K blocks, or fp32 as is),
// then any number of threads each compute a slice of rows.

// Bytes needed for the prepared activations of n_tokens rows.
size_t matmul_act_bytes(DType wtype, int64_t cols, int64_t n_tokens);
// Convert activation rows [t0, t1) into act (laid out for all n_tokens rows).
void matmul_prepare(DType wtype, const float *x, int64_t cols, int64_t t0, int64_t t1, void *act);
// y[t*y_stride + r] = dot(W row r, X row t) for r in [r0, r1) and every t < n_tokens.
void matmul_rows(DType wtype, const void *w, int64_t cols, const void *act, int64_t n_tokens,
                 float *y, int64_t y_stride, int64_t r0, int64_t r1);

// The kernel set chosen at run time from the CPU's features: "avx512", "avx2" or "scalar".
const char *quant_kernel_set();
// Force a kernel set (tests compare every set to the scalar reference). Returns false if
// the CPU lacks it.
bool quant_force_kernel_set(const char *name);

}  // namespace specode

#include "kv_cache.h"

#include <atomic>
#include <cmath>
#include <cstring>

#include "attention.h"
#include "ops.h"
#include "quant.h"

namespace specode {

FullKvCache::FullKvCache(const KvShape &shape, bool f16, int n_threads) : f16_(f16) {
  shape_ = shape;
  size_t n = (size_t)shape.n_layer * shape.n_head_kv * shape.n_ctx * shape.head_dim;
  if (f16_) {
    k16_.resize(n);
    v16_.resize(n);
  } else {
    k32_.resize(n);
    v32_.resize(n);
  }
}

uint64_t FullKvCache::bytes() const {
  return f16_ ? (k16_.size() + v16_.size()) * 2 : (k32_.size() + v32_.size()) * 4;
}

size_t FullKvCache::row_index(int layer, int kv_head, int pos) const {
  return (((size_t)layer * shape_.n_head_kv + kv_head) * shape_.n_ctx + pos) * shape_.head_dim;
}

void FullKvCache::store(int layer, int pos0, int n, const float *k, const float *v) {
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      size_t at = row_index(layer, h, pos0 + t);
      const float *ks = k + ((size_t)t * nkv + h) * hd;
      const float *vs = v + ((size_t)t * nkv + h) * hd;
      if (f16_) {
        f32_to_f16_row(ks, &k16_[at], hd);
        f32_to_f16_row(vs, &v16_[at], hd);
      } else {
        std::memcpy(&k32_[at], ks, hd * sizeof(float));
        std::memcpy(&v32_[at], vs, hd * sizeof(float));
      }
    }
}

bool FullKvCache::read(int layer, int pos0, int n, float *k, float *v) const {
  const int hd = shape_.head_dim, nkv = shape_.n_head_kv;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nkv; ++h) {
      const size_t at = row_index(layer, h, pos0 + t), to = ((size_t)t * nkv + h) * hd;
      for (int c = 0; c < hd; ++c) {
        k[to + c] = f16_ ? fp16_to_fp32(k16_[at + c]) : k32_[at + c];
        v[to + c] = f16_ ? fp16_to_fp32(v16_[at + c]) : v32_[at + c];
      }
    }
  return true;
}

void FullKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  if (f16_) {
    const uint16_t *k = k16_.data(), *v = v16_.data();
    attn::causal_attention(
        pool, shape_, pos0, n, q, out, [&](int g, int j) { return k + row_index(layer, g, j); },
        [&](int g, int j) { return v + row_index(layer, g, j); });
  } else {
    const float *k = k32_.data(), *v = v32_.data();
    attn::causal_attention(
        pool, shape_, pos0, n, q, out, [&](int g, int j) { return k + row_index(layer, g, j); },
        [&](int g, int j) { return v + row_index(layer, g, j); });
  }
}

}  // namespace specode

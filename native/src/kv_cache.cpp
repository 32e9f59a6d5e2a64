#include "kv_cache.h"

#include <atomic>
#include <cmath>
#include <cstring>

#include "ops.h"

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
  scratch_.resize(n_threads < 1 ? 1 : n_threads);
  for (auto &s : scratch_) s.resize(shape.n_ctx);
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

void FullKvCache::attend(int layer, int pos0, int n, const float *q, float *out, ThreadPool &pool) {
  const int hd = shape_.head_dim, nh = shape_.n_head, group = shape_.n_head / shape_.n_head_kv;
  const float scale = 1.0f / std::sqrt((float)hd);
  const int n_tasks = n * nh;
  std::atomic<int> next{0};
  pool.run([&](int ith, int) {
    float *scores = scratch_[ith].data();
    for (int task; (task = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int t = task / nh, h = task % nh, g = h / group;
      const int n_pos = pos0 + t + 1;
      const float *qh = q + ((size_t)t * nh + h) * hd;
      float *oh = out + ((size_t)t * nh + h) * hd;
      const size_t base = row_index(layer, g, 0);
      float mx = -INFINITY;
      for (int j = 0; j < n_pos; ++j) {
        float s = (f16_ ? dot_f16_f32(&k16_[base + (size_t)j * hd], qh, hd)
                        : dot_f32(&k32_[base + (size_t)j * hd], qh, hd)) * scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
      }
      float sum = 0;
      for (int j = 0; j < n_pos; ++j) {
        float e = std::exp(scores[j] - mx);
        scores[j] = e;
        sum += e;
      }
      const float inv = 1.0f / sum;
      std::memset(oh, 0, hd * sizeof(float));
      for (int j = 0; j < n_pos; ++j) {
        if (f16_) axpy_f16(scores[j] * inv, &v16_[base + (size_t)j * hd], oh, hd);
        else axpy_f32(scores[j] * inv, &v32_[base + (size_t)j * hd], oh, hd);
      }
    }
  });
}

}  // namespace specode

#include "kv_disk.h"

#include "kv_pages.h"
#include "quant.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

namespace fs = std::filesystem;

namespace specode {

namespace {

constexpr char kMagic[8] = {'S', 'P', 'K', 'V', 'P', 'G', '0', '1'};
constexpr uint32_t kVersion = 1;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t page_tokens, n_layer, n_head_kv, head_dim;
  uint32_t reserved;
  uint64_t model_id, hash, parent, payload_bytes, checksum;
};
static_assert(sizeof(Header) == 72, "header layout");

// 64-bit words, mixed; the tail bytes one by one.
uint64_t checksum(uint64_t h, const void *data, size_t n) {
  const uint8_t *p = (const uint8_t *)data;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return mix64(h);
}

uint64_t page_checksum(const int32_t *tokens, int P, const uint16_t *rows, uint64_t elems) {
  return checksum(checksum(0xcbf29ce484222325ull, tokens, (size_t)P * sizeof(int32_t)), rows, elems * sizeof(uint16_t));
}

std::string hex(uint64_t x) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)x);
  return b;
}

}  // namespace

// Bump when the forward pass's arithmetic changes (kernels, RoPE, attention): pages written
// by an older engine then live under another directory and are never adopted.
constexpr uint64_t kEngineKvVersion = 1;

uint64_t KvDisk::model_identity(const uint8_t *data, uint64_t size) {
  uint64_t h = mix64(size ^ 0x6b766469736bull ^ (kEngineKvVersion << 48));
  const char *set = quant_kernel_set();
  h = checksum(h, set, std::strlen(set));
  const uint64_t chunk = 64 << 10, stride = 16ull << 20;
  for (uint64_t off = 0; off < size; off += stride) h = checksum(h, data + off, (size_t)std::min(chunk, size - off));
  if (size > chunk) h = checksum(h, data + size - chunk, chunk);
  return h;
}

KvDisk::KvDisk(const KvDiskConfig &cfg) : cfg_(cfg) {
  if (cfg_.max_bytes == 0) cfg_.max_bytes = 4ull << 30;
  page_elems_ = (uint64_t)cfg.n_layer * 2 * cfg.n_head_kv * cfg.page_tokens * cfg.head_dim;
  mdir_ = (fs::path(cfg.dir) / hex(cfg.model_id)).string();
  std::error_code ec;
  fs::create_directories(mdir_, ec);
  usable_ = !ec && fs::is_directory(mdir_, ec);
  if (!usable_) return;
  for (const auto &e : fs::directory_iterator(mdir_, ec)) {
    if (!e.is_regular_file(ec)) continue;
    if (e.path().extension() == ".tmp") {
      // Left by a crash mid-write (not one another server is writing right now).
      if (fs::file_time_type::clock::now() - e.last_write_time(ec) > std::chrono::hours(1)) fs::remove(e.path(), ec);
    } else {
      bytes_ += e.file_size(ec);
    }
  }
}

std::string KvDisk::path(uint64_t hash) const { return (fs::path(mdir_) / (hex(hash) + ".kvpage")).string(); }

bool KvDisk::has(uint64_t hash) const {
  std::error_code ec;
  return usable_ && fs::exists(path(hash), ec);
}

bool KvDisk::load(uint64_t hash, uint64_t parent, const int32_t *tokens, uint16_t *rows) {
  if (!usable_) return false;
  const std::string p = path(hash);
  FILE *f = std::fopen(p.c_str(), "rb");
  if (!f) return false;
  const int P = cfg_.page_tokens;
  Header h{};
  std::vector<int32_t> ids(P);
  bool ok = std::fread(&h, sizeof h, 1, f) == 1 && std::memcmp(h.magic, kMagic, 8) == 0 && h.version == kVersion &&
            h.page_tokens == (uint32_t)P && h.n_layer == (uint32_t)cfg_.n_layer &&
            h.n_head_kv == (uint32_t)cfg_.n_head_kv && h.head_dim == (uint32_t)cfg_.head_dim &&
            h.model_id == cfg_.model_id && h.hash == hash && h.parent == parent &&
            h.payload_bytes == page_elems_ * sizeof(uint16_t) &&
            std::fread(ids.data(), sizeof(int32_t), P, f) == (size_t)P &&
            std::memcmp(ids.data(), tokens, (size_t)P * sizeof(int32_t)) == 0 &&
            std::fread(rows, sizeof(uint16_t), page_elems_, f) == page_elems_ && std::fgetc(f) == EOF &&
            page_checksum(ids.data(), P, rows, page_elems_) == h.checksum;
  std::fclose(f);
  std::error_code ec;
  if (!ok) {
    // Corrupt, truncated, from other weights or another page: never used; recomputed instead.
    const uint64_t sz = fs::file_size(p, ec);
    if (fs::remove(p, ec) && bytes_ >= sz) bytes_ -= sz;
    ++rejected_;
    return false;
  }
  fs::last_write_time(p, fs::file_time_type::clock::now(), ec);  // recently used: evicted last
  ++loaded_;
  return true;
}

void KvDisk::touch(uint64_t hash) {
  if (!usable_) return;
  std::error_code ec;
  fs::last_write_time(path(hash), fs::file_time_type::clock::now(), ec);  // no file: nothing to do
}

// Over the cap: the least recently used files go until 90 % of it is left (so the
// directory is not rescanned at every save).
void KvDisk::enforce_cap(uint64_t incoming) {
  if (bytes_ + incoming <= cfg_.max_bytes) return;
  const uint64_t target = cfg_.max_bytes / 10 * 9;
  std::error_code ec;
  std::vector<std::pair<fs::file_time_type, fs::path>> files;
  for (const auto &e : fs::directory_iterator(mdir_, ec))
    if (e.is_regular_file(ec) && e.path().extension() == ".kvpage") files.emplace_back(e.last_write_time(ec), e.path());
  std::sort(files.begin(), files.end());
  for (const auto &f : files) {
    if (bytes_ + incoming <= target) break;
    const uint64_t sz = fs::file_size(f.second, ec);
    if (fs::remove(f.second, ec)) bytes_ = bytes_ >= sz ? bytes_ - sz : 0;
  }
}

bool KvDisk::save(uint64_t hash, uint64_t parent, const int32_t *tokens, const uint16_t *rows) {
  if (!usable_) return false;
  const std::string p = path(hash);
  std::error_code ec;
  // A file already there is replaced: a page is saved only when it was computed, which
  // means that file was not adopted (it may be corrupt).
  const int P = cfg_.page_tokens;
  const uint64_t total = sizeof(Header) + (uint64_t)P * sizeof(int32_t) + page_elems_ * sizeof(uint16_t);
  if (total > cfg_.max_bytes) return false;
  enforce_cap(total);
  const uint64_t old_size = fs::exists(p, ec) ? fs::file_size(p, ec) : 0;  // after the cap: it may be gone
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kVersion;
  h.page_tokens = (uint32_t)P;
  h.n_layer = (uint32_t)cfg_.n_layer;
  h.n_head_kv = (uint32_t)cfg_.n_head_kv;
  h.head_dim = (uint32_t)cfg_.head_dim;
  h.model_id = cfg_.model_id;
  h.hash = hash;
  h.parent = parent;
  h.payload_bytes = page_elems_ * sizeof(uint16_t);
  h.checksum = page_checksum(tokens, P, rows, page_elems_);
  const std::string tmp = p + "." + hex((uint64_t)std::chrono::steady_clock::now().time_since_epoch().count()) + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f) return false;
  bool ok = std::fwrite(&h, sizeof h, 1, f) == 1 && std::fwrite(tokens, sizeof(int32_t), P, f) == (size_t)P &&
            std::fwrite(rows, sizeof(uint16_t), page_elems_, f) == page_elems_;
  ok = (std::fclose(f) == 0) && ok;
  if (ok) fs::rename(tmp, p, ec);
  if (!ok || ec) {
    fs::remove(tmp, ec);
    return false;
  }
  bytes_ = bytes_ + total - std::min(bytes_, old_size);
  ++saved_;
  return true;
}

}  // namespace specode

// The disk tier of the host pages: a page saved by one pool is adopted by a
// fresh pool (a restarted server) with the same rows; a corrupt, truncated or
// stale (other weights, other page) file is rejected, deleted and never used;
// the directory stays under its cap.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "kv_disk.h"
#include "kv_pages.h"
#include "testing.h"

namespace fs = std::filesystem;
using specode::KvDisk;
using specode::KvDiskConfig;
using specode::KvPages;
using specode::KvPagesConfig;

namespace {

constexpr int kLayers = 2, kHeads = 2, kDim = 8, kP = 4;

std::string temp_dir() {
  char tmpl[] = "/tmp/specode_kvdisk_XXXXXX";
  const char *d = mkdtemp(tmpl);
  return d ? d : "/tmp/specode_kvdisk_fallback";
}

KvDiskConfig disk_config(const std::string &dir, uint64_t model_id, uint64_t max_bytes = 0) {
  return KvDiskConfig{dir, model_id, max_bytes, kLayers, kHeads, kDim, kP};
}

KvPages make_pool() { return KvPages(KvPagesConfig{kLayers, kHeads, kDim, kP, 16}); }

// Writes a recognizable value into every row of seq's positions [0, n).
void fill_rows(KvPages &pool, int seq, int n) {
  for (int pos = 0; pos < n; ++pos)
    for (int l = 0; l < kLayers; ++l)
      for (int h = 0; h < kHeads; ++h)
        for (int c = 0; c < kDim; ++c) {
          pool.seq_k_row(seq, l, h, pos)[c] = (uint16_t)(pos * 1000 + l * 100 + h * 10 + c);
          pool.seq_v_row(seq, l, h, pos)[c] = (uint16_t)(50000 - pos * 1000 - l * 100 - h * 10 - c);
        }
}

bool rows_match(KvPages &pool, int seq, int n) {
  for (int pos = 0; pos < n; ++pos)
    for (int l = 0; l < kLayers; ++l)
      for (int h = 0; h < kHeads; ++h)
        for (int c = 0; c < kDim; ++c)
          if (pool.seq_k_row(seq, l, h, pos)[c] != (uint16_t)(pos * 1000 + l * 100 + h * 10 + c) ||
              pool.seq_v_row(seq, l, h, pos)[c] != (uint16_t)(50000 - pos * 1000 - l * 100 - h * 10 - c))
            return false;
  return true;
}

std::vector<fs::path> page_files(const std::string &dir) {
  std::vector<fs::path> out;
  for (const auto &e : fs::recursive_directory_iterator(dir))
    if (e.path().extension() == ".kvpage") out.push_back(e.path());
  return out;
}

}  // namespace

TEST(kv_disk_pages_survive_a_new_pool_and_bad_files_are_recomputed) {
  const std::string dir = temp_dir();
  const std::vector<int32_t> tokens = {11, 12, 13, 14, 21, 22, 23, 24, 31, 32, 33, 34, 41, 42};  // 3 full pages + 2
  {
    KvDisk disk(disk_config(dir, 7));
    KvPages pool = make_pool();
    pool.set_disk(&disk);
    const int seq = pool.seq_create();
    CHECK(pool.seq_append(seq, tokens.data(), (int)tokens.size()));
    fill_rows(pool, seq, (int)tokens.size());
    pool.persist();
    CHECK(disk.saved() == 3);  // the partial last page is not saved
    pool.persist();
    CHECK(disk.saved() == 3);  // once
  }
  CHECK(page_files(dir).size() == 3);

  // A fresh pool (the restarted server) adopts the three pages from disk, rows intact.
  {
    KvDisk disk(disk_config(dir, 7));
    KvPages pool = make_pool();
    pool.set_disk(&disk);
    CHECK(pool.cached_prefix(tokens.data(), (int)tokens.size()) == 12);
    const int seq = pool.seq_create();
    CHECK(pool.seq_adopt_cached(seq, tokens.data(), (int)tokens.size()) == 12);
    CHECK(disk.loaded() == 3 && disk.rejected() == 0);
    CHECK(rows_match(pool, seq, 12));
    CHECK(pool.pages_referenced() == 3);
    pool.seq_free(seq);
    CHECK(pool.pages_cached() == 3);  // now in memory: the next adopt needs no disk
    const int again = pool.seq_create();
    CHECK(pool.seq_adopt_cached(again, tokens.data(), 8) == 8);
    CHECK(disk.loaded() == 3);
  }

  // Another model's pool sees nothing (its own directory).
  {
    KvDisk other(disk_config(dir, 8));
    KvPages pool = make_pool();
    pool.set_disk(&other);
    const int seq = pool.seq_create();
    CHECK(pool.seq_adopt_cached(seq, tokens.data(), (int)tokens.size()) == 0);
  }

  // A flipped byte near the end of every file: a pool that holds page 1 in memory adopts it,
  // reads page 2 from disk, finds its checksum wrong, deletes the file and stops there —
  // the rest is recomputed, never taken from a bad file.
  {
    std::vector<fs::path> files = page_files(dir);
    CHECK(files.size() == 3);
    KvDisk disk(disk_config(dir, 7));
    KvPages pool = make_pool();
    pool.set_disk(&disk);
    const int seq0 = pool.seq_create();
    CHECK(pool.seq_adopt_cached(seq0, tokens.data(), 4) == 4);  // page 1 read while still intact
    pool.seq_free(seq0);
    for (const fs::path &f : files) {
      FILE *fp = std::fopen(f.c_str(), "r+b");
      CHECK(fp != nullptr);
      std::fseek(fp, -3, SEEK_END);
      int ch = std::fgetc(fp);
      std::fseek(fp, -3, SEEK_END);
      std::fputc(ch ^ 0x5a, fp);
      std::fclose(fp);
    }
    // Page 1 is in memory (not reread); page 2 is read from disk and fails its checksum.
    const int seq = pool.seq_create();
    CHECK(pool.seq_adopt_cached(seq, tokens.data(), (int)tokens.size()) == 4);
    CHECK(disk.rejected() == 1);
    CHECK(rows_match(pool, seq, 4));
    CHECK(page_files(dir).size() == 2);  // the bad file is gone
  }

  // A truncated file and a file whose header names other weights: both rejected.
  {
    std::vector<fs::path> files = page_files(dir);
    fs::resize_file(files[0], fs::file_size(files[0]) / 2);
    KvDisk disk(disk_config(dir, 7));
    KvPages pool = make_pool();
    pool.set_disk(&disk);
    const int seq = pool.seq_create();
    CHECK(pool.seq_adopt_cached(seq, tokens.data(), (int)tokens.size()) == 0);
    CHECK(disk.rejected() == 1);
  }
  fs::remove_all(dir);
}

TEST(kv_disk_stays_under_its_cap_oldest_out) {
  const std::string dir = temp_dir();
  const uint64_t page_file = 72 + kP * 4 + (uint64_t)kLayers * 2 * kHeads * kP * kDim * 2;
  KvDisk disk(disk_config(dir, 1, 3 * page_file));
  std::vector<uint16_t> rows((size_t)kLayers * 2 * kHeads * kP * kDim, 7);
  for (int i = 0; i < 5; ++i) {
    const int32_t ids[kP] = {i, i, i, i};
    CHECK(disk.save(100 + i, 1, ids, rows.data()));
  }
  CHECK(disk.bytes_on_disk() <= 3 * page_file);
  CHECK(page_files(dir).size() == 3);
  CHECK(!disk.has(100) && !disk.has(101) && disk.has(104));
  // A page written under another model id is not read back under this one.
  const int32_t ids[kP] = {4, 4, 4, 4};
  KvDisk other(disk_config(dir, 2));
  std::vector<uint16_t> back(rows.size());
  CHECK(!other.load(104, 1, ids, back.data()));
  CHECK(disk.load(104, 1, ids, back.data()) && back == rows);
  // Wrong parent or ids for the same hash: rejected (and deleted).
  const int32_t wrong[kP] = {4, 4, 4, 5};
  CHECK(!disk.load(103, 1, wrong, back.data()));
  CHECK(disk.rejected() == 1 && !disk.has(103));
  fs::remove_all(dir);
}

// kv_disk.h — the optional disk tier of the host page pool: full pages saved
// by their prefix-chain hash under a directory of the user cache, so a
// restarted server adopts a repo prefix it computed before instead of
// prefilling it again.
//
// One file per page, <dir>/<model id>/<chain hash>.kvpage: a header (magic,
// version, page shape, model id, chain hash, parent hash, payload size, a
// checksum over the ids and the rows), the page's P token ids, then its rows
// exactly as the pool holds them. A file is used only when every field and
// the checksum agree with what the pool asks for; otherwise it is deleted and
// the page is recomputed (a corrupt, truncated or stale file is never used).
// Files are written to a temporary name and renamed, so a crash leaves no
// half page under a real name. The directory is capped (oldest first out).
#pragma once

#include <cstdint>
#include <string>

namespace specode {

struct KvDiskConfig {
  std::string dir;         // the tier's root; pages go to dir/<model id hex>/
  uint64_t model_id = 0;   // identity of the weights the rows were computed with
  uint64_t max_bytes = 0;  // cap on the model directory (0: 4 GiB)
  int n_layer = 0, n_head_kv = 0, head_dim = 0, page_tokens = 0;
};

class KvDisk {
 public:
  explicit KvDisk(const KvDiskConfig &cfg);

  // Reads the page (parent, tokens) whose chain hash is `hash` into rows
  // ([page_elems] fp16). False when there is none or it does not check out
  // (then the file is removed).
  bool load(uint64_t hash, uint64_t parent, const int32_t *tokens, uint16_t *rows);
  // Saves a page (best effort: false when the disk refuses; nothing half-written stays).
  bool save(uint64_t hash, uint64_t parent, const int32_t *tokens, const uint16_t *rows);
  // A file for `hash` exists (not verified).
  bool has(uint64_t hash) const;
  // Marks the page's file as just used (the cap removes the least recently used first).
  void touch(uint64_t hash);

  uint64_t loaded() const { return loaded_; }
  uint64_t saved() const { return saved_; }
  uint64_t rejected() const { return rejected_; }
  uint64_t bytes_on_disk() const { return bytes_; }
  const std::string &model_dir() const { return mdir_; }

  // Identity of the rows a page holds: the model file (its size and 64 KiB samples spread
  // over it, metadata and weights), the engine's KV format version (bumped whenever the
  // forward pass's arithmetic changes) and the CPU kernel set that computed them.
  static uint64_t model_identity(const uint8_t *data, uint64_t size);

 private:
  std::string path(uint64_t hash) const;
  void enforce_cap(uint64_t incoming);

  KvDiskConfig cfg_;
  std::string mdir_;
  uint64_t page_elems_ = 0;
  uint64_t bytes_ = 0;
  uint64_t loaded_ = 0, saved_ = 0, rejected_ = 0;
  bool usable_ = false;
};

}  // namespace specode

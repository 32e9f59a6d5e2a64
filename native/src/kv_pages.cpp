#include "kv_pages.h"

#include "kv_disk.h"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace specode {

namespace {
constexpr uint64_t kRootHash = 0x5ec0de5ec0de0001ull;  // parent of logical page 0
}  // namespace

uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

KvPages::KvPages(const KvPagesConfig &cfg) : cfg_(cfg) {
  assert(cfg.n_layer > 0 && cfg.n_head_kv > 0 && cfg.head_dim > 0 && cfg.page_tokens > 0 && cfg.max_pages > 0);
  page_elems_ = (size_t)cfg.n_layer * 2 * cfg.n_head_kv * cfg.page_tokens * cfg.head_dim;
  meta_.resize(cfg.max_pages);
}

uint64_t KvPages::chain_hash(uint64_t parent, const int32_t *tokens, int n) {
  uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ull);
  for (int i = 0; i < n; ++i) h = (h ^ (uint32_t)tokens[i]) * 0x100000001b3ull;
  return mix64(h);
}

PageId KvPages::lookup(uint64_t parent, const int32_t *tokens) const {
  const int P = cfg_.page_tokens;
  auto it = hash_index_.find(chain_hash(parent, tokens, P));
  if (it == hash_index_.end()) return -1;
  const PageMeta &m = meta_[it->second];
  // The hash is only an index: parent and ids are compared, so a collision
  // can never hand out another prefix's K/V.
  if (m.parent != parent || std::memcmp(m.tokens.data(), tokens, P * sizeof(int32_t)) != 0) return -1;
  return it->second;
}

int KvPages::free_capacity() const {
  return (int)free_.size() + (cfg_.max_pages - (int)storage_.size()) + (int)lru_.size();
}

PageId KvPages::alloc() {
  PageId page;
  if (!free_.empty()) {
    page = free_.back();
    free_.pop_back();
  } else if ((int)storage_.size() < cfg_.max_pages) {
    page = (PageId)storage_.size();
    storage_.emplace_back(new uint16_t[page_elems_]);
  } else if (!lru_.empty()) {
    page = lru_.front();  // least recently released cached page
    lru_.pop_front();
    PageMeta &m = meta_[page];
    m.in_lru = false;
    hash_index_.erase(m.hash);
    m.registered = false;
    m.tokens.clear();
    ++evictions_;
  } else {
    return -1;
  }
  assert(meta_[page].ref == 0);
  meta_[page].ref = 1;
  ++n_referenced_;
  return page;
}

void KvPages::acquire(PageId page) {
  PageMeta &m = meta_[page];
  if (m.ref == 0) {
    if (m.in_lru) {
      lru_.erase(m.lru_it);
      m.in_lru = false;
    }
    ++n_referenced_;
  }
  ++m.ref;
}

void KvPages::release(PageId page) {
  PageMeta &m = meta_[page];
  assert(m.ref > 0);
  if (--m.ref > 0) return;
  --n_referenced_;
  if (m.registered) {
    m.lru_it = lru_.insert(lru_.end(), page);
    m.in_lru = true;
  } else {
    free_.push_back(page);
  }
}

void KvPages::register_full(Sequence &s, int logical) {
  const int P = cfg_.page_tokens;
  assert((int)s.hashes.size() == logical);
  const uint64_t parent = logical == 0 ? kRootHash : s.hashes[logical - 1];
  const int32_t *ids = s.tokens.data() + (size_t)logical * P;
  const uint64_t h = chain_hash(parent, ids, P);
  s.hashes.push_back(h);
  // A page with this content is already registered (computed twice): keep
  // that one as the cached copy; ours stays private.
  if (hash_index_.count(h)) return;
  PageMeta &m = meta_[s.pages[logical]];
  m.registered = true;
  m.hash = h;
  m.parent = parent;
  m.tokens.assign(ids, ids + P);
  hash_index_[h] = s.pages[logical];
  if (disk_) unsaved_.push_back(s.pages[logical]);
}

PageId KvPages::load_from_disk(uint64_t parent, const int32_t *tokens) {
  const int P = cfg_.page_tokens;
  const uint64_t h = chain_hash(parent, tokens, P);
  if (!disk_ || !disk_->has(h) || hash_index_.count(h)) return -1;
  const PageId page = alloc();
  if (page < 0) return -1;
  if (!disk_->load(h, parent, tokens, storage_[page].get())) {
    release(page);
    return -1;
  }
  PageMeta &m = meta_[page];
  m.registered = true;
  m.hash = h;
  m.parent = parent;
  m.tokens.assign(tokens, tokens + P);
  hash_index_[h] = page;
  return page;
}

void KvPages::persist() {
  if (!disk_) return;
  for (PageId page : unsaved_) {
    const PageMeta &m = meta_[page];
    // Evicted and reused since it was registered: its rows are another page's now.
    if (!m.registered) continue;
    auto it = hash_index_.find(m.hash);
    if (it == hash_index_.end() || it->second != page) continue;
    disk_->save(m.hash, m.parent, m.tokens.data(), storage_[page].get());
  }
  unsaved_.clear();
}

void KvPages::copy_rows(PageId dst, PageId src, int n_slots) {
  for (int l = 0; l < cfg_.n_layer; ++l)
    for (int kv = 0; kv < 2; ++kv)
      for (int h = 0; h < cfg_.n_head_kv; ++h)
        std::memcpy(row(dst, l, kv, h, 0), row(src, l, kv, h, 0), (size_t)n_slots * cfg_.head_dim * sizeof(uint16_t));
}

int KvPages::seq_create() {
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i].live) {
      seqs_[i].live = true;
      return (int)i;
    }
  seqs_.emplace_back();
  seqs_.back().live = true;
  return (int)seqs_.size() - 1;
}

void KvPages::seq_free(int seq) {
  Sequence &s = seqs_[seq];
  for (size_t i = s.pages.size(); i-- > 0;) release(s.pages[i]);
  s = Sequence{};
}

bool KvPages::seq_append(int seq, const int32_t *tokens, int n) {
  Sequence &s = seqs_[seq];
  const int P = cfg_.page_tokens;
  const int old_len = (int)s.tokens.size(), new_len = old_len + n;
  const int need = (new_len + P - 1) / P - (int)s.pages.size();
  if (need > free_capacity()) return false;
  for (int i = 0; i < need; ++i) s.pages.push_back(alloc());
  s.tokens.insert(s.tokens.end(), tokens, tokens + n);
  for (int full = new_len / P, i = old_len / P; i < full; ++i) register_full(s, i);
  return true;
}

bool KvPages::seq_truncate(int seq, int n_keep) {
  Sequence &s = seqs_[seq];
  const int P = cfg_.page_tokens;
  if (n_keep >= (int)s.tokens.size()) return true;
  const int keep_pages = (n_keep + P - 1) / P, cut = n_keep % P;
  if (cut > 0) {
    PageId old = s.pages[keep_pages - 1];
    if (meta_[old].ref > 1 || meta_[old].registered) {
      PageId fresh = alloc();
      if (fresh < 0) return false;
      copy_rows(fresh, old, cut);
      s.pages[keep_pages - 1] = fresh;
      release(old);
    }
  }
  for (int i = (int)s.pages.size(); i-- > keep_pages;) release(s.pages[i]);
  s.pages.resize(keep_pages);
  s.tokens.resize(n_keep);
  s.hashes.resize(n_keep / P);
  return true;
}

int KvPages::seq_adopt_cached(int seq, const int32_t *next, int n) {
  Sequence &s = seqs_[seq];
  const int P = cfg_.page_tokens;
  std::vector<int32_t> ids(P);
  int added = 0;
  for (;;) {
    const int len = (int)s.tokens.size(), logical = len / P, have = len % P, want = P - have;
    if (n - added < want) break;
    std::copy(s.tokens.begin() + (size_t)logical * P, s.tokens.end(), ids.begin());
    std::copy(next + added, next + added + want, ids.begin() + have);
    const uint64_t parent = logical == 0 ? kRootHash : s.hashes[logical - 1];
    PageId page = lookup(parent, ids.data());
    if (page >= 0) {
      acquire(page);
      if (disk_) disk_->touch(meta_[page].hash);
    } else {
      page = load_from_disk(parent, ids.data());  // ref 1 already
      if (page < 0) break;
    }
    if (have > 0) {
      release(s.pages[logical]);  // our partial copy of the same prefix
      s.pages[logical] = page;
    } else {
      s.pages.push_back(page);
    }
    s.tokens.insert(s.tokens.end(), next + added, next + added + want);
    s.hashes.push_back(meta_[page].hash);
    added += want;
  }
  return added;
}

int KvPages::cached_prefix(const int32_t *tokens, int n) const {
  const int P = cfg_.page_tokens;
  uint64_t parent = kRootHash;
  int count = 0;
  while (count + P <= n) {
    PageId page = lookup(parent, tokens + count);
    if (page >= 0) {
      parent = meta_[page].hash;
    } else {
      const uint64_t h = chain_hash(parent, tokens + count, P);
      if (!disk_ || !disk_->has(h)) break;
      parent = h;
    }
    count += P;
  }
  return count;
}

}  // namespace specode

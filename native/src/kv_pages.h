// kv_pages.h — the host page pool (vLLM's block manager, in vLLM's words).
//
// A *page* holds P consecutive tokens' K and V of every KV head, in fp16. A
// page id names one such page in every layer (like a vLLM block id, which
// indexes every layer's KV tensor). A *page table* maps a sequence's logical
// pages to page ids. A page that is full is registered under a *prefix hash*
// chained over the full pages before it (hash(parent hash, its P token ids)),
// so a later sequence with the same leading tokens adopts it instead of
// recomputing it. Pages are ref-counted; a registered page whose count drops
// to 0 stays cached in an LRU free queue and is evicted only when a page is
// needed and no never-used or unregistered page is left.
//
// Pure host code with no GPU in it: kernels only ever see page tables and
// row pointers. Not thread-safe; one owner drives it (row pointers handed
// out stay valid until their page is released and reused).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

namespace specode {

class KvDisk;
using PageId = int32_t;

// splitmix64's finalizer: the 64-bit mixing step of the page hashes (and the disk tier's).
uint64_t mix64(uint64_t x);

struct KvPagesConfig {
  int n_layer = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int page_tokens = 64;  // P
  int max_pages = 0;     // pool capacity; storage is allocated on first use
};

class KvPages {
 public:
  explicit KvPages(const KvPagesConfig &cfg);

  const KvPagesConfig &config() const { return cfg_; }
  int page_tokens() const { return cfg_.page_tokens; }
  // Bytes of one page id's storage (all layers, K and V).
  uint64_t page_bytes() const { return page_elems_ * sizeof(uint16_t); }

  // ---- sequences
  int seq_create();
  // Releases every page of seq; seq's id may be reused by seq_create().
  void seq_free(int seq);
  int seq_len(int seq) const { return (int)seqs_[seq].tokens.size(); }
  const std::vector<int32_t> &seq_tokens(int seq) const { return seqs_[seq].tokens; }
  // [ceil(seq_len / P)] page ids, logical page i holds positions [i*P, (i+1)*P).
  const std::vector<PageId> &page_table(int seq) const { return seqs_[seq].pages; }

  // Reserves slots for n more tokens (ids kept for hashing; pages that become
  // full are registered). Returns false, changing nothing, when the pool has
  // no page left even after evicting every cached one.
  bool seq_append(int seq, const int32_t *tokens, int n);
  // Forgets positions >= n_keep. A page cut in the middle that is shared or
  // registered is copied first (copy-on-write), so cached content never
  // changes. Released pages enter the LRU queue tail page first, so a tail is
  // evicted before the prefix it hangs from. False only when a copy needs a
  // page and none is left (nothing changed then).
  bool seq_truncate(int seq, int n_keep);
  // Extends seq with cached full pages whose chain matches seq's tokens
  // followed by next[0..n). A partial last page of seq is replaced by the
  // cached full page that continues it. Returns how many tokens were added
  // (0..n); the caller has their K/V without recomputing them.
  int seq_adopt_cached(int seq, const int32_t *next, int n);

  // Leading tokens of tokens[0..n) already held in registered pages (a chain
  // from position 0; whole pages only), in memory or (not verified) on disk.
  int cached_prefix(const int32_t *tokens, int n) const;

  // ---- disk tier (optional; not owned): a page missing from memory is looked
  // for on disk when adopting; registered pages are saved by persist().
  void set_disk(KvDisk *disk) { disk_ = disk; }
  // Saves the pages registered since the last call (their rows must be written:
  // the owner calls this after each forward pass).
  void persist();
  // Drops the pages registered since the last persist() from the list to save.
  void forget_unsaved() { unsaved_.clear(); }

  // ---- rows: [head_dim] fp16 each
  uint16_t *k_row(PageId page, int layer, int kv_head, int slot) { return row(page, layer, 0, kv_head, slot); }
  uint16_t *v_row(PageId page, int layer, int kv_head, int slot) { return row(page, layer, 1, kv_head, slot); }
  uint16_t *seq_k_row(int seq, int layer, int kv_head, int pos) {
    const int P = cfg_.page_tokens;
    return k_row(seqs_[seq].pages[pos / P], layer, kv_head, pos % P);
  }
  uint16_t *seq_v_row(int seq, int layer, int kv_head, int pos) {
    const int P = cfg_.page_tokens;
    return v_row(seqs_[seq].pages[pos / P], layer, kv_head, pos % P);
  }

  // ---- inspection (tests, metrics)
  int ref_count(PageId page) const { return meta_[page].ref; }
  bool is_registered(PageId page) const { return meta_[page].registered; }
  int pages_allocated() const { return (int)storage_.size(); }  // storage that exists
  int pages_referenced() const { return n_referenced_; }        // ref > 0
  int pages_cached() const { return (int)lru_.size(); }         // ref == 0, registered
  const std::list<PageId> &lru_queue() const { return lru_; }   // head is evicted first
  uint64_t evictions() const { return evictions_; }
  uint64_t bytes_allocated() const { return (uint64_t)storage_.size() * page_bytes(); }

 private:
  struct PageMeta {
    int ref = 0;
    bool registered = false;  // in hash_index_ (full, content fixed)
    uint64_t hash = 0;        // chain hash, valid when registered
    uint64_t parent = 0;      // parent chain hash, checked on lookup with tokens
    std::vector<int32_t> tokens;  // [P] ids, valid when registered
    std::list<PageId>::iterator lru_it;
    bool in_lru = false;
  };
  struct Sequence {
    bool live = false;
    std::vector<int32_t> tokens;  // [len] ids
    std::vector<PageId> pages;    // page table
    std::vector<uint64_t> hashes; // [full pages] chain hashes
  };

  // Layout of one page id: [n_layer][2 (K, V)][n_head_kv][P][head_dim] fp16.
  uint16_t *row(PageId page, int layer, int kv, int kv_head, int slot) {
    return storage_[page].get() +
           ((((size_t)layer * 2 + kv) * cfg_.n_head_kv + kv_head) * cfg_.page_tokens + slot) * cfg_.head_dim;
  }
  static uint64_t chain_hash(uint64_t parent, const int32_t *tokens, int n);
  // The registered page holding exactly tokens[0..P) after parent, or -1.
  PageId lookup(uint64_t parent, const int32_t *tokens) const;
  // The page (parent, tokens) read from the disk tier into a new registered page
  // (ref 1), or -1.
  PageId load_from_disk(uint64_t parent, const int32_t *tokens);
  int free_capacity() const;
  PageId alloc();            // -1 when none left
  void acquire(PageId page);  // ref++ (leaves the LRU queue if it was there)
  void release(PageId page);  // ref--; at 0: LRU tail if registered, else free list
  void register_full(Sequence &s, int logical);
  void copy_rows(PageId dst, PageId src, int n_slots);

  KvPagesConfig cfg_;
  size_t page_elems_ = 0;
  std::vector<std::unique_ptr<uint16_t[]>> storage_;  // [pages_allocated] page storage
  std::vector<PageMeta> meta_;                         // [max_pages]
  std::vector<PageId> free_;                           // allocated, unregistered, ref 0
  std::list<PageId> lru_;                              // registered, ref 0; head = least recently released
  std::unordered_map<uint64_t, PageId> hash_index_;    // chain hash -> registered page
  std::vector<Sequence> seqs_;
  int n_referenced_ = 0;
  uint64_t evictions_ = 0;
  KvDisk *disk_ = nullptr;
  std::vector<PageId> unsaved_;  // registered since the last persist()
};

}  // namespace specode

// Host page pool: allocation and ref counts, sharing by prefix hash, LRU
// eviction order, hash chaining, copy-on-write truncation, and randomized
// operation sequences checked against a plain model of what every sequence
// must hold.
#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "kv_pages.h"
#include "testing.h"

using specode::KvPages;
using specode::KvPagesConfig;
using specode::PageId;

namespace {

KvPagesConfig small_config(int page_tokens, int max_pages) {
  KvPagesConfig c;
  c.n_layer = 2;
  c.n_head_kv = 2;
  c.head_dim = 4;
  c.page_tokens = page_tokens;
  c.max_pages = max_pages;
  return c;
}

std::vector<int32_t> ids(int n, int32_t first, int32_t step = 1) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = first + i * step;
  return v;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t> &b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// What a forward pass would write for position pos of a sequence with these
// ids: a function of the whole prefix (as real K/V are), per layer/kv/head.
uint16_t row_value(const std::vector<int32_t> &tokens, int pos, int layer, int kv, int head) {
  uint32_t h = 2166136261u;
  for (int i = 0; i <= pos; ++i) h = (h ^ (uint32_t)tokens[i]) * 16777619u;
  return (uint16_t)(h ^ (h >> 16)) ^ (uint16_t)(layer * 131 + kv * 17 + head * 5);
}

void write_rows(KvPages &kv, int seq, int from, int to) {
  const auto &c = kv.config();
  const auto &tokens = kv.seq_tokens(seq);
  for (int pos = from; pos < to; ++pos)
    for (int l = 0; l < c.n_layer; ++l)
      for (int h = 0; h < c.n_head_kv; ++h) {
        uint16_t *k = kv.seq_k_row(seq, l, h, pos), *v = kv.seq_v_row(seq, l, h, pos);
        for (int d = 0; d < c.head_dim; ++d) {
          k[d] = row_value(tokens, pos, l, 0, h);
          v[d] = row_value(tokens, pos, l, 1, h);
        }
      }
}

bool rows_ok(KvPages &kv, int seq) {
  const auto &c = kv.config();
  const auto &tokens = kv.seq_tokens(seq);
  for (int pos = 0; pos < kv.seq_len(seq); ++pos)
    for (int l = 0; l < c.n_layer; ++l)
      for (int h = 0; h < c.n_head_kv; ++h) {
        const uint16_t *k = kv.seq_k_row(seq, l, h, pos), *v = kv.seq_v_row(seq, l, h, pos);
        for (int d = 0; d < c.head_dim; ++d)
          if (k[d] != row_value(tokens, pos, l, 0, h) || v[d] != row_value(tokens, pos, l, 1, h)) return false;
      }
  return true;
}

void append(KvPages &kv, int seq, const std::vector<int32_t> &t) {
  int from = kv.seq_len(seq);
  CHECK(kv.seq_append(seq, t.data(), (int)t.size()));
  write_rows(kv, seq, from, kv.seq_len(seq));
}

}  // namespace

TEST(kv_pages_alloc_free_refcount) {
  const int P = 8;
  KvPages kv(small_config(P, 16));
  int a = kv.seq_create();
  append(kv, a, ids(3 * P + 5, 100));
  const auto table = kv.page_table(a);
  CHECK(table.size() == 4);
  CHECK(kv.pages_referenced() == 4);
  CHECK(kv.pages_allocated() == 4);
  for (PageId p : table) CHECK(kv.ref_count(p) == 1);
  for (int i = 0; i < 3; ++i) CHECK(kv.is_registered(table[i]));  // full pages
  CHECK(!kv.is_registered(table[3]));                               // partial page
  CHECK(std::set<PageId>(table.begin(), table.end()).size() == 4);
  CHECK(rows_ok(kv, a));
  kv.seq_free(a);
  CHECK(kv.pages_referenced() == 0);
  CHECK(kv.pages_cached() == 3);  // the full pages stay cached
  for (PageId p : table) CHECK(kv.ref_count(p) == 0);
  // A new sequence reuses the unregistered page first, no eviction.
  int b = kv.seq_create();
  CHECK(b == a);  // ids are recycled
  append(kv, b, ids(3, 7));
  CHECK(kv.page_table(b)[0] == table[3]);
  CHECK(kv.evictions() == 0);
  CHECK(kv.pages_cached() == 3);
}

TEST(kv_pages_append_fails_cleanly_when_full) {
  const int P = 4;
  KvPages kv(small_config(P, 3));
  int a = kv.seq_create();
  append(kv, a, ids(2 * P + 1, 1));
  std::vector<int32_t> more = ids(2 * P, 50);
  CHECK(!kv.seq_append(a, more.data(), (int)more.size()));  // needs 2 more, 0 left
  CHECK(kv.seq_len(a) == 2 * P + 1);
  CHECK(kv.page_table(a).size() == 3);
  CHECK(kv.seq_append(a, more.data(), P - 1));  // fills the partial page: no new page
  CHECK(kv.seq_len(a) == 3 * P);
}

TEST(kv_pages_sharing_between_sequences) {
  const int P = 8;
  KvPages kv(small_config(P, 16));
  std::vector<int32_t> prefix = ids(2 * P, 10), tail_a = ids(3, 500), tail_b = ids(5, 900);
  int a = kv.seq_create();
  append(kv, a, cat(prefix, tail_a));
  CHECK(kv.cached_prefix(prefix.data(), (int)prefix.size()) == 2 * P);
  std::vector<int32_t> want_b = cat(prefix, tail_b);
  CHECK(kv.cached_prefix(want_b.data(), (int)want_b.size()) == 2 * P);
  int b = kv.seq_create();
  int got = kv.seq_adopt_cached(b, want_b.data(), (int)want_b.size());
  CHECK(got == 2 * P);
  CHECK(kv.page_table(b)[0] == kv.page_table(a)[0]);
  CHECK(kv.page_table(b)[1] == kv.page_table(a)[1]);
  CHECK(kv.ref_count(kv.page_table(a)[0]) == 2);
  CHECK(kv.ref_count(kv.page_table(a)[2]) == 1);
  CHECK(rows_ok(kv, b));  // adopted rows hold b's K/V without being written
  append(kv, b, tail_b);
  CHECK(kv.page_table(b)[2] != kv.page_table(a)[2]);
  CHECK(rows_ok(kv, a) && rows_ok(kv, b));
  CHECK(kv.pages_referenced() == 4);
  kv.seq_free(a);
  CHECK(kv.ref_count(kv.page_table(b)[0]) == 1);
  CHECK(kv.pages_cached() == 0);  // shared pages are still referenced by b
  CHECK(rows_ok(kv, b));
}

TEST(kv_pages_adopt_replaces_partial_page) {
  const int P = 8;
  KvPages kv(small_config(P, 16));
  std::vector<int32_t> all = ids(3 * P, 40);
  int a = kv.seq_create();
  append(kv, a, all);
  int b = kv.seq_create();
  append(kv, b, std::vector<int32_t>(all.begin(), all.begin() + P + 3));  // b computed 1 page + 3 itself
  PageId own = kv.page_table(b)[1];
  int got = kv.seq_adopt_cached(b, all.data() + P + 3, 2 * P - 3);
  CHECK(got == 2 * P - 3);
  CHECK(kv.seq_len(b) == 3 * P);
  CHECK(kv.page_table(b)[1] == kv.page_table(a)[1]);
  CHECK(kv.page_table(b)[2] == kv.page_table(a)[2]);
  CHECK(kv.ref_count(own) == 0 && !kv.is_registered(own));
  CHECK(rows_ok(kv, b));
  // Nothing to adopt when fewer than the rest of a page is offered.
  CHECK(kv.seq_adopt_cached(b, all.data(), P - 1) == 0);
}

TEST(kv_pages_lru_eviction_order) {
  const int P = 4;
  KvPages kv(small_config(P, 4));
  std::vector<int32_t> x = ids(4 * P, 1);
  int a = kv.seq_create();
  append(kv, a, x);
  const auto table = kv.page_table(a);
  kv.seq_free(a);
  // Released tail first: the last logical page is at the head of the queue.
  std::vector<PageId> order(kv.lru_queue().begin(), kv.lru_queue().end());
  CHECK(order == std::vector<PageId>({table[3], table[2], table[1], table[0]}));
  CHECK(kv.cached_prefix(x.data(), (int)x.size()) == 4 * P);
  int b = kv.seq_create();
  append(kv, b, ids(P, 1000));
  CHECK(kv.evictions() == 1);
  CHECK(kv.page_table(b)[0] == table[3]);
  CHECK(kv.cached_prefix(x.data(), (int)x.size()) == 3 * P);
  // Touch the first page (adopt and release): it becomes the most recent.
  int c = kv.seq_create();
  CHECK(kv.seq_adopt_cached(c, x.data(), P) == P);
  CHECK(kv.ref_count(table[0]) == 1);
  CHECK(kv.pages_cached() == 2);
  kv.seq_free(c);
  order.assign(kv.lru_queue().begin(), kv.lru_queue().end());
  CHECK(order == std::vector<PageId>({table[2], table[1], table[0]}));
  append(kv, b, ids(P, 2000));  // evicts table[2]
  CHECK(kv.page_table(b)[1] == table[2]);
  append(kv, b, ids(P, 3000));  // evicts table[1]
  CHECK(kv.page_table(b)[2] == table[1]);
  CHECK(kv.cached_prefix(x.data(), (int)x.size()) == P);
  CHECK(kv.evictions() == 3);
  CHECK(rows_ok(kv, b));
}

TEST(kv_pages_hash_is_chained_over_the_prefix) {
  const int P = 4;
  KvPages kv(small_config(P, 16));
  std::vector<int32_t> pa = ids(P, 1), pb = ids(P, 100), pc = ids(P, 200);
  int a = kv.seq_create();
  append(kv, a, cat(pa, pb));  // [pa][pb]
  std::vector<int32_t> cb = cat(pc, pb);
  CHECK(kv.cached_prefix(cb.data(), (int)cb.size()) == 0);
  int b = kv.seq_create();
  CHECK(kv.seq_adopt_cached(b, cb.data(), (int)cb.size()) == 0);
  append(kv, b, pc);
  // Same ids [pb] after a different page must not match a's second page.
  CHECK(kv.seq_adopt_cached(b, pb.data(), P) == 0);
  append(kv, b, pb);
  CHECK(kv.page_table(b)[1] != kv.page_table(a)[1]);
  CHECK(rows_ok(kv, a) && rows_ok(kv, b));
  std::vector<int32_t> ab = cat(pa, pb);
  CHECK(kv.cached_prefix(ab.data(), (int)ab.size()) == 2 * P);
  CHECK(kv.cached_prefix(cb.data(), (int)cb.size()) == 2 * P);  // b's own chain is cached now
  // A page of the same ids at the start is a different chain link again.
  std::vector<int32_t> b_first = cat(pb, pb);
  CHECK(kv.cached_prefix(b_first.data(), (int)b_first.size()) == 0);
}

TEST(kv_pages_truncate_mid_page_copies_on_write) {
  const int P = 8;
  KvPages kv(small_config(P, 32));
  std::vector<int32_t> x = ids(3 * P, 7);
  int a = kv.seq_create();
  append(kv, a, x);
  int b = kv.seq_create();
  CHECK(kv.seq_adopt_cached(b, x.data(), (int)x.size()) == 3 * P);
  const auto ta = kv.page_table(a);
  // Shared page cut in the middle: b gets a private copy of the kept rows.
  CHECK(kv.seq_truncate(b, P + 3));
  CHECK(kv.seq_len(b) == P + 3);
  CHECK(kv.page_table(b).size() == 2);
  CHECK(kv.page_table(b)[0] == ta[0]);
  CHECK(kv.page_table(b)[1] != ta[1]);
  CHECK(kv.ref_count(ta[1]) == 1 && kv.ref_count(ta[2]) == 1);
  CHECK(rows_ok(kv, b));
  append(kv, b, ids(2 * P, 9000));
  CHECK(rows_ok(kv, a) && rows_ok(kv, b));  // a's content untouched
  // Registered page held alone, cut in the middle: copied too, so the cached
  // full page survives for a later adopter.
  kv.seq_free(b);
  PageId last = ta[2];
  CHECK(kv.seq_truncate(a, 2 * P + 2));
  CHECK(kv.page_table(a)[2] != last);
  CHECK(kv.ref_count(last) == 0 && kv.is_registered(last));
  CHECK(kv.cached_prefix(x.data(), (int)x.size()) == 3 * P);
  CHECK(rows_ok(kv, a));
  // A private partial page is cut in place.
  PageId own = kv.page_table(a)[2];
  CHECK(kv.seq_truncate(a, 2 * P + 1));
  CHECK(kv.page_table(a)[2] == own);
  // Cut at a page boundary: whole pages go back, none is copied.
  CHECK(kv.seq_truncate(a, P));
  CHECK(kv.page_table(a).size() == 1 && kv.page_table(a)[0] == ta[0]);
  CHECK(kv.seq_truncate(a, 0));
  CHECK(kv.page_table(a).empty() && kv.pages_referenced() == 0);
  CHECK(kv.cached_prefix(x.data(), (int)x.size()) == 3 * P);
}

TEST(kv_pages_randomized_against_model) {
  uint64_t evictions = 0, adopted = 0;
  for (int trial = 0; trial < 6; ++trial) {
    std::mt19937 rng(1234 + trial);
    const int P = 1 + trial % 4 * 2;          // 1, 3, 5, 7
    const int max_pages = 10 + trial * 4;
    KvPages kv(small_config(P, max_pages));
    // A few "documents" the sequences draw from, so prefixes repeat.
    std::vector<std::vector<int32_t>> docs;
    for (int d = 0; d < 4; ++d) {
      std::vector<int32_t> doc(60);
      for (auto &t : doc) t = (int32_t)(rng() % 3);
      docs.push_back(doc);
    }
    std::vector<int> live;
    std::map<int, std::vector<int32_t>> model;  // seq -> tokens it must hold
    int bad = 0;
    for (int op = 0; op < 3000; ++op) {
      int kind = (int)(rng() % 10);
      if (live.empty() || (kind == 0 && live.size() < 4)) {
        int s = kv.seq_create();
        live.push_back(s);
        model[s].clear();
        continue;
      }
      int s = live[rng() % live.size()];
      auto &m = model[s];
      if (kind <= 3) {  // append a continuation of some document (or random ids)
        const auto &doc = docs[rng() % docs.size()];
        int n = 1 + (int)(rng() % (2 * P + 2));
        std::vector<int32_t> t(n);
        bool follow = rng() % 4 != 0 && m.size() + n <= doc.size();
        for (int i = 0; i < n; ++i) t[i] = follow ? doc[m.size() + i] : (int32_t)(rng() % 3);
        int from = kv.seq_len(s);
        if (kv.seq_append(s, t.data(), n)) {
          write_rows(kv, s, from, kv.seq_len(s));
          m.insert(m.end(), t.begin(), t.end());
        } else if (kv.seq_len(s) != (int)m.size()) {
          ++bad;
        }
      } else if (kind <= 5) {  // adopt cached pages of a document continuation
        const auto &doc = docs[rng() % docs.size()];
        if (m.size() <= doc.size() && std::equal(m.begin(), m.end(), doc.begin())) {
          int n = (int)(doc.size() - m.size());
          int got = kv.seq_adopt_cached(s, doc.data() + m.size(), n);
          if (got < 0 || got > n) ++bad;
          adopted += got;
          m.insert(m.end(), doc.begin() + m.size(), doc.begin() + m.size() + got);
        }
      } else if (kind <= 7) {  // truncate anywhere
        int keep = m.empty() ? 0 : (int)(rng() % (m.size() + 1));
        if (kv.seq_truncate(s, keep)) m.resize(keep);
      } else if (kind == 8) {
        kv.seq_free(s);
        live.erase(std::find(live.begin(), live.end(), s));
        model.erase(s);
      }
      // Invariants after every operation.
      std::map<PageId, int> refs;
      for (int q : live) {
        if (kv.seq_tokens(q) != model[q]) ++bad;
        if ((int)kv.page_table(q).size() != ((int)model[q].size() + P - 1) / P) ++bad;
        for (PageId p : kv.page_table(q)) refs[p]++;
        if (!rows_ok(kv, q)) ++bad;
      }
      for (PageId p = 0; p < kv.pages_allocated(); ++p) {
        int want = refs.count(p) ? refs[p] : 0;
        if (kv.ref_count(p) != want) ++bad;
      }
      if (kv.pages_referenced() != (int)refs.size()) ++bad;
      for (PageId p : kv.lru_queue())
        if (kv.ref_count(p) != 0 || !kv.is_registered(p)) ++bad;
      if (kv.pages_allocated() > max_pages) ++bad;
      if (bad) {
        std::fprintf(stderr, "  randomized trial %d: invariant broken at op %d\n", trial, op);
        break;
      }
    }
    CHECK(bad == 0);
    evictions += kv.evictions();
  }
  CHECK(evictions > 0);  // the small pools did have to evict
  CHECK(adopted > 0);    // and cached pages were shared
}

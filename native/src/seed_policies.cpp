// seed_policies.cpp — names and construction of gear, kvmerger and tailorkv (seed_policies.h).
#include "seed_policies.h"

#include "gear.h"
#include "kvmerger.h"
#include "tailorkv.h"

namespace specode {

const char *seed_policy_name(KvPolicy p) {
  if (p == kKvTailorKv) return "tailorkv";
  if (p == kKvGear) return "gear";
  if (p == kKvMerger) return "kvmerger";
  return nullptr;
}

std::unique_ptr<KvCache> make_seed_kv_cache(const KvShape &shape, const SeedKvConfig &cfg) {
  if (cfg.policy == kKvGear) return std::make_unique<GearKvCache>(shape, cfg);
  if (cfg.policy == kKvMerger) return std::make_unique<MergerKvCache>(shape, cfg);
  return std::make_unique<TailorKvCache>(shape, cfg);
}

}  // namespace specode

// policies.ts — `specode bench policies`: every KV policy at two device-memory budgets
// (≈ 1/8 and ≈ 1/4 of the fp16 KV) on the fidelity tasks, with decode speed, in one run
// (issue #6; shared/BENCH.md "policies"). The fidelity harness does the work: one prefill
// per input by `full`, copied into the policies that only store rows; h2o and kvmerger
// score rows while prefilling, so they run their own prefills.
//
// How each policy meets a budget (device KV bytes / fp16 KV bytes):
//   specache     1-bit (≈ 1/9–1/10) for 1/8, 2-bit (≈ 1/6) for 1/4; nothing is dropped
//   kivi         1-bit for 1/8, 2-bit for 1/4 (residual 128 fp16 tokens on top)
//   gear         2-bit + low rank + 2 % outliers: one setting, above 1/4 (reported as is)
//   h2o, streamingllm, kvmerger   budgetRatio 0.125 / 0.25 of the tokens held
//   tailorkv     its profile decides the dense layers (1-bit); sparse layers load `budget` rows
// Each row carries the measured device_kv_bytes / fp16_kv_bytes, so the reader sees how
// close to its budget a setting landed; `within_budget` says whether it is at or under it.
import type { KvPolicy } from '../engine/native';
import type { Envelope } from './common';
import { benchFidelity, type FidelityRow, type FidelityTask, type PolicyCfg } from './fidelity';

export interface PoliciesOptions {
  modelName: string;
  modelPath: string;
  threads: number;
  contexts: number[];
  tasks: FidelityTask[];
  trials: number;
  depths: number;
  genTokens: number;
  seed?: number;
  command?: string;
  onRow?: (env: Envelope) => void;
}

export const BUDGETS = [
  { name: '1/8', fraction: 1 / 8 },
  { name: '1/4', fraction: 1 / 4 },
] as const;

export function policyConfigs(): (PolicyCfg & { budget: string })[] {
  const out: (PolicyCfg & { budget: string })[] = [];
  const add = (budget: string, policy: KvPolicy, bits: 1 | 2 | null, label: string, opts?: PolicyCfg['opts'], ownPrefill = false) =>
    out.push({ budget, policy, bits, label: `${label} @${budget}`, opts, ownPrefill });
  for (const b of BUDGETS) {
    const small = b.fraction < 0.2;
    add(b.name, 'specache', small ? 1 : 2, `specache/${small ? 1 : 2}b`);
    add(b.name, 'kivi', null, `kivi/${small ? 1 : 2}b`, { bits: small ? 1 : 2 });
    add(b.name, 'h2o', null, 'h2o', { budgetRatio: b.fraction }, true);
    add(b.name, 'streamingllm', null, 'streamingllm', { budgetRatio: b.fraction });
    add(b.name, 'kvmerger', null, 'kvmerger', { budgetRatio: b.fraction }, true);
    add(b.name, 'tailorkv', null, 'tailorkv', { budget: small ? 96 : 192 });
  }
  add('1/4', 'gear', null, 'gear/2b', { bits: 2 });
  return out;
}

export async function benchPolicies(o: PoliciesOptions): Promise<Envelope> {
  const configs = policyConfigs();
  const budgetOf = new Map(configs.map((c) => [c.label, c.budget]));
  const fractionOf = new Map(BUDGETS.map((b) => [b.name as string, b.fraction]));
  const env = await benchFidelity({
    modelName: o.modelName, modelPath: o.modelPath, threads: o.threads, contexts: o.contexts,
    policies: ['full', ...new Set(configs.map((c) => c.policy))], bits: [1, 2], tasks: o.tasks, trials: o.trials,
    depths: o.depths, genTokens: o.genTokens, seed: o.seed, measure: false, command: o.command, configs, onRow: o.onRow,
  });
  env.suite = 'policies';
  const rows = env.rows as (FidelityRow & Record<string, unknown>)[];
  for (const r of rows) {
    const budget = r.label ? budgetOf.get(r.label) : undefined;
    r.budget = budget ?? null;
    r.decode_tok_s = r.decode_s > 0 ? r.decode_steps / r.decode_s : null;
    const ratio = r.device_kv_bytes && r.fp16_kv_bytes ? r.device_kv_bytes / r.fp16_kv_bytes : null;
    r.device_fraction = ratio;
    r.within_budget = budget && ratio !== null ? ratio <= (fractionOf.get(budget) ?? 0) * 1.02 : null;
  }
  // Winner per budget and task: the best score (accuracy, else greedy agreement), ties to the
  // smaller device footprint; only settings within the budget compete.
  const winners: Record<string, Record<string, string>> = {};
  for (const b of BUDGETS) {
    winners[b.name] = {};
    for (const task of o.tasks)
      for (const ctx of o.contexts) {
        const cands = rows.filter((r) => r.budget === b.name && r.task === task && r.ctx === ctx && r.within_budget);
        const score = (r: FidelityRow) => r.accuracy ?? r.greedy_agreement ?? -1;
        cands.sort((x, y) => score(y) - score(x) || (x.device_kv_bytes ?? 0) - (y.device_kv_bytes ?? 0));
        winners[b.name][`${task}@${ctx}`] = cands.length ? `${cands[0].label} (${score(cands[0]).toFixed(3)})` : 'none within budget';
      }
  }
  env.winners = winners;
  env.budgets = BUDGETS;
  return env;
}

// common.ts — what several commands share: model flags, opening a session,
// reading the repository under a token budget.
import { basename, resolve } from 'node:path';
import { collectRepoFiles, type RepoFile } from '../context/repo';
import { fitToBudget, orderByStability } from '../context/prompt';
import { Session } from '../engine/session';
import { describeBackend } from '../engine/native';
import { UserError } from '../errors';
import { DEFAULT_MODEL, resolveModelArg } from '../models/registry';
import type { FlagSpec } from './args';

const CLI_POLICIES = ['specache', 'specache-sync', 'full', 'offload-all', 'tailorkv', 'gear', 'kvmerger', 'h2o', 'streamingllm', 'kivi'] as const;

export const MODEL_FLAGS: Record<string, FlagSpec> = {
  model: { type: 'string', help: 'model name (see specode model list) or path to a .gguf file', default: DEFAULT_MODEL },
  threads: { type: 'number', help: 'CPU threads (0: all cores)', default: 0 },
  ctx: { type: 'number', help: 'context size in tokens', default: 8192 },
  'max-tokens': { type: 'number', help: 'most tokens to generate', default: 128 },
  temperature: { type: 'number', help: 'sampling temperature (0: greedy)', default: 0 },
  policy: { type: 'string', help: `KV policy: ${CLI_POLICIES.join(', ')}`, default: 'specache' },
  bits: { type: 'number', help: 'low-bit KV width for specache/kivi (1 or 2)', default: 2 },
  topk: { type: 'number', help: 'rows fetched per layer and KV head each step (specache)', default: 64 },
  backend: { type: 'string', help: 'decoder: auto (CUDA when a device answers and the policy runs there, else CPU), cpu or cuda', default: 'auto' },
  'device-budget-mib': { type: 'number', help: 'CUDA: device memory the weights and the context may use (0: what is free)', default: 0 },
};

const CLI_BACKENDS = ['auto', 'cpu', 'cuda'] as const;

export async function openSession(flags: Record<string, unknown>): Promise<Session> {
  const path = await resolveModelArg(String(flags.model ?? DEFAULT_MODEL));
  const policy = String(flags.policy ?? 'specache') as (typeof CLI_POLICIES)[number];
  if (!CLI_POLICIES.includes(policy)) throw new UserError(`unknown KV policy '${policy}'`, `use --policy with one of ${CLI_POLICIES.join(', ')}`);
  const bits = Number(flags.bits ?? 2);
  if (bits !== 1 && bits !== 2) throw new UserError(`--bits must be 1 or 2, not ${flags.bits}`, 'the low-bit copy is 1 or 2 bits per element');
  const topk = Number(flags.topk ?? 64);
  if (!Number.isInteger(topk) || topk < 1) throw new UserError(`--topk must be a positive whole number, not ${flags.topk}`, 'e.g. --topk 64');
  const backend = String(flags.backend ?? 'auto') as (typeof CLI_BACKENDS)[number];
  if (!CLI_BACKENDS.includes(backend)) throw new UserError(`unknown backend '${backend}'`, `use --backend with one of ${CLI_BACKENDS.join(', ')}`);
  const budgetMiB = Number(flags['device-budget-mib'] ?? 0);
  if (!Number.isFinite(budgetMiB) || budgetMiB < 0) throw new UserError(`--device-budget-mib must be >= 0, not ${flags['device-budget-mib']}`, 'e.g. --device-budget-mib 6000 (0: what is free)');
  const t0 = performance.now();
  const s = await Session.open(path, {
    nCtx: Number(flags.ctx) || 8192, threads: Number(flags.threads) || undefined, policy, bits: bits as 1 | 2, topk,
    backend, deviceBudgetBytes: Math.round(budgetMiB * 2 ** 20),
  }).catch((e: Error & { code?: string }) => {
    if (backend === 'cuda' && (e.code === 'UNSUPPORTED' || e.code === 'NOMEM')) throw new UserError(e.message, 'use --backend auto (or cpu) for the CPU decoder');
    throw e;
  });
  const b = s.ctx.backend;
  process.stderr.write(`specode: ${s.info.name || basename(path)} (${s.info.arch}, ${s.info.fileType}) loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s, KV policy ${policy}${policy.startsWith('specache') || policy === 'kivi' ? ` ${bits}-bit` : ''}, ${describeBackend(b)}\n`);
  return s;
}

/** Repo files ordered least-changing first, cut to a token budget. */
export function repoContext(repo: string | undefined, session: Session, budget: number, exclude?: string): { name: string; files: RepoFile[] } {
  if (!repo) return { name: '', files: [] };
  const root = resolve(repo);
  const { files } = collectRepoFiles(root, { exclude: exclude ? (p) => resolve(root, p) === exclude : undefined });
  const counter = { count: (t: string) => session.tokenizer.encode(t, { addSpecial: false, parseSpecial: false }).length };
  return { name: basename(root), files: fitToBudget(orderByStability(files), budget, counter) };
}

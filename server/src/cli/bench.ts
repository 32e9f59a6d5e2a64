// specode bench parity|speed|fidelity|reuse|editor [--model M] [--json]
import { UserError } from '../errors';
import { benchParity } from '../bench/parity';
import { benchSpeed } from '../bench/speed';
import { benchSpeedCuda } from '../bench/speed_cuda';
import { benchReuse } from '../bench/reuse';
import { benchPolicies } from '../bench/policies';
import { benchEditor } from '../bench/editor';
import { benchFidelity, FIDELITY_TASKS, parsePolicies, type FidelityTask } from '../bench/fidelity';
import type { Envelope, ParamBits } from '../bench/common';
import { DEFAULT_MODEL, resolveModelArg } from '../models/registry';
import { KV_POLICIES, type KvPolicy } from '../protocol';
import { parseArgs, usage, type FlagSpec } from './args';

const FLAGS: Record<string, FlagSpec> = {
  model: { type: 'string', help: 'model name or .gguf path', default: DEFAULT_MODEL },
  json: { type: 'boolean', help: 'print one JSON object on stdout (logs go to stderr)' },
  threads: { type: 'number', help: 'CPU threads for both engines (0: all cores)', default: 0 },
  peer: { type: 'string', help: 'peer engine to compare with (llama.cpp | none)', default: 'llama.cpp' },
  ctx: { type: 'string', help: 'speed / fidelity: context sizes, comma-separated (default: speed 512,4096; fidelity 4096); reuse: one size (default 16384); editor: the context budget in tokens, filled with real code (default 8192)' },
  reps: { type: 'number', help: 'speed: repetitions after the warm-up (median reported)', default: 3 },
  warmup: { type: 'number', help: 'speed: untimed runs before the timed ones', default: 1 },
  'decode-tokens': { type: 'number', help: 'speed: decode steps timed per repetition', default: 32 },
  'flash-attention': { type: 'boolean', help: "speed: llama.cpp's flash attention only on (--flash-attention) or only off (--flash-attention=false); default: both, ratios vs the faster" },
  prompts: { type: 'number', help: 'parity: code prompts', default: 20 },
  'gen-tokens': { type: 'number', help: 'parity: tokens llama.cpp generates per prompt (default 64); fidelity: tokens full generates for code-agreement (default 256)' },
  policies: { type: 'string', help: 'fidelity: KV policies, comma-separated (default full,specache,specache-sync,offload-all); speed: specode policies to time (default full); reuse: default full,specache' },
  policy: { type: 'string', help: "speed: same as --policies; editor: the server's KV policy (default specache, the extension's default)" },
  bits: { type: 'string', help: 'fidelity: bits of the low-bit copy for specache*, comma-separated (default 1,2); speed / editor: one value (default 2)' },
  group: { type: 'number', help: 'fidelity: quantization group for specache* (32 | 64)', default: 64 },
  topk: { type: 'number', help: 'speed / fidelity / editor: fp16 rows fetched per layer per KV head for specache*', default: 64 },
  rerank: { type: 'number', help: 'fidelity / speed: specache picks its rows in two stages, the rerank × topk best by low-bit scores re-scored exactly (1: one stage, as the paper; default: automatic, 16 at 1 bit and 4 at 2 bits)' },
  residual: { type: 'number', help: 'fidelity: newest tokens kept in fp16 for specache*', default: 64 },
  'param-bits': { type: 'string', help: 'fidelity / speed: bits of each scale and zero of the specache* low-bit copy, comma-separated, one configuration each in fidelity, one value in speed (auto: the engine\'s choice, 8 at 2 bits and 16 at 1 bit on the CPU; 16: fp16 per group, as DESIGN.md; 8: 8-bit codes on an fp16 grid per block, about 4 bytes less per token and KV head, CPU only)', default: 'auto' },
  'sym-values': { type: 'boolean', help: 'fidelity: the 2-bit copy quantizes values symmetrically (one fp16 scale per group, no zero: 2 bytes less per token and KV head; an experiment beyond DESIGN.md)', default: false },
  tasks: { type: 'string', help: `fidelity: tasks, comma-separated (${FIDELITY_TASKS.join(', ')})`, default: FIDELITY_TASKS.join(',') },
  trials: { type: 'number', help: 'fidelity: trials per task (haystacks / code prompts)', default: 1 },
  depths: { type: 'number', help: 'fidelity: needle depths per trial, evenly spaced 0%..100%', default: 10 },
  keys: { type: 'number', help: 'fidelity: needles in needle-multikey (1 asked + distractors)', default: 4 },
  seed: { type: 'number', help: 'fidelity: seed of every input choice', default: 1 },
  haystack: { type: 'string', help: 'fidelity: haystack documents (mixed | code | prose)', default: 'mixed' },
  measure: { type: 'boolean', help: "fidelity: specache computes each step's true top-k for top-k overlap (--measure=false to skip)", default: true },
  backend: { type: 'string', help: 'speed: cpu (default) | cuda — the CUDA backend through native/build/specode_cuda_bench (needs an NVIDIA GPU; policies full, offload-all, specache)', default: 'cpu' },
  'ids-out': { type: 'string', help: 'speed --backend cuda: only write the tokenized input (int32 ids) to this file for specode_cuda_bench on a GPU machine without Node, and stop' },
  'stand-in': { type: 'string', help: 'speed --backend cuda: the model a random-weights file made by scripts/gguf_skeleton.py stands in for (written into the JSON notes)' },
  out: { type: 'string', help: 'write the JSON to this file (fidelity / policies: after every finished row as well)' },
  requests: { type: 'number', help: 'editor: timed completions after the warm-up', default: 30 },
  'storm-keystrokes': { type: 'number', help: 'editor: keystrokes in the storm (each one a completion request)', default: 200 },
  'storm-seconds': { type: 'number', help: 'editor: seconds the storm keystrokes are spread over', default: 10 },
  transport: { type: 'string', help: 'editor: how the bench talks to dist/server.js: ipc (as the extension does) | stdio', default: 'ipc' },
};

export const SUITES = ['parity', 'speed', 'fidelity', 'policies', 'reuse', 'editor'];

/** --param-bits: auto (the engine's choice), 8 or 16. */
function paramBitsFlag(v: string): ParamBits {
  if (v === 'auto') return v;
  if (v === '8' || v === '16') return Number(v) as 8 | 16;
  throw new UserError(`bench: --param-bits takes auto, 8 or 16, got '${v}'`);
}

/** --rerank: undefined (the engine's automatic choice per width) or an integer in [1, 16]. */
function rerankFlag(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new UserError(`bench: --rerank must be an integer from 1 to 16, got ${v}`);
  return n;
}

export async function runBench(argv: string[]): Promise<number> {
  const p = parseArgs(argv, FLAGS, 'bench');
  if (p.help || p.positionals.length === 0) {
    console.log(usage('bench', `SUITE [options]   (SUITE: ${SUITES.join(' | ')})`, 'Measure specode against llama.cpp on the same GGUF (parity, speed), KV policies against full (fidelity), prefix reuse after an edit (reuse), completion latency and a keystroke storm through the real language server (editor), every KV policy at two device budgets (policies); --json prints the fields of shared/BENCH.md.', FLAGS));
    return p.help ? 0 : 2;
  }
  const suite = p.positionals[0];
  if (!SUITES.includes(suite)) throw new UserError(`bench: unknown suite '${suite}'`, `suites: ${SUITES.join(', ')}`);
  const modelName = String(p.flags.model);
  const modelPath = await resolveModelArg(modelName);
  const threads = Number(p.flags.threads) || (await import('node:os')).availableParallelism();
  let result: Envelope;
  if (suite === 'parity') {
    result = await benchParity({ modelName, modelPath, threads, prompts: Number(p.flags.prompts), genTokens: Number(p.flags['gen-tokens'] ?? 64) });
  } else if (suite === 'reuse') {
    const ctx = Number(p.flags.ctx ?? 16384);
    if (!Number.isInteger(ctx) || ctx < 512) throw new UserError(`bench: --ctx for reuse is one integer >= 512, got '${p.flags.ctx}'`);
    let policies;
    try {
      policies = parsePolicies(String(p.flags.policies ?? p.flags.policy ?? 'full,specache'));
    } catch (e) {
      throw new UserError(`bench: ${(e as Error).message}`);
    }
    result = await benchReuse({ modelName, modelPath, threads, ctx, policies, genTokens: Number(p.flags['gen-tokens'] ?? 16) });
  } else if (suite === 'editor') {
    result = await runEditor(p.flags, modelName, modelPath, threads);
  } else if (suite === 'policies') {
    const contexts = String(p.flags.ctx ?? '8192,16384').split(',').map((x) => Number(x.trim()));
    if (contexts.some((c) => !Number.isInteger(c) || c < 512)) throw new UserError(`bench: --ctx must be integers >= 512, got '${p.flags.ctx}'`);
    const tasks = String(p.flags.tasks).split(',').map((x) => x.trim()).filter(Boolean) as FidelityTask[];
    for (const t of tasks) if (!FIDELITY_TASKS.includes(t)) throw new UserError(`bench: unknown task '${t}'`, `tasks: ${FIDELITY_TASKS.join(', ')}`);
    const positive = (name: string, dflt: number) => {
      const n = p.flags[name] === undefined ? dflt : Number(p.flags[name]);
      if (!Number.isInteger(n) || n < 1) throw new UserError(`bench: --${name} must be a positive integer, got ${p.flags[name]}`);
      return n;
    };
    const out = p.flags.out ? String(p.flags.out) : undefined;
    const { writeFileSync } = await import('node:fs');
    result = await benchPolicies({
      modelName, modelPath, threads, contexts, tasks, trials: positive('trials', 1), depths: positive('depths', 10),
      genTokens: positive('gen-tokens', 256), seed: Number(p.flags.seed), command: `specode bench ${argv.join(' ')}`,
      onRow: out ? (env) => writeFileSync(out, JSON.stringify(env, null, 2) + '\n') : undefined,
    });
  } else if (suite === 'fidelity') {
    result = await runFidelity(p.flags, modelName, modelPath, threads, `specode bench ${argv.join(' ')}`);
  } else {
    const contexts = String(p.flags.ctx ?? '512,4096').split(',').map((s) => Number(s.trim()));
    if (contexts.some((c) => !Number.isInteger(c) || c < 2)) throw new UserError(`bench: --ctx must be integers >= 2, got '${p.flags.ctx}'`);
    let policies;
    try {
      policies = parsePolicies(String(p.flags.policies ?? p.flags.policy ?? 'full'));
    } catch (e) {
      throw new UserError(`bench: ${(e as Error).message}`);
    }
    const bits = Number(p.flags.bits ?? 2);
    if (bits !== 1 && bits !== 2) throw new UserError(`bench: --bits for speed must be 1 or 2, got '${p.flags.bits}'`);
    const paramBits = paramBitsFlag(String(p.flags['param-bits'] ?? 'auto'));
    const backend = String(p.flags.backend ?? 'cpu');
    if (backend !== 'cpu' && backend !== 'cuda') throw new UserError(`bench: --backend must be cpu or cuda, got '${backend}'`);
    if (backend === 'cuda') {
      if (paramBits === 8) throw new UserError('bench: --param-bits 8 runs on the CPU backend only');
      result = await benchSpeedCuda({
        modelName, modelPath, contexts, policies, bits, topk: Number(p.flags.topk), rerank: rerankFlag(p.flags.rerank),
        decodeTokens: Number(p.flags['decode-tokens']), warmup: Math.max(1, Number(p.flags.warmup)),
        standIn: p.flags['stand-in'] === undefined ? undefined : String(p.flags['stand-in']),
        idsOut: p.flags['ids-out'] === undefined ? undefined : String(p.flags['ids-out']),
      });
    } else result = await benchSpeed({
      modelName, modelPath, threads, contexts, policies, bits, topk: Number(p.flags.topk), rerank: rerankFlag(p.flags.rerank),
      reps: Number(p.flags.reps), warmup: Number(p.flags.warmup), decodeTokens: Number(p.flags['decode-tokens']),
      paramBits, peer: p.flags.peer !== 'none', flashAttention: p.flags['flash-attention'] === undefined ? undefined : Boolean(p.flags['flash-attention']),
    });
  }
  if (p.flags.out) {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(String(p.flags.out), JSON.stringify(result, null, 2) + '\n');
  }
  if (p.flags.json) console.log(JSON.stringify(result, null, 2));
  else printSummary(result);
  return 0;
}

async function runFidelity(f: Record<string, string | number | boolean | undefined>, modelName: string, modelPath: string, threads: number, command: string): Promise<Envelope> {
  const list = (name: string, v: unknown) => {
    const xs = String(v).split(',').map((s) => s.trim()).filter(Boolean);
    if (!xs.length) throw new UserError(`bench: --${name} is empty`);
    return xs;
  };
  const contexts = list('ctx', f.ctx ?? '4096').map(Number);
  if (contexts.some((c) => !Number.isInteger(c) || c < 512)) throw new UserError(`bench: --ctx must be integers >= 512, got '${f.ctx}'`);
  let policies;
  try {
    policies = parsePolicies(String(f.policies ?? 'full,specache,specache-sync,offload-all'));
  } catch (e) {
    throw new UserError(`bench: ${(e as Error).message}`);
  }
  const bits = list('bits', f.bits ?? '1,2').map(Number);
  if (bits.some((b) => b !== 1 && b !== 2)) throw new UserError(`bench: --bits must be 1 and/or 2, got '${f.bits}'`);
  const tasks = list('tasks', f.tasks) as FidelityTask[];
  for (const t of tasks) if (!FIDELITY_TASKS.includes(t)) throw new UserError(`bench: unknown task '${t}'`, `tasks: ${FIDELITY_TASKS.join(', ')}`);
  const group = Number(f.group);
  if (group !== 32 && group !== 64) throw new UserError(`bench: --group must be 32 or 64, got ${group}`);
  const haystack = String(f.haystack);
  if (!['mixed', 'code', 'prose'].includes(haystack)) throw new UserError(`bench: --haystack must be mixed, code or prose, got '${haystack}'`);
  const positive = (name: string) => {
    const n = Number(f[name]);
    if (!Number.isInteger(n) || n < 1) throw new UserError(`bench: --${name} must be a positive integer, got ${f[name]}`);
    return n;
  };
  const genTokens = f['gen-tokens'] === undefined ? 256 : positive('gen-tokens');
  if (genTokens < 2) throw new UserError('bench: --gen-tokens must be >= 2 for code-agreement');
  const paramBits = list('param-bits', f['param-bits'] ?? 'auto').map(paramBitsFlag);
  if (paramBits.includes(8) && f['sym-values'] === true) throw new UserError('bench: --param-bits 8 and --sym-values cannot be combined');
  const out = f.out ? String(f.out) : undefined;
  const { writeFileSync } = await import('node:fs');
  return benchFidelity({
    modelName, modelPath, threads, contexts, policies, bits: bits as (1 | 2)[], group: group as 32 | 64,
    topk: positive('topk'), rerank: rerankFlag(f.rerank), residual: positive('residual'), tasks, trials: positive('trials'), depths: positive('depths'),
    genTokens, keys: positive('keys'), seed: Number(f.seed), haystack: haystack as 'mixed' | 'code' | 'prose',
    measure: f.measure !== false, symValues: f['sym-values'] === true, paramBits, command,
    onRow: out ? (env) => writeFileSync(out, JSON.stringify(env, null, 2) + '\n') : undefined,
  });
}

async function runEditor(f: Record<string, string | number | boolean | undefined>, modelName: string, modelPath: string, threads: number): Promise<Envelope> {
  const ctx = Number(f.ctx ?? 8192);
  if (!Number.isInteger(ctx) || ctx < 512) throw new UserError(`bench: --ctx for editor is one integer >= 512, got '${f.ctx}'`);
  const whole = (name: string, min: number) => {
    const n = Number(f[name]);
    if (!Number.isInteger(n) || n < min) throw new UserError(`bench: --${name} must be an integer >= ${min}, got ${f[name]}`);
    return n;
  };
  const policy = String(f.policy ?? f.policies ?? 'specache');
  if (!(KV_POLICIES as readonly string[]).includes(policy)) throw new UserError(`bench: --policy for editor is one of ${KV_POLICIES.join(', ')}, got '${policy}'`);
  const bits = Number(f.bits ?? 2);
  if (bits !== 1 && bits !== 2) throw new UserError(`bench: --bits for editor must be 1 or 2, got '${f.bits}'`);
  const stormSeconds = Number(f['storm-seconds']);
  if (!(stormSeconds > 0)) throw new UserError(`bench: --storm-seconds must be > 0, got ${f['storm-seconds']}`);
  const transport = String(f.transport);
  if (transport !== 'ipc' && transport !== 'stdio') throw new UserError(`bench: --transport must be ipc or stdio, got '${transport}'`);
  return benchEditor({
    modelName, modelPath, threads, ctx, requests: whole('requests', 1), stormKeystrokes: whole('storm-keystrokes', 1), stormSeconds,
    policy: policy as KvPolicy, bits: bits as 1 | 2, topk: whole('topk', 1), transport: transport as 'ipc' | 'stdio',
  });
}

function printSummary(r: Envelope): void {
  console.log(`${r.suite} — ${r.model.name} (${r.model.sha256.slice(0, 12)}), ${r.backend}, ${r.threads} threads, ${r.device}`);
  if (r.suite === 'fidelity' || r.suite === 'policies') {
    for (const n of (r.notes as string[]) ?? []) console.log(`note: ${n}`);
    for (const row of r.rows as { policy: string; bits: number | null; ctx: number; task: string; samples: number; accuracy: number | null; greedy_agreement: number | null; compression_ratio: number | null; spec_match: number | null; topk_overlap: number | null }[]) {
      const name = (row as { label?: string }).label ?? (row.bits ? `${row.policy}/${row.bits}b` : row.policy);
      const score = row.accuracy !== null ? `accuracy ${row.accuracy.toFixed(3)}` : `agreement ${row.greedy_agreement?.toFixed(4) ?? '—'}`;
      const fmt = (x: number | null, d = 3) => (x === null || x === undefined ? '—' : x.toFixed(d));
      console.log(`${name.padEnd(17)} ctx ${String(row.ctx).padStart(6)} ${row.task.padEnd(16)} ${score} (${row.samples} samples)  compression ${fmt(row.compression_ratio, 2)}x  spec ${fmt(row.spec_match)}  overlap ${fmt(row.topk_overlap)}`);
    }
    return;
  }
  if (r.suite === 'editor') {
    const s = r.storm as { keystrokes: number; duration_ms: number; max_running: number | null; max_waiting: number | null; rss_before: number | null; rss_after: number | null; drain_ms: number | null; answered: number; cancelled: number; superseded: number; errors: number };
    const mib = (b: number | null) => (b === null ? '—' : `${(b / 1048576).toFixed(1)} MiB`);
    const rows = r.rows as { cancelled: boolean }[];
    console.log(`completion, ctx ${r.ctx}: first suggestion p50 ${r.p50_ms} ms, p95 ${r.p95_ms} ms over ${rows.filter((x) => !x.cancelled).length} requests (${rows.filter((x) => x.cancelled).length} cancelled); whole completion p50 ${r.full_p50_ms} ms, p95 ${r.full_p95_ms} ms`);
    const kinds = r.by_kind as Record<string, { requests: number; p50_ms: number | null; p95_ms: number | null }>;
    for (const [k, v] of Object.entries(kinds)) console.log(`  ${k.padEnd(6)} ${v.requests} requests: first suggestion p50 ${v.p50_ms ?? '—'} ms, p95 ${v.p95_ms ?? '—'} ms`);
    console.log(`storm: ${s.keystrokes} keystrokes in ${(s.duration_ms / 1000).toFixed(1)} s, max running ${s.max_running ?? '—'}, max waiting ${s.max_waiting ?? '—'}, drained ${s.drain_ms ?? '—'} ms after the last keystroke; answered ${s.answered}, cancelled ${s.cancelled}, superseded ${s.superseded}, errors ${s.errors}`);
    console.log(`server RSS: ${mib(s.rss_before)} before, ${mib(s.rss_after)} after`);
    return;
  }
  if (r.suite === 'speed' && r.backend === 'cuda') {
    const w = r.ids_written as { path: string; tokens: number; command: string } | undefined;
    if (w) console.log(`wrote ${w.tokens} token ids to ${w.path}; on the GPU machine run:\n  ${w.command}`);
    for (const n of (r.notes as string[]) ?? []) console.log(`note: ${n}`);
    for (const row of r.rows as { policy: string; ctx: number; error?: string; step_ms_mean?: number; stall_frac?: number; pcie_bytes_per_step?: number; vram?: { kv: number; buffers: number }; hbm_frac_of_peak?: number }[]) {
      if (row.error) console.log(`${row.policy.padEnd(12)} ctx ${String(row.ctx).padStart(6)}  error: ${row.error}`);
      else console.log(`${row.policy.padEnd(12)} ctx ${String(row.ctx).padStart(6)}  step ${row.step_ms_mean?.toFixed(3)} ms  stall ${((row.stall_frac ?? 0) * 100).toFixed(1)} %  KV VRAM ${(((row.vram?.kv ?? 0) + (row.vram?.buffers ?? 0)) / 1048576).toFixed(1)} MiB  bus ${((row.pcie_bytes_per_step ?? 0) / 1048576).toFixed(2)} MiB/step  HBM ${((row.hbm_frac_of_peak ?? 0) * 100).toFixed(0)} % of peak`);
    }
    return;
  }
  if (r.suite === 'reuse') {
    for (const row of r.rows as { policy: string; case: string; prompt_tokens: number; recomputed_tokens: number; seconds: number; prefill_s: number }[])
      console.log(`${row.policy.padEnd(14)} ${row.case.padEnd(12)} ${String(row.recomputed_tokens).padStart(6)} of ${row.prompt_tokens} tokens recomputed  prefill ${row.prefill_s.toFixed(2).padStart(7)} s  request ${row.seconds.toFixed(2).padStart(7)} s`);
    return;
  }
  if (r.suite === 'parity') {
    const t = r.tokenizer as { bytes: number; files: number; mismatches: number };
    const f = r.teacher_forced as { prompts: number; positions: number; agree: number };
    console.log(`tokenizer: ${t.files} files, ${t.bytes} bytes, ${t.mismatches} mismatching files`);
    console.log(`teacher-forced: ${f.agree}/${f.positions} positions agree (${((100 * f.agree) / f.positions).toFixed(2)}%) over ${f.prompts} prompts`);
  } else {
    for (const row of r.rows as { engine: string; policy: string; ctx: number; prefill_tok_s: number; decode_tok_s: number }[])
      console.log(`${(row.engine === 'specode' && row.policy !== 'full' ? `specode/${row.policy}` : row.engine).padEnd(18)} ctx ${String(row.ctx).padStart(6)}  prefill ${row.prefill_tok_s.toFixed(1).padStart(8)} tok/s  decode ${row.decode_tok_s.toFixed(2).padStart(7)} tok/s`);
    for (const [ctx, q] of Object.entries(r.ratio_vs_peer as Record<string, { decode: number; prefill: number }>))
      console.log(`ctx ${ctx}: decode ${q.decode.toFixed(2)}x, prefill ${q.prefill.toFixed(2)}x llama.cpp`);
  }
}

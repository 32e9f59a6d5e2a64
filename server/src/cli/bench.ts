// specode bench parity|speed [--model M] [--json]
import { UserError } from '../errors';
import { benchParity } from '../bench/parity';
import { benchSpeed } from '../bench/speed';
import type { Envelope } from '../bench/common';
import { DEFAULT_MODEL, resolveModelArg } from '../models/registry';
import { parseArgs, usage, type FlagSpec } from './args';

const FLAGS: Record<string, FlagSpec> = {
  model: { type: 'string', help: 'model name or .gguf path', default: DEFAULT_MODEL },
  json: { type: 'boolean', help: 'print one JSON object on stdout (logs go to stderr)' },
  threads: { type: 'number', help: 'CPU threads for both engines (0: all cores)', default: 0 },
  peer: { type: 'string', help: 'peer engine to compare with (llama.cpp | none)', default: 'llama.cpp' },
  ctx: { type: 'string', help: 'speed: context sizes, comma-separated', default: '512,4096' },
  reps: { type: 'number', help: 'speed: repetitions after the warm-up (median reported)', default: 3 },
  'decode-tokens': { type: 'number', help: 'speed: decode steps timed per repetition', default: 32 },
  'flash-attention': { type: 'boolean', help: "speed: turn on llama.cpp's flash attention" },
  prompts: { type: 'number', help: 'parity: code prompts', default: 20 },
  'gen-tokens': { type: 'number', help: 'parity: tokens llama.cpp generates per prompt', default: 64 },
};

const SUITES = ['parity', 'speed'];

export async function runBench(argv: string[]): Promise<number> {
  const p = parseArgs(argv, FLAGS, 'bench');
  if (p.help || p.positionals.length === 0) {
    console.log(usage('bench', `SUITE [options]   (SUITE: ${SUITES.join(' | ')})`, 'Measure specode against llama.cpp on the same GGUF; --json prints the fields of shared/BENCH.md.', FLAGS));
    return p.help ? 0 : 2;
  }
  const suite = p.positionals[0];
  if (!SUITES.includes(suite)) throw new UserError(`bench: unknown suite '${suite}'`, `suites: ${SUITES.join(', ')} (fidelity, editor and policies are not implemented yet)`);
  const modelName = String(p.flags.model);
  const modelPath = await resolveModelArg(modelName);
  const threads = Number(p.flags.threads) || (await import('node:os')).availableParallelism();
  let result: Envelope;
  if (suite === 'parity') {
    result = await benchParity({ modelName, modelPath, threads, prompts: Number(p.flags.prompts), genTokens: Number(p.flags['gen-tokens']) });
  } else {
    const contexts = String(p.flags.ctx).split(',').map((s) => Number(s.trim()));
    if (contexts.some((c) => !Number.isInteger(c) || c < 2)) throw new UserError(`bench: --ctx must be integers >= 2, got '${p.flags.ctx}'`);
    result = await benchSpeed({
      modelName, modelPath, threads, contexts,
      reps: Number(p.flags.reps), decodeTokens: Number(p.flags['decode-tokens']),
      peer: p.flags.peer !== 'none', flashAttention: Boolean(p.flags['flash-attention']),
    });
  }
  if (p.flags.json) console.log(JSON.stringify(result, null, 2));
  else printSummary(result);
  return 0;
}

function printSummary(r: Envelope): void {
  console.log(`${r.suite} — ${r.model.name} (${r.model.sha256.slice(0, 12)}), ${r.backend}, ${r.threads} threads, ${r.device}`);
  if (r.suite === 'parity') {
    const t = r.tokenizer as { bytes: number; files: number; mismatches: number };
    const f = r.teacher_forced as { prompts: number; positions: number; agree: number };
    console.log(`tokenizer: ${t.files} files, ${t.bytes} bytes, ${t.mismatches} mismatching files`);
    console.log(`teacher-forced: ${f.agree}/${f.positions} positions agree (${((100 * f.agree) / f.positions).toFixed(2)}%) over ${f.prompts} prompts`);
  } else {
    for (const row of r.rows as { engine: string; ctx: number; prefill_tok_s: number; decode_tok_s: number }[])
      console.log(`${row.engine.padEnd(10)} ctx ${String(row.ctx).padStart(6)}  prefill ${row.prefill_tok_s.toFixed(1).padStart(8)} tok/s  decode ${row.decode_tok_s.toFixed(2).padStart(7)} tok/s`);
    for (const [ctx, q] of Object.entries(r.ratio_vs_peer as Record<string, { decode: number; prefill: number }>))
      console.log(`ctx ${ctx}: decode ${q.decode.toFixed(2)}x, prefill ${q.prefill.toFixed(2)}x llama.cpp`);
  }
}

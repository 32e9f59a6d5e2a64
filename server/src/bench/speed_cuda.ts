// speed_cuda.ts — `specode bench speed --backend cuda`: the CUDA backend's decode step
// per KV policy and context size, measured by native/build/specode_cuda_bench (CUDA
// events on the device) on real source code tokenized here. The tool is built by the
// install step wherever nvcc is present; it needs an NVIDIA GPU to run.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../errors';
import { Session } from '../engine/session';
import type { KvPolicy } from '../engine/native';
import { envelope, log, projectRoot, speedCorpusIds, type Envelope } from './common';

export interface CudaSpeedOptions {
  modelName: string;
  modelPath: string;
  contexts: number[];
  policies: KvPolicy[];
  decodeTokens: number;
  warmup: number;
  bits: 1 | 2;
  topk: number;
  /** undefined: automatic (specode::auto_rerank). */
  rerank?: number;
  /** The real model a random-weights stand-in file has the geometry of (scripts/gguf_skeleton.py). */
  standIn?: string;
  /** Only write the token ids to this file (for a GPU machine without Node) and return. */
  idsOut?: string;
}

const DEVICE_POLICIES = ['full', 'offload-all', 'specache'];

export function cudaBenchTool(): string {
  return join(projectRoot(), 'native', 'build', 'specode_cuda_bench');
}

export async function benchSpeedCuda(o: CudaSpeedOptions): Promise<Envelope> {
  const tool = cudaBenchTool();
  if (!existsSync(tool) && !o.idsOut)
    throw new UserError(
      `bench speed --backend cuda: ${tool} is not built (nvcc was not found when the addon was built)`,
      'install the CUDA toolkit, then run: node scripts/build.mjs --native-only',
    );
  const bad = o.policies.filter((p) => !DEVICE_POLICIES.includes(p));
  if (bad.length) throw new UserError(`bench speed --backend cuda: policies ${bad.join(', ')} have no CUDA path; use ${DEVICE_POLICIES.join(', ')}`);
  const env = await envelope('speed', o.modelName, o.modelPath, 0);
  env.backend = 'cuda';
  const maxCtx = Math.max(...o.contexts);
  const probe = await Session.open(o.modelPath, { nCtx: 64, threads: 1 });
  const ids = speedCorpusIds(probe.tokenizer);
  const nCtxTrain = probe.info.nCtxTrain;
  probe.close();
  if (ids.length < maxCtx) throw new Error(`bench speed: corpus has ${ids.length} tokens, need ${maxCtx}`);
  if (maxCtx + o.decodeTokens + o.warmup + 8 > nCtxTrain)
    throw new UserError(
      `bench speed: --ctx ${maxCtx} does not fit the model's ${nCtxTrain}-token context (no RoPE scaling in the engine yet)`,
      `use --ctx ${nCtxTrain - o.decodeTokens - o.warmup - 8} or less`,
    );
  const dir = join(tmpdir(), 'specode-cuda-bench');
  mkdirSync(dir, { recursive: true });
  const idsPath = o.idsOut ?? join(dir, `ids-${process.pid}.bin`);
  writeFileSync(idsPath, Buffer.from(Int32Array.from(ids.slice(0, maxCtx)).buffer));
  const args = ['--model', o.modelPath, '--ids', idsPath, '--ctx', o.contexts.join(','), '--policies', o.policies.join(','),
    '--steps', String(o.decodeTokens), '--warmup', String(o.warmup), '--bits', String(o.bits), '--topk', String(o.topk),
    '--rerank', String(o.rerank ?? 0)];
  log(`bench speed: ${tool} ${args.join(' ')}`);
  if (o.idsOut) {
    env.rows = [];
    env.ids_written = { path: idsPath, tokens: maxCtx, command: [tool, ...args].join(' ') };
    return env;
  }
  const { code, stdout } = await new Promise<{ code: number; stdout: string }>((res, rej) => {
    const child = spawn(tool, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => process.stderr.write(d));
    child.on('error', rej);
    child.on('close', (c) => res({ code: c ?? 1, stdout: out }));
  });
  if (code === 2) throw new UserError('bench speed --backend cuda: no CUDA device here', 'run it on a machine with an NVIDIA GPU and driver, or drop --backend cuda');
  if (code !== 0) throw new Error(`bench speed: specode_cuda_bench exited with ${code}`);
  const res = JSON.parse(stdout) as { device: { name: string }; rows: Record<string, unknown>[] };
  env.device = res.device.name;
  env.device_info = res.device;
  env.input = 'real source code from node_modules (first files in sorted order), the same ids as the CPU speed bench';
  env.rows = res.rows.map((r) => ({ engine: 'specode', backend: 'cuda', ...r }));
  env.peer = 'llama.cpp CUDA: not run (its CUDA build is not installed: bench/peer pins the CPU build; see docs/benchmarks.md)';
  if (o.standIn)
    env.notes = [`the model file is a stand-in: random weights with ${o.standIn}'s header, tensor shapes and quantization types ` +
      '(scripts/gguf_skeleton.py); step times and memory are that model\'s, its outputs (and spec_match) mean nothing'];
  // The figures: specache's KV VRAM vs full's, and its step vs full's and offload-all's.
  const ratios: Record<string, unknown> = {};
  for (const ctx of o.contexts) {
    const row = (p: string) => env.rows.find((r) => (r as Record<string, unknown>).policy === p && (r as Record<string, unknown>).ctx === ctx) as
      | { step_ms_mean?: number; vram?: { kv: number; buffers: number } }
      | undefined;
    const [full, off, spec] = [row('full'), row('offload-all'), row('specache')];
    if (spec?.step_ms_mean && full?.step_ms_mean && spec.vram && full.vram)
      ratios[String(ctx)] = {
        specache_kv_vram_vs_full: (spec.vram.kv + spec.vram.buffers) / full.vram.kv,
        specache_step_vs_full: spec.step_ms_mean / full.step_ms_mean,
        ...(off?.step_ms_mean ? { offload_all_step_vs_specache: off.step_ms_mean / spec.step_ms_mean } : {}),
      };
  }
  env.ratios = ratios;
  return env;
}

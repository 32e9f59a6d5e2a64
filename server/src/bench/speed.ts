// speed.ts — `specode bench speed`: prefill and decode tokens/s of specode and
// of llama.cpp (node-llama-cpp) on the same GGUF, same threads, same input
// (real source code), in the same run; median of N repetitions after a warm-up.
import { join } from 'node:path';
import { loadAddon } from '../engine/native';
import { Session } from '../engine/session';
import { envelope, log, projectRoot, median, realSourceFiles, type Envelope } from './common';
import { loadPeer } from './peer';

export interface SpeedOptions {
  modelName: string;
  modelPath: string;
  threads: number;
  contexts: number[];
  decodeTokens?: number;
  reps?: number;
  peer?: boolean;
  flashAttention?: boolean;
}

export interface SpeedRow {
  engine: 'specode' | 'llama.cpp';
  backend: 'cpu';
  policy: string;
  ctx: number;
  prefill_tok_s: number;
  decode_tok_s: number;
  device_kv_bytes: number;
  host_kv_bytes: number;
  fetch_bytes_per_step: number;
  stall_frac: number;
  prefill_runs_tok_s: number[];
  decode_runs_tok_s: number[];
}

export async function benchSpeed(o: SpeedOptions): Promise<Envelope> {
  const env = await envelope('speed', o.modelName, o.modelPath, o.threads);
  const reps = o.reps ?? 3;
  const nDecode = o.decodeTokens ?? 32;
  const maxCtx = Math.max(...o.contexts);
  const session = await Session.open(o.modelPath, { nCtx: maxCtx + nDecode + 8, threads: o.threads, nBatch: 256 });
  const root = projectRoot();
  // Real code: concatenated installed sources, tokenized once.
  const corpus = realSourceFiles([join(root, 'node_modules')], 1 << 20).map((f) => f.text).join('\n');
  const allIds = session.tokenizer.encode(corpus, { addSpecial: false, parseSpecial: false });
  if (allIds.length < maxCtx) throw new Error(`bench speed: corpus has ${allIds.length} tokens, need ${maxCtx}`);
  env.input = 'real source code from node_modules (first files in sorted order), same ids for both engines';
  const rows: SpeedRow[] = [];
  // K and V, fp16, every layer and KV head: what both engines hold for `full`.
  const fp16KvBytes = (ctx: number) => 2 * session.info.nLayer * session.info.nHeadKv * session.info.headDim * 2 * ctx;
  try {
    for (const ctx of o.contexts) {
      const ids = allIds.slice(0, ctx);
      const pre: number[] = [];
      const dec: number[] = [];
      for (let r = 0; r <= reps; r++) {
        session.ctx.truncate(0);
        let t0 = performance.now();
        await session.ctx.decode(Int32Array.from(ids.slice(0, -1)), { wantLogits: false });
        const prefillS = (performance.now() - t0) / 1000;
        // Decode: nDecode single-token steps after ctx-1 cached tokens (greedy feed).
        const sampler = loadAddon().createSampler({ temperature: 0 });
        let tok = ids[ids.length - 1];
        t0 = performance.now();
        for (let i = 0; i < nDecode; i++) {
          await session.ctx.decode(Int32Array.of(tok), { wantLogits: false });
          tok = sampler.sample(session.ctx);
        }
        const decodeS = (performance.now() - t0) / 1000;
        sampler.free();
        if (r === 0) continue;  // warm-up
        pre.push((ids.length - 1) / prefillS);
        dec.push(nDecode / decodeS);
        log(`specode ctx ${ctx} rep ${r}: prefill ${pre[pre.length - 1].toFixed(1)} tok/s, decode ${dec[dec.length - 1].toFixed(2)} tok/s`);
      }
      rows.push({
        engine: 'specode', backend: 'cpu', policy: 'full', ctx,
        prefill_tok_s: median(pre), decode_tok_s: median(dec),
        device_kv_bytes: fp16KvBytes(ctx), host_kv_bytes: 0, fetch_bytes_per_step: 0, stall_frac: 0,
        prefill_runs_tok_s: pre, decode_runs_tok_s: dec,
      });
    }
  } finally {
    session.close();
  }

  if (o.peer !== false) {
    const peer = await loadPeer(o.modelPath, { threads: o.threads, contextSize: maxCtx + nDecode + 8, batchSize: 512, flashAttention: o.flashAttention ?? false });
    try {
      for (const ctx of o.contexts) {
        const ids = allIds.slice(0, ctx);
        const pre: number[] = [];
        const dec: number[] = [];
        for (let r = 0; r <= reps; r++) {
          const p = await peer.prefillSpeed(ids.slice(0, -1));
          const d = await peer.decodeSpeed(ids, nDecode);
          if (r === 0) continue;
          pre.push(p.tokensPerSecond);
          dec.push(d.tokensPerSecond);
          log(`llama.cpp ctx ${ctx} rep ${r}: prefill ${p.tokensPerSecond.toFixed(1)} tok/s, decode ${d.tokensPerSecond.toFixed(2)} tok/s`);
        }
        rows.push({
          engine: 'llama.cpp', backend: 'cpu', policy: 'full', ctx,
          prefill_tok_s: median(pre), decode_tok_s: median(dec),
          device_kv_bytes: fp16KvBytes(ctx), host_kv_bytes: 0, fetch_bytes_per_step: 0, stall_frac: 0,
          prefill_runs_tok_s: pre, decode_runs_tok_s: dec,
        });
      }
      env.peer_settings = peer.peerSettings();
    } finally {
      await peer.dispose();
    }
  }
  env.rows = rows;
  const ratio: Record<string, { decode: number; prefill: number }> = {};
  for (const ctx of o.contexts) {
    const a = rows.find((r) => r.engine === 'specode' && r.ctx === ctx);
    const b = rows.find((r) => r.engine === 'llama.cpp' && r.ctx === ctx);
    if (a && b) ratio[String(ctx)] = { decode: a.decode_tok_s / b.decode_tok_s, prefill: a.prefill_tok_s / b.prefill_tok_s };
  }
  env.ratio_vs_peer = ratio;
  return env;
}

// speed.ts — `specode bench speed`: prefill and decode tokens/s of specode and
// of llama.cpp (node-llama-cpp) on the same GGUF, same threads, same input
// (real source code), in the same run; median of N repetitions after a warm-up.
import { UserError } from '../errors';
import { loadAddon, type KvPolicy } from '../engine/native';
import { Session } from '../engine/session';
import { envelope, log, median, speedCorpusIds, type Envelope, type ParamBits } from './common';
import { loadPeer } from './peer';

export interface SpeedOptions {
  modelName: string;
  modelPath: string;
  threads: number;
  contexts: number[];
  decodeTokens?: number;
  reps?: number;
  /** Untimed runs before the timed ones (default 1). */
  warmup?: number;
  peer?: boolean;
  flashAttention?: boolean;
  /** specode KV policies to time (default ['full']); llama.cpp always runs its fp16 cache. */
  policies?: KvPolicy[];
  /** specache*: bits of the low-bit copy (default 2). */
  bits?: 1 | 2;
  /** specache*: fp16 rows fetched per layer per KV head (default 64). */
  topk?: number;
  /** specache: two-stage row choice (see ContextOptions.rerank; default automatic per bits). */
  rerank?: number;
  /** specache*: bits of each scale and zero of the low-bit copy (ContextOptions.paramBits; default 'auto', the engine's choice). */
  paramBits?: ParamBits;
}

export interface SpeedRow {
  engine: 'specode' | 'llama.cpp';
  backend: 'cpu';
  policy: string;
  bits?: number;
  /** specache*: bits of each scale and zero of the low-bit copy as the engine reports them (KvMetrics.lowbitParamBits). */
  param_bits?: number;
  /** llama.cpp rows: whether its flash attention was on. */
  flash_attention?: boolean;
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
  const warmup = o.warmup ?? 1;
  const nDecode = o.decodeTokens ?? 32;
  const maxCtx = Math.max(...o.contexts);
  const policies = o.policies ?? ['full'];
  const probe = await Session.open(o.modelPath, { nCtx: 64, threads: o.threads });
  const allIds = speedCorpusIds(probe.tokenizer);
  const info = probe.info;
  probe.close();
  if (allIds.length < maxCtx) throw new Error(`bench speed: corpus has ${allIds.length} tokens, need ${maxCtx}`);
  // Fail before any prefill (a 32k one takes minutes) when the decode steps would not fit.
  if (maxCtx + nDecode + 8 > info.nCtxTrain)
    throw new UserError(
      `bench speed: --ctx ${maxCtx} plus ${nDecode} decode steps does not fit the model's ${info.nCtxTrain}-token context`,
      `use --ctx ${info.nCtxTrain - nDecode - 8} or less (or fewer --decode-tokens)`,
    );
  env.input = 'real source code from node_modules (first files in sorted order), same ids for both engines';
  const rows: SpeedRow[] = [];
  // K and V, fp16, every layer and KV head: what both engines hold for `full`.
  const fp16KvBytes = (ctx: number) => 2 * info.nLayer * info.nHeadKv * info.headDim * 2 * ctx;
  for (const policy of policies) {
    const lowbit = policy === 'specache' || policy === 'specache-sync';
    for (const ctx of o.contexts) {
      const ids = allIds.slice(0, ctx);
      const pre: number[] = [];
      const dec: number[] = [];
      let fetchPerStep = 0, stallFrac = 0, deviceKv = fp16KvBytes(ctx), hostKv = 0, paramBits = 0;
      for (let r = 1 - warmup; r <= reps; r++) {
        // A fresh context each repetition: the paged policies would otherwise adopt the
        // previous repetition's pages instead of running the prefill.
        const session = await Session.open(o.modelPath, {
          nCtx: ctx + nDecode + 8, threads: o.threads, nBatch: 256, policy,
          ...(lowbit ? { bits: o.bits ?? 2, topk: o.topk ?? 64, ...(o.rerank ? { rerank: o.rerank } : {}), ...(o.paramBits && o.paramBits !== 'auto' ? { paramBits: o.paramBits } : {}) } : {}),
        });
        try {
          let t0 = performance.now();
          await session.ctx.decode(Int32Array.from(ids.slice(0, -1)), { wantLogits: false });
          const prefillS = (performance.now() - t0) / 1000;
          // Decode: nDecode one-token generation steps after ctx-1 cached tokens (greedy feed).
          // Under specache a one-token decode is the speculative step (real + speculative
          // token in one pass), as the product decodes.
          const sampler = loadAddon().createSampler({ temperature: 0 });
          let tok = ids[ids.length - 1];
          session.ctx.resetMetrics();
          t0 = performance.now();
          for (let i = 0; i < nDecode; i++) {
            await session.ctx.decode(Int32Array.of(tok), { wantLogits: false });
            tok = sampler.sample(session.ctx);
          }
          const decodeS = (performance.now() - t0) / 1000;
          sampler.free();
          const m = session.ctx.metrics();
          if (policy !== 'full') {
            fetchPerStep = m.steps ? m.fetchBytesTotal / m.steps : 0;
            stallFrac = m.stepNsTotal ? m.stallNsTotal / m.stepNsTotal : 0;
            deviceKv = m.deviceKvBytes;
            hostKv = m.hostKvBytes;
            paramBits = m.lowbitParamBits ?? 0;
          }
          if (r <= 0) continue;  // warm-up
          pre.push((ids.length - 1) / prefillS);
          dec.push(nDecode / decodeS);
          log(`specode ${policy} ctx ${ctx} rep ${r}: prefill ${pre[pre.length - 1].toFixed(1)} tok/s, decode ${dec[dec.length - 1].toFixed(2)} tok/s`);
        } finally {
          session.close();
        }
      }
      rows.push({
        engine: 'specode', backend: 'cpu', policy, ...(lowbit ? { bits: o.bits ?? 2, ...(paramBits ? { param_bits: paramBits } : {}) } : {}), ctx,
        prefill_tok_s: median(pre), decode_tok_s: median(dec),
        device_kv_bytes: deviceKv, host_kv_bytes: hostKv, fetch_bytes_per_step: fetchPerStep, stall_frac: stallFrac,
        prefill_runs_tok_s: pre, decode_runs_tok_s: dec,
      });
    }
  }

  if (o.peer !== false) {
    // llama.cpp with its best settings for each case: flash attention off and on (unless
    // pinned with flashAttention), each a row; ratios use the faster per figure.
    const faModes = o.flashAttention === undefined ? [false, true] : [o.flashAttention];
    const settings: unknown[] = [];
    for (const fa of faModes) {
      const peer = await loadPeer(o.modelPath, { threads: o.threads, contextSize: maxCtx + nDecode + 8, batchSize: 512, flashAttention: fa });
      try {
        for (const ctx of o.contexts) {
          const ids = allIds.slice(0, ctx);
          const pre: number[] = [];
          const dec: number[] = [];
          for (let r = 1 - warmup; r <= reps; r++) {
            const { prefill: p, decode: d } = await peer.prefillThenDecode(ids, nDecode);
            if (r <= 0) continue;
            pre.push(p.tokensPerSecond);
            dec.push(d.tokensPerSecond);
            log(`llama.cpp${fa ? ' (flash attention)' : ''} ctx ${ctx} rep ${r}: prefill ${p.tokensPerSecond.toFixed(1)} tok/s, decode ${d.tokensPerSecond.toFixed(2)} tok/s`);
          }
          rows.push({
            engine: 'llama.cpp', backend: 'cpu', policy: 'full', flash_attention: fa, ctx,
            prefill_tok_s: median(pre), decode_tok_s: median(dec),
            device_kv_bytes: fp16KvBytes(ctx), host_kv_bytes: 0, fetch_bytes_per_step: 0, stall_frac: 0,
            prefill_runs_tok_s: pre, decode_runs_tok_s: dec,
          });
        }
        settings.push(peer.peerSettings());
      } finally {
        await peer.dispose();
      }
    }
    env.peer_settings = settings.length === 1 ? settings[0] : settings;
  }
  env.rows = rows;
  // Ratios of each specode policy to llama.cpp's faster setting at the same context ('full'
  // under the bare context key; other policies as "ctx/policy").
  const ratio: Record<string, { decode: number; prefill: number }> = {};
  for (const a of rows.filter((r) => r.engine === 'specode')) {
    const peers = rows.filter((r) => r.engine === 'llama.cpp' && r.ctx === a.ctx);
    if (!peers.length) continue;
    const bestDecode = Math.max(...peers.map((r) => r.decode_tok_s));
    const bestPrefill = Math.max(...peers.map((r) => r.prefill_tok_s));
    const key = a.policy === 'full' ? String(a.ctx) : `${a.ctx}/${a.policy}`;
    ratio[key] = { decode: a.decode_tok_s / bestDecode, prefill: a.prefill_tok_s / bestPrefill };
  }
  env.ratio_vs_peer = ratio;
  return env;
}

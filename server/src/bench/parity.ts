// parity.ts — `specode bench parity`: our tokenizer and our greedy argmax
// against llama.cpp (node-llama-cpp) on the same GGUF file.
//   tokenizer:      ids on >= 1 MB of real source code, files that differ
//   teacher_forced: llama.cpp continues 20 code prompts greedily (64 tokens);
//                   at each position, is our argmax its token?
import { join } from 'node:path';
import { Session } from '../engine/session';
import { envelope, log, projectRoot, realSourceFiles, type Envelope } from './common';
import { loadPeer } from './peer';
import { runTokenizerParity } from './tokenizer-parity';

export interface ParityOptions {
  modelName: string;
  modelPath: string;
  threads: number;
  prompts?: number;
  genTokens?: number;
  tokenizerBytes?: number;
}

export async function benchParity(o: ParityOptions): Promise<Envelope> {
  const env = await envelope('parity', o.modelName, o.modelPath, o.threads);
  const nPrompts = o.prompts ?? 20;
  const nGen = o.genTokens ?? 64;

  log(`tokenizer parity on ${((o.tokenizerBytes ?? 1 << 20) / 1e6).toFixed(1)} MB of installed packages' sources`);
  const tok = await runTokenizerParity(o.modelPath, { minBytes: o.tokenizerBytes ?? 1 << 20 });
  env.tokenizer = { bytes: tok.bytes, files: tok.files, mismatches: tok.mismatches };
  if (tok.mismatches) env.tokenizer_first_mismatches = tok.firstMismatches;

  const session = await Session.open(o.modelPath, { nCtx: 2048, threads: o.threads, kvType: 'f16' });
  const peer = await loadPeer(o.modelPath, { threads: o.threads, contextSize: 2048 });
  try {
    // 20 varied prompts: the head of real source files of different kinds.
    const root = projectRoot();
    const files = realSourceFiles([join(root, 'node_modules'), join(root, 'bench/peer/node_modules')], 4 << 20);
    const byExt = new Map<string, { path: string; text: string }[]>();
    for (const f of files) {
      const ext = f.path.slice(f.path.lastIndexOf('.'));
      if (!byExt.has(ext)) byExt.set(ext, []);
      byExt.get(ext)!.push(f);
    }
    const pools = [...byExt.values()];
    const picked: { path: string; text: string }[] = [];
    for (let i = 0; picked.length < nPrompts && i < 1000; i++) {
      const pool = pools[i % pools.length];
      const f = pool[Math.floor(i / pools.length) * 7 % pool.length];
      if (f && !picked.includes(f)) picked.push(f);
    }
    let agree = 0;
    let positions = 0;
    const rows: { prompt: number; file: string; agree: number; positions: number; first_disagreement?: number }[] = [];
    for (let p = 0; p < picked.length; p++) {
      const ids = session.tokenizer.encode(picked[p].text, { addSpecial: true, parseSpecial: false }).slice(0, 96 + 16 * p);
      const cont = await peer.greedy(ids, nGen);
      // Our logits at every position of prompt-last + continuation.
      session.ctx.truncate(0);
      if (ids.length > 1) await session.ctx.decode(Int32Array.from(ids.slice(0, -1)), { wantLogits: false });
      const feed = [ids[ids.length - 1], ...cont.slice(0, -1)];
      const logits = (await session.ctx.decode(Int32Array.from(feed), { allLogits: true }))!;
      const V = session.info.nVocab;
      let a = 0;
      let first: number | undefined;
      for (let i = 0; i < cont.length; i++) {
        let best = 0;
        for (let j = 1; j < V; j++) if (logits[i * V + j] > logits[i * V + best]) best = j;
        if (best === cont[i]) a++;
        else if (first === undefined) first = i;
      }
      rows.push({ prompt: p, file: picked[p].path.slice(root.length + 1), agree: a, positions: cont.length, ...(first !== undefined ? { first_disagreement: first } : {}) });
      agree += a;
      positions += cont.length;
      log(`prompt ${p}: ${a}/${cont.length} agree (${ids.length} prompt tokens)`);
    }
    env.teacher_forced = { prompts: picked.length, positions, agree };
    env.rows = rows;
    env.peer_settings = peer.peerSettings();
  } finally {
    session.close();
    await peer.dispose();
  }
  return env;
}

// The baseline KV policies (streamingllm, h2o, kivi) through the addon on a
// real model: selected by name, equal to full while nothing is compressed,
// compressed to their budgets once generation runs, bad options rejected.
// Their mechanisms are tested natively (native/tests/test_baselines.cpp).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readGguf } from '../../server/src/engine/gguf';
import { loadAddon, type ContextOptions, type NativeContext } from '../../server/src/engine/native';
import { Tokenizer } from '../../server/src/engine/tokenizer';
import { findModel, modelMissingMessage } from './helpers';

const modelPath = findModel('smollm2-135m');
const skip = !modelPath && modelMissingMessage('smollm2-135m');

const SOURCE = `
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return n.toFixed(u === 0 ? 0 : 1) + ' ' + units[u];
}

export class LruCache<K, V> {
  private map = new Map<K, V>();
  constructor(private readonly capacity: number) {}
  get(key: K): V | undefined {
    const v = this.map.get(key);
    if (v === undefined) return undefined;
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }
  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value as K);
  }
}

// Usage: const cache = new LruCache<string, number>(16); cache.set('a', 1);
export function`;

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

test('baseline policies: equal to full while nothing is compressed, then compressed to budget', { skip }, async () => {
  const tok = Tokenizer.fromGguf(await readGguf(modelPath!));
  const prompt = Int32Array.from(tok.encode(SOURCE));
  const model = await loadAddon().loadModel(modelPath!, { threads: 2 });
  const nCtx = 512;
  const steps = 8;
  assert.ok(prompt.length + steps < 512);
  // Budgets that cover the context: nothing is evicted or quantized.
  const covering: ContextOptions[] = [
    { nCtx, policy: 'streamingllm', budget: nCtx },
    { nCtx, policy: 'h2o', budgetRatio: 1 },
    { nCtx, policy: 'kivi', residual: 512 },
  ];
  // The defaults: 20% of the tokens (4 sinks), 2-bit KIVI with a 128-token residual.
  const compressed: ContextOptions[] = [
    { nCtx, policy: 'streamingllm' },
    { nCtx, policy: 'h2o' },
    { nCtx, policy: 'kivi' },
  ];
  const full = model.createContext({ nCtx, policy: 'full' });
  const ctxs: NativeContext[] = [...covering, ...compressed].map((o) => model.createContext(o));
  try {
    let lf = (await full.decode(prompt))!;
    const last: Float32Array[] = [];
    for (const c of ctxs) last.push((await c.decode(prompt))!);
    for (let i = 0; i < covering.length; i++) assert.deepEqual(last[i], lf, `${covering[i].policy}: prefill logits differ`);
    const agree = compressed.map(() => 0);
    for (let step = 0; step < steps; step++) {
      const t = argmax(lf);
      compressed.forEach((_, i) => (agree[i] += argmax(last[covering.length + i]) === t ? 1 : 0));
      lf = (await full.decode(Int32Array.of(t)))!;
      for (let i = 0; i < ctxs.length; i++) last[i] = (await ctxs[i].decode(Int32Array.of(t)))!;
      for (let i = 0; i < covering.length; i++) assert.deepEqual(last[i], lf, `${covering[i].policy}: step ${step} logits differ`);
    }
    const n = prompt.length + steps;
    for (let i = 0; i < ctxs.length; i++) {
      const o = i < covering.length ? covering[i] : compressed[i - covering.length];
      const m = ctxs[i].metrics();
      assert.equal(m.policy, o.policy);
      assert.equal(m.nTokens, n);
      if (i < covering.length) assert.ok(m.deviceKvBytes >= m.fp16KvBytes, `${o.policy}: nothing should be compressed`);
    }
    const [sl, h2o, kivi] = ctxs.slice(covering.length).map((c) => c.metrics());
    const budgetRows = Math.ceil(0.2 * n - 1e-4);
    for (const m of [sl, h2o]) {
      assert.equal(m.deviceFullBytes, (m.fp16KvBytes / n) * budgetRows, `${m.policy}: not at 20% of ${n} tokens`);
      assert.equal(m.deviceLowbitBytes + m.deviceResidualBytes, 0);
    }
    assert.equal(kivi.nLowbitTokens, Math.floor((n - 1) / 128) * 128);
    assert.equal(kivi.nLowbitTokens + kivi.nResidualTokens, n);
    assert.ok(kivi.deviceLowbitBytes > 0 && kivi.deviceFullBytes === 0);
    console.log(
      `@${n} tokens: ` +
        [sl, h2o, kivi]
          .map((m, i) => `${m.policy} 1/${m.compressionRatio.toFixed(2)} of fp16, greedy agreement ${agree[i]}/${steps}`)
          .join('; '),
    );
  } finally {
    full.free();
    for (const c of ctxs) c.free();
    model.free();
  }
});

test('baseline policies: bad options are rejected', { skip }, async () => {
  const model = await loadAddon().loadModel(modelPath!, { threads: 1 });
  try {
    assert.throws(() => model.createContext({ nCtx: 64, policy: 'h2o', budgetRatio: 2 }), /kv_budget_ratio/);
    assert.throws(() => model.createContext({ nCtx: 64, policy: 'streamingllm', budget: 4, sinks: 4 }), /kv_sinks/);
    assert.throws(() => model.createContext({ nCtx: 64, policy: 'kivi', residual: 96 }), /kv_residual/);
    assert.throws(() => model.createContext({ nCtx: 64, policy: 'snapkv' as never }), /policy must be/);
  } finally {
    model.free();
  }
});

// The decoder a context runs on, through the addon: cpu when asked; auto moves to the CPU
// with the reason where CUDA cannot run the context; cuda is refused with the reason. Where
// a GPU and the CUDA build are present, the CUDA context's greedy tokens are the CPU's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadAddon, type NativeModel } from '../../server/src/engine/native';
import { findModel, modelMissingMessage } from './helpers';

const modelPath = findModel('smollm2-135m');

async function withModel(fn: (m: NativeModel) => Promise<void> | void): Promise<void> {
  const model = await loadAddon().loadModel(modelPath!, { threads: 2 });
  try {
    await fn(model);
  } finally {
    model.free();
  }
}

test('backend choice and its reason', { skip: !modelPath && modelMissingMessage('smollm2-135m') }, async () => {
  const addon = loadAddon();
  const probe = addon.cudaProbe!();
  const gpu = probe.available && probe.backendBuilt === true;
  await withModel((model) => {
    const cpu = model.createContext({ nCtx: 256, backend: 'cpu' });
    assert.deepEqual(cpu.backend, { name: 'cpu', device: addon.cpuKernels(), reason: 'CPU requested' });
    assert.equal(cpu.metrics().backend, 'cpu');
    assert.equal(cpu.metrics().deviceTotalBytes, 0);
    cpu.free();
    // A policy only the CPU runs: auto says why it is on the CPU, cuda refuses.
    const h2o = model.createContext({ nCtx: 256, backend: 'auto', policy: 'h2o' });
    assert.equal(h2o.backend.name, 'cpu');
    assert.match(h2o.backend.reason, /^auto: /);
    assert.match(h2o.backend.reason, gpu ? /runs on the CPU backend only/ : /built without the CUDA backend|no CUDA device/);
    h2o.free();
    assert.throws(() => model.createContext({ nCtx: 256, backend: 'cuda', policy: 'h2o' }),
      (e: Error & { code?: string }) => e.code === 'UNSUPPORTED' && /CUDA backend cannot run this context: .+ \(use backend auto or cpu/.test(e.message));
    assert.throws(() => model.createContext({ nCtx: 256, backend: 'tpu' as 'cpu' }), /backend must be 'cpu', 'auto' or 'cuda'/);
    if (!gpu) {
      const auto = model.createContext({ nCtx: 256, backend: 'auto', policy: 'specache' });
      assert.equal(auto.backend.name, 'cpu');
      assert.ok(auto.backend.reason.includes(probe.backendBuilt ? probe.reason : 'built without the CUDA backend'), auto.backend.reason);
      auto.free();
      assert.throws(() => model.createContext({ nCtx: 256, backend: 'cuda', policy: 'specache' }), (e: Error & { code?: string }) => e.code === 'UNSUPPORTED');
    }
  });
});

test('CUDA context: the CPU\'s greedy tokens', { skip: (!modelPath && modelMissingMessage('smollm2-135m')) || (!(loadAddon().cudaProbe?.().available && loadAddon().cudaProbe?.().backendBuilt) && 'no CUDA device or no CUDA build here') }, async () => {
  await withModel(async (model) => {
    const prompt = Int32Array.from({ length: 300 }, (_, i) => 100 + ((i * 37) % 1000));
    for (const policy of ['full', 'specache'] as const) {
      const tokens: number[][] = [];
      for (const backend of ['cpu', 'cuda'] as const) {
        // paramBits 16: CUDA's only format for the copy's scales and zeros (the CPU's automatic choice at 2 bits is 8).
        const ctx = model.createContext({ nCtx: 512, backend, policy, ...(policy === 'specache' ? { paramBits: 16 as const } : {}) });
        assert.equal(ctx.backend.name, backend);
        let logits = (await ctx.decode(prompt))!;
        const out: number[] = [];
        for (let i = 0; i < 32; i++) {
          let best = 0;
          for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
          out.push(best);
          logits = (await ctx.decodeSpec(best)).logits;
        }
        tokens.push(out);
        ctx.free();
      }
      assert.deepEqual(tokens[1], tokens[0], `${policy}: CUDA tokens differ from the CPU's`);
    }
  });
});

// The language server's request handlers, driven with a fake engine: one
// engine job at a time, a new completion replaces the running one, $/cancelRequest
// stops work, questions stream, bad input and a missing model get clear errors,
// figures come only from what the engine reports.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ProgressType } from 'vscode-languageserver-protocol';
import type { GenerateOptions, GenerateResult } from '../../server/src/engine/session';
import { UserError } from '../../server/src/errors';
import type { Engine, EngineModel } from '../../server/src/lsp/engine';
import { SpecodeService, type CancelToken } from '../../server/src/lsp/handlers';
import { AskPartialType, CompletePartialType, ErrorCode, IndexProgressType, type ServerConfig, type ServerStatus } from '../../server/src/protocol';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const CONFIG: ServerConfig = { model: 'fake', backend: 'cpu', deviceBudgetMiB: 0, contextTokens: 4096, kvPolicy: 'specache', kvBits: 2, topK: 64 };

/** Tokens are characters; generation emits the pieces of `script(prompt)` every `stepMs`. */
class FakeEngine implements Engine {
  readonly model: EngineModel = { name: 'fake', path: '/models/fake.gguf', arch: 'llama', fileType: 'F16', nCtx: 4096, fim: true, weightBytes: 1 << 20, nLayer: 2, nHeadKv: 1, headDim: 4 };
  readonly backend = 'fake-cpu';
  cached: number[] = [];
  active = 0;
  maxActive = 0;
  aborted = 0;
  generated: string[] = [];
  prefills: number[] = [];
  engineMetrics: Record<string, number> | undefined;
  failNext: Error | undefined;
  closed = false;

  constructor(
    public script: (prompt: string) => string[] = () => ['hello', ' world'],
    public stepMs = 5,
  ) {}

  encode(text: string): number[] {
    return [...text].map((c) => c.codePointAt(0)!);
  }
  count(text: string): number {
    return [...text].length;
  }
  cachedIds(): readonly number[] {
    return this.cached;
  }
  metrics(): Record<string, number> | undefined {
    return this.engineMetrics;
  }
  close(): void {
    this.closed = true;
  }

  private enter(): void {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
  }

  async prefill(ids: number[], signal?: AbortSignal): Promise<{ reused: number }> {
    this.enter();
    try {
      let common = 0;
      while (common < Math.min(ids.length, this.cached.length) && ids[common] === this.cached[common]) common++;
      await sleep(this.stepMs);
      if (signal?.aborted) {
        const e = new Error('cancelled');
        e.name = 'AbortError';
        throw e;
      }
      this.prefills.push(ids.length - common);
      this.cached = ids.slice();
      return { reused: common };
    } finally {
      this.active--;
    }
  }

  async generate(ids: number[], opts: GenerateOptions): Promise<GenerateResult> {
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    const { reused } = await this.prefill(ids);
    this.enter();
    try {
      const prompt = String.fromCodePoint(...ids);
      let text = '';
      let stopReason: GenerateResult['stopReason'] = 'eos';
      for (const piece of this.script(prompt)) {
        if (opts.signal?.aborted) {
          stopReason = 'cancelled';
          this.aborted++;
          break;
        }
        await sleep(this.stepMs);
        text += piece;
        opts.onText?.(piece);
      }
      this.generated.push(text);
      return { text, tokens: [...text].map((c) => c.codePointAt(0)!), stopReason, promptTokens: ids.length, reusedTokens: reused, prefillMs: 1, decodeMs: 10 };
    } finally {
      this.active--;
    }
  }
}

class FakeToken implements CancelToken {
  isCancellationRequested = false;
  private listeners: (() => unknown)[] = [];
  onCancellationRequested(l: () => unknown) {
    this.listeners.push(l);
    return { dispose: () => (this.listeners = this.listeners.filter((x) => x !== l)) };
  }
  cancel(): void {
    this.isCancellationRequested = true;
    for (const l of this.listeners) l();
  }
}

function setup(engine = new FakeEngine(), opts: { resolveModel?: (arg: string) => string } = {}) {
  const statuses: ServerStatus[] = [];
  const progress: { token: string; value: unknown; type: unknown }[] = [];
  let opened = 0;
  const service = new SpecodeService({
    openEngine: async () => {
      opened++;
      return engine;
    },
    resolveModel: opts.resolveModel ?? ((arg) => `/models/${arg}.gguf`),
    listModels: () => [],
    fetchModel: async () => '/models/x.gguf',
    sendStatus: (s) => statuses.push(s),
    sendProgress: <P>(type: ProgressType<P>, token: string, value: P) => void progress.push({ type, token, value }),
    log: () => undefined,
    statusIntervalMs: 0,
  });
  service.configure(CONFIG);
  service.setContext({
    repoName: 'demo',
    files: [
      { path: 'README.md', text: 'Demo service.\n', mtimeMs: 1 },
      { path: 'src/config/deep/settings.ts', text: 'export const PORT = 48213;\n', mtimeMs: 2 },
      { path: 'src/main.ts', text: 'import { PORT } from "./config/deep/settings";\n', mtimeMs: 3 },
    ],
  });
  return { service, engine, statuses, progress, opened: () => opened };
}

const completeParams = (prefix: string, suffix = '\n') => ({ path: 'src/main.ts', languageId: 'typescript', prefix, suffix });

test('the model opens lazily, once, and a completion builds a FIM prompt with the repo files first', async () => {
  const { service, engine, opened } = setup(new FakeEngine(() => ['listen(PORT);']));
  assert.equal(opened(), 0, 'configure does not load the model');
  const r = await service.complete(completeParams('import x;\n'));
  assert.equal(r.text, 'listen(PORT);');
  assert.equal(opened(), 1);
  const prompt = String.fromCodePoint(...engine.cached);
  assert.ok(prompt.startsWith('<|repo_name|>demo\n<|file_sep|>README.md\n'), prompt.slice(0, 60));
  assert.ok(prompt.indexOf('settings.ts') < prompt.indexOf('<|fim_prefix|>'));
  assert.ok(!prompt.includes('<|file_sep|>src/main.ts\nimport { PORT }'), 'the current file is not also in the repo part');
  await service.complete(completeParams('import y;\n'));
  assert.equal(opened(), 1);
});

test('a new completion cancels the running one (Superseded), without overlapping engine work', async () => {
  const engine = new FakeEngine(() => Array.from({ length: 30 }, () => 'x'), 5);
  const { service } = setup(engine);
  const first = service.complete(completeParams('a'));
  const firstFailed = assert.rejects(first, (e: { code?: number }) => e.code === ErrorCode.Superseded);
  await sleep(40);
  const second = await service.complete(completeParams('ab'));
  await firstFailed;
  assert.equal(second.text.length, 30);
  assert.equal(engine.maxActive, 1);
  assert.ok(engine.aborted >= 1, 'the first generation stopped early');
});

test('$/cancelRequest stops the running completion', async () => {
  const engine = new FakeEngine(() => Array.from({ length: 100 }, () => 'y'), 5);
  const { service } = setup(engine);
  const token = new FakeToken();
  const p = service.complete(completeParams('a'), token);
  setTimeout(() => token.cancel(), 40);
  await assert.rejects(p, (e: { code?: number }) => e.code === ErrorCode.RequestCancelled);
  assert.equal(engine.aborted, 1);
  assert.ok(engine.generated[0].length < 100);
});

test('completions stop at a sensible boundary (one line when code follows the cursor)', async () => {
  const engine = new FakeEngine(() => ['foo', '(1', ');\n', 'bar();\n', 'baz();\n'], 2);
  const { service } = setup(engine);
  const r = await service.complete(completeParams('const v = ', ' + 1;\n'));
  assert.equal(r.text, 'foo(1);');
  assert.equal(r.stopReason, 'boundary');
  assert.ok(engine.generated[0].length < 'foo(1);\nbar();\nbaz();\n'.length, 'generation stopped at the boundary');
});

test('a multi-line completion sends its first line ahead of the response (CompletePartial)', async () => {
  const engine = new FakeEngine(() => ['tot', 'al = a', ' + b;\n', '  return', ' total;\n', '}\n'], 2);
  const { service, progress } = setup(engine);
  const r = await service.complete({ ...completeParams('function f(a, b) {\n  const ', '\n'), partialResultToken: 'c-1' });
  const partial = progress.filter((p) => p.type === CompletePartialType && p.token === 'c-1').map((p) => (p.value as { text: string }).text);
  assert.deepEqual(partial, ['total = a + b;'], 'one partial: the first line');
  assert.equal(r.text, 'total = a + b;\n  return total;');
  assert.ok(r.text.startsWith(partial[0]));
  // Single-line completions (code after the cursor) and requests without a token send none.
  await service.complete({ ...completeParams('const v = ', ' + 1;\n'), partialResultToken: 'c-2' });
  await service.complete(completeParams('function g() {\n  const '));
  assert.equal(progress.filter((p) => p.type === CompletePartialType).length, 1);
});

test('engine jobs never overlap: index, ask and completions arriving together run one by one', async () => {
  const engine = new FakeEngine(() => ['a', 'b', 'c'], 3);
  const { service } = setup(engine);
  const results = await Promise.allSettled([
    service.index({}),
    service.ask({ question: 'what?' }),
    service.complete(completeParams('x')),
    service.complete(completeParams('xy')),
    service.ask({ question: 'again?' }),
  ]);
  assert.equal(engine.maxActive, 1);
  assert.equal(results[0].status, 'fulfilled');
  assert.equal(results[1].status, 'fulfilled');
  assert.equal(results[2].status, 'rejected', 'replaced by the newer completion');
  assert.equal(results[3].status, 'fulfilled');
  assert.equal(results[4].status, 'fulfilled');
});

test('ask streams partial results and cites the file holding the fact', async () => {
  const engine = new FakeEngine(() => ['The port ', 'is 48213, ', 'set in settings.ts.'], 2);
  const { service, progress } = setup(engine);
  const r = await service.ask({ question: 'Which port does the service use?', partialResultToken: 'ask-1' });
  const deltas = progress.filter((p) => p.token === 'ask-1' && p.type === AskPartialType).map((p) => (p.value as { delta: string }).delta);
  assert.deepEqual(deltas, ['The port ', 'is 48213, ', 'set in settings.ts.']);
  assert.equal(r.text, deltas.join(''));
  assert.equal(r.citations[0].path, 'src/config/deep/settings.ts');
  assert.equal(r.stopReason, 'eos');
  const prompt = String.fromCodePoint(...engine.cached);
  assert.ok(prompt.includes('<|im_start|>user\n') && prompt.includes('Question: Which port'), 'ChatML question prompt');
});

test('stopping a question returns the answer so far', async () => {
  const engine = new FakeEngine(() => Array.from({ length: 50 }, (_, i) => `w${i} `), 5);
  const { service } = setup(engine);
  const token = new FakeToken();
  setTimeout(() => token.cancel(), 40);
  const r = await service.ask({ question: 'long?' }, token);
  assert.equal(r.stopReason, 'cancelled');
  assert.ok(r.text.length > 0 && r.text.length < 50 * 3);
});

test('index prefills the repo head in chunks, reports progress, reuses the cache the second time', async () => {
  const engine = new FakeEngine();
  const { service, progress } = setup(engine);
  const big = Array.from({ length: 40 }, (_, i) => ({ path: `src/f${i}.ts`, text: `export const v${i} = ${'1'.repeat(60)};\n`, mtimeMs: i }));
  service.setContext({ repoName: 'big', files: big });
  const r1 = await service.index({ workDoneToken: 'ix' });
  assert.equal(r1.cancelled, false);
  assert.equal(r1.reusedTokens, 0);
  assert.ok(r1.tokens > 2000);
  const steps = progress.filter((p) => p.type === IndexProgressType && p.token === 'ix').map((p) => p.value as { done: number; total: number });
  assert.ok(steps.length >= 4, `progress steps: ${steps.length}`);
  assert.equal(steps.at(-1)!.done, steps.at(-1)!.total);
  const r2 = await service.index({});
  assert.equal(r2.reusedTokens, r1.tokens, 'nothing recomputed');
});

test('index can be cancelled', async () => {
  const engine = new FakeEngine(undefined, 10);
  const { service } = setup(engine);
  service.setContext({ repoName: 'big', files: Array.from({ length: 60 }, (_, i) => ({ path: `f${i}.ts`, text: 'x'.repeat(100), mtimeMs: i })) });
  const token = new FakeToken();
  setTimeout(() => token.cancel(), 25);
  const r = await service.index({}, token);
  assert.equal(r.cancelled, true);
  assert.ok(r.tokens < 6000);
});

test('bad params are refused with InvalidParams naming the field; the server keeps serving', async () => {
  const { service } = setup();
  await assert.rejects(service.complete({ path: 3 }), (e: { code?: number; message?: string }) => e.code === ErrorCode.InvalidParams && /'path' must be a string/.test(e.message!));
  assert.throws(() => service.setContext({ repoName: 'r', files: 'nope' }), (e: { code?: number }) => e.code === ErrorCode.InvalidParams);
  assert.throws(() => service.configure({ model: 'x' }), (e: { code?: number; message?: string }) => e.code === ErrorCode.InvalidParams && /backend/.test(e.message!));
  const r = await service.complete(completeParams('ok'));
  assert.equal(typeof r.text, 'string');
});

test('a missing model gives ModelUnavailable with the hint, and an error status', async () => {
  const { service, statuses } = setup(new FakeEngine(), {
    resolveModel: () => {
      throw new UserError('Model "fake" is not downloaded yet', 'specode model fetch fake');
    },
  });
  await assert.rejects(service.complete(completeParams('a')), (e: { code?: number; data?: { hint?: string } }) => e.code === ErrorCode.ModelUnavailable && e.data?.hint === 'specode model fetch fake');
  const last = statuses.at(-1)!;
  assert.equal(last.state, 'error');
  assert.match(last.message!, /not downloaded/);
  assert.equal(last.hint, 'specode model fetch fake');
});

test('an engine failure becomes EngineFailed and the next request still works', async () => {
  const engine = new FakeEngine(() => ['ok']);
  const { service } = setup(engine);
  engine.failNext = Object.assign(new Error('the prompt does not fit'), { code: 'CONTEXT_FULL' });
  await assert.rejects(service.complete(completeParams('a')), (e: { code?: number; message?: string }) => e.code === ErrorCode.EngineFailed && /CONTEXT_FULL/.test(e.message!));
  assert.equal((await service.complete(completeParams('b'))).text, 'ok');
});

test('pause refuses new work and stops the running request; resume serves again', async () => {
  const engine = new FakeEngine(() => Array.from({ length: 100 }, () => 'z'), 5);
  const { service, statuses } = setup(engine);
  const running = service.ask({ question: 'q' });
  await sleep(30);
  service.pause({ paused: true });
  const r = await running;
  assert.equal(r.stopReason, 'cancelled');
  await assert.rejects(service.complete(completeParams('a')), (e: { code?: number }) => e.code === ErrorCode.Paused);
  assert.equal(statuses.at(-1)!.state, 'paused');
  service.pause({ paused: false });
  engine.script = () => ['fine'];
  assert.equal((await service.complete(completeParams('a'))).text, 'fine');
});

test('status figures: engine figures only when the engine reports them; speed from real timings', async () => {
  const engine = new FakeEngine(() => ['a', 'b', 'c', 'd']);
  const { service, statuses } = setup(engine);
  await service.complete(completeParams('x'));
  await sleep(5);
  let f = statuses.at(-1)!.figures;
  assert.equal(f.deviceBytes, undefined);
  assert.equal(f.prefetchHitRate, undefined);
  assert.equal(f.compressionRatio, undefined);
  assert.equal(f.weightBytes, 1 << 20);
  assert.equal(f.kvTokens, engine.cached.length);
  assert.equal(f.computedKvBytes, engine.cached.length * 2 * 1 * 4 * 2 * 2);
  assert.equal(f.tokensPerSecond, 400, '4 tokens in 10 ms');
  engine.engineMetrics = { deviceBytes: 123, 'prefetch.hitRate': 0.9, compressionRatio: 5.2 };
  await service.complete(completeParams('xy'));
  await sleep(5);
  f = statuses.at(-1)!.figures;
  assert.equal(f.deviceBytes, 123);
  assert.equal(f.prefetchHitRate, 0.9);
  assert.equal(f.compressionRatio, 5.2);
  assert.equal(f.hostKvBytes, undefined);
  assert.deepEqual(f.engine, { deviceBytes: 123, 'prefetch.hitRate': 0.9, compressionRatio: 5.2 });
});

test('changing the model settings reopens the engine before the next request', async () => {
  const { service, engine, opened } = setup();
  await service.complete(completeParams('a'));
  const r = service.configure({ ...CONFIG, kvPolicy: 'full' });
  assert.equal(r.reopen, true);
  await service.complete(completeParams('b'));
  assert.equal(opened(), 2);
  assert.equal(engine.closed, true);
});

test('backend request: cuda is refused before loading where the probe already says why; the line names the decoder and the reason', async () => {
  const { checkBackendRequest } = await import('../../server/src/lsp/engine');
  const { describeBackend } = await import('../../server/src/engine/native');
  const none = { available: false, deviceCount: 0, driverVersion: 0, name: '', totalBytes: 0, reason: 'no NVIDIA driver (libcuda.so.1 not found)', backendBuilt: true };
  const h100 = { available: true, deviceCount: 1, driverVersion: 13000, name: 'NVIDIA H100 80GB HBM3', totalBytes: 80 * 2 ** 30, reason: '', backendBuilt: true };
  assert.doesNotThrow(() => checkBackendRequest('auto', none));
  assert.doesNotThrow(() => checkBackendRequest('cpu', none));
  assert.doesNotThrow(() => checkBackendRequest('cuda', h100));
  assert.throws(() => checkBackendRequest('cuda', none), (e: Error & { hint?: string }) => /cannot run on CUDA here — CUDA: no NVIDIA driver/.test(e.message) && /'auto'/.test(e.hint ?? ''));
  assert.throws(() => checkBackendRequest('cuda', { ...h100, backendBuilt: false }), /built without the CUDA backend/);
  assert.equal(describeBackend({ name: 'cuda', device: 'NVIDIA H100 80GB HBM3', reason: 'auto: a CUDA device answered' }), 'cuda (NVIDIA H100 80GB HBM3) — auto: a CUDA device answered');
  assert.equal(describeBackend({ name: 'cpu', device: 'avx2', reason: 'CPU requested' }), 'cpu (avx2) — CPU requested');
});

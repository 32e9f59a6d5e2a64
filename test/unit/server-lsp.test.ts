// The real language server (server/src/server.ts, bundled fresh by esbuild)
// over stdio with the real engine and a small model: configure, context,
// index, completion, a streamed question, cancellation, and a clear error for
// bad input. Skips (saying why) when the native addon or the model is missing.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { CancellationTokenSource, createProtocolConnection, StreamMessageReader, StreamMessageWriter, type ProtocolConnection } from 'vscode-languageserver-protocol/node';
import { cacheDir } from '../../server/src/models/registry';
import { Ask, AskPartialType, Complete, Configure, ErrorCode, GetStatus, Index, SetContext, StatusNotification, type ServerStatus } from '../../server/src/protocol';

const root = join(__dirname, '..', '..');
const addon = join(root, 'native', 'build', 'specode.node');
const modelCandidates = [process.env.SPECODE_TEST_SMALL_MODEL, join(cacheDir(), 'models', 'smollm2-135m.gguf'), '/tmp/models/smollm2-135m-q4_1.gguf'].filter(Boolean) as string[];
const model = modelCandidates.find((p) => existsSync(p));
const skip = !existsSync(addon) ? 'the native addon is not built (node scripts/build.mjs --native-only)' : !model ? 'smollm2-135m is not fetched' : false;

/** Bundles the server like scripts/build.mjs does, into a temp folder (never a stale dist/). */
async function bundleServer(): Promise<{ file: string; cleanup(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'specode-server-'));
  const esbuild = await import('esbuild');
  const file = join(dir, 'server.js');
  await esbuild.build({ entryPoints: [join(root, 'server/src/server.ts')], outfile: file, bundle: true, platform: 'node', target: 'node20', format: 'cjs', logLevel: 'error' });
  return { file, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function fixtureFiles() {
  const dir = join(root, 'test', 'fixtures', 'workspace');
  const out: { path: string; text: string; mtimeMs: number }[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const abs = join(d, name);
      if (statSync(abs).isDirectory()) walk(abs);
      else out.push({ path: relative(dir, abs), text: readFileSync(abs, 'utf8'), mtimeMs: statSync(abs).mtimeMs });
    }
  };
  walk(dir);
  return out;
}

async function start(serverJs: string): Promise<{ conn: ProtocolConnection; proc: ChildProcess; statuses: ServerStatus[]; stderr: () => string }> {
  const proc = spawn(process.execPath, [serverJs, '--stdio'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, SPECODE_ADDON: addon, SPECODE_THREADS: '2' } });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
  const statuses: ServerStatus[] = [];
  conn.onNotification(StatusNotification, (s) => statuses.push(s));
  conn.onNotification('window/logMessage', () => undefined);
  conn.listen();
  await conn.sendRequest('initialize', { processId: process.pid, rootUri: null, capabilities: {} });
  await conn.sendNotification('initialized', {});
  return { conn, proc, statuses, stderr: () => err };
}

test('real server over stdio: index, complete, ask (streamed, cited), cancel, bad input', { skip, timeout: 240_000 }, async () => {
  const bundle = await bundleServer();
  const { conn, proc, statuses, stderr } = await start(bundle.file);
  try {
    await conn.sendRequest(Configure, { model: model!, backend: 'cpu', deviceBudgetMiB: 0, contextTokens: 2048, kvPolicy: 'specache', kvBits: 2, topK: 64 });
    const files = fixtureFiles();
    assert.deepEqual(await conn.sendRequest(SetContext, { repoName: 'harbor', files }), { files: files.length, bytes: files.reduce((n, f) => n + f.text.length, 0) });

    const ix = await conn.sendRequest(Index, {});
    assert.equal(ix.cancelled, false);
    assert.ok(ix.tokens > 100, `indexed ${ix.tokens} tokens`);

    const c1 = await conn.sendRequest(Complete, { path: 'src/util/math.ts', languageId: 'typescript', prefix: '// Small numeric helpers.\n\nexport function cube(x: number): number {\n  return', suffix: '\n}\n' });
    assert.ok(c1.reusedTokens > 0, 'the indexed repo prefix was reused');
    assert.ok(c1.promptTokens > c1.reusedTokens);
    assert.ok(!c1.text.includes('\n}'), `completion stays inside the block: ${JSON.stringify(c1.text)}`);

    const deltas: string[] = [];
    conn.onProgress(AskPartialType, 'q1', (p) => deltas.push(p.delta));
    const a = await conn.sendRequest(Ask, { question: 'Which port does the ledger reconciler listen on?', partialResultToken: 'q1', maxTokens: 48 });
    assert.ok(a.text.length > 0);
    assert.equal(deltas.join(''), a.text, 'the streamed pieces make up the answer');
    assert.ok(deltas.length > 1, 'streamed in several pieces');
    assert.ok(a.citations.length >= 1, 'at least one citation');
    // specache's attention read-out points at the file that holds the answer.
    assert.ok(
      a.citations.some((c) => c.path === 'src/services/billing/internal/ledger/constants.ts' && c.how === 'attention'),
      `cited by attention: ${JSON.stringify(a.citations)}`,
    );

    // Cancel a long question as soon as its answer starts streaming: the partial answer comes back.
    const cts = new CancellationTokenSource();
    conn.onProgress(AskPartialType, 'q2', () => cts.cancel());
    const long = conn.sendRequest(Ask, { question: 'Count from 1 to 400, one number per line.', partialResultToken: 'q2', maxTokens: 400 }, cts.token);
    const r = await long;
    assert.equal(r.stopReason, 'cancelled');
    assert.ok(r.generatedTokens < 400);

    await assert.rejects(conn.sendRequest(Complete, { path: 42 } as never), (e: { code?: number; message?: string }) => e.code === ErrorCode.InvalidParams && /'path'/.test(e.message!));
    const status = await conn.sendRequest(GetStatus);
    assert.equal(status.state, 'ready');
    assert.ok(status.figures.tokensPerSecond! > 0);
    assert.ok(status.figures.kvTokens! > 0);
    assert.equal(status.pid, proc.pid);
    assert.ok(statuses.some((s) => s.state === 'loading') && statuses.some((s) => s.state === 'indexing'));
    assert.ok(status.figures.engine!.deviceLowbitBytes > 0, 'specache keeps a low-bit copy');

    // Switching the KV policy reopens the engine inside the same server process: no restart.
    for (const kvPolicy of ['full', 'streamingllm'] as const) {
      const re = await conn.sendRequest(Configure, { model: model!, backend: 'cpu', deviceBudgetMiB: 0, contextTokens: 2048, kvPolicy, kvBits: 2, topK: 64 });
      assert.equal(re.reopen, true, `switching to ${kvPolicy} reopens the engine`);
      const c = await conn.sendRequest(Complete, { path: 'src/util/math.ts', languageId: 'typescript', prefix: 'export function square(x: number): number {\n  return', suffix: '\n}\n' });
      assert.ok(c.promptTokens > 100, `${kvPolicy}: the completion ran over the repo context`);
      const s = await conn.sendRequest(GetStatus);
      assert.equal(s.pid, proc.pid, 'the same server process');
      assert.equal(s.kvPolicy, kvPolicy);
      assert.equal(s.state, 'ready');
      assert.equal(s.figures.engine!.deviceLowbitBytes, 0, `${kvPolicy} keeps no low-bit copy`);
      if (kvPolicy === 'full') assert.ok(s.figures.engine!.deviceKvBytes >= s.figures.engine!.fp16KvBytes, 'full compresses nothing');
    }
  } catch (e) {
    console.error(stderr());
    throw e;
  } finally {
    conn.dispose();
    proc.kill();
    bundle.cleanup();
  }
});

// `specode bench editor`: the pure parts (percentiles, keystroke schedule,
// storm accounting, the typing edits, the client-like context collection) and
// the scheduler counters the storm reads. No model, no server.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  collectFolderContext,
  startServer,
  stopServer,
  EditorDoc,
  keystrokeOffsets,
  lineEnd,
  outcomeOf,
  parseVmRss,
  percentile,
  StormTally,
  stormReport,
  timedEdit,
  EditPlan,
  workspacePathOf,
  CLIENT_PREFIX_CHARS,
  CLIENT_SUFFIX_CHARS,
  EDIT_WINDOW_LINES,
} from '../../server/src/bench/editor';
import { median } from '../../server/src/bench/common';
import { Scheduler } from '../../server/src/lsp/scheduler';
import { Complete, ErrorCode, GetSchedulerStats, parseSchedulerStatsParams, ParamsError, type SchedulerStats } from '../../server/src/protocol';

test('percentile: linear interpolation between ranks, p50 is the median', () => {
  const xs = Array.from({ length: 20 }, (_, i) => 20 - i); // 20..1, unsorted on purpose
  assert.equal(percentile(xs, 50), 10.5);
  assert.equal(percentile(xs, 50), median(xs));
  assert.ok(Math.abs(percentile(xs, 95) - 19.05) < 1e-9);
  assert.equal(percentile(xs, 0), 1);
  assert.equal(percentile(xs, 100), 20);
  assert.equal(xs[0], 20, 'the input is not sorted in place');
  assert.equal(percentile([7], 95), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
  assert.equal(percentile([100, 200, 300], 50), 200);
  assert.throws(() => percentile([1], 101), RangeError);
});

test('keystroke schedule: 200 keystrokes in 10 s are 50 ms apart', () => {
  const t = keystrokeOffsets(200, 10_000);
  assert.equal(t.length, 200);
  assert.equal(t[0], 0);
  assert.equal(t[1], 50);
  assert.equal(t[199], 9950);
  assert.deepEqual(keystrokeOffsets(0, 1000), []);
});

test('outcomes from error codes', () => {
  assert.equal(outcomeOf({ code: ErrorCode.RequestCancelled }), 'cancelled');
  assert.equal(outcomeOf({ code: ErrorCode.Superseded }), 'superseded');
  assert.equal(outcomeOf({ code: ErrorCode.EngineFailed }), 'error');
  assert.equal(outcomeOf(new Error('x')), 'error');
  assert.equal(outcomeOf(undefined), 'error');
});

test('storm tally: outstanding peak, outcomes, drain and the last request', () => {
  const t = new StormTally();
  const a = t.send(0);
  const b = t.send(50);
  t.settle(a, 0, 60, 'cancelled');
  const c = t.send(100);
  assert.equal(t.maxOutstanding, 2);
  t.settle(b, 50, 110, 'superseded');
  t.settle(c, 100, 400, 'answered');
  assert.equal(t.outstanding, 0);
  assert.deepEqual(t.outcomes, { answered: 1, cancelled: 1, superseded: 1, error: 0 });
  assert.equal(t.drainMs, 300);
  assert.deepEqual(t.lastRequest, { ms: 300, outcome: 'answered' });
  assert.throws(() => t.settle(c, 100, 500, 'answered'), /without a matching send/);

  const u = new StormTally();
  const x = u.send(0);
  u.settle(x, 0, 5, 'error', 'boom');
  assert.deepEqual(u.errors, ['boom']);
  assert.equal(new StormTally().drainMs, undefined);
});

test('storm report: server peaks and job counts from the counters, RSS growth', () => {
  const stats = (o: Partial<SchedulerStats>): SchedulerStats => ({
    running: 0, waiting: 0, peakRunning: 0, peakWaiting: 0, peakPending: 0,
    submitted: 0, finished: 0, superseded: 0, cancelled: 0, failed: 0, rssBytes: 0, heapUsedBytes: 0, ...o,
  });
  const t = new StormTally();
  for (let i = 0; i < 3; i++) t.send(i * 50);
  t.settle(0, 0, 70, 'cancelled');
  t.settle(1, 50, 120, 'superseded');
  t.settle(2, 100, 900, 'answered');
  const before = stats({ submitted: 10, finished: 10, heapUsedBytes: 5 });
  const after = stats({ submitted: 13, finished: 11, superseded: 1, cancelled: 1, peakRunning: 1, peakWaiting: 1, peakPending: 2, heapUsedBytes: 6 });
  const r = stormReport(3, 0.15, t, before, after, 100 << 20, 101 << 20);
  assert.equal(r.keystrokes, 3);
  assert.equal(r.max_running, 1);
  assert.equal(r.max_waiting, 1);
  assert.equal(r.max_pending, 2);
  assert.equal(r.rss_before, 100 << 20);
  assert.equal(r.rss_growth_bytes, 1 << 20);
  assert.deepEqual(r.server_jobs, { submitted: 3, finished: 1, superseded: 1, cancelled: 1, failed: 0 });
  assert.equal(r.duration_ms, 100);
  assert.equal(r.drain_ms, 800);
  assert.equal(r.last_request_ms, 800);
  assert.equal(r.last_request_outcome, 'answered');
  assert.equal(r.requests_sent, 3);
  assert.deepEqual([r.answered, r.cancelled, r.superseded, r.errors], [1, 1, 1, 0]);
  const none = stormReport(3, 1, new StormTally(), undefined, undefined, undefined, undefined);
  assert.equal(none.max_running, null);
  assert.equal(none.rss_growth_bytes, null);
  assert.equal(none.server_jobs, null);
});

test('VmRSS from /proc/<pid>/status', () => {
  assert.equal(parseVmRss('Name:\tnode\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nVmData:\t 1 kB\n'), 12345 * 1024);
  assert.equal(parseVmRss('Name:\tnode\n'), undefined);
});

test('the scheduler counts a completion storm: one job running at most, the rest superseded', async () => {
  const s = new Scheduler();
  let active = 0;
  let maxActive = 0;
  const job = async (signal: AbortSignal) => {
    active++;
    maxActive = Math.max(maxActive, active);
    try {
      for (let i = 0; i < 20 && !signal.aborted; i++) await new Promise((r) => setTimeout(r, 2));
      return 'done';
    } finally {
      active--;
    }
  };
  const results: Promise<string>[] = [];
  for (let k = 0; k < 30; k++) {
    results.push(s.submit('complete', job).result.catch((e: Error) => e.name));
    await new Promise((r) => setTimeout(r, 1));
  }
  const settled = await Promise.all(results);
  const c = s.counters();
  assert.equal(maxActive, 1);
  assert.equal(c.peakRunning, 1);
  assert.ok(c.peakWaiting <= 1, `peak waiting ${c.peakWaiting}`);
  assert.ok(c.peakPending <= 2);
  assert.equal(c.submitted, 30);
  assert.equal(c.finished + c.superseded + c.cancelled + c.failed, 30);
  assert.equal(settled[29], 'done', 'the newest completion finishes');
  assert.equal(c.finished, settled.filter((x) => x === 'done').length);
  assert.equal(c.superseded, settled.filter((x) => x === 'SupersededError').length);
  assert.equal(c.running, 0);
  assert.equal(c.waiting, 0);

  // Cancelling and failures are counted too; resetPeaks starts over from now.
  s.resetPeaks();
  assert.equal(s.counters().peakRunning, 0);
  const throwsWhenAborted = async (signal: AbortSignal) => {
    await new Promise((r) => setTimeout(r, 5));
    if (signal.aborted) throw new Error('aborted');
    return 'done';
  };
  const running = s.submit('ask', throwsWhenAborted); // starts at once
  const waiting = s.submit('index', throwsWhenAborted); // waits behind it
  const outcomes = Promise.allSettled([running.result, waiting.result]);
  waiting.cancel();
  running.cancel();
  assert.deepEqual((await outcomes).map((o) => o.status), ['rejected', 'rejected']);
  await assert.rejects(s.submit('index', async () => Promise.reject(new Error('bad'))).result);
  const d = s.counters();
  assert.equal(d.cancelled, c.cancelled + 2);
  assert.equal(d.failed, c.failed + 1);
  assert.equal(d.peakRunning, 1);
  assert.equal(d.peakWaiting, 1);
});

test('specode/schedulerStats params', () => {
  assert.deepEqual(parseSchedulerStatsParams(undefined), {});
  assert.deepEqual(parseSchedulerStatsParams({ resetPeaks: true }), { resetPeaks: true });
  assert.throws(() => parseSchedulerStatsParams({ resetPeaks: 'yes' }), (e: unknown) => e instanceof ParamsError && /'resetPeaks' must be true or false/.test((e as Error).message));
});

test('editor doc: typing moves the cursor; the windows are cut like the client does', () => {
  const d = new EditorDoc('abc\ndef\n', 3);
  d.type('XY');
  assert.equal(d.text, 'abcXY\ndef\n');
  assert.equal(d.cursor, 5);
  assert.deepEqual(d.windows(), { prefix: 'abcXY', suffix: '\ndef\n' });
  const big = new EditorDoc('p'.repeat(CLIENT_PREFIX_CHARS + 10) + 's'.repeat(CLIENT_SUFFIX_CHARS + 10), CLIENT_PREFIX_CHARS + 10);
  const w = big.windows();
  assert.equal(w.prefix.length, CLIENT_PREFIX_CHARS);
  assert.equal(w.suffix.length, CLIENT_SUFFIX_CHARS);
  assert.throws(() => d.moveTo(99), RangeError);
});

test('timed edits: a newline and a few characters at the end of one of the last lines, varied', () => {
  const text = Array.from({ length: 100 }, (_, i) => `  line${i};`).join('\n') + '\n';
  assert.equal(lineEnd(text, 0), 8);
  assert.equal(lineEnd(text, 99), text.length - 1);
  const snippets = ['const value = compute();', 'return x + y;'];
  const seen = new Set<number>();
  let doc = text;
  for (let i = 0; i < 30; i++) {
    const e = timedEdit(doc, i, snippets);
    const lineOfEdit = doc.slice(0, e.at).split('\n').length - 1;
    const total = doc.replace(/\n$/, '').split('\n').length;
    assert.ok(lineOfEdit >= total - EDIT_WINDOW_LINES, `edit ${i} on line ${lineOfEdit} of ${total}`);
    assert.ok(e.insert.startsWith('\n  '), 'keeps the indentation');
    const typed = e.insert.trim();
    assert.ok(typed.length >= 3 && typed.length <= 10, `typed ${JSON.stringify(typed)}`);
    assert.ok(snippets.some((s) => s.startsWith(typed)));
    seen.add(lineOfEdit);
    doc = doc.slice(0, e.at) + e.insert + doc.slice(e.at);
  }
  assert.ok(seen.size > 5, 'cursor positions vary');
});

test('workspace paths: below node_modules, never a folder the client skips', () => {
  assert.equal(workspacePathOf(join('/p', 'node_modules', 'ignore', 'index.js')), 'ignore/index.js');
  assert.equal(workspacePathOf(join('/p', 'node_modules', 'a', 'node_modules', 'b', 'lib', 'x.ts')), 'b/lib/x.ts');
  assert.equal(workspacePathOf(join('/p', 'node_modules', 'esbuild', 'dist', 'x.js')), undefined);
  assert.equal(workspacePathOf(join('/p', 'node_modules', 'x', 'package-lock.json')), undefined);
});

test('folder context like the client: filters, .gitignore, least-changing first', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-editor-test-'));
  try {
    const put = (rel: string, body: string | Buffer, mtimeS: number) => {
      const abs = join(dir, rel);
      mkdirSync(join(abs, '..'), { recursive: true });
      writeFileSync(abs, body);
      utimesSync(abs, mtimeS, mtimeS);
    };
    put('.gitignore', 'secret/\n', 1000);
    put('src/new.ts', 'export const n = 1;\n', 3000);
    put('src/old.ts', 'export const o = 0;\n', 2000);
    put('secret/key.ts', 'no\n', 1500);
    put('node_modules/x/index.js', 'no\n', 1500);
    put('img.png', Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1]), 1500);
    put('bad.txt', Buffer.from([0xff, 0xfe, 0x41]), 1500);
    put('empty.ts', '', 1500);
    const ctx = collectFolderContext(dir, 1000);
    assert.equal(ctx.repoName, dir.split(/[\\/]/).pop());
    assert.deepEqual(ctx.files.map((f) => f.path), ['.gitignore', 'src/old.ts', 'src/new.ts']);
    // A small budget keeps the most relevant files (extension/src/context_select.ts): with no
    // file open, the newest; sent least-changing first.
    assert.deepEqual(collectFolderContext(dir, 18).files.map((f) => f.path), ['.gitignore', 'src/new.ts']);
    // With src/old.ts open, it wins.
    assert.deepEqual(collectFolderContext(dir, 18, ['src/old.ts']).files.map((f) => f.path), ['.gitignore', 'src/old.ts']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the real server answers specode/schedulerStats over IPC and stdio, counting a failed job (no model needed)', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-editor-server-'));
  try {
    const esbuild = await import('esbuild');
    const serverJs = join(dir, 'server.js');
    const root = join(__dirname, '..', '..');
    await esbuild.build({ entryPoints: [join(root, 'server/src/server.ts')], outfile: serverJs, bundle: true, platform: 'node', target: 'node20', format: 'cjs', logLevel: 'error' });
    for (const transport of ['ipc', 'stdio'] as const) {
      const server = await startServer(serverJs, transport, 1, dir);
      try {
        const s0 = await server.conn.sendRequest(GetSchedulerStats, { resetPeaks: true });
        assert.equal(s0.running, 0);
        assert.equal(s0.submitted, 0);
        assert.ok(s0.rssBytes > 0 && s0.heapUsedBytes > 0);
        // No specode/configure yet: the job fails with a clear error, and is counted.
        await assert.rejects(server.conn.sendRequest(Complete, { path: 'a.ts', languageId: 'typescript', prefix: 'x', suffix: '' }), (e: { code?: number }) => e.code === ErrorCode.ModelUnavailable);
        const s1 = await server.conn.sendRequest(GetSchedulerStats, {});
        assert.deepEqual([s1.submitted, s1.failed, s1.peakRunning, s1.running], [1, 1, 1, 0], transport);
        await assert.rejects(server.conn.sendRequest(GetSchedulerStats, { resetPeaks: 1 } as never), (e: { code?: number }) => e.code === ErrorCode.InvalidParams);
      } finally {
        await stopServer(server);
      }
      assert.ok(server.proc.exitCode !== null || server.proc.signalCode !== null, `${transport}: the server exited`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('edit plan: a jump, then typing on along the same code line, then the next jump', () => {
  const text = Array.from({ length: 60 }, (_, i) => `  line${i};`).join('\n') + '\n';
  const doc = {
    text,
    cursor: 0,
    moveTo(at: number) {
      this.cursor = at;
    },
    type(s: string) {
      this.text = this.text.slice(0, this.cursor) + s + this.text.slice(this.cursor);
      this.cursor += s.length;
    },
  };
  const plan = new EditPlan(['const value = compute(items, 42);', 'return x + y + z;']);
  const kinds: string[] = [];
  for (let i = 0; i < 9; i++) {
    const lineBefore = doc.text.slice(0, doc.cursor).split('\n').length;
    const kind = plan.apply(doc, i);
    kinds.push(kind);
    if (kind === 'typing') assert.equal(doc.text.slice(0, doc.cursor).split('\n').length, lineBefore, 'typing stays on the line');
  }
  assert.deepEqual(kinds.slice(0, 6), ['jump', 'typing', 'typing', 'jump', 'typing', 'typing']);
  const line = doc.text.slice(doc.text.lastIndexOf('\n', doc.cursor - 1) + 1, doc.cursor).trim();
  assert.ok(['const value = compute(items, 42);', 'return x + y + z;'].some((s) => s.startsWith(line)), `typed a real line's start: ${line}`);
});

// One engine job at a time; a new completion replaces the running one; nothing piles up.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CancelledError, Scheduler, SupersededError } from '../../server/src/lsp/scheduler';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A job that runs `steps` steps of 5 ms, stopping early when aborted; records concurrency. */
function job(trace: { active: number; max: number; log: string[] }, name: string, steps = 4) {
  return async (signal: AbortSignal) => {
    trace.active++;
    trace.max = Math.max(trace.max, trace.active);
    trace.log.push(`start ${name}`);
    try {
      for (let i = 0; i < steps; i++) {
        if (signal.aborted) {
          trace.log.push(`abort ${name}`);
          return `${name} aborted`;
        }
        await sleep(5);
      }
      trace.log.push(`end ${name}`);
      return name;
    } finally {
      trace.active--;
    }
  };
}

test('jobs run one at a time in arrival order', async () => {
  const t = { active: 0, max: 0, log: [] as string[] };
  const s = new Scheduler();
  const results = await Promise.all([s.submit('index', job(t, 'index')).result, s.submit('ask', job(t, 'ask')).result, s.submit('admin', job(t, 'admin')).result]);
  assert.deepEqual(results, ['index', 'ask', 'admin']);
  assert.equal(t.max, 1);
  assert.deepEqual(t.log, ['start index', 'end index', 'start ask', 'end ask', 'start admin', 'end admin']);
});

test('a new completion aborts the running completion and drops waiting ones', async () => {
  const t = { active: 0, max: 0, log: [] as string[] };
  const s = new Scheduler();
  const ask = s.submit('ask', job(t, 'ask', 2));
  const c1 = s.submit('complete', job(t, 'c1', 50));
  const c2 = s.submit('complete', job(t, 'c2', 50));
  await assert.rejects(c1.result, SupersededError, 'c1 was waiting behind ask and is dropped');
  await ask.result;
  await sleep(12);
  const c3 = s.submit('complete', job(t, 'c3', 2));
  await assert.rejects(c2.result, SupersededError);
  assert.equal(await c3.result, 'c3');
  assert.equal(t.max, 1);
  assert.ok(t.log.includes('abort c2'), 'c2 was running and stopped');
  assert.ok(!t.log.includes('start c1'), 'c1 never ran');
  assert.equal(s.queued, 0);
});

test('cancel: a waiting job never starts, a running one sees its signal', async () => {
  const t = { active: 0, max: 0, log: [] as string[] };
  const s = new Scheduler();
  const a = s.submit('ask', job(t, 'a', 20));
  const b = s.submit('index', job(t, 'b'));
  b.cancel();
  await assert.rejects(b.result, CancelledError);
  await sleep(7);
  a.cancel();
  assert.equal(await a.result, 'a aborted');
  assert.ok(!t.log.includes('start b'));
});

test('a job that throws does not stop the queue', async () => {
  const s = new Scheduler();
  const bad = s.submit('ask', async () => {
    throw new Error('boom');
  });
  const good = s.submit('ask', async () => 'fine');
  await assert.rejects(bad.result, /boom/);
  assert.equal(await good.result, 'fine');
  assert.equal(s.busy, undefined);
});

test('cancelAll empties the queue and stops the running job', async () => {
  const t = { active: 0, max: 0, log: [] as string[] };
  const s = new Scheduler();
  const a = s.submit('index', job(t, 'a', 20));
  const b = s.submit('ask', job(t, 'b'));
  const bRejected = assert.rejects(b.result, CancelledError);
  await sleep(3);
  s.cancelAll();
  assert.equal(await a.result, 'a aborted');
  await bRejected;
});

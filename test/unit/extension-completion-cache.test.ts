// Prefix cache and in-flight reuse: typing along a proposed completion is answered without the model.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InFlight, PrefixCache, remainder, suffixHead, typedSince, type CompletionKey } from '../../extension/src/completion_cache';

const key = (prefix: string, doc = 'file:///a.ts', suffix = '\n}\n'): CompletionKey => ({ doc, prefix, suffixHead: suffixHead(suffix) });

test('remainder: the rest of the completion after what was typed', () => {
  assert.equal(remainder('return a + b;', 'ret'), 'urn a + b;');
  assert.equal(remainder('return a + b;', ''), 'return a + b;');
  assert.equal(remainder('return a + b;', 'rex'), undefined);
  assert.equal(remainder('return', 'return'), undefined, 'fully typed: nothing left to propose');
});

test('typedSince needs the same document, the same text after the cursor, and an extended prefix', () => {
  assert.equal(typedSince(key('f(x) {\n  '), key('f(x) {\n  re')), 're');
  assert.equal(typedSince(key('f(x) {\n  '), key('f(x) {\n  re', 'file:///b.ts')), undefined);
  assert.equal(typedSince(key('f(x) {\n  '), key('f(x) {\n  re', undefined, '\n  other();\n')), undefined);
  assert.equal(typedSince(key('f(x) {\n  re'), key('f(x) {\n  ')), undefined, 'backspace');
  assert.equal(typedSince(key('abc'), key('abX')), undefined);
});

test('PrefixCache answers while the user types along a completion, and not after they diverge', () => {
  const c = new PrefixCache();
  c.put(key('function add(a, b) {\n  '), 'return a + b;\n}');
  assert.equal(c.get(key('function add(a, b) {\n  ')), 'return a + b;\n}');
  assert.equal(c.get(key('function add(a, b) {\n  retu')), 'rn a + b;\n}');
  assert.equal(c.get(key('function add(a, b) {\n  return a - ')), undefined);
  assert.equal(c.get(key('function add(a, b) {\n  ', 'file:///other.ts')), undefined);
});

test('PrefixCache prefers the newest entry and stays bounded', () => {
  const c = new PrefixCache(3);
  c.put(key('x = '), 'old');
  c.put(key('x = '), 'new');
  assert.equal(c.get(key('x = ')), 'new');
  for (let i = 0; i < 10; i++) c.put(key(`y${i} = `), String(i));
  assert.equal(c.size, 3);
  assert.equal(c.get(key('x = ')), undefined);
  c.dropDocument('file:///a.ts');
  assert.equal(c.size, 0);
});

function deferred<T>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

test('InFlight: a keystroke that matches the running request reuses it', async () => {
  const f = new InFlight();
  const d = deferred<string | undefined>();
  let cancelled = 0;
  f.start({ key: key('const total = '), result: d.promise, cancel: () => cancelled++ });
  const claim = f.claim(key('const total = it'));
  assert.ok(claim, 'claimed');
  d.resolve('items.length;');
  assert.equal(await claim, 'ems.length;');
  assert.equal(cancelled, 0);
  assert.equal(f.reuseCount, 1);
});

test('InFlight: a keystroke that does not extend the prefix cancels the running request', () => {
  const f = new InFlight();
  let cancelled = 0;
  f.start({ key: key('const total = '), result: new Promise(() => undefined), cancel: () => cancelled++ });
  assert.equal(f.claim(key('const totals')), undefined);
  assert.equal(cancelled, 1);
  assert.equal(f.current, undefined);
});

test('InFlight: a claimed request whose answer disagrees with the typed text gives nothing (caller asks anew)', async () => {
  const f = new InFlight();
  const d = deferred<string | undefined>();
  f.start({ key: key('x = '), result: d.promise, cancel: () => undefined });
  const claim = f.claim(key('x = 4'));
  d.resolve('12;');
  assert.equal(await claim, undefined);
});

test('InFlight: starting a new request cancels the previous one', () => {
  const f = new InFlight();
  let cancelled = 0;
  f.start({ key: key('a'), result: new Promise(() => undefined), cancel: () => cancelled++ });
  f.start({ key: key('b'), result: new Promise(() => undefined), cancel: () => undefined });
  assert.equal(cancelled, 1);
});

test('InFlight: a claim answers from the first line while the typed text leaves some of it, else waits for the whole', async () => {
  const f = new InFlight();
  const first = deferred<string | undefined>();
  const whole = deferred<string | undefined>();
  f.start({ key: key('  const '), result: whole.promise, first: first.promise, cancel: () => undefined });
  const a = f.claim(key('  const to'));
  first.resolve('total = a + b;');
  assert.equal(await a, 'tal = a + b;', 'from the first line, before the whole completion');
  const b = f.claim(key('  const total = a + b;'));
  whole.resolve('total = a + b;\n  return total;');
  assert.equal(await b, '\n  return total;', 'the first line was typed: the rest comes from the whole');
});

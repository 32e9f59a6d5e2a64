// Adaptive debounce: the base wait while idle, longer while typing fast or when the server is slow, bounded.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AdaptiveDebounce } from '../../extension/src/debounce';

test('first keystroke waits the base delay', () => {
  const d = new AdaptiveDebounce({ baseMs: 120 });
  d.keystroke(0);
  assert.equal(d.delay(), 120);
});

test('fast typing lengthens the wait to just over the typing gap, bounded by maxFactor', () => {
  const d = new AdaptiveDebounce({ baseMs: 100 });
  for (let t = 0; t <= 1300; t += 130) d.keystroke(t);
  assert.equal(d.delay(), 169);
  const capped = new AdaptiveDebounce({ baseMs: 50, maxFactor: 1.5 });
  for (let t = 0; t <= 700; t += 70) capped.keystroke(t);
  assert.equal(capped.delay(), 75);
});

test('slow typing (pauses) keeps the base wait', () => {
  const d = new AdaptiveDebounce({ baseMs: 100 });
  for (let t = 0; t <= 10_000; t += 2000) d.keystroke(t);
  assert.equal(d.delay(), 100);
});

test('a slow server adds at most one base to the wait', () => {
  const d = new AdaptiveDebounce({ baseMs: 100 });
  d.latency(300);
  assert.equal(d.delay(), 130);
  for (let i = 0; i < 20; i++) d.latency(10_000);
  assert.equal(d.delay(), 200);
});

test('base 0 disables the wait', () => {
  const d = new AdaptiveDebounce({ baseMs: 0 });
  d.latency(1000);
  assert.equal(d.delay(), 0);
});

// Custom messages survive JSON round trips and bad input is refused with a message naming the field.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  Ask,
  Complete,
  parseAskParams,
  parseCompleteParams,
  parseFetchModelParams,
  parseIndexParams,
  parsePauseParams,
  parseServerConfig,
  parseSetContextParams,
  ParamsError,
  StatusNotification,
  type AskParams,
  type CompleteParams,
  type ServerConfig,
  type SetContextParams,
} from '../../server/src/protocol';

const roundTrip = <T>(x: T): unknown => JSON.parse(JSON.stringify(x));

test('method names are namespaced', () => {
  assert.equal(Complete.method, 'specode/complete');
  assert.equal(Ask.method, 'specode/ask');
  assert.equal(StatusNotification.method, 'specode/status');
});

test('params round-trip through JSON unchanged', () => {
  const config: ServerConfig = { model: 'smollm2-135m', backend: 'cpu', deviceBudgetMiB: 512, contextTokens: 4096, kvPolicy: 'specache', kvBits: 1, topK: 64 };
  assert.deepEqual(parseServerConfig(roundTrip(config)), config);
  const ctx: SetContextParams = { repoName: 'r', files: [{ path: 'a/b.ts', text: 'export const x = 1;\n', mtimeMs: 1700000000000.5 }] };
  assert.deepEqual(parseSetContextParams(roundTrip(ctx)), ctx);
  const complete: CompleteParams = { path: 'src/ü.ts', languageId: 'typescript', prefix: 'const a = "\u{1F600}', suffix: '";\n', maxTokens: 32, maxLines: 1 };
  assert.deepEqual(parseCompleteParams(roundTrip(complete)), complete);
  const bare: CompleteParams = { path: 'x.py', languageId: 'python', prefix: '', suffix: '' };
  assert.deepEqual(parseCompleteParams(roundTrip(bare)), bare);
  const ask: AskParams = { question: 'where is the port set?', partialResultToken: 'ask-1' };
  assert.deepEqual(parseAskParams(roundTrip(ask)), ask);
  assert.deepEqual(parseIndexParams(roundTrip({ workDoneToken: 't' })), { workDoneToken: 't' });
  assert.deepEqual(parseIndexParams(null), {});
  assert.deepEqual(parsePauseParams(roundTrip({ paused: true })), { paused: true });
  assert.deepEqual(parseFetchModelParams(roundTrip({ name: 'smollm2-135m' })), { name: 'smollm2-135m' });
});

test('bad params say which field and what was wrong', () => {
  const bad: [() => unknown, RegExp][] = [
    [() => parseCompleteParams(null), /specode\/complete: params must be an object, got null/],
    [() => parseCompleteParams({ path: 3, languageId: 'ts', prefix: '', suffix: '' }), /'path' must be a string, got number 3/],
    [() => parseCompleteParams({ path: '', languageId: 'ts', prefix: '', suffix: '' }), /'path' must not be empty/],
    [() => parseCompleteParams({ path: 'a', languageId: 'ts', prefix: '', suffix: '', maxTokens: 0 }), /'maxTokens' must be an integer in \[1, 4096\], got number 0/],
    [() => parseAskParams({ question: '   ' }), /'question' must not be empty/],
    [() => parseServerConfig({ model: 'm', backend: 'tpu', deviceBudgetMiB: 0, contextTokens: 4096, kvPolicy: 'full', kvBits: 2, topK: 64 }), /'backend' must be one of auto, cpu, cuda, got the string "tpu"/],
    [() => parseSetContextParams({ repoName: 'r', files: [{ path: 'a', text: 1, mtimeMs: 0 }] }), /files\[0\]: 'text' must be a string/],
    [() => parseSetContextParams({ repoName: 'r', files: {} }), /'files' must be an array, got an object/],
    [() => parsePauseParams({ paused: 'yes' }), /'paused' must be true or false/],
  ];
  for (const [f, re] of bad) {
    assert.throws(f, (e: unknown) => e instanceof ParamsError && re.test((e as Error).message), re.source);
  }
});

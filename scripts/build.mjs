#!/usr/bin/env node
// Builds the native engine (CMake) and bundles the TypeScript (esbuild).
// Nothing is downloaded: Node-API headers come from the node-api-headers package.
//   node scripts/build.mjs [--native-only] [--ts-only] [--debug]
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = new Set(process.argv.slice(2));
const require = createRequire(import.meta.url);

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error) throw new Error(`${cmd} could not start: ${r.error.message}. Is it installed?`);
  if (r.status !== 0) {
    console.error(`specode build: '${cmd} ${argv.join(' ')}' failed (exit ${r.status}).`);
    process.exit(r.status ?? 1);
  }
}

function hasCommand(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function buildNative() {
  if (!hasCommand('cmake')) {
    console.error('specode build: cmake is required to build the native engine (apt-get install cmake).');
    process.exit(1);
  }
  let napiInclude;
  try {
    napiInclude = require('node-api-headers').include_dir;
  } catch {
    console.error('specode build: the node-api-headers package is missing; run npm install first.');
    process.exit(1);
  }
  const buildDir = join(root, 'native', 'build');
  mkdirSync(buildDir, { recursive: true });
  const cuda = process.env.SPECODE_CUDA !== '0' && hasCommand('nvcc');
  const type = args.has('--debug') ? 'Debug' : 'Release';
  run('cmake', ['-S', 'native', '-B', buildDir, `-DCMAKE_BUILD_TYPE=${type}`,
    `-DNODE_API_INCLUDE=${napiInclude}`, `-DSPECODE_CUDA=${cuda ? 'ON' : 'OFF'}`,
    ...(cuda ? ['-DCMAKE_CUDA_COMPILER=' + spawnSync('sh', ['-c', 'command -v nvcc']).stdout.toString().trim()] : [])]);
  const jobs = String(Math.max(1, Number(process.env.SPECODE_BUILD_JOBS) || 2));
  run('cmake', ['--build', buildDir, '--parallel', jobs]);
}

async function buildTs() {
  const esbuild = await import('esbuild');
  const common = { bundle: true, platform: 'node', target: 'node20', format: 'cjs', sourcemap: true, logLevel: 'warning' };
  const entries = [
    { entryPoints: ['server/src/cli/main.ts'], outfile: 'dist/cli.js', banner: { js: '#!/usr/bin/env node' } },
  ];
  if (existsSync(join(root, 'server/src/server.ts'))) entries.push({ entryPoints: ['server/src/server.ts'], outfile: 'dist/server.js' });
  if (existsSync(join(root, 'extension/src/main.ts'))) entries.push({ entryPoints: ['extension/src/main.ts'], outfile: 'dist/extension.js', external: ['vscode'] });
  for (const e of entries) await esbuild.build({ ...common, absWorkingDir: root, ...e });
  // tree-sitter (WebAssembly) for the extension's declaration chunks: the runtime and the grammars used.
  mkdirSync(join(root, 'dist', 'wasm'), { recursive: true });
  for (const [from, name] of TREE_SITTER_WASM) copyFileSync(join(root, 'node_modules', from), join(root, 'dist', 'wasm', name));
}

const TREE_SITTER_WASM = [
  ['web-tree-sitter/tree-sitter.wasm', 'tree-sitter.wasm'],
  ['tree-sitter-wasms/out/tree-sitter-typescript.wasm', 'tree-sitter-typescript.wasm'],
  ['tree-sitter-wasms/out/tree-sitter-tsx.wasm', 'tree-sitter-tsx.wasm'],
  ['tree-sitter-wasms/out/tree-sitter-javascript.wasm', 'tree-sitter-javascript.wasm'],
  ['tree-sitter-wasms/out/tree-sitter-python.wasm', 'tree-sitter-python.wasm'],
];

if (!args.has('--ts-only')) buildNative();
if (!args.has('--native-only')) await buildTs();

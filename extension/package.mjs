#!/usr/bin/env node
// npm run package — build the bundles (and the native addon if missing), make
// specode-<version>.vsix with vsce, then check what went in: the bundles, the
// addon and the webview assets must be there; sources and node_modules not.
//   node extension/package.mjs [--out FILE] [--no-build]
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const outArg = args.indexOf('--out');
const out = resolve(root, outArg >= 0 ? args[outArg + 1] : `${pkg.name}-${pkg.version}.vsix`);
const require = createRequire(import.meta.url);

function run(cmd, argv) {
  const r = spawnSync(cmd, argv, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`package: '${cmd} ${argv.join(' ')}' failed (exit ${r.status ?? r.error?.message}).`);
    process.exit(1);
  }
}

if (!args.includes('--no-build')) {
  if (!existsSync(join(root, 'native/build/specode.node'))) run(process.execPath, ['scripts/build.mjs', '--native-only']);
  run(process.execPath, ['scripts/build.mjs', '--ts-only']);
}
for (const f of ['dist/extension.js', 'dist/server.js', 'native/build/specode.node']) {
  if (!existsSync(join(root, f))) {
    console.error(`package: ${f} is missing; run 'node scripts/build.mjs' first.`);
    process.exit(1);
  }
}

const vsce = join(dirname(require.resolve('@vscode/vsce/package.json')), 'vsce');
run(process.execPath, [vsce, 'package', '--no-dependencies', '--skip-license', '--allow-missing-repository', '--no-rewrite-relative-links', '--out', out]);

// Check the contents (a .vsix is a zip; list it with the repo's own zip reader through tsx? keep it dependency-free: use unzip -l when present).
const list = spawnSync('unzip', ['-Z1', out], { encoding: 'utf8' });
if (list.status !== 0) {
  console.warn('package: unzip is not installed; contents not checked.');
} else {
  const names = list.stdout.split('\n').filter(Boolean);
  const need = ['extension/package.json', 'extension/dist/extension.js', 'extension/dist/server.js', 'extension/native/build/specode.node', 'extension/media/panel.js', 'extension/media/icon.png', 'extension/dist/wasm/tree-sitter.wasm', 'extension/dist/wasm/tree-sitter-typescript.wasm', 'extension/dist/wasm/tree-sitter-python.wasm'];
  const missing = need.filter((n) => !names.includes(n));
  const unwanted = names.filter((n) => /(^|\/)(node_modules|src|test|native\/src|native\/build\/CMakeFiles)\//.test(n) || /\.ts$|\.map$/.test(n));
  if (missing.length || unwanted.length) {
    if (missing.length) console.error(`package: missing from the .vsix: ${missing.join(', ')}`);
    if (unwanted.length) console.error(`package: should not be in the .vsix: ${unwanted.slice(0, 10).join(', ')}${unwanted.length > 10 ? ' …' : ''}`);
    process.exit(1);
  }
  console.log(`package: ${out} (${(statSync(out).size / 1048576).toFixed(1)} MiB, ${names.length} files) — contents checked`);
}

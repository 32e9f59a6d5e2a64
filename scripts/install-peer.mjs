#!/usr/bin/env node
// Installs the llama.cpp peer (node-llama-cpp 3.21.1, CPU build for Linux x64)
// into bench/peer/node_modules from bench/peer/package-lock.json. It is kept
// out of the main package.json: the peer is only used by benchmarks and the
// tokenizer parity check. Idempotent: does nothing when the installed copy
// matches the lockfile (use --force to reinstall).
//
//   node scripts/install-peer.mjs [--force] [--quiet]
//
// Only the CPU x64 Linux binaries are installed: node-llama-cpp's optional
// platform packages (CUDA/Vulkan builds: hundreds of MB) are omitted with
// --omit=optional, and @node-llama-cpp/linux-x64 is a direct dependency.
// Install scripts are not run (--ignore-scripts): the prebuilt binary is used
// as is (getLlama({ build: 'never' })).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const peerDir = join(root, 'bench', 'peer');
const lockPath = join(peerDir, 'package-lock.json');
const marker = join(peerDir, 'node_modules', '.specode-peer-install');
const PINNED = '3.21.1';
const args = new Set(process.argv.slice(2));
const quiet = args.has('--quiet');
const log = (m) => { if (!quiet) console.log(`install-peer: ${m}`); };
const die = (m) => { console.error(`install-peer: ${m}`); process.exit(1); };

if (process.platform !== 'linux' || process.arch !== 'x64') {
  die(`the peer is pinned to the CPU build for Linux x64; this machine is ${process.platform}-${process.arch}. ` +
    'Edit bench/peer/package.json (the @node-llama-cpp/<platform> dependency) to use another platform.');
}
if (!existsSync(lockPath)) die(`missing ${lockPath}`);

const lockHash = createHash('sha256').update(readFileSync(lockPath)).digest('hex');

function installedVersion(pkg) {
  try {
    return JSON.parse(readFileSync(join(peerDir, 'node_modules', pkg, 'package.json'), 'utf8')).version;
  } catch {
    return undefined;
  }
}

function upToDate() {
  if (!existsSync(marker)) return false;
  if (readFileSync(marker, 'utf8').trim() !== lockHash) return false;
  return installedVersion('node-llama-cpp') === PINNED && installedVersion('@node-llama-cpp/linux-x64') === PINNED;
}

if (!args.has('--force') && upToDate()) {
  log(`node-llama-cpp ${PINNED} (linux-x64 CPU) already installed in bench/peer/node_modules; nothing to do`);
  process.exit(0);
}

const npmArgs = ['ci', '--prefix', peerDir, '--omit=optional', '--ignore-scripts', '--no-audit', '--no-fund'];
log(`running: npm ${npmArgs.join(' ')}`);
const r = spawnSync('npm', npmArgs, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], shell: process.platform === 'win32' });
if (r.error) die(`could not run npm: ${r.error.message}`);
const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
if (r.status !== 0) {
  if (/ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ECONNRESET|network|getaddrinfo|offline/i.test(output)) {
    die('cannot reach the npm registry (offline?). The peer needs a one-time download of node-llama-cpp ' +
      `${PINNED} (~80 MB). Connect to the network (or configure an npm mirror) and run again.\n` +
      output.split('\n').filter((l) => /ERR|error/i.test(l)).slice(0, 6).join('\n'));
  }
  die(`npm ci failed (exit ${r.status}):\n${output.trim()}`);
}
if (!quiet) process.stdout.write(output.split('\n').filter((l) => l.trim() && !/Unknown user config/.test(l)).map((l) => `  ${l}\n`).join(''));

const v = installedVersion('node-llama-cpp');
const b = installedVersion('@node-llama-cpp/linux-x64');
if (v !== PINNED || b !== PINNED) die(`after install: node-llama-cpp ${v ?? 'missing'}, @node-llama-cpp/linux-x64 ${b ?? 'missing'} (want ${PINNED})`);
writeFileSync(marker, `${lockHash}\n`);
log(`installed node-llama-cpp ${PINNED} with the linux-x64 CPU binaries in bench/peer/node_modules`);

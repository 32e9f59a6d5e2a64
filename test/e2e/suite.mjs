// suite.mjs — what a user sees in a real VS Code with specode installed:
// the status bar's figures, an inline suggestion accepted with Tab, a streamed
// answer with a citation in the Q&A panel, recovery after the server dies, and
// a corrupt model file that is reported clearly while the editor keeps working.
// Each test gets `world` from run.mjs: { page, ws, serverScript, shot, log }.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeAllEditors, editorLines, focusEditor, ghostText, openFile, runCommand, statusText, waitForStatus, webviewFrame } from './workbench.mjs';

/** pids of the specode language server started from this test's extensions folder. */
function serverPids(serverScript) {
  const r = spawnSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .filter((l) => l.includes(serverScript))
    .map((l) => Number(l.trim().split(/\s+/)[0]))
    .filter((n) => Number.isInteger(n) && n > 0);
}

async function waitFor(what, f, timeoutMs, page) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await page.waitForTimeout(200);
  }
}

/**
 * Types a function header and `return` at the end of math.ts, waits for ghost
 * text and accepts it with Tab. Returns the ghost text and the accepted line.
 */
async function completeFunction(page, header) {
  await closeAllEditors(page);
  await openFile(page, 'src/util/math.ts');
  await focusEditor(page);
  await page.keyboard.press('Control+End');
  await page.keyboard.type(`\n${header}`, { delay: 25 });
  await page.keyboard.press('Enter');
  await page.keyboard.type('return', { delay: 60 });
  const ghost = await waitFor('ghost text after "return"', () => ghostText(page), 60_000, page);
  return ghost;
}

/** Opens the Q&A panel; returns its webview frame. */
async function openPanel(page) {
  await runCommand(page, 'specode: Ask About the Repository');
  return webviewFrame(page, '#question');
}

/** Types a question into the panel and sends it. */
async function ask(frame, question) {
  await frame.locator('#question').fill(question);
  await frame.locator('#ask').click();
}

/** Presses Tab; returns the lines of the function whose header was typed (header excluded). */
async function acceptAndRead(page, header) {
  await page.keyboard.press('Tab');
  await page.waitForTimeout(300);
  const lines = await editorLines(page);
  const at = lines.findIndex((l) => l.trim() === header);
  if (at < 0) throw new Error(`the typed header is not in the editor: ${JSON.stringify(lines)}`);
  return lines.slice(at + 1);
}

export const TESTS = [
  {
    id: 'status',
    name: 'status bar shows the figures once the repository is indexed; a click opens the details',
    timeoutMs: 150_000,
    async run({ page, shot }) {
      // After indexing the KV cache holds the repo: the item shows its size.
      const text = await waitForStatus(page, /specode.*KV \d+(\.\d+)? (KiB|MiB)/, 120_000);
      await shot('01-status-bar');
      await page.locator('.statusbar-item', { hasText: /specode/ }).first().click();
      const tab = page.locator('.tab', { hasText: 'status.md' }).first();
      await tab.waitFor({ timeout: 15_000 });
      await waitFor('details text', async () => (await editorLines(page)).some((l) => l.includes('specode status')), 15_000, page);
      const lines = (await editorLines(page)).join('\n');
      if (!/weights/.test(lines) || !/tokens in KV cache/.test(lines)) throw new Error(`details page lacks the figures:\n${lines}`);
      await shot('02-status-details');
      if (!/KV/.test(text)) throw new Error(`status text: ${text}`);
    },
  },
  {
    id: 'inline',
    name: 'typing in a file shows an inline suggestion; Tab accepts it',
    timeoutMs: 120_000,
    async run({ page, shot, log }) {
      const header = 'export function cube(x: number): number {';
      const ghost = await completeFunction(page, header);
      await shot('03-inline-suggestion');
      log(`ghost text: ${JSON.stringify(ghost)}`);
      const line = (await acceptAndRead(page, header))[0] ?? '';
      await shot('04-inline-accepted');
      const firstGhostLine = ghost.split('\n')[0].trim();
      if (!line.replace(/\s+/g, ' ').includes(firstGhostLine.replace(/\s+/g, ' ').slice(0, 10))) {
        throw new Error(`after Tab the line is ${JSON.stringify(line)}, ghost was ${JSON.stringify(ghost)}`);
      }
      if (line.trim() === 'return') throw new Error('nothing was inserted');
      await waitForStatus(page, /tok\/s/, 10_000);
    },
  },
  {
    id: 'ask',
    name: 'the Q&A panel streams an answer and cites a file that opens on click',
    timeoutMs: 150_000,
    async run({ page, shot, log }) {
      const frame = await openPanel(page);
      await ask(frame, 'Which port does the ledger reconciler listen on?');
      // Sample the answer while it streams: it must grow in several steps.
      const lengths = new Set();
      const end = Date.now() + 120_000;
      for (;;) {
        const streaming = await frame.locator('.answer.streaming').count();
        const text = (await frame.locator('.answer').last().innerText().catch(() => '')) || '';
        if (streaming && text.length) lengths.add(text.length);
        if (!streaming && (await frame.locator('.stats, .error').count())) break;
        if (Date.now() > end) throw new Error('the answer did not finish within 120 s');
        await page.waitForTimeout(50);
      }
      if (await frame.locator('.error').count()) throw new Error(`the panel shows an error: ${await frame.locator('.error').first().innerText()}`);
      const answer = await frame.locator('.answer').last().innerText();
      log(`answer (${answer.length} chars, seen at ${lengths.size} lengths while streaming): ${JSON.stringify(answer.slice(0, 200))}`);
      const cites = frame.locator('.citations a');
      const n = await cites.count();
      await shot('05-qa-answer');
      if (lengths.size < 2) throw new Error(`the answer did not stream (seen at ${lengths.size} lengths)`);
      if (n < 1) throw new Error('no citation');
      const cited = (await cites.first().innerText()).split(':')[0];
      log(`citations: ${(await cites.allInnerTexts()).join(', ')}`);
      await cites.first().click();
      const name = cited.split('/').pop();
      await page.locator('.tab.active', { hasText: name }).waitFor({ timeout: 15_000 });
      await shot('06-qa-citation-opened');
    },
  },
  {
    id: 'ask-stop',
    name: 'Stop ends a streaming answer at once; the panel takes the next question',
    timeoutMs: 150_000,
    async run({ page, shot, log }) {
      const frame = await openPanel(page);
      const before = await frame.locator('.answer').count();
      await ask(frame, 'Describe every file of this repository in detail, one paragraph each, with examples.');
      const answer = frame.locator('.answer').nth(before);
      await waitFor('the answer to start streaming', async () => ((await answer.innerText().catch(() => '')).length > 20 ? true : undefined), 90_000, page);
      await frame.locator('#stop').click();
      await waitFor('the answer marked stopped', async () => ((await frame.locator('.answer.stopped').count()) ? true : undefined), 15_000, page);
      const stoppedText = await answer.innerText();
      const stats = await frame.locator('.stats').last().innerText();
      await page.waitForTimeout(1500);
      const later = await answer.innerText();
      await shot('07-qa-stopped');
      log(`stopped after ${stoppedText.length} chars; stats: ${stats}`);
      if (!/^stopped/.test(stats)) throw new Error(`the stats line does not say stopped: ${JSON.stringify(stats)}`);
      if (later !== stoppedText) throw new Error('the answer kept growing after Stop');
      if (!(await frame.locator('#stop').isDisabled())) throw new Error('Stop is still enabled');
      // The server is free for the next question.
      await ask(frame, 'Which port does the ledger reconciler listen on?');
      const next = frame.locator('.answer').nth(before + 1);
      await waitFor('the next answer', async () => ((await frame.locator('.stats').count()) > before + 1 ? true : undefined), 120_000, page);
      const text = await next.innerText();
      log(`next answer: ${JSON.stringify(text.slice(0, 120))}`);
      if (!text.trim()) throw new Error('the question after Stop got no answer');
    },
  },
  {
    id: 'recover',
    name: 'killing the server: the extension restarts it and completions work again',
    timeoutMs: 150_000,
    async run({ page, shot, serverScript, log }) {
      const before = serverPids(serverScript);
      if (before.length !== 1) throw new Error(`expected one server process, found ${before.length} (${before.join(', ')})`);
      process.kill(before[0], 'SIGKILL');
      log(`killed server pid ${before[0]}`);
      const seen = new Set();
      const after = await waitFor(
        'a new server process',
        async () => {
          seen.add(await statusText(page));
          const pids = serverPids(serverScript).filter((p) => p !== before[0]);
          return pids.length ? pids : undefined;
        },
        30_000,
        page,
      );
      log(`new server pid ${after[0]}; status texts seen meanwhile: ${[...seen].join(' | ')}`);
      await waitForStatus(page, /specode.*KV \d/, 90_000);
      await shot('08-recovered-status');
      const header = 'export function half(x: number): number {';
      const ghost = await completeFunction(page, header);
      await shot('09-recovered-inline');
      log(`ghost text after restart: ${JSON.stringify(ghost)}`);
      const line = (await acceptAndRead(page, header))[0] ?? '';
      if (!/^\s*return\s*\S/.test(line)) throw new Error(`no completion accepted after the restart: ${JSON.stringify(line)}`);
    },
  },
  {
    id: 'bad-model',
    name: 'a corrupt model file: the status details say what is wrong, typing still works, fixing the setting recovers',
    timeoutMs: 180_000,
    async run({ page, ws, shot, log }) {
      const settingsPath = join(ws, '.vscode', 'settings.json');
      const good = readFileSync(settingsPath, 'utf8');
      const bad = join(tmpdir(), `specode-e2e-broken-${process.pid}.gguf`);
      writeFileSync(bad, 'this is not a model\n');
      // Editor first: the error notification that follows the settings change must not race
      // the command palette.
      await closeAllEditors(page);
      await openFile(page, 'src/util/money.ts');
      writeFileSync(settingsPath, JSON.stringify({ ...JSON.parse(good), 'specode.model': bad }, null, 2));
      try {
        await focusEditor(page);
        await page.keyboard.press('Control+End');
        // Typing asks for completions: the server tries to open the model and fails.
        await page.keyboard.type('\n// still typing while the model is broken', { delay: 20 });
        await waitForStatus(page, /^specode$/, 60_000);  // the error state: the icon and the name, no figures
        const lines = await editorLines(page);
        if (!lines.some((l) => l.includes('still typing while the model is broken'))) throw new Error(`the editor did not take the typing: ${JSON.stringify(lines)}`);
        await page.locator('.statusbar-item', { hasText: /specode/ }).first().click();
        const details = await waitFor(
          'the error in the status details',
          async () => {
            const text = (await editorLines(page)).join('\n');
            return /state: \*\*error\*\*/.test(text) ? text : undefined;
          },
          15_000,
          page,
        );
        await shot('10-bad-model-details');
        const state = details.split('\n').find((l) => l.includes('state:')) ?? '';
        log(`status details: ${state}`);
        // The editor wraps long lines; compare without the whitespace.
        const flat = details.replace(/\s+/g, '');
        if (!flat.includes('NotaGGUFmodelfile') || !flat.includes(bad)) throw new Error(`the details do not say what is wrong:\n${details}`);
      } finally {
        writeFileSync(settingsPath, good);
      }
      // Back to the good model: the figures come back.
      await waitForStatus(page, /specode.*KV \d/, 120_000);
      await shot('11-bad-model-fixed');
    },
  },
];

// workbench.mjs — small helpers to drive the VS Code workbench (code-server)
// with playwright: run a command, open a file, type, read the status bar, the
// ghost text, the editor's lines and a webview's document.

/** Text of the specode status-bar item ('' when absent). */
export async function statusText(page) {
  const item = page.locator('.statusbar-item', { hasText: /specode/ }).first();
  if (!(await item.count())) return '';
  return ((await item.innerText().catch(() => '')) || '').replace(/\s+/g, ' ').trim();
}

/** Waits until the status item's text matches `re`; returns the text. */
export async function waitForStatus(page, re, timeoutMs) {
  const end = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < end) {
    last = await statusText(page);
    if (re.test(last)) return last;
    await page.waitForTimeout(250);
  }
  throw new Error(`status bar never matched ${re} within ${timeoutMs} ms; last text: ${JSON.stringify(last)}`);
}

async function quickInput(page, key, text) {
  await page.keyboard.press('Escape');
  await page.keyboard.press(key);
  const input = page.locator('.quick-input-widget input.input').first();
  await input.waitFor({ state: 'visible', timeout: 10_000 });
  return input;
}

/** Runs a command by its palette title, e.g. 'specode: Ask About the Repository'. */
export async function runCommand(page, title) {
  const input = await quickInput(page, 'F1');
  await input.fill(`>${title}`);
  const row = page.locator('.quick-input-list .monaco-list-row', { hasText: title }).first();
  await row.waitFor({ state: 'visible', timeout: 10_000 });
  await row.click();
}

/** Opens a workspace file by name through Quick Open and waits for its tab. */
export async function openFile(page, relPath) {
  const input = await quickInput(page, 'Control+P');
  await input.fill(relPath);
  const name = relPath.split('/').pop();
  const dir = relPath.includes('/') ? relPath.slice(0, relPath.lastIndexOf('/')) : '';
  const row = page.locator('.quick-input-list .monaco-list-row', { hasText: name }).filter({ hasText: dir }).first();
  await row.waitFor({ state: 'visible', timeout: 10_000 });
  await row.click();
  await page.locator('.tab.active', { hasText: name }).waitFor({ timeout: 10_000 });
  await page.locator('.editor-instance .monaco-editor .view-lines').first().waitFor({ timeout: 10_000 });
}

/** Closes every editor (and webview), so the next file opens in a single group. */
export async function closeAllEditors(page) {
  await runCommand(page, 'View: Close All Editor Groups');
  const end = Date.now() + 10_000;
  while ((await page.locator('.tabs-container .tab').count()) > 0) {
    if (Date.now() > end) throw new Error('editors did not close');
    await page.waitForTimeout(100);
  }
}

/** Focuses the active editor's text. */
export async function focusEditor(page) {
  await page.locator('.editor-group-container.active .monaco-editor .view-lines').first().click();
}

/** The visible lines of the active editor, in order, with ghost text left out. */
export async function editorLines(page) {
  return page.evaluate(() => {
    const editor = document.querySelector('.editor-group-container.active .monaco-editor');
    if (!editor) return [];
    const lines = [...editor.querySelectorAll('.view-lines .view-line')];
    const top = (el) => parseFloat(el.style.top || '0');
    return lines
      .sort((a, b) => top(a) - top(b))
      .map((l) => {
        const clone = l.cloneNode(true);
        clone.querySelectorAll('[class*="ghost-text"]').forEach((g) => g.remove());
        return (clone.textContent || '').replace(/\u00a0/g, ' ');
      });
  });
}

/** Text of the ghost (inline suggestion) shown in the active editor, '' if none. */
export async function ghostText(page) {
  return page.evaluate(() => {
    const editor = document.querySelector('.editor-group-container.active .monaco-editor');
    if (!editor) return '';
    // The first line's ghost text is inline decorations (one per token span); further lines are .ghost-text blocks.
    const clean = (e) => (e.textContent || '').replace(/\u00a0/g, ' ');
    const first = [...editor.querySelectorAll('.ghost-text-decoration, .ghost-text-decoration-preview')].map(clean).join('');
    const more = [...editor.querySelectorAll('.ghost-text')].map(clean);
    return [first, ...more].join('\n').trim();
  });
}

/** The frame of a webview whose document contains `selector` (VS Code nests two iframes). */
export async function webviewFrame(page, selector, timeoutMs = 20_000) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    for (const f of page.frames()) {
      if (f === page.mainFrame()) continue;
      try {
        if (await f.locator(selector).count()) return f;
      } catch {
        /* detached */
      }
    }
    await page.waitForTimeout(250);
  }
  throw new Error(`no webview with ${selector} within ${timeoutMs} ms`);
}

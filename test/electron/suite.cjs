// suite.cjs — runs inside the VS Code extension host (@vscode/test-electron): the
// extension activates, contributes its commands and settings, starts its language
// server, and answers an inline completion request in the fixture workspace.
const assert = require('node:assert/strict');
const path = require('node:path');
const vscode = require('vscode');

async function waitFor(what, f, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function run() {
  const ext = vscode.extensions.getExtension('specode.specode');
  assert.ok(ext, 'the extension is installed');
  await ext.activate();
  const commands = await vscode.commands.getCommands(true);
  for (const c of ['specode.index', 'specode.ask', 'specode.showMetrics', 'specode.togglePause', 'specode.restartServer'])
    assert.ok(commands.includes(c), `command ${c} is registered`);
  const cfg = vscode.workspace.getConfiguration('specode');
  assert.equal(cfg.get('kvPolicy'), 'specache');
  assert.equal(typeof cfg.get('topK'), 'number');

  // An inline completion through the real server: the provider answers at the end of a function.
  const ws = process.env.SPECODE_ELECTRON_WS;
  const doc = await vscode.workspace.openTextDocument(path.join(ws, 'src', 'util', 'math.ts'));
  const editor = await vscode.window.showTextDocument(doc);
  const end = doc.lineAt(doc.lineCount - 1).range.end;
  await editor.edit((e) => e.insert(end, '\nexport function cube(x: number): number {\n  return'));
  const pos = editor.document.lineAt(editor.document.lineCount - 1).range.end;
  editor.selection = new vscode.Selection(pos, pos);
  const all = await vscode.commands.getCommands(false);
  if (!all.includes('vscode.executeInlineCompletionItemProvider')) {
    console.log('electron suite: this VS Code has no vscode.executeInlineCompletionItemProvider; the inline provider is checked by the code-server e2e');
    return;
  }
  const items = await waitFor(
    'an inline completion',
    async () => {
      const r = await vscode.commands.executeCommand('vscode.executeInlineCompletionItemProvider', editor.document.uri, pos).catch(() => undefined);
      const list = Array.isArray(r) ? r : r?.items;
      return list && list.length ? list : undefined;
    },
    180_000,
  );
  const text = typeof items[0].insertText === 'string' ? items[0].insertText : items[0].insertText.value;
  assert.ok(text.trim().length > 0, 'the completion is not empty');
  console.log(`electron suite: completion ${JSON.stringify(text)}`);
}

module.exports = { run };

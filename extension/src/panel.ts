// panel.ts — the Q&A webview. Strict CSP (default-src 'none', the script by
// nonce, resources only from media/), typed messages (webview_protocol.ts).
// The answer streams from the server's AskPartial progress; Stop cancels the
// request; cited files open on click.
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import { Ask, AskPartialType, ErrorCode } from '../../server/src/protocol';
import { errorMessage, type Ctx } from './ctx';
import { parseFromWebview, safeRelativePath, type ToWebview } from './webview_protocol';

export class AskPanel implements vscode.Disposable {
  private static current: AskPanel | undefined;
  private readonly panel: vscode.WebviewPanel;
  private readonly subscriptions: vscode.Disposable[] = [];
  private running: vscode.CancellationTokenSource | undefined;
  private nextId = 1;
  private disposed = false;

  static show(ctx: Ctx): AskPanel {
    if (AskPanel.current) {
      AskPanel.current.panel.reveal(vscode.ViewColumn.Beside);
      return AskPanel.current;
    }
    AskPanel.current = new AskPanel(ctx);
    return AskPanel.current;
  }

  private constructor(private readonly ctx: Ctx) {
    const media = vscode.Uri.joinPath(ctx.extension.extensionUri, 'media');
    this.panel = vscode.window.createWebviewPanel('specode.ask', 'specode: Ask', vscode.ViewColumn.Beside, {
      enableScripts: true,
      localResourceRoots: [media],
      retainContextWhenHidden: true,
    });
    this.panel.iconPath = vscode.Uri.joinPath(media, 'icon.png');
    this.panel.webview.html = this.html(media);
    this.subscriptions.push(
      this.panel.onDidDispose(() => this.dispose()),
      this.panel.webview.onDidReceiveMessage((raw) => this.onMessage(raw)),
    );
  }

  private post(msg: ToWebview): void {
    void this.panel.webview.postMessage(msg);
  }

  private onMessage(raw: unknown): void {
    const msg = parseFromWebview(raw);
    if (!msg) {
      this.ctx.log(`panel: ignored a malformed message ${JSON.stringify(raw)?.slice(0, 200)}`);
      return;
    }
    switch (msg.type) {
      case 'ready':
        this.post({ type: 'files', paths: this.ctx.workspace.paths });
        break;
      case 'ask':
        void this.ask(msg.question);
        break;
      case 'stop':
        this.running?.cancel();
        break;
      case 'open':
        void this.open(msg.path, msg.line);
        break;
    }
  }

  /** Ask a question (from the webview, or from a command with the question given). */
  async ask(question: string): Promise<void> {
    this.running?.cancel();
    const cts = new vscode.CancellationTokenSource();
    this.running = cts;
    const id = this.nextId++;
    this.post({ type: 'files', paths: this.ctx.workspace.paths });
    this.post({ type: 'start', id, question });
    const token = `ask-${id}-${Date.now()}`;
    let streamed = '';
    const sub = this.ctx.onProgress(AskPartialType, token, (p) => {
      streamed += p.delta;
      this.post({ type: 'delta', id, text: p.delta });
    });
    try {
      const r = await this.ctx.request(Ask, { question, partialResultToken: token }, cts.token);
      const tps = r.decodeMs > 0 ? (r.generatedTokens / r.decodeMs) * 1000 : 0;
      const stats = `${r.generatedTokens} tokens at ${tps.toFixed(1)} tok/s · prompt ${r.promptTokens} tokens (${r.reusedTokens} from the KV cache) · prefill ${(r.prefillMs / 1000).toFixed(1)} s`;
      this.post({ type: 'done', id, text: r.text, citations: r.citations, stopReason: r.stopReason, stats });
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (cts.token.isCancellationRequested || code === ErrorCode.RequestCancelled) {
        this.post({ type: 'done', id, text: streamed, citations: [], stopReason: 'cancelled', stats: 'stopped' });
      } else {
        this.post({ type: 'error', id, message: errorMessage(e) });
      }
    } finally {
      sub.dispose();
      if (this.running === cts) this.running = undefined;
      cts.dispose();
    }
  }

  private async open(path: string, line?: number): Promise<void> {
    const folder = vscode.workspace.workspaceFolders?.[0];
    const rel = safeRelativePath(path);
    if (!folder || !rel) return;
    const uri = vscode.Uri.joinPath(folder.uri, rel);
    try {
      const doc = await vscode.workspace.openTextDocument(uri);
      const pos = new vscode.Position(Math.max(0, (line ?? 1) - 1), 0);
      await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.One, selection: new vscode.Range(pos, pos) });
    } catch (e) {
      void vscode.window.showWarningMessage(`specode: cannot open ${rel}: ${(e as Error).message}`);
    }
  }

  private html(media: vscode.Uri): string {
    const webview = this.panel.webview;
    const nonce = makeNonce();
    const script = webview.asWebviewUri(vscode.Uri.joinPath(media, 'panel.js'));
    const style = webview.asWebviewUri(vscode.Uri.joinPath(media, 'panel.css'));
    const csp = [`default-src 'none'`, `style-src ${webview.cspSource}`, `img-src ${webview.cspSource}`, `script-src 'nonce-${nonce}'`].join('; ');
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${style}">
<title>specode: Ask</title>
</head>
<body>
<main id="log" aria-live="polite"></main>
<form id="form">
  <textarea id="question" rows="3" placeholder="Ask about this repository…" aria-label="Question"></textarea>
  <div class="buttons">
    <button id="ask" type="submit">Ask</button>
    <button id="stop" type="button" disabled>Stop</button>
  </div>
</form>
<script nonce="${nonce}" src="${script}"></script>
</body>
</html>`;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (AskPanel.current === this) AskPanel.current = undefined;
    this.running?.cancel();
    for (const d of this.subscriptions.splice(0)) d.dispose();
    this.panel.dispose();
  }
}

function makeNonce(): string {
  return randomBytes(18).toString('base64');
}

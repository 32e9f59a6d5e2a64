// inline.ts — inline completions (ghost text) from the server's repo-level FIM.
//
// Per request: answer from the prefix cache if the user typed along an
// earlier completion; else reuse the request in flight if the typed text
// still matches its prefix; else wait the adaptive debounce and ask the
// server. A keystroke cancels the request unless the next call claims it
// (within GRACE_MS), so typing never queues work on the server.
import * as vscode from 'vscode';
import { Complete, CompletePartialType, ErrorCode } from '../../server/src/protocol';
import { AdaptiveDebounce } from './debounce';
import { InFlight, PrefixCache, suffixHead, typedSince, type CompletionKey, type Pending } from './completion_cache';
import { languageEnabled } from './config';
import type { Ctx } from './ctx';

/** Characters sent on each side of the cursor (the server cuts to its token budget). */
const MAX_PREFIX_CHARS = 32_000;
const MAX_SUFFIX_CHARS = 8_000;
/** How long a cancelled call's request stays alive for the next keystroke to claim it. */
const GRACE_MS = 150;
const SCHEMES = new Set(['file', 'untitled', 'vscode-remote', 'vscode-userdata']);

export class InlineProvider implements vscode.InlineCompletionItemProvider, vscode.Disposable {
  private readonly cache = new PrefixCache();
  private readonly inflight = new InFlight();
  private readonly debounce: AdaptiveDebounce;
  private readonly subscriptions: vscode.Disposable[] = [];
  /** Counters for the details page and the e2e test. */
  readonly stats = { requests: 0, cacheHits: 0, reused: 0, cancelled: 0, errors: 0, firstLines: 0, restShown: 0 };
  private seq = 0;

  constructor(private readonly ctx: Ctx) {
    this.debounce = new AdaptiveDebounce({ baseMs: ctx.config.debounceMs });
    this.subscriptions.push(
      ctx.onDidChangeStatus(() => this.debounce.setBase(ctx.config.debounceMs)),
      vscode.workspace.onDidCloseTextDocument((d) => this.cache.dropDocument(d.uri.toString())),
      ctx.onDidBecomeReady(() => this.cache.clear()),
    );
  }

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | undefined> {
    // Not while the server is down, paused, or cannot open the model (the error is shown once, not per keystroke).
    if (!this.ctx.isReady || this.ctx.paused || this.ctx.status?.state === 'error') return undefined;
    if (!SCHEMES.has(document.uri.scheme) || !languageEnabled(this.ctx.config, document.languageId)) return undefined;
    const key = this.key(document, position);
    this.debounce.keystroke(Date.now());
    const item = (text: string | undefined) => (text ? [new vscode.InlineCompletionItem(text, new vscode.Range(position, position))] : undefined);

    const cached = this.cache.get(key);
    if (cached !== undefined) {
      this.stats.cacheHits++;
      return item(cached);
    }

    const claimed = this.inflight.claim(key);
    if (claimed) {
      this.stats.reused++;
      this.releaseOnCancel(token);
      const text = await claimed;
      if (token.isCancellationRequested) return undefined;
      if (text !== undefined) return item(text);
    }

    if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic) {
      if (!(await sleep(this.debounce.delay(), token))) return undefined;
    }
    const pending = this.send(document, position, key);
    this.inflight.start(pending);
    this.releaseOnCancel(token);
    // The first line of a multi-line completion shows as soon as it is written; when the
    // rest arrives, send() asks VS Code to ask again, and the prefix cache answers.
    const text = await (pending.first ?? pending.result);
    if (token.isCancellationRequested) return undefined;
    return item(text);
  }

  private key(document: vscode.TextDocument, position: vscode.Position): CompletionKey & { suffix: string } {
    const start = document.offsetAt(position);
    const full = document.getText();
    const prefix = full.slice(Math.max(0, start - MAX_PREFIX_CHARS), start);
    const suffix = full.slice(start, start + MAX_SUFFIX_CHARS);
    return { doc: document.uri.toString(), prefix, suffixHead: suffixHead(suffix), suffix };
  }

  private send(document: vscode.TextDocument, position: vscode.Position, key: CompletionKey & { suffix: string }): Pending {
    const cts = new vscode.CancellationTokenSource();
    const t0 = Date.now();
    this.stats.requests++;
    const path = vscode.workspace.asRelativePath(document.uri, false).replace(/\\/g, '/');
    const partialResultToken = `complete-${process.pid}-${++this.seq}`;
    let shown: string | undefined;
    let showFirst: (text: string | undefined) => void = () => undefined;
    const first = new Promise<string | undefined>((resolve) => (showFirst = resolve));
    const sub = this.ctx.onProgress(CompletePartialType, partialResultToken, (p) => {
      if (shown !== undefined || !p.text) return;
      shown = p.text;
      this.stats.firstLines++;
      this.debounce.latency(Date.now() - t0);
      this.ctx.log(`complete ${path}:${position.line + 1}: first line after ${Date.now() - t0} ms`);
      showFirst(p.text);
    });
    const ckey = { doc: key.doc, prefix: key.prefix, suffixHead: key.suffixHead };
    const result = this.ctx
      .request(Complete, { path, languageId: document.languageId, prefix: key.prefix, suffix: key.suffix, partialResultToken }, cts.token)
      .then(
        (r) => {
          if (shown === undefined) this.debounce.latency(Date.now() - t0);
          this.cache.put(ckey, r.text);
          this.ctx.log(
            `complete ${path}:${position.line + 1}: ${r.text.length} chars, ${r.generatedTokens} tokens, stop ${r.stopReason}, prompt ${r.promptTokens} (${r.reusedTokens} reused), ${Date.now() - t0} ms`,
          );
          if (shown !== undefined && r.text.length > shown.length) this.showRest(ckey);
          return r.text || undefined;
        },
        (e: { code?: number; message?: string }) => {
          if (e?.code === ErrorCode.RequestCancelled || e?.code === ErrorCode.Superseded || cts.token.isCancellationRequested) this.stats.cancelled++;
          else {
            this.stats.errors++;
            this.ctx.log(`complete failed: ${e?.message ?? String(e)}`);
          }
          return undefined;
        },
      )
      .finally(() => {
        sub.dispose();
        cts.dispose();
      });
    void result.then(showFirst);
    return { key: ckey, result, first, cancel: () => cts.cancel() };
  }

  /**
   * The rest of a completion whose first line is showing arrived: ask VS Code for
   * inline completions again (the prefix cache answers) if the user is still where
   * the completion applies (the same document, the prefix typed along it).
   */
  private showRest(key: CompletionKey): void {
    const editor = vscode.window.activeTextEditor;
    if (!editor || editor.document.uri.toString() !== key.doc || !editor.selection.isEmpty) return;
    const now = this.key(editor.document, editor.selection.active);
    if (typedSince(key, now) === undefined) return;
    this.stats.restShown++;
    void vscode.commands.executeCommand('editor.action.inlineSuggest.trigger');
  }

  /** When VS Code cancels this call (a keystroke), cancel the request unless a newer call claims it soon. */
  private releaseOnCancel(token: vscode.CancellationToken): void {
    const sub = token.onCancellationRequested(() => {
      sub.dispose();
      const pending = this.inflight.current;
      const claims = this.inflight.reuseCount;
      setTimeout(() => {
        if (pending && this.inflight.current === pending && this.inflight.reuseCount === claims) this.inflight.cancel();
      }, GRACE_MS);
    });
  }

  dispose(): void {
    this.inflight.cancel();
    for (const d of this.subscriptions.splice(0)) d.dispose();
  }
}

/** Waits `ms`; false when the token was cancelled first. */
function sleep(ms: number, token: vscode.CancellationToken): Promise<boolean> {
  if (ms <= 0) return Promise.resolve(!token.isCancellationRequested);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      sub.dispose();
      resolve(!token.isCancellationRequested);
    }, ms);
    const sub = token.onCancellationRequested(() => {
      clearTimeout(timer);
      sub.dispose();
      resolve(false);
    });
  });
}

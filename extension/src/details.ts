// details.ts — the status details page: a read-only markdown document
// (specode-status:status.md) that follows the server's status.
import * as vscode from 'vscode';
import type { Ctx } from './ctx';
import { detailsMarkdown } from './status_format';

export const DETAILS_URI = vscode.Uri.parse('specode-status:status.md');

export class DetailsProvider implements vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly emitter = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.emitter.event;
  private readonly sub: vscode.Disposable;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly ctx: Ctx, private readonly extra: () => string) {
    this.sub = ctx.onDidChangeStatus(() => {
      // Coalesce: status messages can come several times a second.
      if (this.timer) return;
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.emitter.fire(DETAILS_URI);
      }, 500);
    });
  }

  provideTextDocumentContent(): string {
    return `${detailsMarkdown(this.ctx.status, this.ctx.connection, this.ctx.restarts)}\n\n${this.extra()}\n`;
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    this.sub.dispose();
    this.emitter.dispose();
  }
}

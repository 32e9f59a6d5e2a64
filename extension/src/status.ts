// status.ts — the one status-bar item, driven by the server's one status
// message (through Ctx). A click opens the details page (details.ts).
import * as vscode from 'vscode';
import type { Ctx } from './ctx';
import { formatStatus } from './status_format';

export class StatusItem implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private readonly sub: vscode.Disposable;

  constructor(private readonly ctx: Ctx) {
    this.item = vscode.window.createStatusBarItem('specode.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'specode';
    this.item.command = 'specode.showMetrics';
    this.sub = ctx.onDidChangeStatus(() => this.render());
    this.render();
    this.item.show();
  }

  private render(): void {
    const view = formatStatus(this.ctx.status, this.ctx.connection, this.ctx.paused);
    this.item.text = view.text;
    const tip = new vscode.MarkdownString(view.tooltip);
    tip.supportThemeIcons = true;
    this.item.tooltip = tip;
    this.item.backgroundColor =
      view.severity === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : view.severity === 'warning' ? new vscode.ThemeColor('statusBarItem.warningBackground') : undefined;
  }

  dispose(): void {
    this.sub.dispose();
    this.item.dispose();
  }
}

// main.ts — activation: build the Ctx, the status item, the inline provider,
// the commands; start the server without waiting for it (the editor never
// blocks on the model).
import * as vscode from 'vscode';
import { registerCommands } from './commands';
import { Ctx } from './ctx';
import { DETAILS_URI, DetailsProvider } from './details';
import { InlineProvider } from './inline';
import { StatusItem } from './status';

let ctx: Ctx | undefined;

export function activate(context: vscode.ExtensionContext): void {
  ctx = new Ctx(context);
  const c = ctx;
  const inline = new InlineProvider(c);
  const details = new DetailsProvider(c, () => {
    const s = inline.stats;
    return `Inline completions this session: ${s.requests} requests, ${s.cacheHits} answered from the prefix cache, ${s.reused} reused a request in flight, ${s.cancelled} cancelled, ${s.errors} failed.`;
  });
  context.subscriptions.push(
    new StatusItem(c),
    inline,
    details,
    vscode.workspace.registerTextDocumentContentProvider(DETAILS_URI.scheme, details),
    vscode.languages.registerInlineCompletionItemProvider({ pattern: '**' }, inline),
    ...registerCommands(c),
    { dispose: () => void c.dispose() },
  );
  let shownError: string | undefined;
  context.subscriptions.push(
    c.onDidChangeStatus(() => {
      const s = c.status;
      if (s?.state !== 'error' || !s.message || s.message === shownError) return;
      shownError = s.message;
      void vscode.window.showErrorMessage(`specode: ${s.message}${s.hint ? ` — ${s.hint}` : ''}`, 'Choose model', 'Show output').then((pick) => {
        if (pick === 'Choose model') void vscode.commands.executeCommand('specode.pickModel');
        else if (pick === 'Show output') c.output.show();
      });
    }),
  );
  void c.start();
}

export async function deactivate(): Promise<void> {
  await ctx?.dispose();
  ctx = undefined;
}

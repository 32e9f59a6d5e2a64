// client.ts — the LanguageClient that starts the server (dist/server.js) as
// a child process over Node IPC. Restarts are decided by Ctx (restart_policy.ts);
// the client itself never restarts on its own.
import * as vscode from 'vscode';
import { CloseAction, ErrorAction, LanguageClient, TransportKind, type LanguageClientOptions, type ServerOptions } from 'vscode-languageclient/node';

export interface ClientHooks {
  /** The server process went away (crash, kill, exit). */
  onClosed(): void;
}

export function createClient(context: vscode.ExtensionContext, output: vscode.OutputChannel, hooks: ClientHooks): LanguageClient {
  const module = context.asAbsolutePath('dist/server.js');
  const env = { ...process.env, SPECODE_ADDON: process.env.SPECODE_ADDON ?? context.asAbsolutePath('native/build/specode.node') };
  const serverOptions: ServerOptions = {
    run: { module, transport: TransportKind.ipc, options: { env } },
    debug: { module, transport: TransportKind.ipc, options: { env, execArgv: ['--nolazy', '--inspect=6010'] } },
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [],
    outputChannel: output,
    revealOutputChannelOn: 4 /* RevealOutputChannelOn.Never */,
    initializationFailedHandler: (e) => {
      output.appendLine(`specode: the server failed to initialize: ${e instanceof Error ? e.message : String(e)}`);
      return false;
    },
    errorHandler: {
      error: (_error, _message, count) => ({ action: (count ?? 0) <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown, handled: true }),
      closed: () => {
        hooks.onClosed();
        return { action: CloseAction.DoNotRestart, handled: true, message: 'The specode server stopped; the extension restarts it (with backoff).' };
      },
    },
  };
  return new LanguageClient('specode', 'specode', serverOptions, clientOptions);
}

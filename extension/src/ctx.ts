// ctx.ts — the extension's state: the language client and its restarts, the
// settings, the latest server status, pause. Everything else gets what it
// needs from here. Nothing in here waits on the server in a way that blocks
// the editor: requests fail fast when the server is down.
import * as vscode from 'vscode';
import { State, type LanguageClient } from 'vscode-languageclient/node';
import type { CancellationToken, ProgressType, RequestType, RequestType0 } from 'vscode-languageclient';
import { Configure, Index, IndexProgressType, Pause, SetContext, StatusNotification, type IndexResult, type ServerStatus, type SetContextParams } from '../../server/src/protocol';
import { createClient } from './client';
import { readConfig, SECTION, serverSettingChanged, toServerConfig, type Config } from './config';
import { RestartPolicy } from './restart_policy';
import type { Connection } from './status_format';
import { WorkspaceContext } from './workspace_files';

export class Ctx implements vscode.Disposable {
  readonly output: vscode.OutputChannel;
  config: Config;
  status: ServerStatus | undefined;
  connection: Connection = 'starting';
  paused = false;
  /** Restarts after the server died, this session. */
  restarts = 0;
  readonly workspace: WorkspaceContext;

  private client: LanguageClient | undefined;
  private readonly policy = new RestartPolicy();
  private restartTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private readonly subscriptions: vscode.Disposable[] = [];
  private readonly statusEmitter = new vscode.EventEmitter<void>();
  /** Fires when the status, the connection or pause changes. */
  readonly onDidChangeStatus = this.statusEmitter.event;
  private readonly readyEmitter = new vscode.EventEmitter<void>();
  /** Fires each time a (re)started server has its settings and context. */
  readonly onDidBecomeReady = this.readyEmitter.event;
  private ready = false;

  constructor(readonly extension: vscode.ExtensionContext) {
    this.output = vscode.window.createOutputChannel('specode');
    this.config = readConfig(vscode.workspace.getConfiguration(SECTION));
    this.workspace = new WorkspaceContext(this);
    this.subscriptions.push(
      this.output,
      this.statusEmitter,
      this.readyEmitter,
      this.workspace,
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (!e.affectsConfiguration(SECTION)) return;
        this.config = readConfig(vscode.workspace.getConfiguration(SECTION));
        if (serverSettingChanged((s) => e.affectsConfiguration(s)) && this.isRunning) {
          void this.sendConfig()
            .then(() => this.index(false))
            .catch((err) => this.log(`applying settings failed: ${errorMessage(err)}`));
        }
        this.statusEmitter.fire();
      }),
    );
  }

  get isRunning(): boolean {
    return this.client?.state === State.Running;
  }

  /** The server is running and has its settings and the repository context. */
  get isReady(): boolean {
    return this.ready && this.isRunning;
  }

  log(message: string): void {
    this.output.appendLine(`[${new Date().toISOString()}] ${message}`);
  }

  async start(): Promise<void> {
    this.stopping = false;
    if (!this.client) {
      this.client = createClient(this.extension, this.output, { onClosed: () => this.onServerClosed() });
      this.client.onNotification(StatusNotification, (s) => {
        this.status = s;
        this.statusEmitter.fire();
      });
    }
    this.connection = this.restarts > 0 ? 'restarting' : 'starting';
    this.statusEmitter.fire();
    try {
      await this.client.start();
    } catch (e) {
      this.log(`could not start the server: ${(e as Error).message}`);
      // The client's close handler may already have scheduled the restart.
      if (!this.restartTimer) this.onServerClosed();
      return;
    }
    this.connection = 'running';
    this.statusEmitter.fire();
    try {
      await this.sendConfig();
      await this.workspace.sync();
      this.ready = true;
      this.readyEmitter.fire();
      await this.index(false);
    } catch (e) {
      this.log(`server setup failed: ${(e as Error).message}`);
    }
  }

  /** Restart by hand (command): also forgets earlier crashes. */
  async restart(): Promise<void> {
    this.policy.reset();
    this.ready = false;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.stopping = true;
    try {
      if (this.client?.isRunning()) await this.client.stop(2000);
    } catch (e) {
      this.log(`stopping the server: ${(e as Error).message}`);
    }
    await this.start();
  }

  private onServerClosed(): void {
    this.ready = false;
    if (this.stopping) return;
    const d = this.policy.onDeath(Date.now());
    this.status = undefined;
    if (!d.restart) {
      this.connection = 'stopped';
      this.statusEmitter.fire();
      this.log(`the server died ${d.recent} times in ${this.policy.windowMs / 1000} s; not restarting`);
      void vscode.window
        .showErrorMessage(`specode: the server stopped ${d.recent} times in a short while and was not restarted. See the 'specode' output for why.`, 'Restart', 'Show output')
        .then((pick) => {
          if (pick === 'Restart') void this.restart();
          else if (pick === 'Show output') this.output.show();
        });
      return;
    }
    this.connection = 'restarting';
    this.statusEmitter.fire();
    this.log(`the server stopped; restarting in ${d.delayMs} ms (${d.recent} in the last ${this.policy.windowMs / 1000} s)`);
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      this.restarts++;
      // The client's close handling finishes after this hook; start once it has.
      void this.start();
    }, d.delayMs);
  }

  /** A request to the server; rejects at once when it is not running. */
  async request<P, R>(type: RequestType<P, R, unknown>, params: P, token?: CancellationToken): Promise<R> {
    const client = this.client;
    if (!client || client.state !== State.Running) throw new Error('specode: the server is not running');
    return token ? client.sendRequest(type, params, token) : client.sendRequest(type, params);
  }

  async request0<R>(type: RequestType0<R, unknown>, token?: CancellationToken): Promise<R> {
    const client = this.client;
    if (!client || client.state !== State.Running) throw new Error('specode: the server is not running');
    return token ? client.sendRequest(type, token) : client.sendRequest(type);
  }

  onProgress<P>(type: ProgressType<P>, token: string, handler: (value: P) => void): vscode.Disposable {
    if (!this.client) return new vscode.Disposable(() => undefined);
    return this.client.onProgress(type, token, handler);
  }

  async sendConfig(): Promise<void> {
    await this.request(Configure, toServerConfig(this.config));
  }

  async setPaused(paused: boolean): Promise<void> {
    this.paused = paused;
    this.statusEmitter.fire();
    if (this.isRunning) await this.request(Pause, { paused });
  }

  private indexing: Promise<IndexResult | undefined> | undefined;

  /**
   * Prefill the repository into the KV cache, with a cancellable progress
   * notification. `explicit`: the user asked (errors are shown, not just logged).
   */
  index(explicit: boolean): Promise<IndexResult | undefined> {
    if (this.paused) return Promise.resolve(undefined);
    if (this.indexing) return this.indexing;
    const run = vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: 'specode: indexing the repository', cancellable: true },
      async (progress, token) => {
        const workDoneToken = `index-${Date.now()}-${Math.random().toString(36).slice(2)}`;
        let last = 0;
        const sub = this.onProgress(IndexProgressType, workDoneToken, (p) => {
          const pct = p.total > 0 ? (100 * p.done) / p.total : 0;
          progress.report({ message: p.message, increment: Math.max(0, pct - last) });
          last = pct;
        });
        try {
          const r = await this.request(Index, { workDoneToken }, token);
          this.log(`index: ${r.files} files (${r.filesDropped} over budget), ${r.tokens} tokens, ${r.reusedTokens} reused, ${r.ms.toFixed(0)} ms${r.cancelled ? ', cancelled' : ''}`);
          return r;
        } catch (e) {
          const msg = errorMessage(e);
          this.log(`index failed: ${msg}`);
          if (explicit) void vscode.window.showErrorMessage(msg);
          return undefined;
        } finally {
          sub.dispose();
        }
      },
    );
    this.indexing = Promise.resolve(run).finally(() => (this.indexing = undefined));
    return this.indexing;
  }

  /** Send the repository files again (after saves, creations, deletions). */
  async sendContext(params: SetContextParams): Promise<void> {
    if (!this.isRunning) return;
    await this.request(SetContext, params);
  }

  async dispose(): Promise<void> {
    this.stopping = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    for (const d of this.subscriptions.splice(0)) d.dispose();
    const c = this.client;
    this.client = undefined;
    if (c) {
      try {
        await c.stop(2000);
      } catch {
        /* already gone */
      }
    }
  }
}

/** The message of an error response (with its hint), for people. */
export function errorMessage(e: unknown): string {
  const err = e as { message?: string; data?: { hint?: string } };
  const msg = err?.message ?? String(e);
  return err?.data?.hint ? `${msg} — ${err.data.hint}` : msg;
}

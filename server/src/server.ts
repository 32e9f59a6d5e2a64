// server.ts — the specode language server (a child process of the editor).
// It owns the engine and the KV cache; the extension only talks to it through
// the messages in protocol.ts. Started by the extension over Node IPC; also
// runs over stdio (`node dist/server.js --stdio`).
import { createConnection, ProposedFeatures, TextDocumentSyncKind } from 'vscode-languageserver/node';
import { fetchModel } from './models/fetch';
import { listModels, resolveModelArg } from './models/registry';
import { openSessionEngine } from './lsp/engine';
import { SpecodeService } from './lsp/handlers';
import { Ask, Configure, FetchModel, GetSchedulerStats, GetStatus, Index, ListModels, Pause, SetContext, StatusNotification, Complete, PROTOCOL_VERSION } from './protocol';

const connection = createConnection(ProposedFeatures.all);
const log = (message: string) => connection.console.log(`[specode ${new Date().toISOString()}] ${message}`);

const service = new SpecodeService({
  openEngine: openSessionEngine,
  resolveModel: (arg) => resolveModelArg(arg),
  listModels: () =>
    listModels().map((m) => ({ name: m.name, description: m.description, fetched: m.fetched, isDefault: m.isDefault, path: m.path, downloadBytes: m.downloadSize, fim: m.fim })),
  fetchModel: async (name, onProgress, signal) => (await fetchModel(name, { onProgress, signal })).path,
  sendStatus: (status) => void connection.sendNotification(StatusNotification, status).catch(() => undefined),
  sendProgress: (type, token, value) => void connection.sendProgress(type, token, value).catch(() => undefined),
  log,
});

connection.onInitialize(() => ({
  capabilities: { textDocumentSync: TextDocumentSyncKind.None },
  serverInfo: { name: 'specode', version: `protocol ${PROTOCOL_VERSION}` },
}));

connection.onRequest(Configure, (p) => service.configure(p));
connection.onRequest(SetContext, (p) => service.setContext(p));
connection.onRequest(Index, (p, token) => service.index(p, token));
connection.onRequest(Complete, (p, token) => service.complete(p, token));
connection.onRequest(Ask, (p, token) => service.ask(p, token));
connection.onRequest(GetStatus, () => service.getStatus());
connection.onRequest(GetSchedulerStats, (p) => service.schedulerStats(p));
connection.onRequest(Pause, (p) => service.pause(p));
connection.onRequest(ListModels, () => service.listModels());
connection.onRequest(FetchModel, (p, token) => service.fetchModel(p, token));

connection.onShutdown(() => service.dispose());
connection.onExit(() => service.dispose());

process.on('uncaughtException', (e) => log(`uncaught: ${e.stack ?? e}`));
process.on('unhandledRejection', (e) => log(`unhandled rejection: ${(e as Error)?.stack ?? e}`));

log(`server started, pid ${process.pid}, node ${process.version}`);
connection.listen();

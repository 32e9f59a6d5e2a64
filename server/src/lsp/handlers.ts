// handlers.ts — what the language server does for each specode request. No
// LSP transport in here: server.ts wires these to the connection, tests call
// them with a fake engine.
//
// Engine work goes through one Scheduler (one job at a time; a new completion
// replaces a running one). The model opens lazily, on the first request that
// needs it, and reopens when its settings change.
import { ResponseError, type ProgressType } from 'vscode-languageserver-protocol';
import { isUserError } from '../errors';
import {
  AskPartialType,
  CompletePartialType,
  ErrorCode,
  FetchModelProgressType,
  IndexProgressType,
  ParamsError,
  PROTOCOL_VERSION,
  parseAskParams,
  parseCompleteParams,
  parseFetchModelParams,
  parseIndexParams,
  parsePauseParams,
  parseSchedulerStatsParams,
  parseServerConfig,
  parseSetContextParams,
  type AskResult,
  type CompleteResult,
  type ConfigureResult,
  type ContextFile,
  type ErrorData,
  type IndexResult,
  type ModelEntry,
  type SchedulerStats,
  type ServerConfig,
  type ServerStatus,
  type SetContextResult,
} from '../protocol';
import { attentionByFile, citeFiles } from './citations';
import { boundaryContext, cutCompletion, finishCompletion, firstLine } from './completion_boundary';
import type { Engine, EngineFactory } from './engine';
import { PromptBuilder } from './prompts';
import { CancelledError, Scheduler, SupersededError, type JobKind } from './scheduler';
import { StatusReporter, type StatusSink } from './status';

/** The part of an LSP CancellationToken the handlers use. */
export interface CancelToken {
  readonly isCancellationRequested: boolean;
  onCancellationRequested(listener: () => unknown): { dispose(): void };
}

export interface ServiceDeps {
  openEngine: EngineFactory;
  /** Model setting → absolute .gguf path; throws UserError (with a hint) when it cannot. */
  resolveModel(arg: string): string;
  listModels(): ModelEntry[];
  fetchModel(name: string, onProgress: (message: string, fraction?: number) => void, signal: AbortSignal): Promise<string>;
  sendStatus: StatusSink;
  sendProgress<P>(type: ProgressType<P>, token: string, value: P): void;
  log(message: string): void;
  /** Minimum ms between figure-only status messages (default 250). */
  statusIntervalMs?: number;
}

/**
 * Most prompt-lookup draft tokens per pass in completions (session.ts GenerateOptions.lookup):
 * code repeats itself, and a run of tokens copied from the context costs one pass instead of one each.
 */
const LOOKUP_DRAFT = lookupDraftSetting(process.env.SPECODE_LOOKUP_DRAFT);

/** SPECODE_LOOKUP_DRAFT: 0 turns prompt lookup off (A/B runs of `bench editor`); default 6. */
export function lookupDraftSetting(v: string | undefined): number {
  const n = v === undefined || v === '' ? 6 : Number(v);
  return Number.isInteger(n) && n >= 0 && n <= 32 ? n : 6;
}

/** Tokens per prefill step while indexing (progress and cancel granularity). */
const INDEX_CHUNK = 512;

export class SpecodeService {
  readonly scheduler = new Scheduler();
  readonly status: StatusReporter;
  private config: ServerConfig | undefined;
  private engine: Engine | undefined;
  private engineKey: string | undefined;
  private prompts: PromptBuilder | undefined;
  private repoName = '';
  private files: ContextFile[] = [];
  private paused = false;

  constructor(private readonly deps: ServiceDeps) {
    this.status = new StatusReporter(deps.sendStatus, deps.statusIntervalMs);
  }

  // ------------------------------------------------------------ requests

  configure(params: unknown): ConfigureResult {
    const config = guardParams(() => parseServerConfig(params));
    this.config = config;
    const reopen = this.engineKey !== undefined && this.engineKey !== engineKey(config);
    this.status.setModel(this.status.current.model, this.status.current.backend, config.kvPolicy);
    return { protocolVersion: PROTOCOL_VERSION, reopen };
  }

  setContext(params: unknown): SetContextResult {
    const p = guardParams(() => parseSetContextParams(params));
    this.repoName = p.repoName;
    this.files = p.files;
    this.status.setContextFiles(p.files.length);
    return { files: p.files.length, bytes: p.files.reduce((n, f) => n + f.text.length, 0) };
  }

  getStatus(): ServerStatus {
    return this.status.current;
  }

  pause(params: unknown): void {
    const { paused } = guardParams(() => parsePauseParams(params));
    this.paused = paused;
    if (paused) {
      this.scheduler.cancelAll();
      this.status.setState('paused', { message: 'paused by the user' });
    } else {
      this.status.setState(this.engine ? 'ready' : 'idle');
    }
  }

  listModels(): ModelEntry[] {
    return this.deps.listModels();
  }

  /** The scheduler's counters and this process's memory (see protocol.ts GetSchedulerStats). */
  schedulerStats(params: unknown): SchedulerStats {
    const p = guardParams(() => parseSchedulerStatsParams(params));
    const counters = this.scheduler.counters();
    if (p.resetPeaks) this.scheduler.resetPeaks();
    const mem = process.memoryUsage();
    return { ...counters, rssBytes: mem.rss, heapUsedBytes: mem.heapUsed };
  }

  async fetchModel(params: unknown, token?: CancelToken): Promise<{ path: string }> {
    const p = guardParams(() => parseFetchModelParams(params));
    const { signal, dispose } = toSignal(token);
    try {
      const path = await this.deps.fetchModel(
        p.name,
        (message, fraction) => {
          if (p.workDoneToken) this.deps.sendProgress(FetchModelProgressType, p.workDoneToken, { message, fraction });
        },
        signal,
      );
      return { path };
    } catch (e) {
      throw this.toResponseError(e, 'fetchModel');
    } finally {
      dispose();
    }
  }

  async index(params: unknown, token?: CancelToken): Promise<IndexResult> {
    const p = guardParams(() => parseIndexParams(params));
    return this.runJob('index', token, async (signal) => {
      const engine = await this.ensureEngine();
      const t0 = performance.now();
      const config = this.config!;
      const files = this.files;
      const built = this.prompts!.repoHead(this.repoName, files, config.contextTokens);
      const ids = built.ids;
      const result = (tokensDone: number, reused: number, cancelled: boolean): IndexResult => ({
        files: built.files.length,
        filesDropped: built.filesDropped,
        tokens: tokensDone,
        reusedTokens: reused,
        ms: performance.now() - t0,
        cancelled,
      });
      let reused = commonPrefix(engine.cachedIds(), ids);
      const report = (done: number) => {
        const message = `${built.files.length} files, ${done}/${ids.length} tokens`;
        this.status.setProgress(done, ids.length, message);
        if (p.workDoneToken) this.deps.sendProgress(IndexProgressType, p.workDoneToken, { done, total: ids.length, message });
      };
      this.status.setState('indexing', { message: `indexing ${built.files.length} files (${ids.length} tokens)`, progress: { done: reused, total: ids.length } });
      report(reused);
      let done = reused;
      try {
        while (done < ids.length) {
          if (signal.aborted) throw new CancelledError();
          // Chunks end one token past a multiple of INDEX_CHUNK: the engine adopts cached pages
          // for all but a pass's last token, so every whole page of the chunk can come from them.
          const end = Math.min(ids.length, (Math.floor(done / INDEX_CHUNK) + 1) * INDEX_CHUNK + 1);
          const r = await engine.prefill(ids.slice(0, end), signal);
          // Tokens the engine read from cached pages (the disk tier after a restart) count as reused.
          reused += Math.max(0, Math.min(end, r.reused) - done);
          done = end;
          report(done);
          this.status.updateFigures(engine);
        }
      } catch (e) {
        if (!isCancel(e) && !signal.aborted) throw e;
        this.status.setState('ready', { message: `indexing cancelled at ${done}/${ids.length} tokens` });
        this.status.updateFigures(engine, { lastPromptTokens: ids.length, lastReusedTokens: reused });
        return result(done, reused, true);
      }
      this.status.setState('ready', { message: `indexed ${built.files.length} files (${ids.length} tokens, ${reused} reused)` });
      this.status.updateFigures(engine, { lastPromptTokens: ids.length, lastReusedTokens: reused });
      return result(done, reused, false);
    });
  }

  async complete(params: unknown, token?: CancelToken): Promise<CompleteResult> {
    const p = guardParams(() => parseCompleteParams(params));
    return this.runJob('complete', token, async (signal) => {
      const engine = await this.ensureEngine();
      const config = this.config!;
      const maxTokens = p.maxTokens ?? 64;
      const built = this.prompts!.completion(this.repoName, this.files, p.path, p.prefix, p.suffix, config.contextTokens, maxTokens);
      const bctx = boundaryContext(p.prefix, p.suffix, p.maxLines ?? 8);
      const local = linkedController(signal);
      let streamed = '';
      let cut: string | undefined;
      let sentFirst = p.partialResultToken === undefined;
      const r = await engine.generate(built.ids, {
        maxTokens,
        sampler: { temperature: 0 },
        lookup: { maxDraft: LOOKUP_DRAFT },
        signal: local.signal,
        onText: (piece) => {
          if (cut !== undefined) return;
          streamed += piece;
          const c = cutCompletion(streamed, bctx);
          if (c.done) {
            cut = c.text;
            local.abort();
            return;
          }
          if (!sentFirst) {
            // The editor shows the first line now; the rest follows in the response.
            const line = firstLine(streamed, bctx);
            if (line !== undefined) {
              sentFirst = true;
              this.deps.sendProgress(CompletePartialType, p.partialResultToken!, { text: line });
            }
          }
        },
      });
      local.dispose();
      if (signal.aborted) throw new CancelledError();
      const text = cut ?? finishCompletion(r.text, bctx);
      this.recordSpeed(engine, r);
      return {
        text,
        stopReason: cut !== undefined ? 'boundary' : r.stopReason === 'stop' ? 'boundary' : r.stopReason,
        promptTokens: r.promptTokens,
        reusedTokens: r.reusedTokens,
        prefillMs: r.prefillMs,
        decodeMs: r.decodeMs,
        generatedTokens: r.tokens.length,
        ...(r.draftTokens !== undefined ? { draftTokens: r.draftTokens, acceptedDrafts: r.acceptedDrafts } : {}),
      };
    });
  }

  async ask(params: unknown, token?: CancelToken): Promise<AskResult> {
    const p = guardParams(() => parseAskParams(params));
    return this.runJob('ask', token, async (signal) => {
      const engine = await this.ensureEngine();
      const config = this.config!;
      const maxTokens = p.maxTokens ?? 256;
      const built = this.prompts!.ask(this.repoName, this.files, p.question, config.contextTokens, maxTokens);
      this.status.setState('busy', { message: `answering (${built.ids.length} prompt tokens, ${built.files.length} files)` });
      // The engine's attention read-out over the answer's steps, for citations (specache has one).
      const tracking = engine.trackAttention?.(true) ?? false;
      let r;
      let attention: Map<string, number> | undefined;
      try {
        r = await engine.generate(built.ids, {
          maxTokens,
          sampler: { temperature: 0 },
          signal,
          onText: (delta) => {
            if (p.partialResultToken) this.deps.sendProgress(AskPartialType, p.partialResultToken, { delta });
          },
        });
        if (tracking && engine.attentionMass && built.headTokens > 0) {
          const mass = engine.attentionMass(built.headTokens);
          const spans = this.prompts!.fileSpans(this.repoName, built.files, built.headTokens);
          attention = attentionByFile(mass, spans);
        }
      } finally {
        if (tracking)
          try {
            engine.trackAttention!(false);
          } catch {
            // a decode still running (engine failure): the next ask turns it on again anyway
          }
        this.status.setState(this.paused ? 'paused' : 'ready');
      }
      this.recordSpeed(engine, r);
      const cited = built.files.map((f) => ({ path: f.path, text: f.text, mtimeMs: f.mtimeMs }));
      return {
        text: r.text,
        citations: citeFiles(p.question, r.text, cited, 3, attention),
        stopReason: signal.aborted ? 'cancelled' : r.stopReason,
        promptTokens: r.promptTokens,
        reusedTokens: r.reusedTokens,
        generatedTokens: r.tokens.length,
        prefillMs: r.prefillMs,
        decodeMs: r.decodeMs,
      };
    });
  }

  dispose(): void {
    this.scheduler.cancelAll();
    this.status.dispose();
    this.engine?.close();
    this.engine = undefined;
  }

  // ------------------------------------------------------------ internals

  private recordSpeed(engine: Engine, r: { promptTokens: number; reusedTokens: number; prefillMs: number; decodeMs: number; tokens: number[] }): void {
    const computed = r.promptTokens - r.reusedTokens;
    this.status.updateFigures(engine, {
      tokensPerSecond: r.tokens.length > 1 && r.decodeMs > 0 ? (r.tokens.length / r.decodeMs) * 1000 : this.status.current.figures.tokensPerSecond,
      prefillTokensPerSecond: computed > 16 && r.prefillMs > 0 ? (computed / r.prefillMs) * 1000 : this.status.current.figures.prefillTokensPerSecond,
      lastPromptTokens: r.promptTokens,
      lastReusedTokens: r.reusedTokens,
    });
  }

  private async ensureEngine(): Promise<Engine> {
    const config = this.config;
    if (!config) throw new ResponseError<ErrorData>(ErrorCode.ModelUnavailable, 'specode: the server has no settings yet (specode/configure was not sent).', { hint: 'Reload the window.' });
    const key = engineKey(config);
    if (this.engine && this.engineKey === key) return this.engine;
    if (this.engine) {
      this.engine.close();
      this.engine = undefined;
      this.engineKey = undefined;
      this.status.setModel(undefined, undefined, config.kvPolicy);
    }
    let path: string;
    try {
      path = this.deps.resolveModel(config.model);
    } catch (e) {
      const hint = isUserError(e) ? e.hint : undefined;
      this.status.setState('error', { message: (e as Error).message, hint });
      throw e;
    }
    this.status.setState('loading', { message: `loading ${path}` });
    const t0 = performance.now();
    try {
      this.engine = await this.deps.openEngine(path, config);
    } catch (e) {
      this.status.setState('error', { message: `could not open ${path}: ${(e as Error).message}`, hint: (e as { hint?: string }).hint });
      throw e;
    }
    this.engineKey = key;
    this.prompts = new PromptBuilder(this.engine);
    this.deps.log(`loaded ${path} in ${((performance.now() - t0) / 1000).toFixed(2)} s (${this.engine.backend})`);
    this.status.setModel(
      { name: this.engine.model.name, path, arch: this.engine.model.arch, fileType: this.engine.model.fileType, nCtx: this.engine.model.nCtx, fim: this.engine.model.fim },
      this.engine.backend,
      config.kvPolicy,
    );
    this.status.setState(this.paused ? 'paused' : 'ready');
    this.status.updateFigures(this.engine);
    return this.engine;
  }

  private async runJob<T>(kind: JobKind, token: CancelToken | undefined, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.paused && kind !== 'admin') throw new ResponseError<ErrorData>(ErrorCode.Paused, 'specode is paused.', { hint: "Run 'specode: Pause / Resume' to resume." });
    if (token?.isCancellationRequested) throw new ResponseError(ErrorCode.RequestCancelled, 'specode: the request was cancelled before it started.');
    const handle = this.scheduler.submit(kind, run);
    const sub = token?.onCancellationRequested(() => handle.cancel());
    try {
      return await handle.result;
    } catch (e) {
      throw this.toResponseError(e, kind);
    } finally {
      sub?.dispose();
    }
  }

  private toResponseError(e: unknown, what: string): ResponseError<ErrorData> {
    if (e instanceof ResponseError) return e as ResponseError<ErrorData>;
    if (e instanceof SupersededError) return new ResponseError(ErrorCode.Superseded, e.message);
    if (e instanceof CancelledError || isCancel(e)) return new ResponseError(ErrorCode.RequestCancelled, `specode: ${what} was cancelled.`);
    if (e instanceof ParamsError) return new ResponseError(ErrorCode.InvalidParams, e.message);
    if (isUserError(e)) return new ResponseError<ErrorData>(ErrorCode.ModelUnavailable, e.message, e.hint ? { hint: e.hint } : undefined);
    const err = e as { code?: unknown; message?: string; stack?: string };
    if (typeof err?.code === 'string') {
      this.status.warn(`${what} failed: ${err.message}`);
      return new ResponseError(ErrorCode.EngineFailed, `specode engine (${err.code}): ${err.message}`);
    }
    this.deps.log(`${what} failed: ${err?.stack ?? String(e)}`);
    this.status.warn(`${what} failed: ${err?.message ?? String(e)}`);
    return new ResponseError(ErrorCode.EngineFailed, `specode: ${what} failed: ${err?.message ?? String(e)}`);
  }
}

function guardParams<T>(parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    if (e instanceof ParamsError) throw new ResponseError(ErrorCode.InvalidParams, e.message);
    throw e;
  }
}

function engineKey(c: ServerConfig): string {
  return JSON.stringify([c.model, c.backend, c.deviceBudgetMiB, c.contextTokens, c.kvPolicy, c.kvBits, c.topK, c.kvDiskCache !== false]);
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function isCancel(e: unknown): boolean {
  const x = e as { code?: string; name?: string };
  return x?.code === 'CANCELLED' || x?.name === 'AbortError' || e instanceof CancelledError;
}

/** An AbortController that also aborts when `parent` does. */
function linkedController(parent: AbortSignal): AbortController & { dispose(): void } {
  const c = new AbortController() as AbortController & { dispose(): void };
  const onAbort = () => c.abort(parent.reason);
  if (parent.aborted) c.abort(parent.reason);
  else parent.addEventListener('abort', onAbort, { once: true });
  c.dispose = () => parent.removeEventListener('abort', onAbort);
  return c;
}

function toSignal(token: CancelToken | undefined): { signal: AbortSignal; dispose(): void } {
  const c = new AbortController();
  if (token?.isCancellationRequested) c.abort();
  const sub = token?.onCancellationRequested(() => c.abort());
  return { signal: c.signal, dispose: () => sub?.dispose() };
}

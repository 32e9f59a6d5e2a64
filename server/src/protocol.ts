// protocol.ts — specode's custom LSP messages, typed once and imported by both
// sides: the extension (client) and the language server. Nothing else may
// declare a 'specode/…' method name.
//
// Requests go client → server except where noted. Every request's params
// have a parse function here that the server applies to what arrives, so bad
// input becomes a clear InvalidParams error instead of a crash.
import { NotificationType, ProgressType, RequestType, RequestType0 } from 'vscode-languageserver-protocol';

/** Bumped when a message changes shape; the server reports it in Status. */
export const PROTOCOL_VERSION = 1;

// ---------------------------------------------------------------- errors

/** JSON-RPC error codes specode uses in responses. */
export const ErrorCode = {
  /** Params failed validation; the message names the field and what was expected. */
  InvalidParams: -32602,
  /** The model could not be opened (missing, damaged, not GGUF); `data.hint` says what to do. */
  ModelUnavailable: -32010,
  /** The engine failed while running (out of memory, context full …). */
  EngineFailed: -32011,
  /** The user paused specode. */
  Paused: -32012,
  /** A newer completion request replaced this one before it finished. */
  Superseded: -32013,
  /** LSP's RequestCancelled: the client cancelled ($/cancelRequest). */
  RequestCancelled: -32800,
} as const;

/** `data` of an error response. */
export interface ErrorData {
  hint?: string;
}

// ---------------------------------------------------------------- configure

export const KV_POLICIES = ['specache', 'full', 'offload-all', 'tailorkv', 'gear', 'kvmerger', 'h2o', 'streamingllm', 'kivi'] as const;
export type KvPolicy = (typeof KV_POLICIES)[number];
export const BACKENDS = ['auto', 'cpu', 'cuda'] as const;
export type Backend = (typeof BACKENDS)[number];

/** The settings the server needs (the extension reads them from `specode.*`). */
export interface ServerConfig {
  /** Registry model name (see `specode model list`) or a path to a .gguf file. */
  model: string;
  backend: Backend;
  /** Device memory the engine may use, MiB; 0 = no limit. */
  deviceBudgetMiB: number;
  /** Most tokens in the long prompt (repo + current file + answer). */
  contextTokens: number;
  kvPolicy: KvPolicy;
  /** Bits of the low-bit KV copy (SpeCache, KIVI). */
  kvBits: 1 | 2;
  /** Rows fetched per step (SpeCache top-k). */
  topK: number;
  /**
   * Keep the repo prefix's KV pages in the user cache (<cache>/kv) so a restarted server
   * reads them instead of prefilling again (paged policies). Default true.
   */
  kvDiskCache?: boolean;
}

export interface ConfigureResult {
  protocolVersion: number;
  /** The engine will be reopened with the new settings before the next request. */
  reopen: boolean;
}

export const Configure = new RequestType<ServerConfig, ConfigureResult, void>('specode/configure');

// ---------------------------------------------------------------- repository context

export interface ContextFile {
  /** Path relative to the workspace folder, forward slashes. */
  path: string;
  text: string;
  /** Last change; files that change least go first in the prompt. */
  mtimeMs: number;
}

export interface SetContextParams {
  repoName: string;
  /** Ordered least-changing first (the server keeps the order). */
  files: ContextFile[];
}

export interface SetContextResult {
  files: number;
  bytes: number;
}

/** Replace the repository files the prompts are built from (cheap: no model work). */
export const SetContext = new RequestType<SetContextParams, SetContextResult, void>('specode/setContext');

export interface IndexParams {
  /** Progress token the client listens on (`IndexProgress`). */
  workDoneToken?: string;
}

export interface IndexProgress {
  /** Tokens of the repo prefix already in the KV cache. */
  done: number;
  total: number;
  message: string;
}

export interface IndexResult {
  files: number;
  /** Files that did not fit the context budget. */
  filesDropped: number;
  tokens: number;
  /** Tokens whose KV was already cached (not recomputed). */
  reusedTokens: number;
  ms: number;
  cancelled: boolean;
}

/** Prefill the repo prefix into the KV cache (long; cancellable; reports progress). */
export const Index = new RequestType<IndexParams, IndexResult, void>('specode/index');
export const IndexProgressType = new ProgressType<IndexProgress>();

// ---------------------------------------------------------------- completion

export interface CompleteParams {
  /** Path of the current file relative to the workspace folder. */
  path: string;
  languageId: string;
  /** Text before the cursor (the client may cut it; the server cuts to budget). */
  prefix: string;
  /** Text after the cursor. */
  suffix: string;
  /** Most tokens to generate (default 64). */
  maxTokens?: number;
  /** Most lines in the completion (default 8); 1 forces a single line. */
  maxLines?: number;
  /**
   * Progress token for CompletePartial: when the completion may run to several lines,
   * its first line is sent there as soon as it is complete, before the response.
   */
  partialResultToken?: string;
}

/** The first line of a multi-line completion, ahead of the whole completion (the response). */
export interface CompletePartial {
  text: string;
}
export const CompletePartialType = new ProgressType<CompletePartial>();

export type CompleteStop = 'eos' | 'boundary' | 'length' | 'cancelled';

export interface CompleteResult {
  text: string;
  stopReason: CompleteStop;
  promptTokens: number;
  reusedTokens: number;
  prefillMs: number;
  decodeMs: number;
  generatedTokens: number;
  /** Prompt-lookup draft tokens run in the generation, and how many were kept (absent when none ran). */
  draftTokens?: number;
  acceptedDrafts?: number;
}

/** Inline completion at the cursor. Cancel with $/cancelRequest; a newer one replaces a running one. */
export const Complete = new RequestType<CompleteParams, CompleteResult, ErrorData>('specode/complete');

// ---------------------------------------------------------------- questions

export interface AskParams {
  question: string;
  /** Progress token on which partial answer text streams (`AskPartial`). */
  partialResultToken?: string;
  maxTokens?: number;
}

export interface AskPartial {
  /** New text since the last partial. */
  delta: string;
}

export interface Citation {
  /** Repo-relative path of a file in the context. */
  path: string;
  /** 1-based line the citation points at, when known. */
  line?: number;
  /** How the file was chosen: 'attention' (engine attention mass), 'mention' (named in the answer), 'overlap' (shared rare words). */
  how: 'attention' | 'mention' | 'overlap';
  /** Relative strength in [0, 1] (within this answer). */
  score: number;
}

export interface AskResult {
  text: string;
  citations: Citation[];
  stopReason: 'eos' | 'stop' | 'length' | 'cancelled';
  promptTokens: number;
  reusedTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
}

/** A question about the repository; the answer streams as AskPartial progress; cancel to stop it. */
export const Ask = new RequestType<AskParams, AskResult, ErrorData>('specode/ask');
export const AskPartialType = new ProgressType<AskPartial>();

// ---------------------------------------------------------------- status and metrics

export type ServerState = 'idle' | 'loading' | 'indexing' | 'ready' | 'busy' | 'paused' | 'error';

/**
 * Figures for the status bar. Absent = not known: the engine did not report it
 * (never filled with a guess). `computed*` fields are derived by the server
 * from exact quantities and are labelled as such.
 */
export interface Figures {
  /** Device bytes in use (weights + low-bit KV + buffers), as reported by the engine. */
  deviceBytes?: number;
  /** Host RAM bytes of KV pages, as reported by the engine. */
  hostKvBytes?: number;
  /** fp16 KV bytes / device KV bytes, as reported by the engine. */
  compressionRatio?: number;
  /** Fraction of needed rows already in the prefetch buffer, as reported by the engine. */
  prefetchHitRate?: number;
  /** Bytes of the model weights (from the GGUF). */
  weightBytes?: number;
  /** Tokens in the KV cache. */
  kvTokens?: number;
  /** kvTokens × layers × kv-heads × head-dim × 2 (K and V) × 2 bytes (fp16): the full-precision KV size. */
  computedKvBytes?: number;
  /** Generation speed of the last request, tokens per second. */
  tokensPerSecond?: number;
  /** Prefill speed of the last request (recomputed tokens only), tokens per second. */
  prefillTokensPerSecond?: number;
  lastPromptTokens?: number;
  lastReusedTokens?: number;
  /** Every numeric field `ctx.metrics()` returned, by its own name. */
  engine?: Record<string, number>;
}

export interface ModelSummary {
  name: string;
  path: string;
  arch: string;
  fileType: string;
  nCtx: number;
  fim: boolean;
}

export interface ServerStatus {
  health: 'ok' | 'warning' | 'error';
  state: ServerState;
  /** One line for people, e.g. what went wrong. */
  message?: string;
  /** What to do about an error. */
  hint?: string;
  /** Progress of loading or indexing, when known. */
  progress?: { done: number; total: number };
  model?: ModelSummary;
  /** e.g. "cpu (avx2)". */
  backend?: string;
  /** The KV policy the server asked the engine for. */
  kvPolicy?: KvPolicy;
  figures: Figures;
  /** Files in the repository context. */
  contextFiles: number;
  pid: number;
  protocolVersion: number;
}

/** Server → client, whenever the status changes (throttled). */
export const StatusNotification = new NotificationType<ServerStatus>('specode/status');

/** The current status, on demand. */
export const GetStatus = new RequestType0<ServerStatus, void>('specode/status');

export interface PauseParams {
  paused: boolean;
}

/** Pause: the running request stops, new completions and questions are refused until resumed. */
export const Pause = new RequestType<PauseParams, void, void>('specode/pause');

// ---------------------------------------------------------------- scheduler counters

export interface SchedulerStatsParams {
  /** After reading, start the peaks again from what is running and waiting now. */
  resetPeaks?: boolean;
}

/**
 * The server's engine-job counters (lsp/scheduler.ts) and its own memory, for
 * benchmarks and diagnostics (`specode bench editor` reads the storm's peaks here).
 * Peaks are since the last `resetPeaks`; counts are since the server started.
 */
export interface SchedulerStats {
  /** Engine jobs whose work has started and not settled (0 or 1 by design). */
  running: number;
  waiting: number;
  peakRunning: number;
  peakWaiting: number;
  /** Most jobs running + waiting at once. */
  peakPending: number;
  submitted: number;
  finished: number;
  superseded: number;
  cancelled: number;
  failed: number;
  /** process.memoryUsage() of the server, bytes. */
  rssBytes: number;
  heapUsedBytes: number;
}

/** The scheduler's counters, on demand (answered at once, outside the job queue). */
export const GetSchedulerStats = new RequestType<SchedulerStatsParams, SchedulerStats, void>('specode/schedulerStats');

// ---------------------------------------------------------------- models

export interface ModelEntry {
  name: string;
  description: string;
  fetched: boolean;
  isDefault: boolean;
  path: string;
  downloadBytes: number;
  fim: boolean;
}

export const ListModels = new RequestType0<ModelEntry[], void>('specode/listModels');

export interface FetchModelParams {
  name: string;
  workDoneToken?: string;
}

export interface FetchModelProgress {
  message: string;
  /** In [0, 1] when known. */
  fraction?: number;
}

/** Download a registry model (the only network traffic specode makes; only on the user's request). */
export const FetchModel = new RequestType<FetchModelParams, { path: string }, ErrorData>('specode/fetchModel');
export const FetchModelProgressType = new ProgressType<FetchModelProgress>();

// ---------------------------------------------------------------- validation

/** Thrown by the parse functions; the server answers InvalidParams with `message`. */
export class ParamsError extends Error {
  constructor(method: string, message: string) {
    super(`${method}: ${message}`);
    this.name = 'ParamsError';
  }
}

type Obj = Record<string, unknown>;

function object(method: string, x: unknown): Obj {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new ParamsError(method, `params must be an object, got ${describe(x)}`);
  return x as Obj;
}

function describe(x: unknown): string {
  if (x === null) return 'null';
  if (Array.isArray(x)) return 'an array';
  if (typeof x === 'string') return `the string ${JSON.stringify(x.length > 40 ? x.slice(0, 40) + '…' : x)}`;
  return typeof x === 'object' ? 'an object' : `${typeof x} ${String(x)}`;
}

function str(method: string, o: Obj, key: string, opts: { optional?: boolean; nonEmpty?: boolean } = {}): string {
  const v = o[key];
  if (v === undefined && opts.optional) return undefined as unknown as string;
  if (typeof v !== 'string') throw new ParamsError(method, `'${key}' must be a string, got ${describe(v)}`);
  if (opts.nonEmpty && v.trim() === '') throw new ParamsError(method, `'${key}' must not be empty`);
  return v;
}

function int(method: string, o: Obj, key: string, min: number, max: number, optional = false): number {
  const v = o[key];
  if (v === undefined && optional) return undefined as unknown as number;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new ParamsError(method, `'${key}' must be an integer in [${min}, ${max}], got ${describe(v)}`);
  return v;
}

function oneOf<T extends string>(method: string, o: Obj, key: string, values: readonly T[]): T {
  const v = o[key];
  if (typeof v !== 'string' || !values.includes(v as T))
    throw new ParamsError(method, `'${key}' must be one of ${values.join(', ')}, got ${describe(v)}`);
  return v as T;
}

function dropUndefined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

const MAX_TEXT = 16 * 1024 * 1024;

export function parseServerConfig(x: unknown): ServerConfig {
  const m = Configure.method;
  const o = object(m, x);
  return {
    model: str(m, o, 'model'),
    backend: oneOf(m, o, 'backend', BACKENDS),
    deviceBudgetMiB: int(m, o, 'deviceBudgetMiB', 0, 1 << 24),
    contextTokens: int(m, o, 'contextTokens', 256, 1 << 20),
    kvPolicy: oneOf(m, o, 'kvPolicy', KV_POLICIES),
    kvBits: int(m, o, 'kvBits', 1, 2) as 1 | 2,
    topK: int(m, o, 'topK', 1, 1 << 16),
    ...(o.kvDiskCache === undefined ? {} : { kvDiskCache: bool(m, o, 'kvDiskCache') }),
  };
}

function bool(method: string, o: Obj, key: string): boolean {
  if (typeof o[key] !== 'boolean') throw new ParamsError(method, `'${key}' must be true or false, got ${describe(o[key])}`);
  return o[key] as boolean;
}

export function parseSetContextParams(x: unknown): SetContextParams {
  const m = SetContext.method;
  const o = object(m, x);
  const files = o.files;
  if (!Array.isArray(files)) throw new ParamsError(m, `'files' must be an array, got ${describe(files)}`);
  let total = 0;
  const out: ContextFile[] = files.map((f, i) => {
    const fo = object(`${m} files[${i}]`, f);
    const file = { path: str(`${m} files[${i}]`, fo, 'path', { nonEmpty: true }), text: str(`${m} files[${i}]`, fo, 'text'), mtimeMs: Number(fo.mtimeMs) };
    if (!Number.isFinite(file.mtimeMs)) throw new ParamsError(m, `files[${i}].mtimeMs must be a number, got ${describe(fo.mtimeMs)}`);
    total += file.text.length;
    return file;
  });
  if (total > 16 * MAX_TEXT) throw new ParamsError(m, `the files hold ${total} characters; the limit is ${16 * MAX_TEXT}`);
  return { repoName: str(m, o, 'repoName'), files: out };
}

export function parseIndexParams(x: unknown): IndexParams {
  const m = Index.method;
  const o = x === undefined || x === null ? {} : object(m, x);
  return dropUndefined({ workDoneToken: str(m, o, 'workDoneToken', { optional: true }) });
}

export function parseCompleteParams(x: unknown): CompleteParams {
  const m = Complete.method;
  const o = object(m, x);
  const p: CompleteParams = {
    path: str(m, o, 'path', { nonEmpty: true }),
    languageId: str(m, o, 'languageId'),
    prefix: str(m, o, 'prefix'),
    suffix: str(m, o, 'suffix'),
    maxTokens: int(m, o, 'maxTokens', 1, 4096, true),
    maxLines: int(m, o, 'maxLines', 1, 1000, true),
    partialResultToken: str(m, o, 'partialResultToken', { optional: true }),
  };
  if (p.prefix.length + p.suffix.length > MAX_TEXT) throw new ParamsError(m, `prefix + suffix hold ${p.prefix.length + p.suffix.length} characters; the limit is ${MAX_TEXT}`);
  return dropUndefined(p);
}

export function parseAskParams(x: unknown): AskParams {
  const m = Ask.method;
  const o = object(m, x);
  return dropUndefined({
    question: str(m, o, 'question', { nonEmpty: true }),
    partialResultToken: str(m, o, 'partialResultToken', { optional: true }),
    maxTokens: int(m, o, 'maxTokens', 1, 8192, true),
  });
}

export function parsePauseParams(x: unknown): PauseParams {
  return { paused: bool(Pause.method, object(Pause.method, x), 'paused') };
}

export function parseSchedulerStatsParams(x: unknown): SchedulerStatsParams {
  const m = GetSchedulerStats.method;
  const o = x === undefined || x === null ? {} : object(m, x);
  return dropUndefined({ resetPeaks: o.resetPeaks === undefined ? undefined : bool(m, o, 'resetPeaks') });
}

export function parseFetchModelParams(x: unknown): FetchModelParams {
  const m = FetchModel.method;
  const o = object(m, x);
  return dropUndefined({ name: str(m, o, 'name', { nonEmpty: true }), workDoneToken: str(m, o, 'workDoneToken', { optional: true }) });
}

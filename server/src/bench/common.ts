// common.ts — what every bench suite shares: the JSON envelope of
// shared/BENCH.md (suite, model + sha256, backend, device, threads, date,
// commit), medians, and a deterministic corpus of real source code.
import { execSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, readdirSync, statSync } from 'node:fs';
import { cpus } from 'node:os';
import { basename, dirname, extname, join } from 'node:path';

export interface Envelope {
  suite: string;
  model: { name: string; path: string; sha256: string };
  backend: 'cpu' | 'cuda';
  device: string;
  threads: number;
  date: string;
  commit: string;
  rows: unknown[];
  [extra: string]: unknown;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((res, rej) => createReadStream(path).on('data', (d) => h.update(d)).on('end', () => res()).on('error', rej));
  return h.digest('hex');
}

export function gitCommit(): string {
  try {
    return execSync('git rev-parse --short HEAD', { stdio: ['ignore', 'pipe', 'ignore'], cwd: __dirname }).toString().trim();
  } catch {
    return 'unknown';
  }
}

export async function envelope(suite: string, modelName: string, modelPath: string, threads: number): Promise<Envelope> {
  return {
    suite,
    model: { name: modelName, path: modelPath, sha256: await sha256File(modelPath) },
    backend: 'cpu',
    device: cpus()[0]?.model ?? 'unknown CPU',
    threads,
    date: new Date().toISOString(),
    commit: gitCommit(),
    rows: [],
  };
}

/** specache*: how a bench asks for the low-bit copy's scales and zeros (ContextOptions.paramBits);
 * 'auto' leaves the choice to the engine (8 at 2 bits, 16 at 1 bit on the CPU). */
export type ParamBits = 'auto' | 8 | 16;

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Progress and logs go to stderr; stdout carries only the JSON. */
export function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

const SOURCE_EXT = new Set(['.js', '.ts', '.mjs', '.cjs', '.c', '.h', '.cc', '.cpp', '.py', '.md', '.json', '.d.ts']);

/** The speed benches' input: installed sources (first files in sorted order, 1 MiB) tokenized
 * once, the same ids for every engine and backend. */
export function speedCorpusIds(tokenizer: { encode(text: string, o: { addSpecial: boolean; parseSpecial: boolean }): number[] }): number[] {
  const corpus = realSourceFiles([join(projectRoot(), 'node_modules')], 1 << 20).map((f) => f.text).join('\n');
  return tokenizer.encode(corpus, { addSpecial: false, parseSpecial: false });
}

/**
 * Real source files this project did not write (from installed npm packages),
 * in a deterministic order, until `bytes` are collected. Skips minified and
 * non-UTF-8 files.
 */
export function realSourceFiles(roots: string[], bytes: number, maxFileBytes = 64 * 1024): { path: string; text: string }[] {
  const out: { path: string; text: string }[] = [];
  let total = 0;
  const visit = (dir: string): boolean => {
    let entries: string[];
    try {
      entries = readdirSync(dir).sort();
    } catch {
      return false;
    }
    for (const name of entries) {
      if (total >= bytes) return true;
      const p = join(dir, name);
      let st;
      try {
        st = statSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) {
        if (name !== '.bin' && visit(p)) return true;
      } else if (st.isFile() && SOURCE_EXT.has(extname(name)) && st.size > 200 && st.size <= maxFileBytes && !basename(p).includes('.min.')) {
        let text: string;
        try {
          text = new TextDecoder('utf-8', { fatal: true }).decode(readFileSync(p));
        } catch {
          continue;
        }
        if (text.split('\n').some((l) => l.length > 2000)) continue;
        out.push({ path: p, text });
        total += st.size;
      }
    }
    return total >= bytes;
  };
  for (const r of roots) if (visit(r)) break;
  return out;
}

/** The project folder (holding package.json and node_modules), from the bundle or the sources. */
export function projectRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    try {
      if (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).name === 'specode') return dir;
    } catch {
      // keep looking upwards
    }
    dir = dirname(dir);
  }
  throw new Error(`bench: cannot find the specode project folder above ${__dirname}`);
}

// haystack.ts — RULER-style inputs for `specode bench fidelity`, built from
// text this project did not write: source code of installed npm packages and
// their README / markdown / LICENSE prose. Everything is a pure function of a
// seed, so every policy sees the same token ids.
//
// Work is done in token-id space: the haystack is tokenized once, needles are
// inserted at token boundaries that end a line (a word boundary when no line
// end is near), and the prompt is head ids + haystack ids (needles inside) +
// tail ids. Prompts of one trial that differ only in the needle's depth then
// share every id before the needle, so a context can keep that prefix's KV.
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { extname, join, relative } from 'node:path';

/** What haystack assembly needs from a tokenizer. */
export interface TextTokenizer {
  /** Plain text to ids: no BOS/EOS, special-token texts not parsed. */
  encode(text: string): number[];
  /** Ids to text. */
  decode(ids: ArrayLike<number>): string;
}

// ------------------------------------------------------------ seeded randomness

/** mulberry32: a small, fast PRNG; returns floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A 32-bit seed from any parts (e.g. base seed, task, ctx, trial). */
export function deriveSeed(...parts: (string | number)[]): number {
  return createHash('sha256').update(parts.join('\u0000')).digest().readUInt32LE(0);
}

export function shuffle<T>(xs: readonly T[], rand: () => number): T[] {
  const a = xs.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

// ------------------------------------------------------------ documents

export type DocKind = 'code' | 'prose';

export interface DocRef {
  /** Path shown to the model: relative to the root it was found under. */
  path: string;
  abs: string;
  kind: DocKind;
  size: number;
}

export interface Doc extends DocRef {
  text: string;
}

const CODE_EXT = new Set(['.js', '.mjs', '.cjs', '.ts', '.mts', '.cts', '.jsx', '.tsx', '.c', '.h', '.cc', '.cpp', '.py']);
const PROSE_EXT = new Set(['.md', '.markdown', '.txt', '.rst']);
const PROSE_NAMES = /^(readme|license|licence|changelog|history|contributing|notice|authors)(\.|$)/i;

/** 'code', 'prose' or undefined (not used) for a file name. */
export function classify(name: string): DocKind | undefined {
  const lower = name.toLowerCase();
  if (lower.includes('.min.')) return undefined;
  if (PROSE_NAMES.test(name)) return 'prose';
  const ext = extname(lower);
  if (PROSE_EXT.has(ext)) return 'prose';
  if (CODE_EXT.has(ext)) return 'code';
  return undefined;
}

/**
 * Every candidate file under the roots (node_modules trees), in sorted path
 * order, without reading contents. Sizes between minBytes and maxBytes.
 */
export function listDocs(roots: string[], minBytes = 400, maxBytes = 48 * 1024): DocRef[] {
  const out: DocRef[] = [];
  const visit = (root: string, dir: string, depth: number): void => {
    if (depth > 12) return;
    let entries: string[];
    try {
      entries = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const name of entries) {
      if (name === '.bin' || name === '.cache' || name === '.git') continue;
      const p = join(dir, name);
      let st;
      try {
        st = statSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) visit(root, p, depth + 1);
      else if (st.isFile() && st.size >= minBytes && st.size <= maxBytes) {
        const kind = classify(name);
        if (kind) out.push({ path: relative(root, p), abs: p, kind, size: st.size });
      }
    }
  };
  for (const r of roots) visit(r, r, 0);
  return out;
}

/** Read a file as a document, or undefined when unfit (not UTF-8, minified lines, mentions a passkey). */
export function readDoc(ref: DocRef, maxLine = 400): Doc | undefined {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(readFileSync(ref.abs));
  } catch {
    return undefined;
  }
  text = text.replace(/\r\n?/g, '\n');
  if (text.includes('\u0000')) return undefined;
  if (text.split('\n').some((l) => l.length > maxLine)) return undefined;
  // The needle's wording must be the only passkey in the haystack.
  if (/pass\s*key/i.test(text)) return undefined;
  return { ...ref, text };
}

/** Near-duplicate key: license texts differ in their copyright lines only. */
function dedupKey(text: string): string {
  const norm = text
    .split('\n')
    .filter((l) => !/copyright|\(c\)|©/i.test(l))
    .join('\n')
    .replace(/\s+/g, ' ')
    .trim();
  return createHash('sha1').update(norm).digest('hex');
}

/**
 * Documents in a seeded order: `kind` 'mixed' alternates prose and code.
 * Reads files lazily; yields until the caller stops.
 */
export function* seededDocs(refs: readonly DocRef[], seed: number, kind: DocKind | 'mixed'): Generator<Doc> {
  const rand = rng(seed);
  const pools = (kind === 'mixed' ? (['prose', 'code'] as DocKind[]) : [kind]).map((k) => shuffle(refs.filter((r) => r.kind === k), rand));
  const idx = pools.map(() => 0);
  const seen = new Set<string>();
  let turn = 0;
  for (;;) {
    let produced = false;
    for (let tries = 0; tries < pools.length; tries++) {
      const p = (turn + tries) % pools.length;
      while (idx[p] < pools[p].length) {
        const doc = readDoc(pools[p][idx[p]++]);
        if (!doc) continue;
        const key = dedupKey(doc.text);
        if (seen.has(key)) continue;
        seen.add(key);
        yield doc;
        produced = true;
        break;
      }
      if (produced) {
        turn = p + 1;
        break;
      }
    }
    if (!produced) return;
  }
}

// ------------------------------------------------------------ haystack

export interface Haystack {
  ids: number[];
  /** Documents used, in order (the last one may be cut short). */
  docs: string[];
}

/** How a document appears in the haystack. */
export function docText(doc: Pick<Doc, 'path' | 'text'>): string {
  return `File: ${doc.path}\n${doc.text}${doc.text.endsWith('\n') ? '' : '\n'}\n`;
}

/**
 * Exactly `nTokens` ids of real documents (seeded order), tokenized as one
 * text, so that the ids are the tokenizer's own.
 */
export function buildHaystack(tok: TextTokenizer, docs: Iterable<Doc>, nTokens: number): Haystack {
  let text = '';
  const used: string[] = [];
  let estimate = 0;
  let ids: number[] = [];
  for (const d of docs) {
    text += docText(d);
    used.push(d.path);
    estimate += d.text.length / 3.0;  // chars per token is ~3–4 for code and prose
    if (estimate >= nTokens * 1.1) {
      ids = tok.encode(text);
      if (ids.length >= nTokens) break;
      estimate = ids.length;
    }
  }
  if (ids.length < nTokens) ids = tok.encode(text);
  if (ids.length < nTokens) throw new Error(`haystack: the documents give ${ids.length} tokens, ${nTokens} wanted`);
  return { ids: ids.slice(0, nTokens), docs: used };
}

/** `n` evenly spaced depths from 0 to 1 (RULER: 0%, 11%, …, 100% for n = 10). */
export function depths(n: number): number[] {
  if (n <= 1) return [0.5];
  return Array.from({ length: n }, (_, i) => i / (n - 1));
}

/**
 * Token boundaries (0..ids.length) where a needle may go, as two sorted lists:
 * `lines` after a token whose text ends a line, `words` before a token that
 * starts with a space (a word boundary), plus both ends.
 */
export function boundaries(tok: TextTokenizer, ids: readonly number[]): { lines: number[]; words: number[] } {
  const lines = [0];
  const words = [0];
  for (let i = 1; i < ids.length; i++) {
    const prev = tok.decode([ids[i - 1]]);
    const next = tok.decode([ids[i]]);
    if (prev.endsWith('\n')) lines.push(i);
    else if (next.startsWith(' ') && !prev.endsWith(' ')) words.push(i);
  }
  lines.push(ids.length);
  words.push(ids.length);
  return { lines, words };
}

function nearest(sorted: readonly number[], target: number): number {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < target) lo = mid + 1;
    else hi = mid;
  }
  const a = sorted[lo];
  const b = lo > 0 ? sorted[lo - 1] : a;
  return Math.abs(b - target) <= Math.abs(a - target) ? b : a;
}

/**
 * The insertion index for a needle at `depth` (0..1) of a haystack of `n`
 * tokens: the nearest line end, unless none is within `tol` tokens, then the
 * nearest word boundary.
 */
export function cutAt(b: { lines: number[]; words: number[] }, n: number, depth: number, tol: number): number {
  const target = Math.round(depth * n);
  const line = nearest(b.lines, target);
  if (Math.abs(line - target) <= tol) return line;
  const word = nearest(b.words, target);
  return Math.abs(word - target) < Math.abs(line - target) ? word : line;
}

export interface Needle {
  key: string;
  value: string;
  text: string;
  /** Ids of "\n" + text + "\n". */
  ids: number[];
}

const FIRST = ['Ada', 'Bram', 'Celia', 'Dmitri', 'Elif', 'Farid', 'Greta', 'Hugo', 'Ines', 'Jonas', 'Kaori', 'Lars', 'Mirela', 'Nadia', 'Oskar', 'Priya', 'Quentin', 'Rosa', 'Stellan', 'Tamsin', 'Ulrich', 'Vera', 'Wendell', 'Ximena', 'Yusuf', 'Zora'];
const LAST = ['Abernathy', 'Bergstrom', 'Castellano', 'Delacroix', 'Eriksen', 'Fairbanks', 'Gallagher', 'Hollis', 'Ivanova', 'Jablonski', 'Kowalczyk', 'Lindqvist', 'Marchetti', 'Novak', 'Okafor', 'Pemberton', 'Quintero', 'Rasmussen', 'Sorensen', 'Thornbury', 'Underhill', 'Valdivia', 'Whitfield', 'Yamamoto', 'Zielinski'];

export function needleSentence(key: string, value: string): string {
  return `The secret passkey for ${key} is ${value}.`;
}

/** `n` needles with distinct random names and distinct 5-digit passkeys. */
export function makeNeedles(tok: TextTokenizer, rand: () => number, n: number): Needle[] {
  const out: Needle[] = [];
  const keys = new Set<string>();
  const values = new Set<string>();
  while (out.length < n) {
    const key = `${FIRST[Math.floor(rand() * FIRST.length)]} ${LAST[Math.floor(rand() * LAST.length)]}`;
    const value = String(10000 + Math.floor(rand() * 90000));
    if (keys.has(key) || values.has(value) || keys.has(key.split(' ')[0])) continue;
    keys.add(key);
    values.add(value);
    const text = needleSentence(key, value);
    out.push({ key, value, text, ids: tok.encode(`\n${text}\n`) });
  }
  return out;
}

export interface Placed {
  /** Haystack ids with the needles inside. */
  ids: number[];
  /** Index in `ids` where each needle (same order as given) starts. */
  starts: number[];
  /** Haystack index before which each needle went (its depth is cut / haystack length). */
  cuts: number[];
}

/**
 * Insert needles into a haystack at the given depths (0..1). Cut points are
 * chosen in haystack coordinates, so a needle at a fixed depth sits after the
 * same haystack ids whatever the other needles do.
 */
export function placeNeedles(
  tok: TextTokenizer,
  hay: readonly number[],
  needles: { ids: number[]; depth: number }[],
  opts: { tol?: number; bounds?: { lines: number[]; words: number[] } } = {},
): Placed {
  const b = opts.bounds ?? boundaries(tok, hay);
  const tol = opts.tol ?? Math.max(1, Math.floor(hay.length * 0.005));
  const cuts = needles.map((n) => cutAt(b, hay.length, n.depth, tol));
  const order = needles.map((_, i) => i).sort((x, y) => cuts[x] - cuts[y] || x - y);
  const ids: number[] = [];
  const starts = new Array<number>(needles.length);
  let from = 0;
  for (const i of order) {
    for (let j = from; j < cuts[i]; j++) ids.push(hay[j]);
    from = cuts[i];
    starts[i] = ids.length;
    ids.push(...needles[i].ids);
  }
  for (let j = from; j < hay.length; j++) ids.push(hay[j]);
  return { ids, starts, cuts };
}

// ------------------------------------------------------------ prompts (Qwen2.5 ChatML)

export const QWEN_SYSTEM = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.';

/** Text before the haystack (special tokens spelled out). */
export function needlePromptHead(system = QWEN_SYSTEM): string {
  return (
    `<|im_start|>system\n${system}<|im_end|>\n<|im_start|>user\n` +
    'Below are files from a software project. A secret passkey is hidden somewhere in them. ' +
    'Find it and remember it; I will ask about it afterwards.\n\n'
  );
}

/** Text after the haystack: the question, then the assistant turn with RULER's answer prefix. */
export function needlePromptTail(key: string): string {
  return (
    `\nThat is the end of the files. What is the secret passkey for ${key}? Answer with the number only.<|im_end|>\n` +
    `<|im_start|>assistant\nThe secret passkey for ${key} is`
  );
}

// ------------------------------------------------------------ scoring

/** The first run of digits in an answer (e.g. " 48213." → "48213"), or ''. */
export function firstNumber(answer: string): string {
  const m = /\d+/.exec(answer);
  return m ? m[0] : '';
}

/** Exact-digits scoring: the answer's first number equals the passkey. */
export function scoreAnswer(answer: string, expected: string): boolean {
  return firstNumber(answer) === expected;
}

/** Whether generation can stop: a number has started and ended. */
export function answerComplete(answer: string): boolean {
  return /\d+\D/.test(answer);
}

/** Share of positions where a[i] === b[i] over the shorter length (NaN when empty). */
export function agreement(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  if (n === 0) return NaN;
  let same = 0;
  for (let i = 0; i < n; i++) if (a[i] === b[i]) same++;
  return same / n;
}

// ------------------------------------------------------------ code completion (repo-level FIM)

/** The package a node_modules path belongs to ("@scope/name" or "name"). */
export function packageOf(path: string): string {
  const parts = path.split(/[\\/]/);
  return parts[0].startsWith('@') && parts.length > 1 ? `${parts[0]}/${parts[1]}` : parts[0];
}

export interface FimCase {
  ids: number[];
  repo: string;
  /** The file being completed and where it was cut (line index). */
  path: string;
  cutLine: number;
  /** Repo files in the prompt, in order (the last may be cut short). */
  files: string[];
}

/**
 * A code-completion prompt of exactly `budget` ids (when the files suffice) in
 * Qwen2.5-Coder's repo-level format (server/src/context/prompt.ts):
 *   <|repo_name|>repo\n<|file_sep|>path\ncontent\n … <|file_sep|>path\n<|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>
 * The current file is a seeded real source file cut at a seeded line; the
 * repo part is its package's other files, then other packages' files, in a
 * seeded order. Each piece starts with a special token, so tokenizing the
 * pieces one by one gives the tokenizer's own ids.
 * `encodeSpecial` must parse the special-token texts.
 */
export function buildFimCase(
  encodeSpecial: (text: string) => number[],
  refs: readonly DocRef[],
  seed: number,
  budget: number,
  opts: { prefixChars?: number; suffixChars?: number } = {},
): FimCase {
  const rand = rng(seed);
  const code = refs.filter((r) => r.kind === 'code');
  const byPkg = new Map<string, DocRef[]>();
  for (const r of code) {
    const k = packageOf(r.path);
    if (!byPkg.has(k)) byPkg.set(k, []);
    byPkg.get(k)!.push(r);
  }
  const pkgs = shuffle([...byPkg.keys()].sort(), rand);
  // The current file: the first package (seeded order) with a fit file of 1.5–24 KB and another file.
  let cur: Doc | undefined;
  let repo = '';
  for (const p of pkgs) {
    const files = byPkg.get(p)!;
    if (files.length < 2) continue;
    for (const r of shuffle(files.filter((f) => f.size >= 1500 && f.size <= 24 * 1024), rand)) {
      const d = readDoc(r);
      if (d && d.text.split('\n').length >= 30) {
        cur = d;
        break;
      }
    }
    if (cur) {
      repo = p;
      break;
    }
  }
  if (!cur) throw new Error('fim: no source file fit to complete');
  const lines = cur.text.split('\n');
  const cutLine = Math.floor(lines.length * (0.4 + 0.4 * rand()));
  let prefix = lines.slice(0, cutLine).join('\n') + '\n';
  let suffix = lines.slice(cutLine).join('\n');
  const pc = opts.prefixChars ?? 6000;
  const sc = opts.suffixChars ?? 1200;
  if (prefix.length > pc) prefix = prefix.slice(prefix.indexOf('\n', prefix.length - pc) + 1);
  if (suffix.length > sc) suffix = suffix.slice(0, suffix.lastIndexOf('\n', sc) + 1);
  const tail = encodeSpecial(`<|file_sep|>${cur.path}\n<|fim_prefix|>${prefix}<|fim_suffix|>${suffix}<|fim_middle|>`);
  const ids = encodeSpecial(`<|repo_name|>${repo}\n`);
  const room = budget - tail.length;
  if (room <= ids.length) throw new Error(`fim: budget ${budget} is too small for the current file (${tail.length} tokens)`);
  // Repo files: same package first (sorted), then other packages in seeded order.
  const order = [...byPkg.get(repo)!.filter((r) => r.abs !== cur!.abs), ...pkgs.filter((p) => p !== repo).flatMap((p) => byPkg.get(p)!)];
  const files: string[] = [];
  for (const r of order) {
    if (ids.length >= room) break;
    const d = readDoc(r);
    if (!d) continue;
    let piece = encodeSpecial(`<|file_sep|>${d.path}\n${d.text}${d.text.endsWith('\n') ? '' : '\n'}`);
    if (ids.length + piece.length > room) piece = piece.slice(0, room - ids.length);
    ids.push(...piece);
    files.push(d.path);
  }
  ids.push(...tail);
  return { ids, repo, path: cur.path, cutLine, files };
}

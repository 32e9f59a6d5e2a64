// context_select.ts — which files go into the repo context when the workspace is
// larger than the budget, and how a file too large for its share is cut.
//
// Relevance, from what the editor knows: files open in tabs, the files they
// import (relative TS/JS specifiers, Python modules), files in the same folders,
// and recency. The choice depends on the open tabs, not on the cursor, so the
// prompt head (and its KV pages) stays the same while the user types and moves
// between open files; it changes when tabs open or close or files are saved.
// Files are then sent least-changing first (orderByStability) as before.
//
// A file larger than a quarter of the budget (and 256 tokens) is cut at top-level
// declaration boundaries: its head (imports) and then whole declarations in order
// while they fit, with a marker line where declarations were left out. The
// boundaries come from a tree-sitter parse (tree_chunks.ts, passed in as `pieces`)
// for TS/TSX/JS/Python; otherwise from declarationPieces, a line-and-bracket
// heuristic (a line at column 0 that starts a declaration, outside any bracket).
// Pure (no vscode import): unit-tested.
import type { RepoFile } from '../../server/src/context/repo';

export interface Counter {
  count(text: string): number;
}

export interface Focus {
  /** Workspace-relative paths of the files open in editor tabs (all weigh the same: switching tabs changes nothing). */
  open: string[];
}

/** Relative import specifiers of a file (TS/JS: import/export from, require, import(); Python: import / from). */
export function importSpecifiers(path: string, text: string): string[] {
  const out = new Set<string>();
  if (/\.(py|pyi)$/.test(path)) {
    for (const m of text.matchAll(/^\s*from\s+(\.*[\w.]*)\s+import\s/gm)) out.add(m[1]);
    for (const m of text.matchAll(/^\s*import\s+([\w.]+(?:\s*,\s*[\w.]+)*)/gm)) for (const s of m[1].split(',')) out.add(s.trim());
    return [...out];
  }
  for (const m of text.matchAll(/(?:import|export)\s[^'"`;]*?from\s*['"]([^'"]+)['"]/g)) out.add(m[1]);
  for (const m of text.matchAll(/(?:require|import)\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) out.add(m[1]);
  for (const m of text.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm)) out.add(m[1]);
  return [...out];
}

function dirOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

function normalize(path: string): string {
  const parts: string[] = [];
  for (const p of path.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') parts.pop();
    else parts.push(p);
  }
  return parts.join('/');
}

const TS_EXTS = ['', '.ts', '.tsx', '.js', '.jsx', '.mjs', '.cjs', '.d.ts', '/index.ts', '/index.tsx', '/index.js'];

/** The workspace paths an import specifier of `from` can name (existing ones only). */
export function resolveImport(from: string, spec: string, exists: (p: string) => boolean): string[] {
  const hits: string[] = [];
  if (/\.(py|pyi)$/.test(from)) {
    const dots = /^\.*/.exec(spec)![0].length;
    let base = dots > 0 ? dirOf(from) : '';
    for (let i = 1; i < dots; i++) base = dirOf(base);
    const mod = spec.slice(dots).replace(/\./g, '/');
    const stem = normalize(base ? `${base}/${mod}` : mod);
    for (const c of [`${stem}.py`, `${stem}/__init__.py`, `${stem}.pyi`]) if (stem && exists(c)) hits.push(c);
    return hits;
  }
  if (!spec.startsWith('.')) return hits;  // packages: not in the workspace's own files
  const stem = normalize(`${dirOf(from)}/${spec}`);
  const bare = stem.replace(/\.(js|jsx|mjs|cjs)$/, '');  // TS sources imported as .js
  for (const s of new Set([stem, bare])) for (const ext of TS_EXTS) if (exists(s + ext)) hits.push(s + ext);
  return [...new Set(hits)];
}

/**
 * Files for a context of `budget` tokens, most relevant first, some of them cut (see
 * cutAtDeclarations). When everything fits, all files, untouched.
 */
/** Files costing more than this many tokens (of a `budget`) are cut at declarations. */
export function cutThreshold(budget: number): number {
  return Math.max(256, Math.floor(budget / 4));
}

/** Tokens a file takes in the context (its text, path and separators). */
export function fileCost(f: RepoFile, counter: Counter): number {
  return counter.count(f.path) + counter.count(f.text) + 4;
}

/** The files need choosing and cutting: together they exceed `budget`. */
export function overBudget(files: readonly RepoFile[], budget: number, counter: Counter): boolean {
  let total = 0;
  for (const f of files) if ((total += fileCost(f, counter)) > budget) return true;
  return false;
}

export function selectRelevant(files: RepoFile[], focus: Focus, budget: number, counter: Counter, pieces?: ReadonlyMap<string, string[]>): RepoFile[] {
  if (!overBudget(files, budget, counter)) return files;
  const cost = new Map<RepoFile, number>(files.map((f) => [f, fileCost(f, counter)]));

  const byPath = new Map(files.map((f) => [f.path, f]));
  const exists = (p: string) => byPath.has(p);
  const open = focus.open.filter(exists);
  const score = new Map<string, number>();
  const add = (p: string, s: number) => score.set(p, (score.get(p) ?? 0) + s);
  for (const p of open) add(p, 8);
  // What the open files import, and (one step further) what those import.
  const imported = new Set<string>();
  for (const p of open) for (const spec of importSpecifiers(p, byPath.get(p)!.text)) for (const hit of resolveImport(p, spec, exists)) imported.add(hit);
  for (const p of imported) add(p, 6);
  for (const p of imported) for (const spec of importSpecifiers(p, byPath.get(p)!.text)) for (const hit of resolveImport(p, spec, exists)) add(hit, 2);
  const openDirs = new Set(open.map(dirOf));
  for (const f of files) {
    const d = dirOf(f.path);
    if (openDirs.has(d)) add(f.path, 3);
    else if ([...openDirs].some((o) => d.startsWith(o + '/') || o.startsWith(d + '/'))) add(f.path, 1);
  }
  // Recency: the newest tenth +2, the next fifth +1.
  const newest = [...files].sort((a, b) => b.mtimeMs - a.mtimeMs);
  newest.forEach((f, i) => add(f.path, i < newest.length / 10 ? 2 : i < (newest.length * 3) / 10 ? 1 : 0));

  const ranked = [...files].sort((a, b) => (score.get(b.path) ?? 0) - (score.get(a.path) ?? 0) || cost.get(a)! - cost.get(b)! || (a.path < b.path ? -1 : 1));
  const kept: RepoFile[] = [];
  let used = 0;
  const share = cutThreshold(budget);
  for (const f of ranked) {
    const left = budget - used;
    if (left <= 0) break;
    let g = f;
    if (cost.get(f)! > Math.min(share, left)) {
      const cut = cutAtDeclarations(f, Math.min(share, left) - counter.count(f.path) - 4, counter, pieces?.get(f.path));
      if (!cut) continue;
      g = cut;
    }
    const c = g === f ? cost.get(f)! : fileCost(g, counter);
    if (c > left) continue;
    kept.push(g);
    used += c;
  }
  return kept;
}

/** Top-level declaration starts: a line at column 0 that begins a declaration. */
const DECL = /^(export\s|async\s|function[\s*]|class\s|interface\s|type\s|enum\s|const\s|let\s|var\s|def\s|@|struct\s|impl\b|fn\s|pub\s|namespace\s|module\s|template\s*<|static\s|void\s|int\s)/;

/** Pieces of a source file: its head (before the first declaration), then one piece per top-level declaration. */
export function declarationPieces(text: string): string[] {
  const lines = text.split('\n');
  const starts: number[] = [];
  let depth = 0;
  let inBlockComment = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (depth === 0 && !inBlockComment && DECL.test(line)) {
      // A decorator or doc comment right above belongs to the declaration.
      let s = i;
      while (s > 0 && (starts.length === 0 || s - 1 > starts[starts.length - 1]) && /^(@|\/\/\/|\s*\*|\/\*\*|#\[)/.test(lines[s - 1])) s--;
      if (starts.length === 0 || s > starts[starts.length - 1]) starts.push(s);
    }
    // Bracket depth, ignoring strings and comments roughly.
    let j = 0;
    while (j < line.length) {
      const ch = line[j];
      if (inBlockComment) {
        if (ch === '*' && line[j + 1] === '/') {
          inBlockComment = false;
          j++;
        }
      } else if (ch === '/' && line[j + 1] === '/') break;
      else if (ch === '/' && line[j + 1] === '*') {
        inBlockComment = true;
        j++;
      } else if (ch === '"' || ch === "'" || ch === '`') {
        const q = ch;
        j++;
        while (j < line.length && line[j] !== q) j += line[j] === '\\' ? 2 : 1;
      } else if (ch === '{' || ch === '(' || ch === '[') depth++;
      else if ((ch === '}' || ch === ')' || ch === ']') && depth > 0) depth--;
      j++;
    }
  }
  const bounds = [0, ...starts.filter((s) => s > 0), lines.length];
  const pieces: string[] = [];
  for (let k = 0; k + 1 < bounds.length; k++) pieces.push(lines.slice(bounds[k], bounds[k + 1]).join('\n') + (bounds[k + 1] < lines.length ? '\n' : ''));
  return pieces.filter((p) => p.length > 0);
}

/**
 * The file cut to about `budget` tokens at declaration boundaries: the head, then whole
 * declarations in order while they fit; a marker line where some were left out. Undefined
 * when not even the head fits.
 */
export function cutAtDeclarations(f: RepoFile, budget: number, counter: Counter, given?: string[]): RepoFile | undefined {
  if (budget <= 0) return undefined;
  const pieces = given ?? declarationPieces(f.text);
  const comment = /\.(py|pyi|sh|rb|toml|ya?ml)$/.test(f.path) ? '#' : '//';
  const kept: string[] = [];
  let used = 0;
  let skipped = 0;
  for (const p of pieces) {
    const c = counter.count(p);
    if (used + c > budget - 12) {
      skipped++;
      continue;
    }
    if (skipped > 0) kept.push(`${comment} … (${skipped} declaration${skipped > 1 ? 's' : ''} left out)\n`);
    skipped = 0;
    kept.push(p);
    used += c;
  }
  if (!kept.some((p) => !p.startsWith(comment + ' …'))) return undefined;
  if (skipped > 0) kept.push(`${comment} … (${skipped} declaration${skipped > 1 ? 's' : ''} left out)\n`);
  const text = kept.join('');
  return { ...f, text, bytes: text.length };
}

// tree_chunks.ts — declaration boundaries from a real parse (tree-sitter, as
// WebAssembly: web-tree-sitter with the grammars in dist/wasm) for TypeScript,
// TSX, JavaScript and Python; other languages, or a parse with errors, fall
// back to the line-and-bracket heuristic (context_select.ts declarationPieces).
//
// Pieces: the head (imports and whatever precedes the first declaration), then
// one piece per top-level declaration, each with the comments right above it.
// The pieces concatenate to the file.
import { join } from 'node:path';
import { declarationPieces } from './context_select';

type TS = typeof import('web-tree-sitter');
let runtime: Promise<TS | undefined> | undefined;
const languages = new Map<string, Promise<import('web-tree-sitter').Language | undefined>>();

/** Where the .wasm files are (dist/wasm next to the bundle; overridable for tests). */
export let wasmDir = join(__dirname, 'wasm');
export function setWasmDir(dir: string): void {
  wasmDir = dir;
}

const GRAMMAR: Record<string, string> = {
  '.ts': 'typescript', '.mts': 'typescript', '.cts': 'typescript', '.tsx': 'tsx',
  '.js': 'javascript', '.mjs': 'javascript', '.cjs': 'javascript', '.jsx': 'javascript',
  '.py': 'python', '.pyi': 'python',
};

function grammarOf(path: string): string | undefined {
  const dot = path.lastIndexOf('.');
  return dot < 0 ? undefined : GRAMMAR[path.slice(dot).toLowerCase()];
}

async function load(): Promise<TS | undefined> {
  try {
    // require, not import(): the bundle is CommonJS, and web-tree-sitter's ESM build needs import.meta.url.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const ts = require('web-tree-sitter') as TS;
    await ts.Parser.init({ locateFile: (name: string) => join(wasmDir, name) });
    return ts;
  } catch {
    return undefined;  // no wasm: the heuristic does the work
  }
}

async function language(ts: TS, grammar: string) {
  let l = languages.get(grammar);
  if (!l) {
    l = ts.Language.load(join(wasmDir, `tree-sitter-${grammar}.wasm`)).catch(() => undefined);
    languages.set(grammar, l);
  }
  return l;
}

const HEAD_TYPES = new Set(['import_statement', 'import_from_statement', 'future_import_statement', 'comment', 'hash_bang_line']);

/** Pieces by a tree-sitter parse, or undefined (no grammar for the file, or a parse with errors). */
export async function parsedPieces(path: string, text: string): Promise<string[] | undefined> {
  const grammar = grammarOf(path);
  if (!grammar) return undefined;
  runtime ??= load();
  const ts = await runtime;
  if (!ts) return undefined;
  const lang = await language(ts, grammar);
  if (!lang) return undefined;
  const parser = new ts.Parser();
  try {
    parser.setLanguage(lang);
    const tree = parser.parse(text);
    if (!tree) return undefined;
    try {
      const root = tree.rootNode;
      if (root.hasError) return undefined;
      const lines = text.split('\n');
      const starts: number[] = [];
      let pendingComment = -1;  // first row of comments right above the next declaration
      let seenDecl = false;
      for (const node of root.namedChildren) {
        if (!node) continue;
        const row = node.startPosition.row;
        if (node.type === 'comment') {
          if (pendingComment < 0) pendingComment = row;
          continue;
        }
        if (!seenDecl && HEAD_TYPES.has(node.type)) {
          pendingComment = -1;
          continue;
        }
        // A docstring-only statement at the top of a Python module stays in the head.
        if (!seenDecl && node.type === 'expression_statement' && node.firstNamedChild?.type === 'string') {
          pendingComment = -1;
          continue;
        }
        seenDecl = true;
        const start = pendingComment >= 0 ? pendingComment : row;
        pendingComment = -1;
        if (start > 0 && (starts.length === 0 || start > starts[starts.length - 1])) starts.push(start);
      }
      const bounds = [0, ...starts, lines.length];
      const pieces: string[] = [];
      for (let k = 0; k + 1 < bounds.length; k++) pieces.push(lines.slice(bounds[k], bounds[k + 1]).join('\n') + (bounds[k + 1] < lines.length ? '\n' : ''));
      return pieces.filter((p) => p.length > 0);
    } finally {
      tree.delete();
    }
  } finally {
    parser.delete();
  }
}

/** Declaration pieces of a file: tree-sitter where it parses, the heuristic otherwise. */
export async function piecesOf(path: string, text: string): Promise<{ pieces: string[]; parsed: boolean }> {
  const parsed = await parsedPieces(path, text).catch(() => undefined);
  return parsed ? { pieces: parsed, parsed: true } : { pieces: declarationPieces(text), parsed: false };
}

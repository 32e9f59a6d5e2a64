// Declaration pieces from a tree-sitter parse (web-tree-sitter + the grammars in dist/wasm):
// the pieces are the file, each top-level declaration with the comments above it; files
// that do not parse, or have no grammar, get the heuristic.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parsedPieces, piecesOf, setWasmDir } from '../../extension/src/tree_chunks';

const wasm = join(__dirname, '..', '..', 'dist', 'wasm');
setWasmDir(wasm);
const skip = existsSync(join(wasm, 'tree-sitter.wasm')) ? false : 'dist/wasm not built (node scripts/build.mjs --ts-only)';

const TS = `#!/usr/bin/env node
import { a } from './a';
import type { B } from './b';

// Adds one.
// (two comment lines)
export function inc(x: number): number {
  const s = "}";
  return x + 1;
}

export class Box<T> {
  constructor(private v: T) {}
  get(): T {
    return this.v;
  }
}

type Pair = [number, number];
const table: Record<string, Pair> = {
  one: [1, 1],
};
`;

test('TypeScript: head with imports, then each declaration with its comments', { skip }, async () => {
  const pieces = await parsedPieces('src/x.ts', TS);
  assert.ok(pieces, 'parsed');
  assert.equal(pieces.join(''), TS);
  assert.equal(pieces.length, 5, JSON.stringify(pieces, null, 1));
  assert.ok(pieces[0].includes("import type { B }") && !pieces[0].includes('Adds one'));
  assert.ok(pieces[1].startsWith('// Adds one.\n// (two comment lines)\nexport function inc'));
  assert.ok(pieces[2].startsWith('export class Box') && pieces[2].includes('get(): T'));
  assert.ok(pieces[3].startsWith('type Pair'));
  assert.ok(pieces[4].startsWith('const table'));
});

test('Python: docstring and imports in the head; decorators with their function', { skip }, async () => {
  const py = '"""Module doc."""\nimport os\nfrom . import util\n\n\n@cache\ndef a():\n    return 1\n\n\nclass B:\n    def m(self):\n        return 2\n';
  const pieces = await parsedPieces('pkg/m.py', py);
  assert.ok(pieces);
  assert.equal(pieces.join(''), py);
  assert.equal(pieces.length, 3, JSON.stringify(pieces));
  assert.ok(pieces[1].startsWith('@cache\ndef a'));
  assert.ok(pieces[2].startsWith('class B'));
});

test('no grammar or a parse with errors: the heuristic', { skip }, async () => {
  assert.equal(await parsedPieces('notes.md', '# x\n'), undefined);
  assert.equal(await parsedPieces('bad.ts', 'export function (\n'), undefined);
  const r = await piecesOf('bad.ts', 'export function (\nexport const b = 1;\n');
  assert.equal(r.parsed, false);
  assert.equal(r.pieces.join(''), 'export function (\nexport const b = 1;\n');
  assert.equal((await piecesOf('src/x.ts', TS)).parsed, true);
});

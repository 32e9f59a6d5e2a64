// Repo context larger than the budget: the files relevant to the open tabs are chosen,
// big files are cut at top-level declarations, and a repo that fits is left alone.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cutAtDeclarations, declarationPieces, importSpecifiers, resolveImport, selectRelevant } from '../../extension/src/context_select';
import type { RepoFile } from '../../server/src/context/repo';

const rough = { count: (t: string) => Math.ceil(t.length / 3) };
const file = (path: string, text: string, mtimeMs = 0): RepoFile => ({ path, text, mtimeMs, bytes: text.length });

test('import specifiers: TS/JS forms and Python modules', () => {
  const ts = `import { a } from './a';\nimport * as b from "../lib/b.js";\nexport { c } from './c/index';\nconst d = require('./d');\nconst e = await import('./e');\nimport './side';\nimport x from 'react';\n`;
  assert.deepEqual(importSpecifiers('src/main.ts', ts).sort(), ['../lib/b.js', './a', './c/index', './d', './e', './side', 'react'].sort());
  const py = 'from .models import User\nfrom ..core.db import conn\nimport os, pkg.util\n';
  assert.deepEqual(importSpecifiers('app/views.py', py).sort(), ['..core.db', '.models', 'os', 'pkg.util'].sort());
});

test('import resolution: extensions, index files, .js for .ts sources, Python packages', () => {
  const have = new Set(['src/a.ts', 'lib/b.ts', 'src/c/index.ts', 'app/models.py', 'core/db/__init__.py', 'pkg/util.py']);
  const exists = (p: string) => have.has(p);
  assert.deepEqual(resolveImport('src/main.ts', './a', exists), ['src/a.ts']);
  assert.deepEqual(resolveImport('src/main.ts', '../lib/b.js', exists), ['lib/b.ts']);
  assert.deepEqual(resolveImport('src/main.ts', './c', exists), ['src/c/index.ts']);
  assert.deepEqual(resolveImport('src/main.ts', 'react', exists), []);
  assert.deepEqual(resolveImport('app/views.py', '.models', exists), ['app/models.py']);
  assert.deepEqual(resolveImport('app/sub/views.py', '...core.db', exists), ['core/db/__init__.py']);
  assert.deepEqual(resolveImport('app/views.py', 'pkg.util', exists), ['pkg/util.py']);
});

test('a repo that fits the budget is sent whole, untouched', () => {
  const files = [file('a.ts', 'export const a = 1;\n'), file('b.ts', 'export const b = 2;\n')];
  assert.equal(selectRelevant(files, { open: ['a.ts'] }, 1000, rough), files);
});

test('over budget: the open file, what it imports and its folder win over unrelated files', () => {
  const filler = (n: number) => Array.from({ length: n }, (_, i) => `export const v${i} = ${i};\n`).join('');
  const files = [
    file('src/app/main.ts', `import { helper } from '../util/helper';\nimport { Store } from './store';\n${filler(10)}`, 5),
    file('src/util/helper.ts', `import { deep } from './deep';\nexport function helper() {}\n${filler(10)}`, 1),
    file('src/util/deep.ts', filler(10), 1),
    file('src/app/store.ts', filler(10), 1),
    file('src/app/view.ts', filler(10), 1),
    ...Array.from({ length: 12 }, (_, i) => file(`vendor/old${i}.ts`, filler(10), 0)),
  ];
  const relevant = ['src/app/main.ts', 'src/util/helper.ts', 'src/app/store.ts', 'src/app/view.ts', 'src/util/deep.ts'];
  const costOf = (f: RepoFile) => rough.count(f.path) + rough.count(f.text) + 4;
  // Room for the five relevant files and a little more, not for a sixth file.
  const budget = files.filter((f) => relevant.includes(f.path)).reduce((n, f) => n + costOf(f), 0) + 20;
  const kept = selectRelevant(files, { open: ['src/app/main.ts'] }, budget, rough).map((f) => f.path);
  for (const p of relevant) assert.ok(kept.includes(p), `${p} kept: ${kept.join(', ')}`);
  assert.equal(kept.filter((p) => p.startsWith('vendor/')).length, 0, `unrelated files kept: ${kept.join(', ')}`);
  // The choice follows the open tabs, not their order (switching tabs changes nothing).
  const again = selectRelevant(files, { open: ['src/app/main.ts', 'src/app/view.ts'] }, budget, rough).map((f) => f.path).sort();
  const swapped = selectRelevant(files, { open: ['src/app/view.ts', 'src/app/main.ts'] }, budget, rough).map((f) => f.path).sort();
  assert.deepEqual(again, swapped);
});

const BIG = `import { x } from './x';
import { y } from './y';

/** The first. */
export function first(a: number): number {
  function inner() {
    return a;
  }
  return inner() + 1;
}

export class Second {
  method() {
    const s = '}';
    return s;
  }
}

const third = {
  key: 1,
};

export function fourth() {
  return [1, 2, 3].map((v) => v * 2);
}
`;

test('declaration pieces: head, then each top-level declaration with its doc comment; nothing split inside brackets', () => {
  const pieces = declarationPieces(BIG);
  assert.equal(pieces.join(''), BIG, 'the pieces are the file');
  assert.equal(pieces.length, 5);
  assert.ok(pieces[0].startsWith('import { x }') && !pieces[0].includes('first'));
  assert.ok(pieces[1].startsWith('/** The first. */\nexport function first') && pieces[1].includes('function inner'));
  assert.ok(pieces[2].startsWith('export class Second') && pieces[2].includes("const s = '}'"));
  assert.ok(pieces[3].startsWith('const third'));
  assert.ok(pieces[4].startsWith('export function fourth'));
});

test('a big file is cut at declarations: the head and whole declarations while they fit, a marker for the rest', () => {
  const f = file('src/big.ts', BIG);
  const pieces = declarationPieces(BIG);
  const budget = rough.count(pieces[0]) + rough.count(pieces[1]) + 14;
  const cut = cutAtDeclarations(f, budget, rough)!;
  assert.ok(cut.text.startsWith(pieces[0] + pieces[1]), cut.text);
  assert.ok(/\/\/ … \(3 declarations left out\)\n$/.test(cut.text), cut.text);
  assert.ok(!cut.text.includes('class Second'));
  assert.equal(cutAtDeclarations(f, 1, rough), undefined, 'not even the head fits');
  const py = file('m.py', 'import os\n\ndef a():\n    return 1\n\ndef b():\n    return 2\n');
  const cutPy = cutAtDeclarations(py, rough.count('import os\n\ndef a():\n    return 1\n\n') + 14, rough)!;
  assert.ok(cutPy.text.endsWith('# … (1 declaration left out)\n'), cutPy.text);
});

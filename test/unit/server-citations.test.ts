// Citations point at the files the answer rests on, and say how they were chosen.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { attentionByFile, citeFiles } from '../../server/src/lsp/citations';

const files = [
  { path: 'README.md', text: 'A small service. Run it with npm start.\n', mtimeMs: 1 },
  { path: 'src/server.ts', text: 'import { PORT } from "./config/deep/settings";\nlisten(PORT);\n', mtimeMs: 2 },
  { path: 'src/config/deep/settings.ts', text: '// network settings\nexport const PORT = 48213;\nexport const HOST = "0.0.0.0";\n', mtimeMs: 3 },
  { path: 'src/util.ts', text: 'export function clamp(x: number) { return x; }\n', mtimeMs: 4 },
];

test('a file the answer names is cited as a mention', () => {
  const c = citeFiles('where is the port?', 'It is set in settings.ts.', files);
  assert.equal(c[0].path, 'src/config/deep/settings.ts');
  assert.equal(c[0].how, 'mention');
});

test('the file holding the rare words of question and answer is cited by overlap, with its line', () => {
  const c = citeFiles('What port does the service listen on?', 'The service listens on port 48213.', files);
  assert.equal(c[0].path, 'src/config/deep/settings.ts');
  assert.equal(c[0].how, 'overlap');
  assert.equal(c[0].line, 2);
  assert.ok(!c.some((x) => x.path === 'src/util.ts'));
});

test('no files, no citations; unrelated text, no citations', () => {
  assert.deepEqual(citeFiles('q', 'a', []), []);
  assert.deepEqual(citeFiles('zebra?', 'giraffe.', files), []);
});

test('attention mass per file: each span summed, the first tokens (sinks) left out', () => {
  const mass = Float32Array.from([9, 9, 9, 9, 0.5, 0.25, 0.1, 0.1, 0.05, 1, 2]);
  const m = attentionByFile(mass, [
    { path: 'a.ts', start: 1, end: 6 },
    { path: 'b.ts', start: 6, end: 9 },
    { path: 'c.ts', start: 9, end: 20 },
  ]);
  assert.deepEqual([...m.keys()], ['a.ts', 'b.ts', 'c.ts']);
  assert.ok(Math.abs(m.get('a.ts')! - 0.75) < 1e-6, 'positions 4 and 5 only');
  assert.ok(Math.abs(m.get('b.ts')! - 0.25) < 1e-6);
  assert.equal(m.get('c.ts'), 3, 'a span past the end of the read-out stops there');
});

test('attention citations: the most attended relevant files (within half of the top), a mention first', () => {
  // README gets the most mass but shares no word with the question or answer (a sink-like
  // spike): not cited. Of the rest, util and server are within half of the top.
  const attention = new Map([
    ['README.md', 20],
    ['src/util.ts', 10],
    ['src/server.ts', 6],
    ['src/config/deep/settings.ts', 0],
  ]);
  const c = citeFiles('What do clamp and listen do?', 'No idea.', files, 3, attention);
  assert.deepEqual(
    c.map((x) => [x.path, x.how]),
    [
      ['src/util.ts', 'attention'],
      ['src/server.ts', 'attention'],
    ],
  );
  assert.equal(c[1].score, 0.6);
  // A mention keeps its place; the same file found by attention is not listed twice.
  const m = citeFiles('where is the port?', 'It is set in settings.ts.', files, 3, new Map([['src/config/deep/settings.ts', 4], ['src/server.ts', 3]]));
  assert.deepEqual([m[0].path, m[0].how], ['src/config/deep/settings.ts', 'mention']);
  assert.ok(m.some((x) => x.path === 'src/server.ts' && x.how === 'attention' && x.score === 0.75));
  assert.equal(m.filter((x) => x.path === 'src/config/deep/settings.ts').length, 1);
  // No read-out (or nothing attended): the other ways only.
  assert.deepEqual(citeFiles('zebra?', 'giraffe.', files, 3, new Map([['src/util.ts', 0]])), []);
});

// Citations point at the files the answer rests on, and say how they were chosen.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { citeFiles } from '../../server/src/lsp/citations';

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

// Where inline completions end: one line mid-line, a block otherwise, never into the code after the cursor.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { boundaryContext, cutCompletion, finishCompletion, firstLine } from '../../server/src/lsp/completion_boundary';

test('cursor before text on its line: one line only', () => {
  const ctx = boundaryContext('const x = f(', ');\nnext();\n', 8);
  assert.deepEqual(cutCompletion('a, b', ctx), { text: 'a, b', done: false });
  assert.deepEqual(cutCompletion('a, b\nmore', ctx), { text: 'a, b', done: true });
});

test('maxLines 1 forces one line even at the end of a line', () => {
  const ctx = boundaryContext('let y = ', '\n', 1);
  assert.deepEqual(cutCompletion('3;\nlet z = 4;', ctx), { text: '3;', done: true });
});

test('a block ends at a blank line', () => {
  const ctx = boundaryContext('function add(a, b) {\n  ', '\n}\n', 8);
  assert.deepEqual(cutCompletion('const s = a + b;\n  return s;\n\nfunction', ctx), { text: 'const s = a + b;\n  return s;', done: true });
});

test('a block ends before a line indented less than the cursor line (the enclosing block closes)', () => {
  const ctx = boundaryContext('function add(a, b) {\n  ', '\n', 8);
  assert.deepEqual(cutCompletion('return a + b;\n}\n', ctx), { text: 'return a + b;', done: true });
});

test('after an opening line, the body and its closing brace are kept', () => {
  const ctx = boundaryContext('function add(a, b) {', '\n\nconsole.log(1);\n', 8);
  assert.deepEqual(cutCompletion('\n  return a + b;\n}\n\n', ctx), { text: '\n  return a + b;\n}', done: true });
});

test('the model re-typing the line after the cursor is cut', () => {
  const ctx = boundaryContext('  const a = 1;\n  ', '\n  return a;\n}\n', 8);
  assert.deepEqual(cutCompletion('const b = 2;\n  return a;\n', ctx), { text: 'const b = 2;', done: true });
});

test('line limit', () => {
  const ctx = boundaryContext('', '', 3);
  assert.deepEqual(cutCompletion('a\nb\nc\nd\ne', ctx), { text: 'a\nb\nc', done: true });
});

test('a partial last line waits for more text', () => {
  const ctx = boundaryContext('if (x) {\n  ', '\n}', 8);
  assert.deepEqual(cutCompletion('foo();\n', ctx), { text: 'foo();\n', done: false });
  assert.deepEqual(cutCompletion('foo();\n}', ctx), { text: 'foo();\n}', done: false });
});

test('finishCompletion judges the last line and drops trailing newlines', () => {
  const ctx = boundaryContext('function f() {\n  ', '\n', 8);
  assert.equal(finishCompletion('return 1;\n}', ctx), 'return 1;');
  assert.equal(finishCompletion('return 1;\n\n', ctx), 'return 1;');
  assert.equal(finishCompletion('x = ', boundaryContext('let ', '', 8)), 'x = ');
});

test('firstLine: the completed first line of a multi-line completion, a prefix of every cut', () => {
  const ctx = boundaryContext('function add(a, b) {\n  const s', '\n}\n', 8);
  assert.equal(firstLine('um = a + b;', ctx), undefined, 'not complete yet');
  assert.equal(firstLine('um = a + b;  \n  ret', ctx), 'um = a + b;');
  assert.ok(cutCompletion('um = a + b;\n  return sum;\n\n', ctx).text.startsWith('um = a + b;'));
  assert.equal(firstLine('\n  return 1;\n', ctx), undefined, 'opens with a line break: no first line');
  assert.equal(firstLine('x;\nmore', boundaryContext('let v = ', '(1);\n', 8)), undefined, 'single-line completion');
  assert.equal(firstLine('x;\nmore', boundaryContext('let v = ', '\n', 1)), undefined, 'maxLines 1');
});

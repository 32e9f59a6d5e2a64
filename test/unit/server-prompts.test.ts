// The server's prompts with a real tokenizer: the cached repo head + the
// per-request tail encode to exactly the ids of the whole prompt, and the
// head that `index` prefills is a prefix of the completion prompt (so the
// indexed KV is reused). Skips when no model file is present.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fimPrompt, plainPrompt } from '../../server/src/context/prompt';
import { readGguf } from '../../server/src/engine/gguf';
import { Tokenizer } from '../../server/src/engine/tokenizer';
import type { Engine } from '../../server/src/lsp/engine';
import { PromptBuilder } from '../../server/src/lsp/prompts';
import { cacheDir } from '../../server/src/models/registry';

const models = [
  { name: 'smollm2-135m (plain prompt)', paths: [join(cacheDir(), 'models', 'smollm2-135m.gguf'), '/tmp/models/smollm2-135m-q4_1.gguf'] },
  { name: 'qwen2.5-coder-0.5b (FIM prompt)', paths: [join(cacheDir(), 'models', 'qwen2.5-coder-0.5b.gguf'), '/tmp/models/qwen05.gguf'] },
];

function tokenizerEngine(t: Tokenizer, nCtx: number): Engine {
  return {
    model: { name: 't', path: '', arch: 'llama', fileType: '', nCtx, fim: t.fim !== undefined, weightBytes: 0, nLayer: 1, nHeadKv: 1, headDim: 1 },
    backend: 'none',
    encode: (text, first) => t.encode(text, { addSpecial: first, parseSpecial: true }),
    count: (text) => t.encode(text, { addSpecial: false, parseSpecial: false }).length,
    prefill: async () => ({ reused: 0 }),
    generate: async () => {
      throw new Error('not here');
    },
    cachedIds: () => [],
    metrics: () => undefined,
    close: () => undefined,
  };
}

const files = [
  { path: 'README.md', text: '# demo\n\nA demo.\n', mtimeMs: 1 },
  { path: 'src/a.ts', text: 'export const A = 1;\n\n\n', mtimeMs: 2 },
  { path: 'src/b.py', text: 'def f():\n    return 2   ', mtimeMs: 3 },
];

for (const m of models) {
  const path = m.paths.find((p) => existsSync(p));
  test(`prompt ids are exact and the indexed head is reused: ${m.name}`, { skip: path ? false : `${m.name} not present` }, async () => {
    const t = Tokenizer.fromGguf(await readGguf(path!));
    const engine = tokenizerEngine(t, 4096);
    const b = new PromptBuilder(engine);
    for (const [prefix, suffix] of [['x = ', '\n'], ['\n\n  foo', ''], ['', ''], ['function f() {\n  ', '\n}\n']]) {
      // A fresh builder each time: the anchor is the cursor's line start.
      const built = new PromptBuilder(engine).completion('demo', files, 'src/cur.ts', prefix, suffix, 4096, 64);
      const at = prefix.lastIndexOf('\n') + 1;
      const input = { repoName: 'demo', files: built.files, path: 'src/cur.ts', prefix: prefix.slice(0, at), middle: prefix.slice(at), suffix: engine.model.fim ? suffix : '' };
      const whole = engine.model.fim ? fimPrompt(input) : plainPrompt(input);
      assert.deepEqual(built.ids, t.encode(whole, { addSpecial: true, parseSpecial: true }), JSON.stringify(prefix));
      assert.equal(built.files.length, 3);
    }
    const head = b.repoHead('demo', files, 4096);
    const completion = b.completion('demo', files, 'src/cur.ts', 'let y = ', '', 4096, 64);
    assert.ok(head.ids.length > 10);
    assert.deepEqual(completion.ids.slice(0, head.ids.length), head.ids, 'the index head is a prefix of the completion prompt');
  });
}

for (const m of models) {
  const path = m.paths.find((p) => existsSync(p));
  test(`the repo head does not depend on the cursor when the budget binds: ${m.name}`, { skip: path ? false : `${m.name} not present` }, async () => {
    const t = Tokenizer.fromGguf(await readGguf(path!));
    const engine = tokenizerEngine(t, 4096);
    const b = new PromptBuilder(engine);
    // ~8k tokens of files for a 4k context: the head keeps a subset.
    const many = Array.from({ length: 80 }, (_, i) => ({
      path: `src/m${i}.ts`,
      text: Array.from({ length: 12 }, (_, k) => `export const v${i}_${k} = ${i * 31 + k}; // note ${k}\n`).join(''),
      mtimeMs: i,
    }));
    const longPrefix = Array.from({ length: 300 }, (_, k) => `let x${k} = ${k};\n`).join('');
    const a = b.completion('demo', many, 'src/cur.ts', 'let y = ', '', 4096, 64);
    const c = b.completion('demo', many, 'src/cur.ts', longPrefix, '\n}\n', 4096, 64);
    const head = b.repoHead('demo', many, 4096);
    assert.ok(a.filesDropped > 0, 'the budget should bind');
    assert.deepEqual(c.files.map((f) => f.path), a.files.map((f) => f.path));
    assert.equal(c.headTokens, a.headTokens);
    assert.deepEqual(c.ids.slice(0, c.headTokens), a.ids.slice(0, a.headTokens));
    assert.deepEqual(a.ids.slice(0, head.ids.length), head.ids, 'the index head is a prefix of every completion prompt');
    assert.ok(c.ids.length <= 4096 - 64, `prompt ${c.ids.length} tokens leaves no room for the answer`);
  });
}

// Typing on keeps every token before the cursor's previous position (the suffix
// included) so only the typed text is recomputed; a jump or a long middle re-anchors.
{
  const path = models[1].paths.find((p) => existsSync(p));
  test('completion prompts keep their anchor while the user types on', { skip: path ? false : 'qwen2.5-coder-0.5b not present' }, async () => {
    const t = Tokenizer.fromGguf(await readGguf(path!));
    const engine = tokenizerEngine(t, 4096);
    const b = new PromptBuilder(engine);
    const body = Array.from({ length: 40 }, (_, k) => `  const v${k} = compute(${k});\n`).join('');
    const before = `function main() {\n${body}`;
    const suffix = '  return v0;\n}\n\nmain();\n';
    const common = (x: number[], y: number[]) => {
      let n = 0;
      while (n < x.length && n < y.length && x[n] === y[n]) n++;
      return n;
    };
    const typed = '  const total = v1 + v2;\n  const avg = total / 2;';
    let prev = b.completion('demo', files, 'src/cur.ts', before + typed.slice(0, 5), suffix, 4096, 64);
    const first = t.decode(prev.ids.slice(prev.headTokens), { special: true });
    assert.ok(first.endsWith('<|fim_middle|>  con'), `the middle is the cursor line: ${JSON.stringify(first.slice(-40))}`);
    for (let n = 8; n <= typed.length; n += 3) {
      const next = b.completion('demo', files, 'src/cur.ts', before + typed.slice(0, n), suffix, 4096, 64);
      const tail = t.decode(next.ids.slice(next.headTokens), { special: true });
      assert.ok(tail.includes(`<|fim_suffix|>${suffix}<|fim_middle|>${typed.slice(0, n)}`), `the suffix stays before the typed text (${n})`);
      // Only the last token or two before the old cursor can change (a word grows).
      assert.ok(common(prev.ids, next.ids) >= prev.ids.length - 2, `typing ${n}: ${common(prev.ids, next.ids)} of ${prev.ids.length} kept`);
      prev = next;
    }
    // A jump to an earlier line takes a new anchor there.
    const jump = b.completion('demo', files, 'src/cur.ts', `function main() {\n  const v0 = compute(0);\n  let z`, `\n${body.slice(30)}`, 4096, 64);
    assert.ok(t.decode(jump.ids.slice(jump.headTokens), { special: true }).endsWith('<|fim_middle|>  let z'));
    // Typing past MIDDLE_MAX_CHARS re-anchors at the cursor's line.
    const long = Array.from({ length: 40 }, (_, k) => `  extra${k}();\n`).join('');
    const far = b.completion('demo', files, 'src/cur.ts', `function main() {\n  const v0 = compute(0);\n  let z = 1;\n${long}  q`, suffix, 4096, 64);
    assert.ok(t.decode(far.ids.slice(far.headTokens), { special: true }).endsWith('<|fim_middle|>  q'));
  });
}

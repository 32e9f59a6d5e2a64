// haystack.ts (bench fidelity inputs): deterministic assembly from real
// installed files, needle placement at the requested depth, answer scoring,
// and the repo-level FIM prompt.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  agreement, answerComplete, boundaries, buildFimCase, buildHaystack, classify, deriveSeed, depths, firstNumber, listDocs,
  makeNeedles, needlePromptHead, needlePromptTail, placeNeedles, rng, scoreAnswer, seededDocs, type TextTokenizer,
} from '../../server/src/bench/haystack';
import { readGguf } from '../../server/src/engine/gguf';
import { Tokenizer } from '../../server/src/engine/tokenizer';
import { findModel } from './helpers';

const ROOT = join(__dirname, '..', '..');
const REFS = listDocs([join(ROOT, 'node_modules')]);

/** A word-level tokenizer: "\n", runs of spaces + a word, or one symbol; ids assigned on first sight. */
function wordTokenizer(): TextTokenizer {
  const vocab: string[] = [];
  const ids = new Map<string, number>();
  return {
    encode(text) {
      const out: number[] = [];
      for (const m of text.matchAll(/\n|[^\S\n]*[\p{L}\p{N}_]+|[^\S\n]*[^\s\p{L}\p{N}_]|[^\S\n]+/gu)) {
        let id = ids.get(m[0]);
        if (id === undefined) {
          id = vocab.length;
          vocab.push(m[0]);
          ids.set(m[0], id);
        }
        out.push(id);
      }
      return out;
    },
    decode: (xs) => Array.from(xs, (i) => vocab[i]).join(''),
  };
}

let realTok: TextTokenizer | null | undefined;
async function qwenTokenizer(): Promise<TextTokenizer | null> {
  if (realTok !== undefined) return realTok;
  const path = findModel('qwen2.5-coder-0.5b');
  if (!path) return (realTok = null);
  const tok = Tokenizer.fromGguf(await readGguf(path));
  realTok = { encode: (s) => tok.encode(s, { addSpecial: false, parseSpecial: false }), decode: (ids) => tok.decode(ids) };
  return realTok;
}

test('rng and deriveSeed are deterministic', () => {
  const a = rng(42);
  const b = rng(42);
  const xs = Array.from({ length: 5 }, () => a());
  assert.deepEqual(xs, Array.from({ length: 5 }, () => b()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  assert.notDeepEqual(xs, Array.from({ length: 5 }, rng(43)));
  assert.equal(deriveSeed(1, 'needle-single', 4096, 0), deriveSeed(1, 'needle-single', 4096, 0));
  assert.notEqual(deriveSeed(1, 'needle-single', 4096, 0), deriveSeed(1, 'needle-single', 4096, 1));
});

test('depths: RULER spacing 0%, 11%, …, 100%', () => {
  const d = depths(10);
  assert.equal(d.length, 10);
  assert.equal(d[0], 0);
  assert.equal(d[9], 1);
  assert.ok(Math.abs(d[1] - 1 / 9) < 1e-12);
});

test('classify: code, prose (README/LICENSE/markdown), and skipped files', () => {
  assert.equal(classify('index.js'), 'code');
  assert.equal(classify('types.d.ts'), 'code');
  assert.equal(classify('README.md'), 'prose');
  assert.equal(classify('LICENSE'), 'prose');
  assert.equal(classify('license.txt'), 'prose');
  assert.equal(classify('bundle.min.js'), undefined);
  assert.equal(classify('package.json'), undefined);
  assert.ok(REFS.some((r) => r.kind === 'code') && REFS.some((r) => r.kind === 'prose'), 'node_modules holds both code and prose');
});

test('haystack assembly is deterministic for a seed, differs across seeds, and mixes code and prose', () => {
  const tok = wordTokenizer();
  const a = buildHaystack(tok, seededDocs(REFS, 7, 'mixed'), 3000);
  const b = buildHaystack(tok, seededDocs(REFS, 7, 'mixed'), 3000);
  const c = buildHaystack(tok, seededDocs(REFS, 8, 'mixed'), 3000);
  assert.equal(a.ids.length, 3000);
  assert.deepEqual(a.ids, b.ids);
  assert.deepEqual(a.docs, b.docs);
  assert.notDeepEqual(a.docs, c.docs);
  const kinds = new Set(a.docs.map((p) => REFS.find((r) => r.path === p)!.kind));
  assert.deepEqual([...kinds].sort(), ['code', 'prose']);
  // No document in the haystack talks about passkeys.
  assert.ok(!/pass\s*key/i.test(tok.decode(a.ids)));
});

function checkPlacement(tok: TextTokenizer, hay: number[], label: string): void {
  const bounds = boundaries(tok, hay);
  const needles = makeNeedles(tok, rng(3), 4);
  const distractorDepths = [0.3, 0.62, 0.9];
  let prev: number[] | undefined;
  let prevCut = -1;
  for (const depth of [...depths(10)].sort((x, y) => y - x)) {
    const placed = placeNeedles(tok, hay, [{ ids: needles[0].ids, depth }, ...needles.slice(1).map((n, i) => ({ ids: n.ids, depth: distractorDepths[i] }))], { bounds });
    // The asked needle starts within ±1% of the requested depth of the haystack.
    const before = placed.starts[0] - needles.reduce((n, nd, i) => n + (i > 0 && placed.starts[i] < placed.starts[0] ? nd.ids.length : 0), 0);
    assert.equal(before, placed.cuts[0], `${label}: haystack tokens before the needle`);
    const err = Math.abs(placed.cuts[0] / hay.length - depth);
    assert.ok(err <= 0.01, `${label}: depth ${depth} placed at ${placed.cuts[0] / hay.length} (error ${err})`);
    // Each needle's ids are intact where they were put, and nothing of the haystack is lost.
    for (let i = 0; i < needles.length; i++) assert.deepEqual(placed.ids.slice(placed.starts[i], placed.starts[i] + needles[i].ids.length), needles[i].ids);
    assert.equal(placed.ids.length, hay.length + needles.reduce((n, x) => n + x.ids.length, 0));
    // The text still holds the needle sentence verbatim on its own line.
    assert.ok(tok.decode(placed.ids).includes(`\n${needles[0].text}\n`));
    // Moving the needle shallower keeps every id before it: the prompt prefix is shared.
    if (prev) {
      let common = 0;
      while (common < prev.length && prev[common] === placed.ids[common]) common++;
      assert.ok(common >= Math.min(placed.starts[0], prevCut), `${label}: shared prefix ${common}`);
    }
    prev = placed.ids;
    prevCut = placed.starts[0];
  }
}

test('needles land at the requested depth (±1%) — word-level tokenizer', () => {
  const tok = wordTokenizer();
  const hay = buildHaystack(tok, seededDocs(REFS, 11, 'mixed'), 4000).ids;
  checkPlacement(tok, hay, 'word');
});

test('needles land at the requested depth (±1%) — Qwen2.5 tokenizer, prose, code and mixed haystacks', async (t) => {
  const tok = await qwenTokenizer();
  if (!tok) return t.skip('qwen2.5-coder-0.5b GGUF not found');
  for (const kind of ['prose', 'code', 'mixed'] as const) {
    const hay: number[] = buildHaystack(tok, seededDocs(REFS, deriveSeed(5, kind), kind), 4000).ids;
    assert.equal(hay.length, 4000);
    checkPlacement(tok, hay, `qwen/${kind}`);
  }
});

test('needles: distinct names and 5-digit passkeys; prompt pieces', () => {
  const tok = wordTokenizer();
  const ns = makeNeedles(tok, rng(9), 8);
  assert.equal(new Set(ns.map((n) => n.key)).size, 8);
  assert.equal(new Set(ns.map((n) => n.value)).size, 8);
  for (const n of ns) {
    assert.match(n.value, /^[1-9]\d{4}$/);
    assert.equal(n.text, `The secret passkey for ${n.key} is ${n.value}.`);
  }
  assert.deepEqual(makeNeedles(tok, rng(9), 8).map((n) => n.value), ns.map((n) => n.value));
  assert.ok(needlePromptHead().startsWith('<|im_start|>system\n'));
  assert.ok(needlePromptTail('Ada Novak').endsWith('<|im_start|>assistant\nThe secret passkey for Ada Novak is'));
});

test('answer scoring: exact digits, first number only', () => {
  assert.equal(firstNumber(' 48213.'), '48213');
  assert.ok(scoreAnswer(' 48213.', '48213'));
  assert.ok(scoreAnswer(' 48213', '48213'));
  assert.ok(scoreAnswer('The passkey is 48213, as stated.', '48213'));
  assert.ok(!scoreAnswer(' 4821.', '48213'), 'a prefix of the digits is wrong');
  assert.ok(!scoreAnswer(' 482134.', '48213'), 'extra digits are wrong');
  assert.ok(!scoreAnswer(' 71234 or 48213', '48213'), 'only the first number counts');
  assert.ok(!scoreAnswer('', '48213'));
  assert.ok(!scoreAnswer(' forty-eight thousand', '48213'));
  assert.ok(answerComplete(' 48213.'));
  assert.ok(!answerComplete(' 4821'));
  assert.ok(!answerComplete(' '));
  assert.equal(agreement([1, 2, 3, 4], [1, 2, 0, 4]), 0.75);
});

test('repo-level FIM case: exact budget, FIM layout, deterministic', async (t) => {
  const path = findModel('qwen2.5-coder-0.5b');
  if (!path) return t.skip('qwen2.5-coder-0.5b GGUF not found');
  const tok = Tokenizer.fromGguf(await readGguf(path));
  const enc = (s: string) => tok.encode(s, { addSpecial: false, parseSpecial: true });
  const a = buildFimCase(enc, REFS, 123, 3000);
  const b = buildFimCase(enc, REFS, 123, 3000);
  assert.deepEqual(a.ids, b.ids);
  assert.equal(a.ids.length, 3000);
  const fim = tok.fim!;
  assert.equal(a.ids[0], fim.repoName);
  assert.equal(a.ids[a.ids.length - 1], fim.middle);
  assert.equal(a.ids.filter((x) => x === fim.prefix).length, 1);
  assert.equal(a.ids.filter((x) => x === fim.suffix).length, 1);
  assert.ok(!a.files.includes(a.path), 'the current file is not also in the repo part');
  assert.notDeepEqual(buildFimCase(enc, REFS, 124, 3000).path + buildFimCase(enc, REFS, 124, 3000).cutLine, a.path + a.cutLine);
});

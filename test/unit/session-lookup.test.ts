// Prompt-lookup drafts in the generation loop: the drafts come from the last
// n-gram's earlier occurrence, and generating with them gives the same greedy
// tokens as generating without them, in fewer forward passes when text repeats.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { lookupDraft, Session } from '../../server/src/engine/session';
import { findModel, modelMissingMessage } from './helpers';

test('lookupDraft: what followed the most recent earlier occurrence of the last n-gram', () => {
  //            0  1  2  3  4  5  6  7  8  9
  const seq = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3];
  // Last trigram 1 2 3 occurred at 6 (most recent) and 0: the draft follows the one at 6.
  assert.deepEqual(lookupDraft(seq, 3, 4), [7, 8, 1, 2]);
  assert.deepEqual(lookupDraft(seq, 3, 1), [7]);
  // No trigram match: falls back to the bigram.
  assert.deepEqual(lookupDraft([5, 6, 0, 6, 7, 1, 6, 7], 3, 3), [1, 6, 7]);
  // No match at all, or too short.
  assert.deepEqual(lookupDraft([1, 2, 3, 4], 3, 4), []);
  assert.deepEqual(lookupDraft([1], 3, 4), []);
  // The draft stops at the end of the sequence.
  assert.deepEqual(lookupDraft([4, 4, 4], 2, 5), [4]);
});

const modelPath = findModel('smollm2-135m');
const REPEAT = Array.from({ length: 6 }, (_, i) => `export function area${i}(w: number, h: number): number {\n  return w * h * ${i + 1};\n}\n`).join('\n');

// Drafts are checked by a multi-token pass, which attends exactly (as a prefill does); specache
// with a top-k that covers the context attends exactly too, so both must match to the token.
// (With a small top-k, specache's one-token steps approximate and the drafted positions do not.)
for (const policy of ['full', 'specache'] as const) {
  test(`generation with prompt-lookup drafts gives the greedy tokens without them (${policy})`, { skip: modelPath ? false : modelMissingMessage('smollm2-135m') }, async () => {
    const session = await Session.open(modelPath!, { nCtx: 1024, policy, topk: 1024, threads: 2 });
    try {
      const prompt = `${REPEAT}\nexport function area6(w: number, h: number): number {\n`;
      const plain = await session.generate(prompt, { maxTokens: 48, sampler: { temperature: 0 } });
      let streamed = '';
      const drafted = await session.generate(prompt, { maxTokens: 48, sampler: { temperature: 0 }, lookup: { maxDraft: 6 }, onText: (t) => (streamed += t) });
      assert.deepEqual(drafted.tokens, plain.tokens, `${JSON.stringify(drafted.text)} vs ${JSON.stringify(plain.text)}`);
      assert.equal(drafted.text, plain.text);
      assert.equal(streamed, drafted.text, 'every kept token streamed once, in order');
      assert.ok((drafted.acceptedDrafts ?? 0) > 0, `drafts kept: ${drafted.acceptedDrafts} of ${drafted.draftTokens}`);
      assert.equal(plain.draftTokens, undefined);
      // The cache holds what was output (the last token's KV is written by the next request).
      const cached = session.cachedTokens;
      assert.equal(session.ctx.nPast, cached.length);
      const again = await session.generate(prompt, { maxTokens: 8, sampler: { temperature: 0 }, lookup: { maxDraft: 6 } });
      assert.ok(again.reusedTokens >= prompt.length / 8, 'the prompt is reused');
      assert.deepEqual(again.tokens, plain.tokens.slice(0, 8));
    } finally {
      session.close();
    }
  });
}

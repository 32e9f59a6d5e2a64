// The disk tier through the addon: a second session (a restarted server) on the same
// model and cache directory adopts the prompt's pages from disk instead of prefilling
// them, with the same greedy tokens; corrupt page files are rejected and recomputed.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Session } from '../../server/src/engine/session';
import { findModel, modelMissingMessage } from './helpers';

const modelPath = findModel('smollm2-135m');
const PROMPT = Array.from({ length: 30 }, (_, i) => `export const item${i} = { id: ${i}, name: 'item ${i}', weight: ${(i * 7) % 13} };`).join('\n') + '\nexport const total = ';

function pageFiles(dir: string): string[] {
  const out: string[] = [];
  for (const sub of readdirSync(dir)) for (const f of readdirSync(join(dir, sub))) if (f.endsWith('.kvpage')) out.push(join(dir, sub, f));
  return out;
}

test('a restarted session reads the prompt pages from disk; corrupt pages are recomputed', { skip: modelPath ? false : modelMissingMessage('smollm2-135m') }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'specode-kvdisk-'));
  const open = () => Session.open(modelPath!, { nCtx: 1024, policy: 'specache', threads: 2, diskCacheDir: dir });
  try {
    const first = await open();
    const a = await first.generate(PROMPT, { maxTokens: 12, sampler: { temperature: 0 } });
    const saved = first.ctx.metrics().diskPagesSaved;
    first.close();
    assert.ok(a.promptTokens > 256, `prompt ${a.promptTokens} tokens`);
    assert.equal(a.reusedTokens, 0);
    assert.ok(saved >= Math.floor(a.promptTokens / 64), `pages saved: ${saved}`);
    assert.equal(pageFiles(dir).length, saved);

    const second = await open();
    const b = await second.generate(PROMPT, { maxTokens: 12, sampler: { temperature: 0 } });
    const m = second.ctx.metrics();
    second.close();
    assert.ok(m.diskPagesLoaded >= Math.floor((a.promptTokens - 1) / 64), `pages loaded: ${m.diskPagesLoaded}`);
    assert.ok(b.reusedTokens >= 64 * m.diskPagesLoaded, `reused ${b.reusedTokens}`);
    assert.deepEqual(b.tokens, a.tokens, 'the same greedy tokens from pages read back');

    // Flip a byte in the middle of every page file: each is rejected, deleted, and recomputed.
    for (const f of pageFiles(dir)) {
      const buf = readFileSync(f);
      buf[buf.length >> 1] ^= 0x40;
      writeFileSync(f, buf);
    }
    const third = await open();
    const c = await third.generate(PROMPT, { maxTokens: 12, sampler: { temperature: 0 } });
    const m3 = third.ctx.metrics();
    third.close();
    assert.equal(m3.diskPagesLoaded, 0);
    assert.ok(m3.diskPagesRejected >= 1, 'the corrupt first page was found out');
    assert.equal(c.reusedTokens, 0);
    assert.deepEqual(c.tokens, a.tokens);
    // The recomputed pages replaced the bad files: a fourth session reads them all.
    const fourth = await open();
    const d = await fourth.generate(PROMPT, { maxTokens: 12, sampler: { temperature: 0 } });
    const m4 = fourth.ctx.metrics();
    fourth.close();
    assert.equal(m4.diskPagesRejected, 0);
    assert.equal(m4.diskPagesLoaded, m.diskPagesLoaded);
    assert.deepEqual(d.tokens, a.tokens);
    assert.ok(pageFiles(dir).every((f) => statSync(f).size > 0));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

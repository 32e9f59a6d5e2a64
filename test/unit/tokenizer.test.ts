import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { readGguf } from '../../server/src/engine/gguf';
import { preTokenize, preTokenizerFor, toCodePoints } from '../../server/src/engine/pretokenize';
import { Tokenizer } from '../../server/src/engine/tokenizer';
import { buildGguf, byteChar, findModel, type ModelName, modelMissingMessage, tinyTokenizerKv } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'specode-tok-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

async function tiny(opts: Parameters<typeof tinyTokenizerKv>[0]): Promise<Tokenizer> {
  const p = join(dir, `tiny${n++}.gguf`);
  writeFileSync(p, buildGguf({ kv: tinyTokenizerKv(opts) }));
  return Tokenizer.fromGguf(await readGguf(p));
}

function split(pre: string, s: string): string[] {
  const { cps, offs, n: count } = toCodePoints(s);
  const bounds = preTokenize(preTokenizerFor(pre), cps, count);
  let a = 0;
  return bounds.map((e) => {
    const piece = s.slice(offs[a], offs[e]);
    a = e;
    return piece;
  });
}

/** Byte token id in the tiny vocab (ids 0..255 are the bytes). */
const B = (ch: string) => ch.charCodeAt(0);

describe('pre-tokenizer (llama.cpp splitting rules)', () => {
  test('qwen2: single digits, letters take one leading non-letter, newline runs', () => {
    assert.deepEqual(split('qwen2', 'Hello world 12345'), ['Hello', ' world', ' ', '1', '2', '3', '4', '5']);
    assert.deepEqual(split('qwen2', 'foo(bar)+=1;'), ['foo', '(bar', ')+=', '1', ';']);
    assert.deepEqual(split('qwen2', "DON'T I'm"), ['DON', "'T", ' I', "'m"]);
    assert.deepEqual(split('qwen2', 'x  \n\n  y'), ['x', '  \n\n', ' ', ' y']);
    assert.deepEqual(split('qwen2', 'a\r\n\tb'), ['a', '\r\n', '\tb']);
  });

  test('llama3: digits in groups of three', () => {
    assert.deepEqual(split('llama-bpe', '1234567'), ['123', '456', '7']);
  });

  test('smollm: every digit alone, then the GPT-2 rules', () => {
    assert.deepEqual(split('smollm', 'Hello world 12345'), ['Hello', ' world', ' ', '1', '2', '3', '4', '5']);
    assert.deepEqual(split('smollm', 'foo(bar)+=1;'), ['foo', '(', 'bar', ')+=', '1', ';']);
    assert.deepEqual(split('smollm', "DON'T I'm"), ['DON', "'", 'T', ' I', "'m"]);
    assert.deepEqual(split('smollm', 'x  \n\n  y'), ['x', '  \n\n ', ' y']);
  });

  test('gpt-2 and default', () => {
    assert.deepEqual(split('gpt-2', 'Hello world 12345'), ['Hello', ' world', ' 12345']);
    assert.deepEqual(split('default', 'Hello world 12345'), ['Hello', ' world', ' ', '123', '45']);
    assert.deepEqual(split('default', "I'm"), ['I', "'", 'm']);
  });

  test('unicode classes: non-ASCII letters, digits and whitespace', () => {
    assert.deepEqual(split('qwen2', 'naïve ٣٤ 中文'), ['naïve', ' ', '٣', '٤', ' 中文']);
    assert.deepEqual(split('gpt-2', 'a\u00a0\u00a0b'), ['a', '\u00a0', '\u00a0', 'b']);
    assert.deepEqual(split('qwen2', 'a\u00a0\u00a0b'), ['a', '\u00a0', '\u00a0b']);
    // U+1C89 is a letter since Unicode 16; llama.cpp's tables (15.1) say unassigned,
    // so it is the optional non-letter before "b" rather than part of one letter run
    assert.deepEqual(split('qwen2', 'a\u1c89b'), ['a', '\u1c89b']);
  });

  test('unknown pre-tokenizers are refused', () => {
    assert.throws(() => preTokenizerFor('tekken'), /pre-tokenizer "tekken" is not supported/);
  });
});

describe('Tokenizer on a tiny synthetic vocabulary', () => {
  test('lowest merge rank first, leftmost on ties; first duplicate merge wins', async () => {
    const tok = await tiny({
      pre: 'gpt-2', merges: ['b c', 'a b', 'a a', 'a a', 'aa a'], extra: ['bc', 'ab', 'aa', 'aaa'], specials: [],
    });
    const id = (t: string) => tok.textToId(t)!;
    assert.deepEqual(tok.encode('abc'), [B('a'), id('bc')]); // "b c" (rank 0) beats "a b" (rank 1)
    assert.deepEqual(tok.encode('aaaa'), [id('aa'), id('aa')]); // leftmost pairs merge first
    assert.deepEqual(tok.encode('aaa'), [id('aaa')]);
  });

  test('a merged symbol that is not a token falls back to its one-byte tokens', async () => {
    const tok = await tiny({ pre: 'gpt-2', merges: ['x y'], extra: [], specials: [] });
    assert.deepEqual(tok.encode('xy'), [B('x'), B('y')]);
  });

  test('bytes of non-ASCII text map through the GPT-2 byte alphabet', async () => {
    const tok = await tiny({ pre: 'gpt-2', merges: [], extra: [], specials: [] });
    assert.deepEqual(tok.encode('é'), [0xc3, 0xa9]);
    assert.deepEqual(tok.encode(' '), [0x20]);
    assert.equal(tok.tokenText(0x20), byteChar(0x20));
    assert.equal(tok.tokenText(0x20), 'Ġ');
    assert.equal(tok.decode(tok.encode('héllo 😀\n')), 'héllo 😀\n');
  });

  test('special tokens: control only with parseSpecial, user-defined always, longest first', async () => {
    const tok = await tiny({
      pre: 'gpt-2', merges: [], extra: [],
      specials: [['<|ctl|>', 3], ['<|ctl|>!', 4], ['<u>', 4], ['<|endoftext|>', 3]],
    });
    const ctl = tok.textToId('<|ctl|>')!;
    const ctlBang = tok.textToId('<|ctl|>!')!;
    const u = tok.textToId('<u>')!;
    assert.deepEqual(tok.encode('a<|ctl|>b'), [B('a'), ctl, B('b')]);
    assert.deepEqual(tok.encode('<|ctl|>!'), [ctlBang]);
    assert.deepEqual(tok.encode('<u><u>', { parseSpecial: false }), [u, u]);
    assert.deepEqual(tok.encode('a<|ctl|>', { parseSpecial: false }), [...'a<|ctl|>'].map((c) => B(c)));
    assert.equal(tok.decode(tok.encode('x<|ctl|>y')), 'x<|ctl|>y');
    assert.equal(tok.decode(tok.encode('x<|ctl|>y'), { special: false }), 'xy');
    assert.equal(tok.isEog(tok.textToId('<|endoftext|>')!), true);
    assert.equal(tok.isEog(ctl), false);
  });

  test('add_bos / add_eos follow the model flags and addSpecial', async () => {
    const tok = await tiny({ pre: 'gpt-2', merges: [], extra: [], specials: [['<s>', 3], ['</s>', 3]], addBos: true, bos: 256, eos: 257 });
    assert.equal(tok.addBos, true);
    assert.equal(tok.bos, 256);
    assert.equal(tok.eos, 257);
    assert.deepEqual(tok.encode('a'), [256, B('a')]);
    assert.deepEqual(tok.encode('a', { addSpecial: false }), [B('a')]);
    assert.deepEqual(tok.encode(''), [256]);
    assert.equal(tok.isEog(257), true);
    // llama3-style pre-tokenizers default to add_bos when the file does not say
    const l3 = await tiny({ pre: 'llama-bpe', merges: [], extra: [], specials: [['<s>', 3]], bos: 256 });
    assert.equal(l3.addBos, true);
  });

  test('streaming decoder holds incomplete UTF-8 sequences', async () => {
    const tok = await tiny({ pre: 'gpt-2', merges: [], extra: [], specials: [] });
    const ids = tok.encode('a😀é');
    assert.deepEqual(ids, [B('a'), 0xf0, 0x9f, 0x98, 0x80, 0xc3, 0xa9]);
    const s = tok.streamDecoder();
    const got = ids.map((id) => s.push(id));
    assert.deepEqual(got, ['a', '', '', '', '😀', '', 'é']);
    assert.equal(s.push([0xe4, 0xb8]), '');
    assert.equal(s.flush(), '\ufffd');
    assert.equal(s.push(0x41), 'A');
  });

  test('errors name the file', async () => {
    const p = join(dir, 'spm.gguf');
    const kv = tinyTokenizerKv({ pre: 'gpt-2', merges: [], extra: [], specials: [] });
    kv[1] = { ...kv[1], value: 'llama' };
    writeFileSync(p, buildGguf({ kv }));
    const f = await readGguf(p);
    assert.throws(() => Tokenizer.fromGguf(f), (e: unknown) => e instanceof Error && e.message.includes(p) && /tokenizer model "llama" is not supported/.test(e.message));
  });
});

interface Fixture {
  model: string;
  generator: string;
  vocab: number;
  pre: string;
  special: { bos: number | null; eos: number | null; eot: number | null; nl: number | null; eog: number[] };
  cases: { text: string; ids: number[]; idsNoSpecial: number[] }[];
}

const FIXTURES = join(__dirname, '..', 'fixtures', 'tokenizer');

/** ≥ 1 MB of real third-party text for the speed check (TypeScript's lib .d.ts files). */
function realText(minBytes: number): string | undefined {
  const lib = join(__dirname, '..', '..', 'node_modules', 'typescript', 'lib');
  if (!existsSync(lib)) return undefined;
  let s = '';
  for (const f of readdirSync(lib).filter((x) => x.endsWith('.d.ts')).sort()) {
    if (statSync(join(lib, f)).size > 4 << 20) continue;
    s += readFileSync(join(lib, f), 'utf8');
    if (Buffer.byteLength(s) >= minBytes) return s;
  }
  return undefined;
}

for (const name of ['smollm2-135m', 'qwen2.5-coder-0.5b'] as ModelName[]) {
  const path = findModel(name);
  const skip = path ? false : modelMissingMessage(name);
  describe(`Tokenizer vs llama.cpp golden ids: ${name}`, () => {
    const fixture = JSON.parse(readFileSync(join(FIXTURES, `${name}.json`), 'utf8')) as Fixture;
    let tok: Tokenizer;
    const load = async () => {
      tok ??= Tokenizer.fromGguf(await readGguf(path!));
      return tok;
    };

    test('vocabulary and special tokens', { skip }, async () => {
      const t = await load();
      assert.equal(t.nVocab, fixture.vocab);
      assert.equal(t.pre, fixture.pre);
      assert.equal(t.bos, fixture.special.bos ?? undefined);
      assert.equal(t.eos, fixture.special.eos ?? undefined);
      assert.equal(t.nl, fixture.special.nl ?? undefined);
      assert.deepEqual(t.eogIds, fixture.special.eog);
      // eot: llama.cpp picks among candidate texts in hash-map order; ours is an EOG token either way
      assert.ok(t.eot !== undefined && t.isEog(t.eot));
      if (name === 'qwen2.5-coder-0.5b') {
        assert.equal(t.eot, fixture.special.eot);
        assert.deepEqual(t.fim, { prefix: 151659, suffix: 151661, middle: 151660, pad: 151662, repoName: 151663, fileSep: 151664 });
      } else {
        assert.equal(t.fim, undefined); // SmolLM2 has no FIM tokens
      }
    });

    test(`encode matches llama.cpp on ${fixture.cases.length} tricky strings (parse_special on and off)`, { skip }, async () => {
      const t = await load();
      for (const c of fixture.cases) {
        assert.deepEqual(t.encode(c.text, { addSpecial: false, parseSpecial: true }), c.ids, `parseSpecial: ${JSON.stringify(c.text)}`);
        assert.deepEqual(t.encode(c.text, { addSpecial: false, parseSpecial: false }), c.idsNoSpecial, `no parseSpecial: ${JSON.stringify(c.text)}`);
        // neither model adds BOS/EOS
        assert.deepEqual(t.encode(c.text), c.ids);
      }
    });

    test('decode(encode(x)) == x', { skip }, async () => {
      const t = await load();
      for (const c of fixture.cases) {
        const wellFormed = c.text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
        assert.equal(t.decode(t.encode(c.text)), wellFormed, JSON.stringify(c.text));
        assert.equal(t.decode(t.encode(c.text, { parseSpecial: false })), wellFormed, JSON.stringify(c.text));
        const s = t.streamDecoder();
        let streamed = '';
        for (const id of t.encode(c.text)) streamed += s.push(id);
        assert.equal(streamed + s.flush(), wellFormed);
      }
    });

    test('1 MB of real source tokenizes in a few seconds', { skip: skip || (realText(1 << 20) ? false : 'typescript lib files not installed') }, async () => {
      const text = realText(1 << 20)!;
      const fresh = Tokenizer.fromGguf(await readGguf(path!)); // cold word cache
      const t0 = performance.now();
      const ids = fresh.encode(text);
      const s = (performance.now() - t0) / 1000;
      assert.ok(ids.length > 100_000);
      assert.equal(fresh.decode(ids), text);
      assert.ok(s < 10, `took ${s.toFixed(2)} s`);
    });
  });
}

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import {
  GgufError, GgufType, ggufIntArray, ggufNumber, ggufString, ggufStringArray, readGguf,
} from '../../server/src/engine/gguf';
import { buildGguf, findModel, type KvSpec, modelMissingMessage } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'specode-gguf-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(buf: Buffer): string {
  const p = join(dir, `t${n++}.gguf`);
  writeFileSync(p, buf);
  return p;
}

const ALL_TYPES: KvSpec[] = [
  { key: 'u8', type: GgufType.UINT8, value: 250 },
  { key: 'i8', type: GgufType.INT8, value: -120 },
  { key: 'u16', type: GgufType.UINT16, value: 65000 },
  { key: 'i16', type: GgufType.INT16, value: -32000 },
  { key: 'u32', type: GgufType.UINT32, value: 4000000000 },
  { key: 'i32', type: GgufType.INT32, value: -2000000000 },
  { key: 'f32', type: GgufType.FLOAT32, value: 1.5 },
  { key: 'bool.t', type: GgufType.BOOL, value: true },
  { key: 'bool.f', type: GgufType.BOOL, value: false },
  { key: 'str', type: GgufType.STRING, value: 'héllo wörld ✓ 😀' },
  { key: 'str.empty', type: GgufType.STRING, value: '' },
  { key: 'u64', type: GgufType.UINT64, value: 123456789012n },
  { key: 'u64.big', type: GgufType.UINT64, value: 18446744073709551615n },
  { key: 'i64', type: GgufType.INT64, value: -9007199254740991n },
  { key: 'i64.big', type: GgufType.INT64, value: -9223372036854775808n },
  { key: 'f64', type: GgufType.FLOAT64, value: Math.PI },
  { key: 'a.u8', type: GgufType.ARRAY, arrayType: GgufType.UINT8, value: [0, 1, 255] },
  { key: 'a.i8', type: GgufType.ARRAY, arrayType: GgufType.INT8, value: [-128, 0, 127] },
  { key: 'a.u16', type: GgufType.ARRAY, arrayType: GgufType.UINT16, value: [0, 65535] },
  { key: 'a.i16', type: GgufType.ARRAY, arrayType: GgufType.INT16, value: [-32768, 32767] },
  { key: 'a.u32', type: GgufType.ARRAY, arrayType: GgufType.UINT32, value: [0, 4294967295] },
  { key: 'a.i32', type: GgufType.ARRAY, arrayType: GgufType.INT32, value: [-1, 3, 5] },
  { key: 'a.f32', type: GgufType.ARRAY, arrayType: GgufType.FLOAT32, value: [0.5, -2.25] },
  { key: 'a.f64', type: GgufType.ARRAY, arrayType: GgufType.FLOAT64, value: [1e300, -0.125] },
  { key: 'a.u64', type: GgufType.ARRAY, arrayType: GgufType.UINT64, value: [1n, 18446744073709551615n] },
  { key: 'a.i64', type: GgufType.ARRAY, arrayType: GgufType.INT64, value: [-5n, 7n] },
  { key: 'a.bool', type: GgufType.ARRAY, arrayType: GgufType.BOOL, value: [true, false, true] },
  { key: 'a.str', type: GgufType.ARRAY, arrayType: GgufType.STRING, value: ['a', '', 'Ġthe', '中文', '<|im_start|>'] },
  { key: 'a.empty', type: GgufType.ARRAY, arrayType: GgufType.STRING, value: [] },
  {
    key: 'a.nested', type: GgufType.ARRAY, arrayType: GgufType.ARRAY,
    value: [{ arrayType: GgufType.INT32, values: [1, 2] }, { arrayType: GgufType.STRING, values: ['x'] }],
  },
];

describe('readGguf', () => {
  test('reads every value type', async () => {
    const f = await readGguf(file(buildGguf({ kv: ALL_TYPES })));
    assert.equal(f.version, 3);
    assert.equal(f.tensors.length, 0);
    const m = f.metadata;
    assert.deepEqual([...m.keys()], ALL_TYPES.map((k) => k.key), 'file order kept');
    assert.equal(m.get('u8'), 250);
    assert.equal(m.get('i8'), -120);
    assert.equal(m.get('u16'), 65000);
    assert.equal(m.get('i16'), -32000);
    assert.equal(m.get('u32'), 4000000000);
    assert.equal(m.get('i32'), -2000000000);
    assert.equal(m.get('f32'), 1.5);
    assert.equal(m.get('bool.t'), true);
    assert.equal(m.get('bool.f'), false);
    assert.equal(m.get('str'), 'héllo wörld ✓ 😀');
    assert.equal(m.get('str.empty'), '');
    assert.equal(m.get('u64'), 123456789012, 'safe u64 is a number');
    assert.equal(m.get('u64.big'), 18446744073709551615n, 'unsafe u64 is a bigint');
    assert.equal(m.get('i64'), -9007199254740991);
    assert.equal(m.get('i64.big'), -9223372036854775808n);
    assert.equal(m.get('f64'), Math.PI);
    assert.deepEqual(m.get('a.u8'), new Uint8Array([0, 1, 255]));
    assert.deepEqual(m.get('a.i8'), new Int8Array([-128, 0, 127]));
    assert.deepEqual(m.get('a.u16'), new Uint16Array([0, 65535]));
    assert.deepEqual(m.get('a.i16'), new Int16Array([-32768, 32767]));
    assert.deepEqual(m.get('a.u32'), new Uint32Array([0, 4294967295]));
    assert.deepEqual(m.get('a.i32'), new Int32Array([-1, 3, 5]));
    assert.deepEqual(m.get('a.f32'), new Float32Array([0.5, -2.25]));
    assert.deepEqual(m.get('a.f64'), new Float64Array([1e300, -0.125]));
    assert.deepEqual(m.get('a.u64'), new BigUint64Array([1n, 18446744073709551615n]));
    assert.deepEqual(m.get('a.i64'), new BigInt64Array([-5n, 7n]));
    assert.deepEqual(m.get('a.bool'), [true, false, true]);
    assert.deepEqual(m.get('a.str'), ['a', '', 'Ġthe', '中文', '<|im_start|>']);
    assert.deepEqual(m.get('a.empty'), []);
    assert.deepEqual(m.get('a.nested'), [new Int32Array([1, 2]), ['x']]);
    assert.equal(f.entries.get('a.str')!.type, GgufType.ARRAY);
    assert.equal(f.entries.get('a.str')!.arrayType, GgufType.STRING);
    assert.equal(f.entries.get('u8')!.type, GgufType.UINT8);
    // typed accessors
    assert.equal(ggufString(f, 'str'), 'héllo wörld ✓ 😀');
    assert.equal(ggufNumber(f, 'u32'), 4000000000);
    assert.deepEqual(ggufIntArray(f, 'a.u8'), new Int32Array([0, 1, 255]));
    assert.deepEqual(ggufStringArray(f, 'a.str')!.length, 5);
    assert.equal(ggufString(f, 'missing'), undefined);
    assert.throws(() => ggufString(f, 'u8'), /metadata "u8" should be a string/);
    assert.throws(() => ggufStringArray(f, 'a.i32'), /should be an array of strings/);
  });

  test('version 2 files read the same', async () => {
    const f = await readGguf(file(buildGguf({ version: 2, kv: ALL_TYPES.slice(0, 12) })));
    assert.equal(f.version, 2);
    assert.equal(f.metadata.get('str'), 'héllo wörld ✓ 😀');
  });

  test('tensor infos, default alignment 32 and data offset', async () => {
    const buf = buildGguf({
      kv: [{ key: 'general.architecture', type: GgufType.STRING, value: 'llama' }],
      tensors: [
        { name: 'a.weight', dims: [4, 3], type: 0, data: new Uint8Array(48) }, // F32 4x3
        { name: 'b.weight', dims: [64], type: 8, data: new Uint8Array(68) }, // Q8_0: 2 blocks of 34
        { name: 'c', dims: [2, 2, 2], type: 1, data: new Uint8Array(16) }, // F16
      ],
    });
    const p = file(buf);
    const f = await readGguf(p);
    assert.equal(f.alignment, 32);
    assert.equal(f.dataOffset % 32, 0);
    assert.ok(f.dataOffset >= f.headerBytes && f.dataOffset - f.headerBytes < 32);
    assert.equal(f.fileSize, statSync(p).size);
    assert.deepEqual(f.tensors.map((t) => [t.name, t.dims, t.type, t.typeName, t.offset, t.nElements, t.nBytes]), [
      ['a.weight', [4, 3], 0, 'F32', 0, 12, 48],
      ['b.weight', [64], 8, 'Q8_0', 64, 64, 68],
      ['c', [2, 2, 2], 1, 'F16', 160, 8, 16],
    ]);
  });

  test('general.alignment is honoured', async () => {
    const f = await readGguf(file(buildGguf({
      alignment: 64,
      kv: [{ key: 'general.alignment', type: GgufType.UINT32, value: 64 }],
      tensors: [{ name: 't', dims: [16], type: 0, data: new Uint8Array(64) }, { name: 'u', dims: [1], type: 0, data: new Uint8Array(4) }],
    })));
    assert.equal(f.alignment, 64);
    assert.equal(f.dataOffset % 64, 0);
    assert.equal(f.tensors[1].offset, 64);
  });

  test('a 150k-entry string array (vocab-sized, crosses read chunks) is read fast', async () => {
    const vocab = Array.from({ length: 150_000 }, (_, i) => (i % 7 === 0 ? `Ġtok${i}` : `t${i}é`));
    const p = file(buildGguf({
      kv: [
        { key: 'tokenizer.ggml.tokens', type: GgufType.ARRAY, arrayType: GgufType.STRING, value: vocab },
        { key: 'after', type: GgufType.STRING, value: 'end' },
      ],
    }));
    assert.ok(statSync(p).size > 2 * 1024 * 1024);
    const t0 = performance.now();
    const f = await readGguf(p);
    const ms = performance.now() - t0;
    const got = ggufStringArray(f, 'tokenizer.ggml.tokens')!;
    assert.equal(got.length, 150_000);
    assert.equal(got[149_999], vocab[149_999]);
    assert.equal(got[77_777], vocab[77_777]);
    assert.equal(f.metadata.get('after'), 'end');
    assert.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
  });

  test('bad magic names the file and the problem', async () => {
    const p = file(buildGguf({ magic: 'GGML' }));
    await assert.rejects(readGguf(p), (e: unknown) => {
      assert.ok(e instanceof GgufError);
      assert.ok(e.message.includes(p), e.message);
      assert.match(e.message, /not a GGUF file \(bad magic\)/);
      return true;
    });
    const tiny = file(Buffer.from('GG'));
    await assert.rejects(readGguf(tiny), /not a GGUF file/);
  });

  test('unsupported and byte-swapped versions', async () => {
    await assert.rejects(readGguf(file(buildGguf({ version: 1 }))), /GGUF version 1 is not supported/);
    await assert.rejects(readGguf(file(buildGguf({ version: 7 }))), /unsupported GGUF version 7/);
    await assert.rejects(readGguf(file(buildGguf({ version: 0x03000000 }))), /big-endian/);
  });

  test('truncated metadata says what the header promised and where the file ends', async () => {
    const full = buildGguf({ kv: ALL_TYPES });
    const { headerBytes } = await readGguf(file(full)); // the rest is alignment padding
    for (const cut of [30, 100, headerBytes - 3, headerBytes - 1]) {
      const p = file(full.subarray(0, cut));
      await assert.rejects(readGguf(p), (e: unknown) => {
        assert.ok(e instanceof GgufError);
        assert.ok(e.message.startsWith(p), e.message);
        assert.match(e.message, new RegExp(`truncated: header says ${ALL_TYPES.length} metadata entries and 0 tensors but the file ends at byte ${cut}`));
        return true;
      });
    }
    await assert.rejects(readGguf(file(full.subarray(0, 10))), /truncated: file ends at byte 10 inside the header/);
  });

  test('truncated tensor infos and tensor data', async () => {
    const full = buildGguf({ tensors: [{ name: 'w', dims: [32], type: 0, data: new Uint8Array(128) }] });
    await assert.rejects(readGguf(file(full.subarray(0, 40))), /truncated: header says 0 metadata entries and 1 tensors but the file ends at byte 40 \(inside tensor info/);
    await assert.rejects(readGguf(file(full.subarray(0, full.length - 1))), /truncated: tensor "w" \(F32, 128 bytes at data offset 0\) ends at byte \d+ but the file ends at byte \d+/);
  });

  test('corrupt lengths and types are reported, not allocated', async () => {
    const buf = buildGguf({ kv: [{ key: 'k', type: GgufType.STRING, value: 'abc' }] });
    const bad = Buffer.from(buf);
    bad.writeBigUInt64LE(1n << 40n, 24); // key length
    await assert.rejects(readGguf(file(bad)), /string length \d+ at byte 24 is not plausible/);
    const badType = Buffer.from(buf);
    badType.writeUInt32LE(99, 24 + 8 + 1);
    await assert.rejects(readGguf(file(badType)), /metadata "k": unknown value type 99/);
    await assert.rejects(
      readGguf(file(buildGguf({ kv: [{ key: 'general.alignment', type: GgufType.UINT32, value: 48 }] }))),
      /general.alignment must be a positive power of two/,
    );
  });

  test('missing file', async () => {
    await assert.rejects(readGguf(join(dir, 'nope.gguf')), (e: unknown) => e instanceof GgufError && /nope\.gguf: cannot open: ENOENT/.test(e.message));
  });

  for (const name of ['smollm2-135m', 'qwen2.5-coder-0.5b'] as const) {
    const path = findModel(name);
    test(`real model ${name}`, { skip: path ? false : modelMissingMessage(name) }, async () => {
      const f = await readGguf(path!);
      assert.ok(f.version === 2 || f.version === 3);
      assert.equal(ggufString(f, 'tokenizer.ggml.model'), 'gpt2');
      const arch = ggufString(f, 'general.architecture');
      assert.ok(arch === 'llama' || arch === 'qwen2', arch);
      assert.ok(f.tensors.length > 100);
      const end = Math.max(...f.tensors.map((t) => f.dataOffset + t.offset + (t.nBytes ?? 0)));
      assert.equal(end, f.fileSize, 'last tensor ends at the end of the file');
      assert.ok(f.tensors.some((t) => t.name === 'token_embd.weight'));
    });
  }
});

// scripts/gguf_skeleton.py: the stand-in a GPU machine gets for a model too large to carry —
// the same header and tensor table, other weights, and the engine must run it.
describe('gguf_skeleton.py stand-ins', () => {
  const real = findModel('smollm2-135m');
  test('make + inflate keeps the header and tensor table, replaces the weights, and the engine runs it', { skip: real ? false : modelMissingMessage('smollm2-135m') }, async () => {
    const { spawnSync } = await import('node:child_process');
    const { readFileSync } = await import('node:fs');
    const skel = join(dir, 'smol.skel'), fake = join(dir, 'smol-random.gguf');
    for (const args of [['make', real!, skel], ['inflate', skel, fake, '--seed', '3']]) {
      const r = spawnSync('python3', [join(__dirname, '..', '..', 'scripts', 'gguf_skeleton.py'), ...args], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    }
    const a = await readGguf(real!), b = await readGguf(fake);
    assert.equal(statSync(skel).size, a.dataOffset, 'the skeleton is the header, padding included');
    assert.equal(b.fileSize, a.fileSize);
    assert.deepEqual(b.tensors, a.tensors.map((t) => ({ ...t })));
    assert.deepEqual([...b.metadata.keys()], [...a.metadata.keys()]);
    const ra = readFileSync(real!), rb = readFileSync(fake);
    assert.ok(ra.subarray(0, a.dataOffset).equals(rb.subarray(0, a.dataOffset)), 'header bytes equal');
    assert.ok(!ra.subarray(a.dataOffset, a.dataOffset + 4096).equals(rb.subarray(a.dataOffset, a.dataOffset + 4096)), 'weights differ');
    const { Session } = await import('../../server/src/engine/session');
    const s = await Session.open(fake, { nCtx: 64, threads: 1 });
    try {
      const logits = (await s.ctx.decode(Int32Array.of(1, 2, 3, 4), {}))!;
      assert.equal(logits.length, s.info.nVocab);
      assert.ok(logits.every(Number.isFinite), 'finite logits from random weights with valid block scales');
    } finally {
      s.close();
    }
  });
});

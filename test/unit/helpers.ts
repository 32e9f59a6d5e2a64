// Shared test helpers: model lookup and a tiny GGUF writer.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { GgufType } from '../../server/src/engine/gguf';

export type ModelName = 'smollm2-135m' | 'qwen2.5-coder-0.5b';

const DEV_FALLBACK: Record<ModelName, string> = {
  'smollm2-135m': '/tmp/models/smollm2-135m-q4_1.gguf',
  'qwen2.5-coder-0.5b': '/tmp/models/qwen05.gguf',
};

/** Env var naming a model file: SPECODE_MODEL_<NAME upper-cased, non-alphanumerics as _>. */
export function modelEnvVar(name: ModelName): string {
  return `SPECODE_MODEL_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}

/**
 * A model file for tests: env SPECODE_MODEL_<NAME>, then
 * ${SPECODE_CACHE or ~/.cache/specode}/models/<name>.gguf, then /tmp/models (dev fallback).
 */
export function findModel(name: ModelName): string | undefined {
  const env = process.env[modelEnvVar(name)];
  if (env && existsSync(env)) return env;
  const cache = process.env.SPECODE_CACHE || join(homedir(), '.cache', 'specode');
  const cached = join(cache, 'models', `${name}.gguf`);
  if (existsSync(cached)) return cached;
  const dev = DEV_FALLBACK[name];
  if (existsSync(dev)) return dev;
  return undefined;
}

export function modelMissingMessage(name: ModelName): string {
  const cache = process.env.SPECODE_CACHE || join(homedir(), '.cache', 'specode');
  return `model ${name} not found: set ${modelEnvVar(name)}=/path/to/file.gguf or put it at ${join(cache, 'models', `${name}.gguf`)}`;
}

// ---------------------------------------------------------------------------
// GGUF writer (little-endian, v2/v3) for building test files.

export interface KvSpec {
  key: string;
  type: GgufType;
  value: unknown;
  /** Element type when type is ARRAY. */
  arrayType?: GgufType;
}

export interface TensorSpec {
  name: string;
  dims: number[];
  type: number;
  /** Data bytes (written at the next aligned offset); length also defines the size. */
  data: Uint8Array;
}

class Writer {
  private chunks: Buffer[] = [];
  length = 0;
  put(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u8(v: number): void { const b = Buffer.alloc(1); b.writeUInt8(v); this.put(b); }
  i8(v: number): void { const b = Buffer.alloc(1); b.writeInt8(v); this.put(b); }
  u16(v: number): void { const b = Buffer.alloc(2); b.writeUInt16LE(v); this.put(b); }
  i16(v: number): void { const b = Buffer.alloc(2); b.writeInt16LE(v); this.put(b); }
  u32(v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v >>> 0); this.put(b); }
  i32(v: number): void { const b = Buffer.alloc(4); b.writeInt32LE(v); this.put(b); }
  f32(v: number): void { const b = Buffer.alloc(4); b.writeFloatLE(v); this.put(b); }
  f64(v: number): void { const b = Buffer.alloc(8); b.writeDoubleLE(v); this.put(b); }
  u64(v: number | bigint): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.put(b); }
  i64(v: number | bigint): void { const b = Buffer.alloc(8); b.writeBigInt64LE(BigInt(v)); this.put(b); }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.put(b);
  }
  pad(align: number): void {
    const n = (align - (this.length % align)) % align;
    if (n) this.put(Buffer.alloc(n));
  }
  buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

function writeValue(w: Writer, type: GgufType, v: unknown, arrayType?: GgufType): void {
  switch (type) {
    case GgufType.UINT8: return w.u8(v as number);
    case GgufType.INT8: return w.i8(v as number);
    case GgufType.UINT16: return w.u16(v as number);
    case GgufType.INT16: return w.i16(v as number);
    case GgufType.UINT32: return w.u32(v as number);
    case GgufType.INT32: return w.i32(v as number);
    case GgufType.FLOAT32: return w.f32(v as number);
    case GgufType.FLOAT64: return w.f64(v as number);
    case GgufType.UINT64: return w.u64(v as bigint);
    case GgufType.INT64: return w.i64(v as bigint);
    case GgufType.BOOL: return w.u8(v ? 1 : 0);
    case GgufType.STRING: return w.str(v as string);
    case GgufType.ARRAY: {
      const arr = v as ArrayLike<unknown>;
      if (arrayType === undefined) throw new Error('arrayType needed');
      w.u32(arrayType);
      w.u64(arr.length);
      for (let i = 0; i < arr.length; i++) {
        const el = arr[i];
        if (arrayType === GgufType.ARRAY) {
          const inner = el as { arrayType: GgufType; values: unknown[] };
          writeValue(w, GgufType.ARRAY, inner.values, inner.arrayType);
        } else {
          writeValue(w, arrayType, el);
        }
      }
      return;
    }
  }
  throw new Error(`bad type ${type}`);
}

/** Build a GGUF file in memory. */
export function buildGguf(opts: { version?: number; kv?: KvSpec[]; tensors?: TensorSpec[]; alignment?: number; magic?: string }): Buffer {
  const w = new Writer();
  w.put(Buffer.from(opts.magic ?? 'GGUF', 'latin1'));
  w.u32(opts.version ?? 3);
  const tensors = opts.tensors ?? [];
  const kv = opts.kv ?? [];
  w.u64(tensors.length);
  w.u64(kv.length);
  for (const e of kv) {
    w.str(e.key);
    w.u32(e.type);
    writeValue(w, e.type, e.value, e.arrayType);
  }
  const align = opts.alignment ?? 32;
  let off = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    offsets.push(off);
    off += t.data.length;
    off = Math.ceil(off / align) * align;
  }
  tensors.forEach((t, i) => {
    w.str(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type);
    w.u64(offsets[i]);
  });
  w.pad(align);
  tensors.forEach((t, i) => {
    w.put(Buffer.from(t.data));
    if (i < tensors.length - 1) w.pad(align);
  });
  return w.buffer();
}

// ---------------------------------------------------------------------------
// A small synthetic byte-level BPE vocabulary (for tokenizer tests that need no model file).

/** GPT-2 byte alphabet: the vocab text of byte b. */
export function byteChar(b: number): string {
  const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  if (printable) return String.fromCharCode(b);
  let n = 0;
  for (let x = 0; x < b; x++) {
    const p = (x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff);
    if (!p) n++;
  }
  return String.fromCharCode(256 + n);
}

/**
 * GGUF metadata for a tiny gpt2-style tokenizer: the 256 byte tokens, then
 * `extra` merged tokens (normal), then `specials` ([text, type]).
 */
export function tinyTokenizerKv(opts: { pre: string; merges: string[]; extra: string[]; specials: [string, number][]; addBos?: boolean; bos?: number; eos?: number }): KvSpec[] {
  const tokens: string[] = [];
  const types: number[] = [];
  for (let b = 0; b < 256; b++) {
    tokens.push(byteChar(b));
    types.push(1);
  }
  for (const t of opts.extra) {
    tokens.push(t);
    types.push(1);
  }
  for (const [t, ty] of opts.specials) {
    tokens.push(t);
    types.push(ty);
  }
  const kv: KvSpec[] = [
    { key: 'general.architecture', type: GgufType.STRING, value: 'llama' },
    { key: 'tokenizer.ggml.model', type: GgufType.STRING, value: 'gpt2' },
    { key: 'tokenizer.ggml.pre', type: GgufType.STRING, value: opts.pre },
    { key: 'tokenizer.ggml.tokens', type: GgufType.ARRAY, arrayType: GgufType.STRING, value: tokens },
    { key: 'tokenizer.ggml.token_type', type: GgufType.ARRAY, arrayType: GgufType.INT32, value: types },
    { key: 'tokenizer.ggml.merges', type: GgufType.ARRAY, arrayType: GgufType.STRING, value: opts.merges },
  ];
  if (opts.bos !== undefined) kv.push({ key: 'tokenizer.ggml.bos_token_id', type: GgufType.UINT32, value: opts.bos });
  if (opts.eos !== undefined) kv.push({ key: 'tokenizer.ggml.eos_token_id', type: GgufType.UINT32, value: opts.eos });
  if (opts.addBos !== undefined) kv.push({ key: 'tokenizer.ggml.add_bos_token', type: GgufType.BOOL, value: opts.addBos });
  return kv;
}

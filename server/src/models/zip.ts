// zip.ts — a small read-only zip reader (enough for Python wheels), no dependencies.
//
// Reads the central directory (zip64 too), so entries written with a data
// descriptor (flag bit 3, sizes zeroed in the local header) are handled: sizes
// and CRCs always come from the central directory. Members are streamed
// (stored or raw-deflated) and their CRC-32 and size are checked at the end.
import { createReadStream, promises as fsp } from 'node:fs';
import { PassThrough, Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import * as zlib from 'node:zlib';

export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflated (others are rejected on read). */
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
  isDirectory: boolean;
}

export class ZipError extends Error {
  constructor(file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'ZipError';
  }
}

const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;
const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;

// ---------- CRC-32 (zlib.crc32 exists from Node 20.15 / 22.2; table fallback otherwise)
let crcTable: Uint32Array | undefined;
function crc32Js(buf: Uint8Array, prev = 0): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = (prev ^ 0xffffffff) >>> 0;
  for (let i = 0; i < buf.length; i++) c = crcTable[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
const zlibCrc = (zlib as unknown as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
export const crc32: (buf: Uint8Array, prev?: number) => number = zlibCrc
  ? (b, p = 0) => zlibCrc(b, p) >>> 0
  : crc32Js;

function u64(buf: Buffer, off: number): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('zip64 value too large');
  return Number(v);
}

async function readAt(fh: fsp.FileHandle, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got === len ? buf : buf.subarray(0, got);
}

export class ZipFile {
  private constructor(readonly path: string, readonly entries: ZipEntry[], private readonly fileSize: number) {}

  /** Reads the central directory of `path`. Throws ZipError when it is not a readable zip. */
  static async open(path: string): Promise<ZipFile> {
    const fh = await fsp.open(path, 'r');
    try {
      const size = (await fh.stat()).size;
      if (size < 22) throw new ZipError(path, 'not a zip file (too short)');
      const tailLen = Math.min(size, 22 + 0xffff);
      const tailPos = size - tailLen;
      const tail = await readAt(fh, tailPos, tailLen);
      let eocd = -1;
      for (let i = tail.length - 22; i >= 0; i--) {
        if (tail.readUInt32LE(i) === SIG_EOCD && i + 22 + tail.readUInt16LE(i + 20) <= tail.length) {
          eocd = i;
          break;
        }
      }
      if (eocd < 0) throw new ZipError(path, 'not a zip file (no end-of-central-directory record)');
      let count = tail.readUInt16LE(eocd + 10);
      let cdSize = tail.readUInt32LE(eocd + 12);
      let cdOffset = tail.readUInt32LE(eocd + 16);
      // zip64: a locator sits right before the EOCD record.
      const locPos = tailPos + eocd - 20;
      if (locPos >= 0) {
        const loc = await readAt(fh, locPos, 20);
        if (loc.length === 20 && loc.readUInt32LE(0) === SIG_ZIP64_LOCATOR) {
          const z64Pos = u64(loc, 8);
          const z = await readAt(fh, z64Pos, 56);
          if (z.length < 56 || z.readUInt32LE(0) !== SIG_ZIP64_EOCD) throw new ZipError(path, 'bad zip64 end-of-central-directory record');
          count = u64(z, 32);
          cdSize = u64(z, 40);
          cdOffset = u64(z, 48);
        }
      }
      if (cdOffset + cdSize > size) throw new ZipError(path, 'truncated zip (central directory past end of file)');
      const cd = await readAt(fh, cdOffset, cdSize);
      const entries: ZipEntry[] = [];
      let p = 0;
      for (let n = 0; n < count; n++) {
        if (p + 46 > cd.length || cd.readUInt32LE(p) !== SIG_CENTRAL) throw new ZipError(path, `bad central directory entry #${n}`);
        const flags = cd.readUInt16LE(p + 8);
        const method = cd.readUInt16LE(p + 10);
        const crc = cd.readUInt32LE(p + 16);
        let compressedSize = cd.readUInt32LE(p + 20);
        let uncompressed = cd.readUInt32LE(p + 24);
        const nameLen = cd.readUInt16LE(p + 28);
        const extraLen = cd.readUInt16LE(p + 30);
        const commentLen = cd.readUInt16LE(p + 32);
        const disk = cd.readUInt16LE(p + 34);
        let localHeaderOffset = cd.readUInt32LE(p + 42);
        const nameBuf = cd.subarray(p + 46, p + 46 + nameLen);
        const name = nameBuf.toString(flags & 0x800 ? 'utf8' : 'latin1');
        const extra = cd.subarray(p + 46 + nameLen, p + 46 + nameLen + extraLen);
        if (uncompressed === U32_MAX || compressedSize === U32_MAX || localHeaderOffset === U32_MAX || disk === U16_MAX) {
          let e = 0;
          let found = false;
          while (e + 4 <= extra.length) {
            const id = extra.readUInt16LE(e);
            const len = extra.readUInt16LE(e + 2);
            if (id === 0x0001) {
              let q = e + 4;
              const end = q + len;
              if (uncompressed === U32_MAX && q + 8 <= end) { uncompressed = u64(extra, q); q += 8; }
              if (compressedSize === U32_MAX && q + 8 <= end) { compressedSize = u64(extra, q); q += 8; }
              if (localHeaderOffset === U32_MAX && q + 8 <= end) { localHeaderOffset = u64(extra, q); q += 8; }
              found = true;
              break;
            }
            e += 4 + len;
          }
          if (!found) throw new ZipError(path, `entry ${name}: 32-bit size overflow without a zip64 extra field`);
        }
        entries.push({
          name, method, flags, crc32: crc, compressedSize, size: uncompressed, localHeaderOffset,
          isDirectory: name.endsWith('/'),
        });
        p += 46 + nameLen + extraLen + commentLen;
      }
      return new ZipFile(path, entries, size);
    } finally {
      await fh.close();
    }
  }

  getEntry(name: string): ZipEntry | undefined {
    return this.entries.find((e) => e.name === name);
  }

  /** Byte offset of the entry's (compressed) data, read from its local header. */
  private async dataOffset(entry: ZipEntry): Promise<number> {
    const fh = await fsp.open(this.path, 'r');
    try {
      const h = await readAt(fh, entry.localHeaderOffset, 30);
      if (h.length < 30 || h.readUInt32LE(0) !== SIG_LOCAL) throw new ZipError(this.path, `entry ${entry.name}: bad local header`);
      const start = entry.localHeaderOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
      if (start + entry.compressedSize > this.fileSize) throw new ZipError(this.path, `entry ${entry.name}: data past end of file (truncated download?)`);
      return start;
    } finally {
      await fh.close();
    }
  }

  /**
   * A stream of the entry's uncompressed bytes. The stream errors (ZipError) if the
   * CRC-32 or the size does not match the central directory.
   */
  async openReadStream(entry: ZipEntry, opts: { signal?: AbortSignal; highWaterMark?: number } = {}): Promise<Readable> {
    if (entry.flags & 0x1) throw new ZipError(this.path, `entry ${entry.name} is encrypted`);
    if (entry.method !== 0 && entry.method !== 8) throw new ZipError(this.path, `entry ${entry.name}: unsupported compression method ${entry.method}`);
    const start = await this.dataOffset(entry);
    const raw: Readable = entry.compressedSize === 0
      ? Readable.from([])
      : createReadStream(this.path, { start, end: start + entry.compressedSize - 1, highWaterMark: opts.highWaterMark ?? 1 << 20 });
    const path = this.path;
    let crc = 0;
    let n = 0;
    const check = new Transform({
      transform(chunk: Buffer, _enc, cb: TransformCallback) {
        crc = crc32(chunk, crc);
        n += chunk.length;
        if (n > entry.size) return cb(new ZipError(path, `entry ${entry.name}: more data than its recorded size ${entry.size}`));
        cb(null, chunk);
      },
      flush(cb: TransformCallback) {
        if (n !== entry.size) return cb(new ZipError(path, `entry ${entry.name}: got ${n} bytes, expected ${entry.size}`));
        if (crc !== entry.crc32) return cb(new ZipError(path, `entry ${entry.name}: CRC-32 mismatch (corrupt archive)`));
        cb();
      },
    });
    const stages: NodeJS.ReadWriteStream[] = entry.method === 8 ? [zlib.createInflateRaw({ chunkSize: 1 << 20 })] : [new PassThrough()];
    const out = pipeline(raw, ...(stages as [NodeJS.ReadWriteStream]), check, (err) => {
      if (err && !check.destroyed) check.destroy(err);
    }) as unknown as Transform;
    if (opts.signal) {
      const signal = opts.signal;
      if (signal.aborted) out.destroy(abortError(signal));
      else {
        const onAbort = () => out.destroy(abortError(signal));
        signal.addEventListener('abort', onAbort, { once: true });
        out.once('close', () => signal.removeEventListener('abort', onAbort));
      }
    }
    return out;
  }

  /** Whole entry in memory (for small members). */
  async readEntry(entryOrName: ZipEntry | string): Promise<Buffer> {
    const entry = typeof entryOrName === 'string' ? this.getEntry(entryOrName) : entryOrName;
    if (!entry) throw new ZipError(this.path, `no entry named ${String(entryOrName)}`);
    const chunks: Buffer[] = [];
    for await (const c of await this.openReadStream(entry)) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }
}

function abortError(signal: AbortSignal): Error {
  const r = signal.reason;
  if (r instanceof Error) return r;
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  return e;
}

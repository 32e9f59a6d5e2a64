#!/usr/bin/env python3
"""gguf_skeleton.py — a GGUF's header without its weights, and a stand-in file built from it.

The GPU machine cannot download models and takes 64 MiB per call, so a 1.1 GB model cannot
travel there. Its *skeleton* (metadata, tokenizer, tensor table: a few MB) can; `inflate`
writes a file with the same header, the same tensor shapes and quantization types, and
random weights with finite, typical block scales. Step times measured on it are the real
model's (the work does not depend on the weights' values); its outputs mean nothing, and any
figure taken from it must say "random weights with <model>'s geometry".

  python3 scripts/gguf_skeleton.py make MODEL.gguf OUT.skel
  python3 scripts/gguf_skeleton.py inflate IN.skel OUT.gguf [--seed N]

Standard library only (the GPU machine has python3, maybe nothing else).
"""
import os
import random
import struct
import sys

# type id: (elements per block, bytes per block, [(offset of an fp16 scale in the block, value)])
TYPES = {
    0: (1, 4, None),      # F32
    1: (1, 2, None),      # F16
    2: (32, 18, [(0, 0.02)]),              # Q4_0
    3: (32, 20, [(0, 0.02), (2, -0.15)]),  # Q4_1
    6: (32, 22, [(0, 0.02)]),              # Q5_0
    7: (32, 24, [(0, 0.02), (2, -0.3)]),   # Q5_1
    8: (32, 34, [(0, 0.002)]),             # Q8_0
    10: (256, 84, [(80, 0.02), (82, 0.01)]),   # Q2_K: scales, qs, d, dmin
    11: (256, 110, [(108, 0.02)]),             # Q3_K: hmask, qs, scales, d
    12: (256, 144, [(0, 0.002), (2, 0.001)]),  # Q4_K: d, dmin, scales, qs
    13: (256, 176, [(0, 0.002), (2, 0.001)]),  # Q5_K: d, dmin, scales, qh, qs
    14: (256, 210, [(208, 0.0005)]),           # Q6_K: ql, qh, scales, d
}


def read_str(b, o):
    n = struct.unpack_from('<Q', b, o)[0]
    return b[o + 8:o + 8 + n], o + 8 + n


def skip_value(b, o, t):
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    if t in sizes:
        return o + sizes[t]
    if t == 8:
        return read_str(b, o)[1]
    if t == 9:
        et, n = struct.unpack_from('<IQ', b, o)
        o += 12
        for _ in range(n):
            o = skip_value(b, o, et)
        return o
    raise ValueError(f'unknown metadata type {t}')


def parse(b):
    """(tensors [(name, type, n_elements, offset)], alignment, data_offset) from GGUF bytes."""
    magic, version, n_tensors, n_kv = struct.unpack_from('<4sIQQ', b, 0)
    if magic != b'GGUF' or version < 2:
        raise ValueError('not a GGUF v2+ file')
    o = 24
    align = 32
    for _ in range(n_kv):
        key, o = read_str(b, o)
        t = struct.unpack_from('<I', b, o)[0]
        o += 4
        if key == b'general.alignment':
            align = struct.unpack_from('<I', b, o)[0]
        o = skip_value(b, o, t)
    tensors = []
    for _ in range(n_tensors):
        name, o = read_str(b, o)
        nd = struct.unpack_from('<I', b, o)[0]
        dims = struct.unpack_from(f'<{nd}Q', b, o + 4)
        o += 4 + 8 * nd
        t, off = struct.unpack_from('<IQ', b, o)
        o += 12
        n = 1
        for d in dims:
            n *= d
        tensors.append((name.decode(), t, n, off))
    data_offset = (o + align - 1) // align * align
    return tensors, align, data_offset


def make(src, dst):
    with open(src, 'rb') as f:
        head = f.read(64 << 20)
    _, _, data_offset = parse(head)
    with open(dst, 'wb') as f:
        f.write(head[:data_offset])
    print(f'{dst}: {data_offset} bytes of header from {src}')


def tensor_bytes(t, n):
    if t not in TYPES:
        raise ValueError(f'tensor type {t} has no stand-in yet')
    be, bb, _ = TYPES[t]
    return n // be * bb


def fill(t, nbytes, rng):
    be, bb, scales = TYPES[t]
    if t == 0:  # F32 (norm weights, biases): around 1 and 0
        return bytearray(struct.pack('<f', 1.0)) * (nbytes // 4)
    buf = bytearray(os.urandom(nbytes))
    if t == 1:  # F16: keep the sign and a small exponent (|x| in [2^-9, 2^-5))
        table = bytes((b & 0x83) | 0x18 for b in range(256))
        buf[1::2] = bytes(buf[1::2]).translate(table)
        return buf
    n_blocks = nbytes // bb
    for off, value in scales:
        lo, hi = struct.pack('<e', value)
        buf[off::bb] = bytes([lo]) * n_blocks
        buf[off + 1::bb] = bytes([hi]) * n_blocks
    return buf


def inflate(src, dst, seed):
    with open(src, 'rb') as f:
        head = f.read()
    tensors, align, data_offset = parse(head)
    rng = random.Random(seed)
    total = 0
    with open(dst, 'wb') as f:
        f.write(head[:data_offset])
        for name, t, n, off in sorted(tensors, key=lambda x: x[3]):
            if off < total:
                raise ValueError(f'{name}: overlapping tensor offsets')
            f.write(b'\0' * (off - total))
            nb = tensor_bytes(t, n)
            f.write(fill(t, nb, rng))
            total = off + nb
        pad = (total + align - 1) // align * align - total
        f.write(b'\0' * pad)
    print(f'{dst}: {len(tensors)} tensors, {total >> 20} MiB of random weights')


if __name__ == '__main__':
    a = sys.argv[1:]
    if len(a) >= 3 and a[0] == 'make':
        make(a[1], a[2])
    elif len(a) >= 3 and a[0] == 'inflate':
        inflate(a[1], a[2], int(a[a.index('--seed') + 1]) if '--seed' in a else 1)
    else:
        print(__doc__)
        sys.exit(1)

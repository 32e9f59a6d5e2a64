// pretokenize.ts — the pre-tokenizer step of byte-level BPE, written to split
// text exactly as llama.cpp does (src/unicode.cpp: unicode_regex_split and its
// hand-written splitters for the GPT-2, Llama-3 and Qwen2 regexes, plus
// std::regex over a "collapsed" text for the rest).
//
// Facts this relies on (llama.cpp behaviour, re-implemented here):
//  * Text is split into code points; invalid UTF-8 becomes U+FFFD. (JS strings
//    are UTF-16; a lone surrogate becomes U+FFFD, as Node's UTF-8 encoder does.)
//  * Each code point has one general-category class (letter, number, mark,
//    punctuation, symbol, separator, control, unassigned) as of Unicode 15.1,
//    the version llama.cpp's tables were generated from, plus a White_Space bit.
//    The table below is generated from the Unicode 15.1 UCD (Python package
//    unicodedata2==15.1.0), so results do not depend on the ICU version of
//    the JS runtime. Generator: for cp in 0..0x10FFFF, class of
//    unicodedata2.category(chr(cp)) (Cn / N* / L* / Z* / M* / P* / S* / C*),
//    run-length encoded as "<hex delta from previous start><class digit>".
//  * The splitters run over "segments": each regex of a pre-tokenizer splits
//    every segment produced by the previous regex, never looking across a
//    segment boundary (positions outside the segment have no flags).
//  * Regex-based (non custom) steps match on a collapsed text: ASCII stays as
//    is, other whitespace becomes \x0B, other code points become one char per
//    category (N \xD1, L \xD2, P \xD3, M \xD4, S \xD5, anything else \xD0);
//    matches and the text between matches both become pieces.

// class codes (flag & 0x0f); 0 means "outside the segment"
export const F_UNDEF = 1;
export const F_NUM = 2;
export const F_LET = 3;
export const F_SEP = 4;
export const F_MARK = 5;
export const F_PUNCT = 6;
export const F_SYM = 7;
export const F_CTRL = 8;
export const F_WS = 0x10;

const UNICODE_15_1_CLASSES = `
07,203,15,36,15,66,15,41,a5,26,35,22,1a5,36,15,16,12,1a5,16,15,16,17,213,15,16,55,16,22,15,16,17,16,
41,26,12,15,26,11,12,15,11,35,12,176,12,1f6,12,1ca6,42,c6,e2,56,72,16,12,16,114,702,56,12,20,22,45,
12,10,46,22,15,12,30,12,10,12,140,12,536,12,8b6,14,72,a60,12,260,22,15,62,295,20,26,30,14,2d5,14,15,
14,25,14,25,14,10,82,1b0,42,45,20,b7,66,35,26,15,26,24,b5,17,15,32,2b4,151,a5,42,24,12,635,12,14,77,
16,14,62,24,26,14,42,21,a2,36,22,15,e0,17,12,14,12,1e4,1b0,22,594,b2,10,e1,a2,214,92,26,15,32,10,24,
16,22,164,42,14,92,14,32,14,50,25,f0,12,194,30,25,10,12,b0,52,186,12,60,17,20,64,82,2a4,187,14,212,
364,32,14,122,14,72,a4,25,21,a5,12,104,30,12,80,22,20,22,160,12,70,12,10,32,40,24,12,14,70,24,20,24,
32,10,84,10,42,20,12,34,20,21,a2,26,21,66,22,15,14,10,24,30,12,60,42,20,22,160,12,70,12,20,12,20,12,
20,24,10,14,50,44,20,24,30,34,10,72,40,12,10,71,a4,22,34,15,10,a4,30,12,90,12,30,12,160,12,70,12,20,
12,50,24,12,14,80,14,30,14,30,22,10,f2,24,20,21,a5,16,10,72,14,60,14,30,12,80,22,20,22,160,12,70,12,
20,12,50,24,12,14,70,24,20,24,30,74,30,42,20,12,34,20,21,a6,12,11,60,a4,12,10,12,60,32,30,12,40,32,
20,12,10,12,20,32,20,32,30,32,c0,44,50,34,30,14,40,22,10,64,10,e1,d6,80,54,52,80,12,30,12,170,12,
100,24,12,14,70,14,30,14,40,74,20,12,30,22,10,22,24,20,21,a0,75,11,76,12,14,35,12,80,12,30,12,170,
12,a0,12,50,24,12,14,70,14,30,14,40,74,20,62,20,12,24,20,21,a0,12,24,10,c4,42,90,12,30,12,294,22,14,
70,14,30,14,42,16,10,42,34,11,72,34,20,21,136,12,60,14,30,12,120,32,180,12,90,12,10,22,70,34,10,44,
60,14,10,14,80,61,a0,24,25,10,c2,304,12,24,70,46,12,74,85,11,a5,20,252,20,12,10,12,50,12,180,12,10,
12,a4,12,24,92,10,22,50,12,10,14,70,11,a0,22,40,202,16,35,f6,15,16,34,26,61,146,14,16,14,16,14,15,
44,22,80,12,240,44,145,14,22,54,b0,14,240,16,84,16,60,16,25,56,45,20,252,2b4,142,11,a5,62,64,42,44,
32,14,32,24,72,34,42,d4,c2,14,11,a4,46,22,260,12,10,52,10,22,2b5,12,14d0,12,40,22,70,12,10,12,40,22,
290,12,40,22,210,12,40,22,70,12,10,12,40,22,f0,12,390,12,40,22,430,24,35,91,140,32,106,a0,62,560,22,
60,25,12,26c6,15,12,113,12,1a5,20,32,4b5,31,32,80,72,124,40,92,134,35,20,92,124,20,c2,d0,12,30,14,
20,c2,344,205,32,15,36,12,14,10,21,a0,61,a0,65,b4,37,14,11,a0,62,590,72,54,22,224,12,10,52,460,a2,
1f0,14,c0,44,c0,46,10,35,21,a2,1e0,22,50,b2,2c0,42,1a0,61,b0,36,222,174,50,25,22,354,a0,14,1d0,24,
11,a0,61,a0,65,72,15,60,24,1f0,314,52,2f4,112,80,31,a5,76,a4,96,95,20,14,32,1e4,d2,21,a2,2c4,e0,85,
42,244,140,35,51,a0,32,31,a2,245,22,90,72,2b0,22,35,80,84,35,14,152,44,12,64,12,24,32,10,52,c04,402,
1160,22,60,22,260,22,60,22,80,12,10,12,10,12,10,12,1f0,22,350,12,76,12,16,32,30,12,76,32,40,22,60,
16,32,d6,30,22,30,12,76,20,13,b7,55,183,27,53,15,146,15,d6,15,c3,17,50,17,a1,12,10,21,66,35,22,11,
a6,35,20,12,d0,36,210,f4,210,f6,22,16,42,16,22,a6,12,16,32,56,62,16,12,16,12,16,12,46,12,b6,22,46,
52,56,42,16,11,332,21,56,20,46,1785,46,1d5,26,fc0,196,b0,151,3c6,4e1,166,2685,e1,1e6,315,26,1f5,a6,
1935,166,3f5,46,205,26,1760,26,200,16,692,e56,62,44,32,20,55,41,15,22,260,12,10,52,10,22,380,72,15,
10,e4,12,170,92,70,12,70,12,70,12,70,12,70,12,70,12,70,12,70,14,205,2f2,15,206,25,c0,226,1a0,16,590,
c6,d60,1a6,103,15,36,12,21,15,a6,25,c6,11,94,65,12,56,21,32,25,16,20,12,560,24,26,22,35,12,5a5,12,
40,52,2b0,12,5e0,16,21,46,a2,206,240,b6,12,106,1f0,11,a6,1e1,86,11,f6,201,a6,271,f6,1402,19c06,402,
568d0,36,370,92,2e5,22,10d5,32,101,a2,20,142,2f4,45,14,a5,12,1f4,22,461,a4,25,60,86,172,96,22,676,
22,400,52,20,12,10,12,50,182,104,12,34,12,44,12,174,56,44,10,31,66,40,62,345,40,84,22,324,120,85,21,
a0,64,122,65,32,15,12,24,11,a2,1c4,85,22,174,d0,b5,12,1d0,34,42,2f4,e5,d0,12,11,a0,45,22,54,12,a1,
a2,50,12,294,e0,92,34,12,84,20,21,a0,25,42,176,32,14,32,324,12,14,32,24,22,54,22,14,12,10,182,35,22,
b4,55,22,34,20,a2,60,22,60,22,60,92,70,12,70,12,2b6,12,e6,20,42,734,85,14,20,21,a0,62,2ba40,c2,170,
42,310,47,21002,16e0,22,6a0,262,70,c2,50,52,14,12,a6,12,d0,12,50,12,10,12,20,12,20,12,6c6,110,102,
16b5,26,102,400,22,360,76,10,202,c6,44,105,a0,64,105,230,15,e6,15,16,30,15,16,15,20,42,50,12,870,27,
10,15,36,15,66,15,41,a5,26,35,22,1a5,36,15,16,12,1a5,16,15,16,15,72,590,32,60,22,60,22,60,22,30,36,
70,16,70,a7,36,20,22,c0,12,1a0,12,130,12,20,12,f0,22,e0,222,7b0,55,30,41,2d0,36,91,396,111,26,30,16,
d0,36,10,2f6,2d4,10,822,1d0,32,310,f4,11,1b0,42,201,40,92,141,12,81,10,52,264,50,52,1e0,15,12,240,
42,85,11,50,2a2,9e0,21,a0,62,240,42,240,42,280,82,340,b5,12,b0,12,f0,12,70,12,20,12,b0,12,f0,12,70,
12,20,432,1370,92,160,a2,80,182,60,12,2a0,12,90,452,60,22,10,12,2c0,12,20,32,10,22,170,15,11,82,176,
21,72,1f0,81,90,302,130,12,20,51,52,161,60,35,12,1a0,55,10,402,380,41,22,21,100,21,2e2,14,30,14,20,
54,42,40,12,30,12,1d0,24,30,44,11,90,75,90,72,1d1,25,12,1d1,30,202,86,12,1c4,20,41,55,70,92,360,35,
72,160,21,82,130,51,82,120,75,40,c1,70,502,490,372,330,d2,330,71,62,244,40,81,a0,1261,1f0,12,2a0,14,
25,10,22,20,4b4,32,1d1,a2,10,82,164,b1,45,50,162,124,45,40,262,151,70,142,170,94,32,354,f5,70,41,
1e4,12,24,22,10,94,42,2d4,b5,27,15,44,10,a7,10,22,190,71,a0,64,32,244,e0,11,a5,42,14,22,10,82,234,
15,22,10,94,32,304,e2,45,44,45,14,21,a2,15,12,15,30,11,140,b2,120,12,194,c5,64,12,24,10,3e2,70,12,
10,12,40,12,f0,12,a5,10,62,2f4,c0,51,a0,64,40,12,80,22,20,22,160,12,70,12,20,12,50,14,22,14,70,24,
20,24,30,22,10,64,10,52,54,20,24,70,34,50,8b2,354,122,45,51,a5,20,15,14,12,30,1e2,304,142,25,12,10,
81,a0,a62,2f4,70,24,95,172,44,20,222,304,115,32,10,b1,a0,65,d0,132,2b4,d2,15,10,61,a0,362,1b0,24,f0,
41,c5,36,12,70,b92,2c4,f5,10,642,401,130,c2,80,22,10,22,80,12,20,12,184,60,14,20,24,42,14,12,14,25,
30,91,a0,462,80,22,274,70,24,72,15,12,14,10,1b2,14,a2,284,72,14,45,84,10,82,14,b2,2e4,105,32,15,50,
d2,490,75,a0,f62,90,12,254,80,14,82,15,50,a1,1d0,35,22,1e0,24,160,14,e0,492,70,12,20,12,264,60,34,
10,14,20,14,72,14,10,81,a0,62,60,12,20,12,204,50,14,20,14,52,10,71,a0,1362,134,45,20,74,22,14,12,d0,
12,224,70,34,55,d1,a0,562,10,f1,156,1d0,d5,12,39a0,661,6f0,15,50,b2,c40,a4c2,615,20,d2,4307,104,12,
64,f0,faa2,2470,21b92,2390,72,1f0,11,a0,45,22,4f0,11,a0,62,1e0,24,55,10,a2,304,75,56,42,45,16,10,a1,
a0,11,70,12,150,52,130,2b02,401,175,40,652,4b0,44,12,14,370,74,42,d0,402,25,12,14,10,b4,20,e2,17f80,
82,4d60,2a2,90,22e72,40,12,70,12,20,12,1230,f2,10,1d2,30,22,10,e2,40,82,18c0,9042,6b0,52,d0,32,90,
72,a0,26,14,25,17,40,125c4,2e0,24,170,96,740,3c6,f60,a6,270,26,3c4,56,34,67,84,86,24,76,1e4,46,3d0,
156,424,36,10,7a1,140,c1,140,c6,570,91,190,872,550,12,470,12,20,22,10,22,20,22,40,12,c0,12,10,12,70,
12,410,12,40,22,80,12,70,12,1c0,12,40,12,50,12,10,32,70,12,1540,22,196,12,196,12,1f6,12,196,12,1f6,
12,196,12,1f6,12,196,12,1f6,12,196,12,80,21,326,2004,376,44,326,84,16,e4,16,25,50,f4,50,14,f0,4502,
1f0,62,60,d54,70,14,110,24,70,14,20,14,50,52,3e0,214,10,702,2d0,34,72,70,21,a0,42,16,10,1402,1e4,10,
112,2c4,41,a0,56,10,1d02,1c4,41,a0,2e62,70,12,40,12,20,12,f0,12,c50,21,94,70,292,444,72,10,41,a0,45,
20,3111,3b6,11,36,11,40,4c1,2d6,11,f0,c22,40,12,1b0,12,20,12,10,22,10,12,a0,12,40,12,10,12,10,62,10,
42,10,12,10,12,10,12,30,12,20,12,10,22,10,12,10,12,10,12,10,12,10,12,20,12,10,22,40,12,70,12,40,12,
40,12,10,12,a0,12,110,52,30,12,50,12,110,346,20,10e6,2c0,46,640,c6,f0,26,f0,16,f0,16,250,a1,d6,a10,
386,1d0,d6,2c0,46,90,76,20,e6,60,9a6,3d80,46,110,36,d0,36,770,46,5f0,66,c0,46,10,f6,c0,46,380,86,a0,
66,280,86,1e0,26,20,4e6,1540,c6,e0,26,d0,36,90,76,2e0,16,70,86,e0,46,90,76,90,76,930,16,370,251,a0,
4062,a6e00,202,103a0,62,de0,22,16820,e2,1d310,f2,26e0,9a22,21e0,5e22,134b0,52,10600,adc517,10,1e7,
600,804,f00,fe107,fffe0,27,fffe0`;

/** White_Space property (PropList.txt); stable across Unicode versions. */
const WHITE_SPACE = [
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680,
  0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a,
  0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
];

let FLAGS: Uint8Array | undefined;

/** Per code point flags (class + 1, | F_WS), 0x110000 entries, built on first use. */
export function cpFlagsTable(): Uint8Array {
  if (FLAGS) return FLAGS;
  const t = new Uint8Array(0x110000);
  const parts = UNICODE_15_1_CLASSES.replace(/\s+/g, '').split(',');
  let start = 0;
  let prevStart = 0;
  let prevCls = -1;
  for (const p of parts) {
    start += parseInt(p.slice(0, -1), 16);
    if (prevCls >= 0) t.fill(prevCls + 1, prevStart, start);
    prevStart = start;
    prevCls = p.charCodeAt(p.length - 1) - 48;
  }
  t.fill(prevCls + 1, prevStart, 0x110000);
  for (const c of WHITE_SPACE) t[c] |= F_WS;
  FLAGS = t;
  return t;
}

/** Code points of a JS string, with the UTF-16 offset of each (offs has n+1 entries). */
export interface CodePoints {
  cps: Uint32Array;
  offs: Uint32Array;
  n: number;
}

export function toCodePoints(text: string): CodePoints {
  const len = text.length;
  const cps = new Uint32Array(len);
  const offs = new Uint32Array(len + 1);
  let n = 0;
  for (let i = 0; i < len; ) {
    offs[n] = i;
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < len ? text.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
        cps[n++] = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i += 2;
        continue;
      }
      cps[n++] = 0xfffd; // lone surrogate
      i += 1;
      continue;
    }
    cps[n++] = c;
    i += 1;
  }
  offs[n] = len;
  return { cps, offs, n };
}

/**
 * A splitter refines the boundaries of one segment [s, e): it pushes the end
 * position of every piece (the last one is e) to `out`.
 */
type Splitter = (cps: Uint32Array, fl: Uint8Array, s: number, e: number, out: number[]) => void;

const isLet = (f: number) => (f & 0x0f) === F_LET;
const isNum = (f: number) => (f & 0x0f) === F_NUM;
const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const APOS = 0x27;

/** ASCII lower-casing is all that matters for the contraction rule. */
const lower = (c: number) => (c >= 0x41 && c <= 0x5a ? c + 32 : c);

/**
 * Contraction at pos ('s 't 'm 'd 're 've 'll): returns the length (2 or 3)
 * or 0. `ci`: match letters case-insensitively.
 */
function contraction(cps: Uint32Array, pos: number, e: number, ci: boolean): number {
  if (cps[pos] !== APOS || pos + 1 >= e) return 0;
  const a = ci ? lower(cps[pos + 1]) : cps[pos + 1];
  if (a === 0x73 || a === 0x74 || a === 0x6d || a === 0x64) return 2; // s t m d
  if (pos + 2 < e) {
    const b = ci ? lower(cps[pos + 2]) : cps[pos + 2];
    if ((a === 0x72 && b === 0x65) || (a === 0x76 && b === 0x65) || (a === 0x6c && b === 0x6c)) return 3; // re ve ll
  }
  return 0;
}

/** 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
export const splitGpt2: Splitter = (cps, fl, s, e, out) => {
  const F = (i: number) => (i < e ? fl[cps[i]] : 0);
  let pos = s;
  while (pos < e) {
    const c = cps[pos];
    const k = contraction(cps, pos, e, false);
    if (k) {
      pos += k;
      out.push(pos);
      continue;
    }
    const lead = c === SP ? 1 : 0;
    const f2 = F(pos + lead);
    if (isLet(f2)) {
      let p = pos + lead + 1;
      while (isLet(F(p))) p++;
      out.push((pos = p));
      continue;
    }
    if (isNum(f2)) {
      let p = pos + lead + 1;
      while (isNum(F(p))) p++;
      out.push((pos = p));
      continue;
    }
    if (f2 !== 0 && !(f2 & F_WS)) {
      // not whitespace, letter or number (and inside the segment)
      let p = pos + lead + 1;
      for (let f = F(p); f !== 0 && !(f & F_WS) && !isLet(f) && !isNum(f); f = F(++p));
      out.push((pos = p));
      continue;
    }
    let nws = 0;
    while (F(pos + nws) & F_WS) nws++;
    if (nws > 1 && pos + nws < e) {
      out.push((pos += nws - 1)); // \s+(?!\S)
      continue;
    }
    if (nws > 0) {
      out.push((pos += nws));
      continue;
    }
    out.push(++pos);
  }
};

/**
 * Llama-3 / Qwen2 family:
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 */
function makeLlama3Like(maxDigits: number): Splitter {
  return (cps, fl, s, e, out) => {
    const F = (i: number) => (i < e ? fl[cps[i]] : 0);
    let pos = s;
    while (pos < e) {
      const c = cps[pos];
      const f = F(pos);
      const k = contraction(cps, pos, e, true);
      if (k) {
        pos += k;
        out.push(pos);
        continue;
      }
      // [^\r\n\p{L}\p{N}]?\p{L}+
      if (!(c === CR || c === LF || isNum(f)) && (isLet(f) || isLet(F(pos + 1)))) {
        let p = pos + 1;
        while (isLet(F(p))) p++;
        out.push((pos = p));
        continue;
      }
      // \p{N}{1,maxDigits}
      if (isNum(f)) {
        let p = pos;
        let ini = p;
        while (isNum(F(p))) {
          p++;
          if (p - ini >= maxDigits) {
            out.push(p);
            ini = p;
          }
        }
        if (p > ini) out.push(p);
        pos = p;
        continue;
      }
      // ' ?[^\s\p{L}\p{N}]+[\r\n]*' (the guard tests the current code point, as llama.cpp does)
      const lead = c === SP ? 1 : 0;
      const f2 = F(pos + lead);
      if (!(f2 & F_WS) && !isLet(f2) && !isNum(f2) && f !== 0) {
        let p = pos + lead;
        for (let g = F(p); g !== 0 && !(g & F_WS) && !isLet(g) && !isNum(g); g = F(++p));
        while (p < e && (cps[p] === CR || cps[p] === LF)) p++;
        out.push((pos = p));
        continue;
      }
      let nws = 0;
      let lastRN = 0;
      while (F(pos + nws) & F_WS) {
        const c2 = cps[pos + nws];
        if (c2 === CR || c2 === LF) lastRN = pos + nws + 1;
        nws++;
      }
      if (lastRN > 0) {
        out.push((pos = lastRN)); // \s*[\r\n]+
        continue;
      }
      if (nws > 1 && pos + nws < e) {
        out.push((pos += nws - 1)); // \s+(?!\S)
        continue;
      }
      if (nws > 0) {
        out.push((pos += nws));
        continue;
      }
      out.push(++pos);
    }
  };
}

export const splitLlama3 = makeLlama3Like(3);
export const splitQwen2 = makeLlama3Like(1);

/** \p{N} as a whole regex step: every number code point becomes its own piece. */
export const splitEachNumber: Splitter = (cps, fl, s, e, out) => {
  let last = s;
  for (let p = s; p < e; p++) {
    if (isNum(fl[cps[p]])) {
      if (p > last) out.push(p);
      out.push(p + 1);
      last = p + 1;
    }
  }
  if (last < e) out.push(e);
};

/** Collapsed-text form of a code point (see header). */
function collapsedChar(cp: number, f: number): number {
  if (cp < 128) return cp;
  if (f & F_WS) return 0x0b;
  switch (f & 0x0f) {
    case F_NUM: return 0xd1;
    case F_LET: return 0xd2;
    case F_PUNCT: return 0xd3;
    case F_MARK: return 0xd4;
    case F_SYM: return 0xd5;
    default: return 0xd0;
  }
}

/** A std::regex step over the collapsed text; `re` must be global and never match empty. */
function regexSplitter(re: RegExp): Splitter & { collapsed: true } {
  const fn = ((cps: Uint32Array, fl: Uint8Array, s: number, e: number, out: number[]) => {
    let str = '';
    for (let i = s; i < e; i++) str += String.fromCharCode(collapsedChar(cps[i], fl[cps[i]]));
    re.lastIndex = 0;
    let last = 0;
    for (let m = re.exec(str); m; m = re.exec(str)) {
      if (m[0].length === 0) {
        re.lastIndex++;
        continue;
      }
      if (m.index > last) out.push(s + m.index);
      last = m.index + m[0].length;
      out.push(s + last);
    }
    if (s + last < e) out.push(e);
  }) as Splitter & { collapsed: true };
  fn.collapsed = true;
  return fn;
}

// Collapsed classes: \p{N} = [\xD1 0-9], \p{P} = [\xD3 + ASCII punctuation],
// \p{L} = [\xD2 A-Za-z], \p{S} = [\xD5 $+<=>^`|~].
const P_ASCII = String.raw`!-#%-*,-/:-;?-@\[-\]_{}`;
/** Default pre-tokenizer steps 1, 3, 4 (step 2 is the GPT-2 splitter). */
const reDefaultPunct = new RegExp(String.raw`[\xD3${P_ASCII}$+<=>^~|]+`, 'g');
const reNumbers = new RegExp(String.raw`[\xD10-9]+`, 'g');
const reThreeDigits = /[0-9][0-9][0-9]/g;

export interface PreTokenizer {
  name: string;
  steps: Splitter[];
  /** llama3-style: a whole pre-token that is a vocab entry is not merged. */
  ignoreMerges: boolean;
  /** Pre-tokenizer-implied add_bos default (before the GGUF key overrides it). */
  addBosDefault: boolean;
}

/** The pre-tokenizer for a `tokenizer.ggml.pre` value (llama.cpp's name mapping). */
export function preTokenizerFor(pre: string | undefined): PreTokenizer {
  const p = pre ?? '';
  if (p === '' || p === 'default') {
    return { name: 'default', steps: [regexSplitter(reDefaultPunct), splitGpt2, regexSplitter(reNumbers), regexSplitter(reThreeDigits)], ignoreMerges: false, addBosDefault: false };
  }
  if (['llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'falcon-h1', 'pixtral', 'midm-2.0', 'lfm2', 'jina-v5-nano'].includes(p)) {
    return { name: 'llama3', steps: [splitLlama3], ignoreMerges: true, addBosDefault: true };
  }
  if (['dbrx', 'smaug-bpe'].includes(p)) {
    return { name: p, steps: [splitLlama3], ignoreMerges: false, addBosDefault: false };
  }
  if (['qwen2', 'deepseek-r1-qwen', 'kormo', 'f2llmv2', 'megrez', 'stablelm2', 'hunyuan', 'solar-open', 'grok-2'].includes(p)) {
    return { name: 'qwen2', steps: [splitQwen2], ignoreMerges: false, addBosDefault: false };
  }
  if (['smollm', 'starcoder', 'refact', 'command-r', 'codeshell', 'exaone', 'minerva-7b', 'mellum2'].includes(p)) {
    return { name: 'smollm', steps: [splitEachNumber, splitGpt2], ignoreMerges: false, addBosDefault: false };
  }
  if (['gpt-2', 'phi-2', 'jina-es', 'jina-de', 'gigachat', 'jina-v2-es', 'jina-v2-de', 'a.x-4.0', 'mellum',
    'modern-bert', 'mpt', 'olmo', 'jais', 'trillion', 'granite-docling', 'exaone4'].includes(p)) {
    return { name: 'gpt2', steps: [splitGpt2], ignoreMerges: false, addBosDefault: false };
  }
  throw new Error(`pre-tokenizer "${p}" is not supported by specode's tokenizer (supported: default, gpt-2, llama-bpe/llama3, qwen2, smollm/starcoder and their aliases)`);
}

/**
 * Split code points [0, n) into pre-tokens; returns the end position of each
 * piece (ascending, last = n).
 */
export function preTokenize(pt: PreTokenizer, cps: Uint32Array, n: number): number[] {
  const fl = cpFlagsTable();
  let bounds = [n];
  for (const step of pt.steps) {
    const out: number[] = [];
    let s = 0;
    for (const e of bounds) {
      if (e > s) step(cps, fl, s, e, out);
      s = e;
    }
    bounds = out;
  }
  return bounds;
}

// tokenizer.ts — byte-level BPE built from GGUF metadata, giving the same ids
// as llama.cpp's llama_tokenize for `tokenizer.ggml.model` = "gpt2".
//
// What llama.cpp does (and this file re-implements):
//  1. Special-token partitioning: tokens whose type is control (3),
//     user-defined (4) or unknown (2) — plus tokens llama.cpp promotes to
//     control by their text (EOT/EOG/FIM names) — are searched in the raw text
//     longest text first; every occurrence inside a not-yet-matched fragment
//     becomes that token. With parseSpecial off, control and unknown tokens are
//     skipped (user-defined ones are still matched).
//  2. Each remaining text fragment is pre-tokenized (pretokenize.ts), each
//     pre-token is UTF-8 encoded and mapped byte by byte to the GPT-2
//     "bytes to unicode" alphabet.
//  3. BPE per pre-token: repeatedly merge the adjacent pair with the lowest
//     merge rank (the first occurrence of a pair in `tokenizer.ggml.merges`
//     wins), ties going to the leftmost pair. Each final symbol is looked up in
//     the vocab; a symbol that is not a token falls back to its single bytes
//     that are tokens.
//  4. With addSpecial, BOS is prepended when the model's add_bos flag is set
//     (`tokenizer.ggml.add_bos_token`, default true only for llama3-style
//     pre-tokenizers) and EOS appended when add_eos is set.
import {
  type GgufFile, GgufError, ggufBool, ggufIntArray, ggufNumber, ggufString, ggufStringArray,
} from './gguf';
import { type PreTokenizer, preTokenize, preTokenizerFor, toCodePoints } from './pretokenize';

// llama_token_attr bits
export const ATTR_UNDEFINED = 0;
export const ATTR_UNKNOWN = 1 << 0;
export const ATTR_UNUSED = 1 << 1;
export const ATTR_NORMAL = 1 << 2;
export const ATTR_CONTROL = 1 << 3;
export const ATTR_USER_DEFINED = 1 << 4;
export const ATTR_BYTE = 1 << 5;

/** GGUF token_type values → attribute bits. */
function attrFromType(t: number): number {
  switch (t) {
    case 1: return ATTR_NORMAL;
    case 2: return ATTR_UNKNOWN;
    case 3: return ATTR_CONTROL;
    case 4: return ATTR_USER_DEFINED;
    case 5: return ATTR_UNUSED;
    case 6: return ATTR_BYTE;
    default: return ATTR_UNDEFINED;
  }
}

export interface EncodeOptions {
  /** Add BOS/EOS as the model's add_bos/add_eos flags say (default true). */
  addSpecial?: boolean;
  /** Match control tokens written in the text, e.g. "<|fim_prefix|>" (default true). */
  parseSpecial?: boolean;
}

export interface DecodeOptions {
  /** Render control/unknown tokens as their text (default true); false drops them. */
  special?: boolean;
}

export interface FimTokens {
  prefix: number;
  suffix: number;
  middle: number;
  pad: number | undefined;
  repoName: number | undefined;
  fileSep: number | undefined;
}

// GPT-2 bytes_to_unicode: printable latin-1 bytes map to themselves, the other
// 68 bytes map, in byte order, to U+0100, U+0101, ...
const BYTE_TO_CHAR: string[] = new Array(256);
const CHAR_TO_BYTE = new Map<number, number>();
{
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const cp = printable ? b : 256 + n++;
    BYTE_TO_CHAR[b] = String.fromCharCode(cp);
    CHAR_TO_BYTE.set(cp, b);
  }
}

/** Append the byte-encoded form of code points [a, b) to a string. */
function byteEncode(cps: Uint32Array, a: number, b: number): string {
  let s = '';
  for (let i = a; i < b; i++) {
    const c = cps[i];
    if (c < 0x80) {
      s += BYTE_TO_CHAR[c];
    } else if (c < 0x800) {
      s += BYTE_TO_CHAR[0xc0 | (c >> 6)] + BYTE_TO_CHAR[0x80 | (c & 0x3f)];
    } else if (c < 0x10000) {
      s += BYTE_TO_CHAR[0xe0 | (c >> 12)] + BYTE_TO_CHAR[0x80 | ((c >> 6) & 0x3f)] + BYTE_TO_CHAR[0x80 | (c & 0x3f)];
    } else {
      s += BYTE_TO_CHAR[0xf0 | (c >> 18)] + BYTE_TO_CHAR[0x80 | ((c >> 12) & 0x3f)]
        + BYTE_TO_CHAR[0x80 | ((c >> 6) & 0x3f)] + BYTE_TO_CHAR[0x80 | (c & 0x3f)];
    }
  }
  return s;
}

const utf8Encoder = new TextEncoder();

// Token texts llama.cpp uses to find special tokens the GGUF does not name.
const EOT_TEXTS = ['<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|end_of_text|>', '<EOT>', '_<EOT>', '[EOT]', '<｜end▁of▁sentence｜>', '<end_of_utterance>'];
const EOM_TEXTS = ['<|eom_id|>'];
const FIM_PRE_TEXTS = ['<|fim_prefix|>', '<fim-prefix>', '<fim_prefix>', '<｜fim▁begin｜>', '<PRE>', '▁<PRE>', '<|code_prefix|>', '<|prefix|>'];
const FIM_SUF_TEXTS = ['<|fim_suffix|>', '<fim-suffix>', '<fim_suffix>', '<｜fim▁hole｜>', '<SUF>', '▁<SUF>', '<|code_suffix|>', '<|suffix|>'];
const FIM_MID_TEXTS = ['<|fim_middle|>', '<fim-middle>', '<fim_middle>', '<｜fim▁end｜>', '<MID>', '▁<MID>', '<|code_middle|>', '<|middle|>'];
const FIM_PAD_TEXTS = ['<|fim_pad|>', '<fim-pad>', '<fim_pad>', '<PAD>', '[PAD]'];
const FIM_REP_TEXTS = ['<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>', '<reponame>'];
const FIM_SEP_TEXTS = ['<|file_sep|>'];
const EOG_TEXTS = ['<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<|flush|>', '<|calls|>', '<end_of_turn>', '<|endoftext|>', '</s>', '<|eom_id|>', '<EOT>', '_<EOT>', '[EOT]', '[EOS]', '<|end_of_text|>', '<end_of_utterance>', '<eos>', '<turn|>', '<|tool_response>', '<｜end▁of▁sentence｜>', '[e~['];

const WORD_CACHE_MAX = 200_000;

export class Tokenizer {
  readonly nVocab: number;
  /** `tokenizer.ggml.pre` as written in the file ('' when absent). */
  readonly pre: string;
  readonly preTokenizer: PreTokenizer;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  /**
   * End-of-turn token. From `tokenizer.ggml.eot_token_id`, else found by text.
   * When several candidate texts exist llama.cpp picks one in hash-map order;
   * this picks the first in its candidate list ("<|eot_id|>", "<|im_end|>", ...),
   * so it can differ from llama.cpp's pick (isEog covers all of them either way).
   */
  readonly eot: number | undefined;
  readonly eom: number | undefined;
  readonly unk: number | undefined;
  readonly pad: number | undefined;
  /** Newline token ("\n" tokenized). */
  readonly nl: number | undefined;
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** FIM tokens; undefined unless prefix, suffix and middle all exist. */
  readonly fim: FimTokens | undefined;

  private readonly tokens: string[];
  private readonly attrs: Uint8Array;
  private readonly tokenToId: Map<string, number>;
  /** Merge rank by (left id, right id) for merges of two vocab tokens. */
  private readonly pairs: PairTable;
  /** Token id of each merge's result (-1: not a token; -2: parts are not tokens). */
  private readonly mergeResult: Int32Array;
  /** Ranks of merges whose parts are not both vocab tokens ("left right" → rank). */
  private readonly ranksByText: Map<string, number>;
  private readonly eog: Set<number>;
  /** Special tokens for partitioning, longest text first. */
  private readonly specials: number[];
  private readonly wordCache = new Map<string, number[]>();
  private readonly pieceCache: (Uint8Array | undefined)[];

  static fromGguf(file: GgufFile): Tokenizer {
    return new Tokenizer(file);
  }

  private constructor(file: GgufFile) {
    const fail: (m: string) => never = (m) => {
      throw new GgufError(file.path, m);
    };
    const model = ggufString(file, 'tokenizer.ggml.model');
    if (model === undefined) fail('no tokenizer in this file (tokenizer.ggml.model is missing)');
    if (model !== 'gpt2') fail(`tokenizer model "${model}" is not supported (only byte-level BPE, "gpt2")`);
    const tokens = ggufStringArray(file, 'tokenizer.ggml.tokens') ?? fail('tokenizer.ggml.tokens is missing');
    const merges = ggufStringArray(file, 'tokenizer.ggml.merges') ?? fail('tokenizer.ggml.merges is missing');
    const types = ggufIntArray(file, 'tokenizer.ggml.token_type');
    if (types && types.length < tokens.length) fail(`tokenizer.ggml.token_type has ${types.length} entries for ${tokens.length} tokens`);
    this.pre = ggufString(file, 'tokenizer.ggml.pre') ?? '';
    try {
      this.preTokenizer = preTokenizerFor(this.pre);
    } catch (e) {
      fail((e as Error).message);
    }

    const n = tokens.length;
    this.nVocab = n;
    this.tokens = tokens.slice();
    this.attrs = new Uint8Array(n);
    this.tokenToId = new Map();
    for (let i = 0; i < n; i++) {
      if (this.tokens[i] === '') this.tokens[i] = `[EMPTY_${i}]`;
      this.tokenToId.set(this.tokens[i], i);
      this.attrs[i] = types ? attrFromType(types[i]) : ATTR_NORMAL;
    }

    // llama.cpp splits each merge at the first space after position 0; the
    // first occurrence of a pair gives its rank
    if (merges.length >= 1 << 21) fail(`${merges.length} merges: more than this tokenizer supports (2^21)`); // PairHeap key packing
    this.pairs = new PairTable(merges.length);
    this.mergeResult = new Int32Array(merges.length).fill(-2);
    this.ranksByText = new Map();
    for (let i = 0; i < merges.length; i++) {
      const m = merges[i];
      const sp = m.indexOf(' ', 1);
      const first = sp < 0 ? '' : m.slice(0, sp);
      const second = sp < 0 ? '' : m.slice(sp + 1);
      const a = this.tokenToId.get(first);
      const b = this.tokenToId.get(second);
      if (a !== undefined && b !== undefined) {
        if (this.pairs.get(a, b) < 0) {
          this.pairs.set(a, b, i);
          this.mergeResult[i] = this.tokenToId.get(first + second) ?? -1;
        }
      } else {
        const key = `${first} ${second}`;
        if (!this.ranksByText.has(key)) this.ranksByText.set(key, i);
      }
    }

    // special ids: gpt2 defaults, then the GGUF keys (ids out of range are ignored)
    const id = (key: string, def: number | undefined): number | undefined => {
      let v = def !== undefined && def >= n ? undefined : def;
      const k = ggufNumber(file, key);
      if (k !== undefined && k >= 0 && k < n) v = k;
      return v;
    };
    this.bos = id('tokenizer.ggml.bos_token_id', 11);
    this.eos = id('tokenizer.ggml.eos_token_id', 11);
    let eot = id('tokenizer.ggml.eot_token_id', undefined);
    let eom = id('tokenizer.ggml.eom_token_id', undefined);
    this.unk = id('tokenizer.ggml.unknown_token_id', undefined);
    this.pad = id('tokenizer.ggml.padding_token_id', undefined);
    let fimPre = id('tokenizer.ggml.fim_pre_token_id', undefined);
    let fimSuf = id('tokenizer.ggml.fim_suf_token_id', undefined);
    let fimMid = id('tokenizer.ggml.fim_mid_token_id', undefined);
    let fimPad = id('tokenizer.ggml.fim_pad_token_id', undefined);
    let fimRep = id('tokenizer.ggml.fim_rep_token_id', undefined);
    let fimSep = id('tokenizer.ggml.fim_sep_token_id', undefined);
    fimPre = id('tokenizer.ggml.prefix_token_id', fimPre);
    fimSuf = id('tokenizer.ggml.suffix_token_id', fimSuf);
    fimMid = id('tokenizer.ggml.middle_token_id', fimMid);

    this.addBos = ggufBool(file, 'tokenizer.ggml.add_bos_token') ?? this.preTokenizer.addBosDefault;
    this.addEos = ggufBool(file, 'tokenizer.ggml.add_eos_token') ?? false;

    // find special tokens by text, marking them control as llama.cpp does
    const byText = (texts: string[]): number | undefined => {
      for (const t of texts) {
        const i = this.tokenToId.get(t);
        if (i !== undefined) {
          this.attrs[i] |= ATTR_CONTROL;
          return i;
        }
      }
      return undefined;
    };
    eot ??= byText(EOT_TEXTS);
    eom ??= byText(EOM_TEXTS);
    fimPre ??= byText(FIM_PRE_TEXTS);
    fimSuf ??= byText(FIM_SUF_TEXTS);
    fimMid ??= byText(FIM_MID_TEXTS);
    fimPad ??= byText(FIM_PAD_TEXTS);
    fimRep ??= byText(FIM_REP_TEXTS);
    fimSep ??= byText(FIM_SEP_TEXTS);
    this.eot = eot;
    this.eom = eom;

    const eog = new Set<number>();
    for (const x of [fimPad, fimRep, fimSep]) if (x !== undefined) eog.add(x);
    for (const t of EOG_TEXTS) {
      const i = this.tokenToId.get(t);
      if (i !== undefined) {
        eog.add(i);
        this.attrs[i] |= ATTR_CONTROL;
      }
    }
    for (const t of ['<|channel|>', '<|message|>', '<|start|>', '<|constrain|>']) {
      const i = this.tokenToId.get(t);
      if (i !== undefined) this.attrs[i] = ATTR_USER_DEFINED;
    }
    for (const x of [this.eos, eot, eom]) if (x !== undefined) eog.add(x);
    const texts = new Map([...eog].map((i) => [this.tokens[i], i]));
    const endId = texts.get('<|end|>');
    if (endId !== undefined && ((texts.has('<|return|>') && texts.has('<|call|>'))
      || ((texts.has('<|call|>') || texts.has('<|calls|>')) && texts.has('<|flush|>')))) {
      eog.delete(endId);
      this.attrs[endId] = ATTR_USER_DEFINED;
    }
    const sId = texts.get('</s>');
    if (sId !== undefined && texts.has('<|tool_response>')) {
      eog.delete(sId);
      this.attrs[sId] = ATTR_NORMAL;
    }
    this.eog = eog;

    this.fim = fimPre !== undefined && fimSuf !== undefined && fimMid !== undefined
      ? { prefix: fimPre, suffix: fimSuf, middle: fimMid, pad: fimPad, repoName: fimRep, fileSep: fimSep }
      : undefined;

    const specials: number[] = [];
    for (let i = 0; i < n; i++) {
      if (this.attrs[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) specials.push(i);
    }
    // longest first, by UTF-8 byte length as in llama.cpp (ties: lower id first)
    const blen = (i: number) => utf8Encoder.encode(this.tokens[i]).length;
    const lens = new Map(specials.map((i) => [i, blen(i)]));
    specials.sort((a, b) => lens.get(b)! - lens.get(a)! || a - b);
    this.specials = specials;

    this.pieceCache = new Array(n);
    const nlIds = this.encode('\n', { addSpecial: false, parseSpecial: false });
    this.nl = nlIds.length ? nlIds[0] : this.pad;
  }

  /** Attribute bits of a token (ATTR_*). */
  tokenAttr(id: number): number {
    return this.attrs[id] ?? ATTR_UNDEFINED;
  }

  /** The token's vocab text (byte-encoded alphabet for normal tokens). */
  tokenText(id: number): string | undefined {
    return this.tokens[id];
  }

  /** Token id of an exact vocab text. */
  textToId(text: string): number | undefined {
    return this.tokenToId.get(text);
  }

  isControl(id: number): boolean {
    return (this.tokenAttr(id) & (ATTR_CONTROL | ATTR_UNKNOWN)) !== 0;
  }

  /** End of generation: EOS, EOT, FIM pad/repo/sep and the other EOG texts llama.cpp lists. */
  isEog(id: number): boolean {
    return this.eog.has(id);
  }

  get eogIds(): number[] {
    return [...this.eog].sort((a, b) => a - b);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const addSpecial = opts.addSpecial ?? true;
    const parseSpecial = opts.parseSpecial ?? true;
    const out: number[] = [];
    if (addSpecial && this.addBos) {
      if (this.bos === undefined) throw new Error('tokenizer: the model wants BOS but has no BOS token');
      out.push(this.bos);
    }
    if (text.length > 0) {
      for (const f of this.partition(text, parseSpecial)) {
        if (typeof f === 'number') out.push(f);
        else this.encodeFragment(f, out);
      }
    }
    if (addSpecial && this.addEos) {
      if (this.eos === undefined) throw new Error('tokenizer: the model wants EOS but has no EOS token');
      out.push(this.eos);
    }
    return out;
  }

  /** Split text around special tokens: strings are raw text, numbers are token ids. */
  private partition(text: string, parseSpecial: boolean): (string | number)[] {
    let frags: (string | number)[] = [text];
    for (const sid of this.specials) {
      if (!parseSpecial && (this.attrs[sid] & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;
      const t = this.tokens[sid];
      if (!text.includes(t)) continue;
      const next: (string | number)[] = [];
      for (const f of frags) {
        if (typeof f === 'number') {
          next.push(f);
          continue;
        }
        let s = 0;
        for (let m = f.indexOf(t); m >= 0; m = f.indexOf(t, s)) {
          if (m > s) next.push(f.slice(s, m));
          next.push(sid);
          s = m + t.length;
        }
        if (s < f.length) next.push(s === 0 ? f : f.slice(s));
      }
      frags = next;
    }
    return frags;
  }

  private encodeFragment(text: string, out: number[]): void {
    const { cps, offs, n } = toCodePoints(text);
    const bounds = preTokenize(this.preTokenizer, cps, n);
    const cache = this.wordCache;
    let a = 0;
    for (const b of bounds) {
      const key = text.slice(offs[a], offs[b]);
      let ids = cache.get(key);
      if (ids === undefined) {
        ids = this.bpe(byteEncode(cps, a, b));
        if (cache.size >= WORD_CACHE_MAX) cache.clear();
        cache.set(key, ids);
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
      a = b;
    }
  }

  /**
   * Rank of merging symbol i with symbol j of the current word, or -1.
   * Pairs of vocab tokens use the id-pair table; anything else the string map.
   */
  private rankOf(w: WordState, i: number, j: number): number {
    const a = w.ids[i];
    const b = w.ids[j];
    if (a >= 0 && b >= 0) return this.pairs.get(a, b);
    if (this.ranksByText.size === 0) return -1;
    const r = this.ranksByText.get(w.text(i) + ' ' + w.text(j));
    return r === undefined ? -1 : r;
  }

  /** Merge symbol j into symbol i (rank r); updates ids/texts and the links. */
  private mergeInto(w: WordState, i: number, j: number, r: number): void {
    const a = w.ids[i];
    const b = w.ids[j];
    let id = -1;
    if (a >= 0 && b >= 0 && this.mergeResult[r] !== -2) {
      id = this.mergeResult[r];
      if (id < 0) w.texts[i] = this.tokens[a] + this.tokens[b];
    } else {
      const t = w.text(i) + w.text(j);
      id = this.tokenToId.get(t) ?? -1;
      if (id < 0) w.texts[i] = t;
    }
    w.ids[i] = id;
    const k = w.next[j];
    w.next[i] = k;
    if (k >= 0) w.prev[k] = i;
    w.next[j] = -2; // dead
  }

  /** BPE of one byte-encoded pre-token. */
  private bpe(word: string): number[] {
    const whole = this.tokenToId.get(word);
    if (whole !== undefined && (word.length === 1 || this.preTokenizer.ignoreMerges)) return [whole];
    const n = word.length; // every byte-alphabet char is one UTF-16 unit
    const w = new WordState(n, this.tokens);
    for (let i = 0; i < n; i++) {
      const id = this.tokenToId.get(word[i]);
      if (id === undefined) {
        w.ids[i] = -1;
        w.texts[i] = word[i];
      } else {
        w.ids[i] = id;
      }
    }
    if (n <= 48) this.mergeScan(w);
    else this.mergeHeap(w);
    const ids: number[] = [];
    for (let i = 0; i !== -1; i = w.next[i]) {
      const id = w.ids[i];
      if (id >= 0) {
        ids.push(id);
        continue;
      }
      // not a token: llama.cpp emits each of its UTF-8 bytes that is a one-byte token
      for (const byte of utf8Encoder.encode(w.text(i))) {
        if (byte < 0x80) {
          const b = this.tokenToId.get(String.fromCharCode(byte));
          if (b !== undefined) ids.push(b);
        }
      }
    }
    return ids;
  }

  /** Merge lowest-rank pairs (leftmost on ties) by scanning; for short words. */
  private mergeScan(w: WordState): void {
    const n = w.n;
    const next = w.next;
    const rk = new Int32Array(n);
    for (let i = 0; i < n; i++) rk[i] = next[i] >= 0 ? this.rankOf(w, i, next[i]) : -1;
    for (;;) {
      let best = -1;
      let bestRank = 0x7fffffff;
      for (let i = 0; i !== -1; i = next[i]) {
        const r = rk[i];
        if (r >= 0 && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) return;
      this.mergeInto(w, best, next[best], bestRank);
      const k = next[best];
      rk[best] = k >= 0 ? this.rankOf(w, best, k) : -1;
      const p = w.prev[best];
      if (p >= 0) rk[p] = this.rankOf(w, p, best);
    }
  }

  /** Same merge order with a heap keyed (rank, left position); for long words. */
  private mergeHeap(w: WordState): void {
    const n = w.n;
    const ver = new Int32Array(n); // bumped when a symbol changes
    const heap = new PairHeap(n);
    const add = (l: number, r: number) => {
      if (l < 0 || r < 0) return;
      const rank = this.rankOf(w, l, r);
      if (rank >= 0) heap.push(rank, l, r, ver[l], ver[r]);
    };
    for (let i = 0; i + 1 < n; i++) add(i, i + 1);
    while (heap.size > 0) {
      const { rank, l, r, vl, vr } = heap.pop();
      if (ver[l] !== vl || ver[r] !== vr || w.next[l] !== r) continue; // stale
      this.mergeInto(w, l, r, rank);
      ver[l]++;
      ver[r]++;
      add(w.prev[l], l);
      add(l, w.next[l]);
    }
  }

  /** Bytes of a token's text as llama.cpp renders it (control tokens: their text). */
  tokenBytes(id: number): Uint8Array {
    const c = this.pieceCache[id];
    if (c) return c;
    if (!(id >= 0 && id < this.nVocab)) throw new RangeError(`token id ${id} out of range (vocab ${this.nVocab})`);
    const attr = this.attrs[id];
    const text = this.tokens[id];
    let bytes: Uint8Array;
    if (attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED)) {
      bytes = utf8Encoder.encode(text);
    } else if (attr & ATTR_NORMAL) {
      const out: number[] = [];
      for (const ch of text) {
        const cp = ch.codePointAt(0)!;
        const b = CHAR_TO_BYTE.get(cp);
        if (b !== undefined) out.push(b);
        else for (const x of utf8Encoder.encode(ch)) out.push(x);
      }
      bytes = Uint8Array.from(out);
    } else {
      bytes = new Uint8Array(0);
    }
    this.pieceCache[id] = bytes;
    return bytes;
  }

  /** Bytes of a token sequence (control tokens included unless special === false). */
  decodeBytes(ids: ArrayLike<number>, opts: DecodeOptions = {}): Uint8Array {
    const special = opts.special ?? true;
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!special && this.isControl(id)) continue;
      const b = this.tokenBytes(id);
      parts.push(b);
      total += b.length;
    }
    const out = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /** Text of a token sequence; invalid UTF-8 becomes U+FFFD. */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    return new TextDecoder('utf-8', { ignoreBOM: true }).decode(this.decodeBytes(ids, opts));
  }

  /** A streaming decoder over this vocabulary. */
  streamDecoder(opts: DecodeOptions = {}): TokenStreamDecoder {
    return new TokenStreamDecoder(this, opts);
  }
}

/**
 * Streaming detokenizer: push ids as they are generated, get back the text
 * that is complete so far; bytes of an unfinished UTF-8 sequence are held
 * until the next token completes them (or flush() renders them as U+FFFD).
 */
export class TokenStreamDecoder {
  private decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  private readonly special: boolean;

  constructor(private readonly tok: Tokenizer, opts: DecodeOptions = {}) {
    this.special = opts.special ?? true;
  }

  /** Feed one or more ids; returns the newly completed text (maybe ''). */
  push(ids: number | ArrayLike<number>): string {
    const list = typeof ids === 'number' ? [ids] : ids;
    let s = '';
    for (let i = 0; i < list.length; i++) {
      const id = list[i];
      if (!this.special && this.tok.isControl(id)) continue;
      s += this.decoder.decode(this.tok.tokenBytes(id), { stream: true });
    }
    return s;
  }

  /** End of stream: returns held bytes (as U+FFFD) and resets. */
  flush(): string {
    const s = this.decoder.decode();
    this.decoder = new TextDecoder('utf-8', { ignoreBOM: true });
    return s;
  }
}

/** Per-word BPE state: symbol ids (or -1 with a text), links. */
class WordState {
  readonly ids: Int32Array;
  readonly texts: (string | undefined)[];
  readonly next: Int32Array;
  readonly prev: Int32Array;
  constructor(readonly n: number, private readonly vocab: string[]) {
    this.ids = new Int32Array(n);
    this.texts = new Array(n);
    this.next = new Int32Array(n);
    this.prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      this.next[i] = i + 1 < n ? i + 1 : -1;
      this.prev[i] = i - 1;
    }
  }
  text(i: number): string {
    const id = this.ids[i];
    return id >= 0 ? this.vocab[id] : this.texts[i]!;
  }
}

/** Open-addressing hash table (left id, right id) → merge rank. */
class PairTable {
  private readonly mask: number;
  private readonly left: Int32Array;
  private readonly right: Int32Array;
  private readonly val: Int32Array;
  constructor(n: number) {
    let cap = 16;
    while (cap < n * 2) cap *= 2;
    this.mask = cap - 1;
    this.left = new Int32Array(cap).fill(-1);
    this.right = new Int32Array(cap);
    this.val = new Int32Array(cap);
  }
  private slot(a: number, b: number): number {
    return (Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x7f4a7c15, 0x85ebca77)) & this.mask;
  }
  get(a: number, b: number): number {
    for (let h = this.slot(a, b); ; h = (h + 1) & this.mask) {
      const l = this.left[h];
      if (l === -1) return -1;
      if (l === a && this.right[h] === b) return this.val[h];
    }
  }
  set(a: number, b: number, v: number): void {
    for (let h = this.slot(a, b); ; h = (h + 1) & this.mask) {
      const l = this.left[h];
      if (l === -1 || (l === a && this.right[h] === b)) {
        this.left[h] = a;
        this.right[h] = b;
        this.val[h] = v;
        return;
      }
    }
  }
}

/** Binary min-heap of candidate merges keyed (rank, left), in typed arrays. */
class PairHeap {
  size = 0;
  private key: Float64Array;
  private r: Int32Array;
  private vl: Int32Array;
  private vr: Int32Array;
  constructor(n: number) {
    const cap = Math.max(16, n);
    this.key = new Float64Array(cap);
    this.r = new Int32Array(cap);
    this.vl = new Int32Array(cap);
    this.vr = new Int32Array(cap);
  }
  private grow(): void {
    const cap = this.key.length * 2;
    const k = new Float64Array(cap); k.set(this.key); this.key = k;
    const r = new Int32Array(cap); r.set(this.r); this.r = r;
    const a = new Int32Array(cap); a.set(this.vl); this.vl = a;
    const b = new Int32Array(cap); b.set(this.vr); this.vr = b;
  }
  private swap(i: number, j: number): void {
    const k = this.key[i]; this.key[i] = this.key[j]; this.key[j] = k;
    const r = this.r[i]; this.r[i] = this.r[j]; this.r[j] = r;
    const a = this.vl[i]; this.vl[i] = this.vl[j]; this.vl[j] = a;
    const b = this.vr[i]; this.vr[i] = this.vr[j]; this.vr[j] = b;
  }
  push(rank: number, l: number, r: number, vl: number, vr: number): void {
    if (this.size === this.key.length) this.grow();
    let i = this.size++;
    this.key[i] = rank * 4294967296 + l;
    this.r[i] = r;
    this.vl[i] = vl;
    this.vr[i] = vr;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.key[p] <= this.key[i]) break;
      this.swap(i, p);
      i = p;
    }
  }
  pop(): { rank: number; l: number; r: number; vl: number; vr: number } {
    const k = this.key[0];
    const out = { rank: Math.floor(k / 4294967296), l: k % 4294967296, r: this.r[0], vl: this.vl[0], vr: this.vr[0] };
    const last = --this.size;
    if (last > 0) {
      this.key[0] = this.key[last];
      this.r[0] = this.r[last];
      this.vl[0] = this.vl[last];
      this.vr[0] = this.vr[last];
      let i = 0;
      for (;;) {
        const a = 2 * i + 1;
        const b = a + 1;
        let m = i;
        if (a < last && this.key[a] < this.key[m]) m = a;
        if (b < last && this.key[b] < this.key[m]) m = b;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return out;
  }
}

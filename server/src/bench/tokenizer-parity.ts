// tokenizer-parity.ts — compares specode's tokenizer with llama.cpp's (the
// node-llama-cpp peer) on ≥ 1 MB of real third-party source: files under
// node_modules/ and bench/peer/node_modules/ (code, JSON, Markdown, C/C++,
// Python, ...), picked in a deterministic order. A file counts as a mismatch
// when the two id sequences differ anywhere.
//
//   npx tsx server/src/bench/tokenizer-parity.ts /path/model.gguf [--bytes N] [--no-special] [--both] [--json]
//   npx tsx server/src/bench/tokenizer-parity.ts --write-fixture OUT.json /path/model.gguf   (golden ids for tests)
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { basename, extname, join, relative } from 'node:path';
import { readGguf } from '../engine/gguf';
import { Tokenizer } from '../engine/tokenizer';
import { findPeerDir, LlamaPeer } from './peer';

export interface ParityOptions {
  /** Stop gathering once this many bytes are collected (default 1.25 MiB). */
  minBytes?: number;
  /** Directories to gather files from (default: <repo>/node_modules and bench/peer/node_modules). */
  roots?: string[];
  /** parse_special for both sides (default true). */
  parseSpecial?: boolean;
  /** Files larger than this are skipped (default 256 KiB). */
  maxFileBytes?: number;
  /** How many mismatches to describe (default 5). */
  maxReported?: number;
  /** Reuse a loaded peer (vocab-only is enough). */
  peer?: LlamaPeer;
  /** Called per file (progress). */
  onFile?: (done: number, total: number) => void;
}

export interface ParityMismatch {
  file: string;
  bytes: number;
  oursLength: number;
  peerLength: number;
  /** Index of the first differing id. */
  index: number;
  ours: number[];
  peer: number[];
  /** Decoded text around the first difference (ours, up to the diff ± a few tokens). */
  text: string;
}

export interface ParityResult {
  model: string;
  parseSpecial: boolean;
  bytes: number;
  files: number;
  tokens: number;
  mismatches: number;
  firstMismatches: ParityMismatch[];
  oursSeconds: number;
  peerSeconds: number;
}

const EXTENSIONS = new Set([
  '.js', '.mjs', '.cjs', '.ts', '.mts', '.cts', '.tsx', '.jsx', '.json', '.md', '.markdown', '.txt',
  '.c', '.h', '.cc', '.cpp', '.hpp', '.cxx', '.py', '.sh', '.yml', '.yaml', '.css', '.html',
  '.cmake', '.gbnf', '.jinja', '.rs', '.go', '.java',
]);
const SPECIAL_NAMES = new Set(['LICENSE', 'README', 'CHANGELOG', 'CMakeLists.txt', 'Makefile']);

function repoRoot(): string {
  return join(findPeerDir(), '..', '..');
}

function walk(dir: string, out: string[]): void {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.isFile() && (EXTENSIONS.has(extname(e.name).toLowerCase()) || SPECIAL_NAMES.has(e.name))) out.push(p);
  }
}

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true });

/** A corpus file's text, or undefined when it is binary, not UTF-8 or minified. */
function readCorpusFile(path: string, maxBytes: number): string | undefined {
  let buf: Buffer;
  try {
    if (statSync(path).size > maxBytes) return undefined;
    buf = readFileSync(path);
  } catch {
    return undefined;
  }
  if (buf.length === 0 || buf.includes(0)) return undefined;
  let text: string;
  try {
    text = fatalUtf8.decode(buf);
  } catch {
    return undefined;
  }
  let lineStart = 0;
  for (;;) {
    const nl = text.indexOf('\n', lineStart);
    const end = nl < 0 ? text.length : nl;
    if (end - lineStart > 10_000) return undefined; // minified
    if (nl < 0) break;
    lineStart = nl + 1;
  }
  return text;
}

/**
 * Gather real source files: every candidate under the roots, ordered by a
 * hash of the path relative to its root (deterministic, and a mix of packages
 * and file kinds), taken until minBytes (UTF-8) are collected.
 */
export function gatherCorpus(opts: Pick<ParityOptions, 'roots' | 'minBytes' | 'maxFileBytes'> = {}): { path: string; text: string; bytes: number }[] {
  const root = opts.roots ? undefined : repoRoot();
  const roots = opts.roots ?? [join(root!, 'node_modules'), join(root!, 'bench', 'peer', 'node_modules')];
  const minBytes = opts.minBytes ?? 1.25 * 1024 * 1024;
  const maxFileBytes = opts.maxFileBytes ?? 256 * 1024;
  const all: { path: string; key: string }[] = [];
  for (const r of roots) {
    const files: string[] = [];
    walk(r, files);
    for (const f of files) {
      const rel = `${basename(r)}/${relative(r, f)}`;
      all.push({ path: f, key: createHash('sha1').update(rel).digest('hex') });
    }
  }
  all.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const out: { path: string; text: string; bytes: number }[] = [];
  let total = 0;
  for (const { path } of all) {
    if (total >= minBytes) break;
    const text = readCorpusFile(path, maxFileBytes);
    if (text === undefined) continue;
    const bytes = Buffer.byteLength(text, 'utf8');
    out.push({ path, text, bytes });
    total += bytes;
  }
  return out;
}

function firstDiff(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Tokenize ≥ 1 MB of real source with ours and with llama.cpp and compare. */
export async function runTokenizerParity(modelPath: string, opts: ParityOptions = {}): Promise<ParityResult> {
  const parseSpecial = opts.parseSpecial ?? true;
  const maxReported = opts.maxReported ?? 5;
  const tok = Tokenizer.fromGguf(await readGguf(modelPath));
  const peer = opts.peer ?? await LlamaPeer.load(modelPath, { vocabOnly: true });
  try {
    const corpus = gatherCorpus(opts);
    const result: ParityResult = {
      model: modelPath, parseSpecial, bytes: 0, files: 0, tokens: 0, mismatches: 0,
      firstMismatches: [], oursSeconds: 0, peerSeconds: 0,
    };
    for (const [i, f] of corpus.entries()) {
      let t0 = performance.now();
      const ours = tok.encode(f.text, { addSpecial: false, parseSpecial });
      result.oursSeconds += (performance.now() - t0) / 1000;
      t0 = performance.now();
      const theirs = peer.tokenize(f.text, parseSpecial);
      result.peerSeconds += (performance.now() - t0) / 1000;
      result.files++;
      result.bytes += f.bytes;
      result.tokens += theirs.length;
      const d = firstDiff(ours, theirs);
      if (d >= 0) {
        result.mismatches++;
        if (result.firstMismatches.length < maxReported) {
          const lo = Math.max(0, d - 4);
          result.firstMismatches.push({
            file: f.path, bytes: f.bytes, oursLength: ours.length, peerLength: theirs.length, index: d,
            ours: ours.slice(lo, d + 8), peer: theirs.slice(lo, d + 8),
            text: tok.decode(theirs.slice(lo, d + 8)),
          });
        }
      }
      opts.onFile?.(i + 1, corpus.length);
    }
    return result;
  } finally {
    if (!opts.peer) await peer.dispose();
  }
}

/** Tricky strings whose llama.cpp ids are kept as test fixtures (test/fixtures/tokenizer). */
export const FIXTURE_STRINGS: string[] = [
  // code
  'function add(a, b) {\n  return a + b;\n}\n',
  'const x = await fetch(`https://example.com/api?q=${encodeURIComponent(q)}&n=10`);',
  'def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n',
  '#include <stdio.h>\n\nint main(void) {\n\tprintf("%d\\n", 42);\n\treturn 0;\n}\n',
  '{"name": "specode", "version": "0.1.0", "deps": {"a": "^1.2.3"}, "n": [1, 2.5, -3e10, null, true]}',
  '# Title\n\n- item **bold** _it_ `code`\n\n```ts\nlet y: number = 1;\n```\n',
  'if (a !== b && c >= d || !e) { x <<= 2; y >>>= 1; z ??= w?.v ?? 0; }',
  '--- a/file.ts\n+++ b/file.ts\n@@ -1,3 +1,4 @@\n-old line\n+new line\n',
  'SELECT id, name FROM users WHERE age > 30 ORDER BY name DESC;',
  'for i in $(seq 1 10); do echo "$i"; done 2>&1 | tee -a log.txt',
  // whitespace
  '   leading spaces', 'trailing spaces   ', 'a  b   c    d     e', '\t\tindented\twith\ttabs',
  'x\n\n\ny', 'line one\r\nline two\r\n', '\r\r\n\n\r', ' \n \n  \n', 'end with newline\n',
  ' '.repeat(100) + 'x', '\n'.repeat(40), 'a\u00a0b\u3000c\u2028d\u0085e\u2003f', '    \n        \n',
  // digits
  '1234567890', '3.14159265358979', '0xDEADBEEF 0b1010 1e-9', 'v1.2.3-beta.4', '1,000,000 and 12:34:56',
  '\u0663\u0664\u0665 \uff15\uff16 \u00b2\u00b3 \u216b \u00bd', 'x1y22z333w4444',
  // unicode text
  'naïve café résumé', 'Привет, мир!', '中文字符测试，标点。', '日本語のテキスト', '한국어 텍스트', 'مرحبا بالعالم',
  'हिन्दी पाठ', 'e\u0301 combining accent', '\u01c5 titlecase \u0130stanbul', 'ß ẞ ﬁ ligature', 'Ωmega λambda',
  '\u{1d518}\u{1d52b}\u{1d526} \u{1d7d8}\u{1d7d9}',
  // emoji
  '😀 👍🏽 👩‍💻 🇫🇷 ❤️', 'emoji😀😀😀in a row', '🚀🚀🚀',
  // contractions
  "I'm you're he's we've they'll I'd can't", "I'M YOU'RE HE'S WE'VE THEY'LL I'D", "it\u2019s curly", "'tis 'twas rock'n'roll",
  // special tokens
  '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n',
  '<|fim_prefix|>def f():\n    <|fim_suffix|>\n    return 1\n<|fim_middle|>',
  '<|repo_name|>specode\n<|file_sep|>src/a.py\nprint(1)\n',
  '<|endoftext|>', '<|endoftext|><|endoftext|>text<|endoftext|>', '<tool_call>{"a":1}</tool_call>',
  '<reponame>x<filename>y<file_sep>z', '<|im_start', '<<|im_end|>>', '[PAD151665]', '</s><s>',
  // odd
  'a', ' ', '\n', 'a'.repeat(300), 'QmFzZTY0IGVuY29kZWQgc3RyaW5nIHdpdGggbG90cyBvZiBjaGFyYWN0ZXJz+/==',
  'https://github.com/ggml-org/llama.cpp/blob/master/src/llama-vocab.cpp#L100',
  '\u0000\u0001\u001b[0m\u007f', '\u0378 \u1c89 \u088f \ue000 \u{10fffd}', 'lone \ud800 surrogate', '\ufeffBOM',
];

export interface TokenizerFixture {
  model: string;
  generator: string;
  modelFile: string;
  vocab: number;
  pre: string;
  special: { bos: number | null; eos: number | null; eot: number | null; nl: number | null; eog: number[] };
  cases: { text: string; ids: number[]; idsNoSpecial: number[] }[];
}

/** Golden ids from llama.cpp for FIXTURE_STRINGS (parse_special true and false, add_special false). */
export async function writeTokenizerFixture(modelPath: string, outPath: string): Promise<TokenizerFixture> {
  const file = await readGguf(modelPath);
  const tok = Tokenizer.fromGguf(file);
  const peer = await LlamaPeer.load(modelPath, { vocabOnly: true });
  try {
    const eog: number[] = [];
    for (let i = 0; i < tok.nVocab; i++) if (peer.isEog(i)) eog.push(i);
    const settings = peer.peerSettings();
    const fixture: TokenizerFixture = {
      model: basename(outPath, '.json'),
      generator: `node-llama-cpp ${settings.nodeLlamaCppVersion} (llama.cpp ${settings.llamaCppRelease ?? '?'})`,
      modelFile: basename(modelPath),
      vocab: tok.nVocab,
      pre: tok.pre,
      special: { ...peer.specialIds, eog },
      cases: FIXTURE_STRINGS.map((text) => ({ text, ids: peer.tokenize(text, true), idsNoSpecial: peer.tokenize(text, false) })),
    };
    mkdirSync(dirname(outPath), { recursive: true });
    writeFileSync(outPath, JSON.stringify(fixture, null, 1).replace(/\[\s*((?:-?\d+,\s*)*-?\d+)\s*\]/g, (_m, inner: string) => `[${inner.replace(/\s+/g, '')}]`) + '\n');
    return fixture;
  } finally {
    await peer.dispose();
  }
}

function fmt(r: ParityResult): string {
  const lines = [
    `model        ${r.model}`,
    `parseSpecial ${r.parseSpecial}`,
    `bytes        ${r.bytes} (${(r.bytes / 1048576).toFixed(2)} MiB)`,
    `files        ${r.files}`,
    `tokens       ${r.tokens}`,
    `mismatches   ${r.mismatches}`,
    `time         ours ${r.oursSeconds.toFixed(2)} s, llama.cpp ${r.peerSeconds.toFixed(2)} s`,
  ];
  for (const m of r.firstMismatches) {
    lines.push(`  ${m.file}: first difference at token ${m.index} (ours ${m.oursLength} ids, llama.cpp ${m.peerLength})`);
    lines.push(`    ours      ${JSON.stringify(m.ours)}`);
    lines.push(`    llama.cpp ${JSON.stringify(m.peer)}`);
    lines.push(`    text      ${JSON.stringify(m.text)}`);
  }
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  const args = argv.slice(2);
  const wf = args.indexOf('--write-fixture');
  if (wf >= 0) {
    const out = args[wf + 1];
    const modelPath = args.filter((_, i) => i !== wf && i !== wf + 1).find((a) => !a.startsWith('--'));
    if (!out || !modelPath) {
      console.error('usage: npx tsx server/src/bench/tokenizer-parity.ts --write-fixture OUT.json MODEL.gguf');
      return 2;
    }
    const f = await writeTokenizerFixture(modelPath, out);
    console.log(`wrote ${out}: ${f.cases.length} cases from ${f.modelFile} (${f.generator})`);
    return 0;
  }
  const model = args.find((a) => !a.startsWith('--') && !/^\d+$/.test(a));
  if (!model) {
    console.error('usage: npx tsx server/src/bench/tokenizer-parity.ts MODEL.gguf [--bytes N] [--no-special] [--both] [--json]');
    return 2;
  }
  const bi = args.indexOf('--bytes');
  const minBytes = bi >= 0 ? Number(args[bi + 1]) : undefined;
  const modes = args.includes('--both') ? [true, false] : [!args.includes('--no-special')];
  const peer = await LlamaPeer.load(model, { vocabOnly: true });
  const results: ParityResult[] = [];
  try {
    for (const parseSpecial of modes) {
      const r = await runTokenizerParity(model, { parseSpecial, minBytes, peer });
      results.push(r);
      if (!args.includes('--json')) console.log(fmt(r) + '\n');
    }
  } finally {
    await peer.dispose();
  }
  if (args.includes('--json')) console.log(JSON.stringify(results.length === 1 ? results[0] : results, null, 2));
  return results.every((r) => r.mismatches === 0) ? 0 : 1;
}

// Run as a script only (not when bundled into dist/cli.js, where require.main is the bundle).
if (require.main === module && /tokenizer-parity\.[cm]?[tj]s$/.test(process.argv[1] ?? '')) {
  main(process.argv).then((code) => { process.exitCode = code; }, (e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 2;
  });
}

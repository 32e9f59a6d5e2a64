// peer.ts — llama.cpp as a reference peer, through node-llama-cpp 3.21.1
// installed in bench/peer/node_modules (node scripts/install-peer.mjs). Used by
// the tokenizer parity check, greedy-output comparisons and speed benchmarks.
// CPU only: getLlama({ build: 'never', gpu: false }) uses the prebuilt
// linux-x64 binary and never compiles or downloads anything.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ggmlTypeName } from '../engine/gguf';

export const PEER_VERSION = '3.21.1';

export interface PeerOptions {
  /** CPU threads for evaluation (default: 4, capped to the machine's cores). */
  threads?: number;
  /** Flash attention in the llama.cpp context (default false). */
  flashAttention?: boolean;
  /** KV cache size in tokens (default 4096). */
  contextSize?: number;
  /** Max tokens per llama_decode call during prefill (default 512). */
  batchSize?: number;
  /** Load only the vocabulary (tokenize/detokenize; no context, no generation). */
  vocabOnly?: boolean;
  /** bench/peer directory (default: found from this file or the cwd; env SPECODE_PEER_DIR). */
  peerDir?: string;
}

export interface PeerSettings {
  engine: 'llama.cpp via node-llama-cpp';
  nodeLlamaCppVersion: string;
  llamaCppRelease: string | undefined;
  buildType: string;
  gpu: false;
  modelPath: string;
  threads: number;
  /** Threads node-llama-cpp reports it uses (context.currentThreads), when a context exists. */
  contextThreads: number | undefined;
  flashAttention: boolean;
  contextSize: number | undefined;
  batchSize: number | undefined;
  kvCacheType: string | undefined;
  vocabOnly: boolean;
  sampling: 'greedy (temperature 0, no repeat penalty)';
}

export interface SpeedResult {
  tokens: number;
  seconds: number;
  tokensPerSecond: number;
}

// Minimal shapes of the node-llama-cpp objects used here (its types live in
// bench/peer, outside this project's type graph).
interface NlcModule {
  getLlama(opts: Record<string, unknown>): Promise<NlcLlama>;
}
interface NlcLlama {
  buildType: string;
  loadModel(opts: Record<string, unknown>): Promise<NlcModel>;
  dispose(): Promise<void>;
}
interface NlcModel {
  tokenize(text: string, specialTokens?: boolean): number[];
  detokenize(tokens: readonly number[], specialTokens?: boolean): string;
  createContext(opts: Record<string, unknown>): Promise<NlcContext>;
  readonly tokens: { bos: number | null; eos: number | null; eot: number | null; nl: number | null };
  isEogToken(t: number): boolean;
  dispose(): Promise<void>;
}
interface NlcContext {
  readonly contextSize: number;
  readonly batchSize: number;
  readonly flashAttention: boolean | 'auto';
  readonly currentThreads: number;
  readonly kvCacheKeyType?: string;
  getSequence(): NlcSequence;
  dispose(): Promise<void>;
}
interface NlcSequence {
  clearHistory(): Promise<void>;
  evaluate(tokens: number[], opts?: Record<string, unknown>): AsyncGenerator<number, void, void>;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  readonly nextTokenIndex: number;
}

/** The bench/peer directory (holding package.json and node_modules). */
export function findPeerDir(explicit?: string): string {
  const candidates: string[] = [];
  if (explicit) candidates.push(resolve(explicit));
  if (process.env.SPECODE_PEER_DIR) candidates.push(resolve(process.env.SPECODE_PEER_DIR));
  for (let d = __dirname; ; d = dirname(d)) {
    candidates.push(join(d, 'bench', 'peer'));
    if (dirname(d) === d) break;
  }
  candidates.push(join(process.cwd(), 'bench', 'peer'));
  for (const c of candidates) if (existsSync(join(c, 'package.json'))) return c;
  throw new Error('llama.cpp peer: bench/peer not found (set SPECODE_PEER_DIR)');
}

let modulePromise: Promise<{ mod: NlcModule; dir: string }> | undefined;
/** One Llama instance per thread cap (getLlama binds the binary; kept for the process). */
const llamas = new Map<number, Promise<NlcLlama>>();

/** Import node-llama-cpp from bench/peer/node_modules (ESM, by file URL). */
export async function importNodeLlamaCpp(peerDir?: string): Promise<{ mod: NlcModule; dir: string }> {
  if (modulePromise) return modulePromise;
  modulePromise = (async () => {
    const dir = findPeerDir(peerDir);
    const pkgDir = join(dir, 'node_modules', 'node-llama-cpp');
    const pkgJson = join(pkgDir, 'package.json');
    if (!existsSync(pkgJson)) {
      throw new Error(`llama.cpp peer: node-llama-cpp is not installed in ${join(dir, 'node_modules')}; run: node scripts/install-peer.mjs`);
    }
    const version = JSON.parse(readFileSync(pkgJson, 'utf8')).version as string;
    if (version !== PEER_VERSION) {
      throw new Error(`llama.cpp peer: found node-llama-cpp ${version}, want ${PEER_VERSION}; run: node scripts/install-peer.mjs --force`);
    }
    const entry = join(pkgDir, 'dist', 'index.js');
    const mod = (await import(pathToFileURL(entry).href)) as NlcModule;
    return { mod, dir };
  })();
  modulePromise.catch(() => { modulePromise = undefined; });
  return modulePromise;
}

function llamaCppRelease(dir: string): string | undefined {
  try {
    const info = JSON.parse(readFileSync(join(dir, 'node_modules', 'node-llama-cpp', 'llama', 'llama.cpp.info.json'), 'utf8'));
    return typeof info.tag === 'string' ? info.tag : undefined;
  } catch {
    return undefined;
  }
}

/** Deterministic pseudo-random ordinary token ids (for speed runs). */
export function syntheticTokens(n: number, nVocab: number, seed = 1): number[] {
  const hi = Math.max(200, Math.min(nVocab, 30000));
  const out = new Array<number>(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = 100 + (x % (hi - 100));
  }
  return out;
}

export class LlamaPeer {
  private context: NlcContext | undefined;
  private sequence: NlcSequence | undefined;

  private constructor(
    private readonly llama: NlcLlama,
    private readonly model: NlcModel,
    private readonly settings: PeerSettings,
    private readonly opts: Required<Pick<PeerOptions, 'contextSize' | 'batchSize' | 'threads' | 'flashAttention'>>,
  ) {}

  /** Load a GGUF model in the peer. */
  static async load(modelPath: string, opts: PeerOptions = {}): Promise<LlamaPeer> {
    const { mod, dir } = await importNodeLlamaCpp(opts.peerDir);
    const cores = (await import('node:os')).availableParallelism();
    const threads = Math.max(1, Math.min(opts.threads ?? 4, cores));
    let llamaP = llamas.get(threads);
    if (!llamaP) {
      llamaP = mod.getLlama({
        build: 'never', gpu: false, usePrebuiltBinaries: true, progressLogs: false,
        logLevel: 'error', maxThreads: threads,
      });
      llamas.set(threads, llamaP);
      llamaP.catch(() => llamas.delete(threads));
    }
    const llama = await llamaP;
    const model = await llama.loadModel({ modelPath: resolve(modelPath), gpuLayers: 0, vocabOnly: opts.vocabOnly ?? false });
    const settings: PeerSettings = {
      engine: 'llama.cpp via node-llama-cpp',
      nodeLlamaCppVersion: PEER_VERSION,
      llamaCppRelease: llamaCppRelease(dir),
      buildType: llama.buildType,
      gpu: false,
      modelPath: resolve(modelPath),
      threads,
      contextThreads: undefined,
      flashAttention: opts.flashAttention ?? false,
      contextSize: undefined,
      batchSize: undefined,
      kvCacheType: undefined,
      vocabOnly: opts.vocabOnly ?? false,
      sampling: 'greedy (temperature 0, no repeat penalty)',
    };
    return new LlamaPeer(llama, model, settings, {
      contextSize: opts.contextSize ?? 4096,
      batchSize: opts.batchSize ?? 512,
      threads,
      flashAttention: opts.flashAttention ?? false,
    });
  }

  /** llama_tokenize(text, add_special = false, parse_special = specialTokens). */
  tokenize(text: string, specialTokens: boolean): number[] {
    if (text === '') return [];
    return Array.from(this.model.tokenize(text, specialTokens));
  }

  detokenize(ids: readonly number[], specialTokens = true): string {
    return this.model.detokenize(ids, specialTokens);
  }

  get specialIds(): { bos: number | null; eos: number | null; eot: number | null; nl: number | null } {
    const t = this.model.tokens;
    return { bos: t.bos, eos: t.eos, eot: t.eot, nl: t.nl };
  }

  isEog(id: number): boolean {
    return this.model.isEogToken(id);
  }

  private async seq(): Promise<NlcSequence> {
    if (this.settings.vocabOnly) throw new Error('llama.cpp peer: loaded with vocabOnly; no generation');
    if (!this.context) {
      this.context = await this.model.createContext({
        contextSize: this.opts.contextSize,
        batchSize: this.opts.batchSize,
        flashAttention: this.opts.flashAttention,
        threads: { ideal: this.opts.threads, min: this.opts.threads },
        sequences: 1,
      });
      this.sequence = this.context.getSequence();
      this.settings.contextSize = this.context.contextSize;
      this.settings.batchSize = this.context.batchSize;
      this.settings.flashAttention = this.context.flashAttention === true;
      this.settings.contextThreads = this.context.currentThreads;
      const kv = this.context.kvCacheKeyType as unknown;
      this.settings.kvCacheType = typeof kv === 'number' ? ggmlTypeName(kv) : kv === undefined ? undefined : String(kv);
    }
    await this.sequence!.clearHistory();
    return this.sequence!;
  }

  /**
   * Greedy generation: evaluate the prompt from an empty KV cache, then take
   * the argmax token nTokens times (EOG tokens included unless stopOnEog).
   */
  async greedy(promptIds: readonly number[], nTokens: number, opts: { stopOnEog?: boolean } = {}): Promise<number[]> {
    if (promptIds.length === 0) throw new Error('llama.cpp peer: greedy needs a non-empty prompt');
    const seq = await this.seq();
    const out: number[] = [];
    if (nTokens <= 0) return out;
    for await (const t of seq.evaluate([...promptIds], { temperature: 0, yieldEogToken: true })) {
      out.push(t);
      if (out.length >= nTokens || (opts.stopOnEog && this.model.isEogToken(t))) break;
    }
    return out;
  }

  /** Prefill speed: evaluate nTokens (or the given ids) from an empty cache. */
  async prefillSpeed(nTokensOrIds: number | readonly number[], nVocab = 30000): Promise<SpeedResult> {
    const ids = typeof nTokensOrIds === 'number' ? syntheticTokens(nTokensOrIds, nVocab) : [...nTokensOrIds];
    const seq = await this.seq();
    const t0 = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(ids);
    const seconds = (performance.now() - t0) / 1000;
    return { tokens: ids.length, seconds, tokensPerSecond: ids.length / seconds };
  }

  /**
   * Decode speed: fill the cache with `context` tokens (not timed), then time
   * nTokens single-token greedy decode steps.
   */
  async decodeSpeed(context: number | readonly number[], nTokens: number, nVocab = 30000): Promise<SpeedResult & { context: number }> {
    const ctxIds = typeof context === 'number' ? syntheticTokens(context, nVocab, 7) : [...context];
    if (ctxIds.length < 1) throw new Error('llama.cpp peer: decodeSpeed needs a context of at least 1 token');
    const seq = await this.seq();
    const last = ctxIds.pop()!;
    if (ctxIds.length) await seq.evaluateWithoutGeneratingNewTokens(ctxIds);
    let n = 0;
    const t0 = performance.now();
    for await (const _t of seq.evaluate([last], { temperature: 0, yieldEogToken: true })) {
      if (++n >= nTokens) break;
    }
    const seconds = (performance.now() - t0) / 1000;
    return { context: ctxIds.length + 1, tokens: n, seconds, tokensPerSecond: n / seconds };
  }

  /**
   * Both figures from one fill: time the prefill of ids[0..n-1), then nTokens single-token
   * greedy decode steps starting from the last id (what `specode bench speed` does too).
   */
  async prefillThenDecode(ids: readonly number[], nTokens: number): Promise<{ prefill: SpeedResult; decode: SpeedResult }> {
    if (ids.length < 2) throw new Error('llama.cpp peer: prefillThenDecode needs at least 2 tokens');
    const seq = await this.seq();
    const ctxIds = ids.slice(0, -1);
    let t0 = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(ctxIds);
    const ps = (performance.now() - t0) / 1000;
    let n = 0;
    t0 = performance.now();
    for await (const _t of seq.evaluate([ids[ids.length - 1]], { temperature: 0, yieldEogToken: true })) {
      if (++n >= nTokens) break;
    }
    const ds = (performance.now() - t0) / 1000;
    return {
      prefill: { tokens: ctxIds.length, seconds: ps, tokensPerSecond: ctxIds.length / ps },
      decode: { tokens: n, seconds: ds, tokensPerSecond: n / ds },
    };
  }

  /** What the peer ran with (threads, flash attention, context/batch size, versions). */
  peerSettings(): PeerSettings {
    return { ...this.settings };
  }

  async dispose(): Promise<void> {
    await this.context?.dispose();
    this.context = undefined;
    await this.model.dispose();
  }
}

/** Convenience: load a peer model. */
export function loadPeer(modelPath: string, opts: PeerOptions = {}): Promise<LlamaPeer> {
  return LlamaPeer.load(modelPath, opts);
}

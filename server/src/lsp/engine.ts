// engine.ts — the narrow view of the model the request handlers use, and its
// real implementation over engine/session.ts. Tests give the handlers a fake.
import { basename, join } from 'node:path';
import { cacheDir } from '../models/registry';
import { UserError } from '../errors';
import { describeBackend, loadAddon, type ContextOptions, type CudaInfo } from '../engine/native';
import { Session, type GenerateOptions, type GenerateResult } from '../engine/session';
import type { ModelSummary, ServerConfig } from '../protocol';

export interface EngineModel extends ModelSummary {
  weightBytes: number;
  nLayer: number;
  nHeadKv: number;
  headDim: number;
}

export interface Engine {
  readonly model: EngineModel;
  /** e.g. "cpu (avx2) — auto: no CUDA device (…)": the decoder and why it was chosen. */
  readonly backend: string;
  /** Token ids; `first` adds BOS when the model wants one. Control tokens written in the text are parsed. */
  encode(text: string, first: boolean): number[];
  /** Token count of plain text (no control tokens, no BOS). */
  count(text: string): number;
  /** Make the KV cache hold exactly `ids` (longest cached prefix reused). Rejects with an AbortError when `signal` fires. */
  prefill(ids: number[], signal?: AbortSignal): Promise<{ reused: number }>;
  /** Generate after `ids` (prefill included). Cancelled generations resolve with stopReason 'cancelled'. */
  generate(ids: number[], opts: GenerateOptions): Promise<GenerateResult>;
  /** Token ids whose KV sits in the cache, in order. */
  cachedIds(): readonly number[];
  /** Numeric engine figures (`ctx.metrics()`) when the engine reports any. */
  metrics(): Record<string, number> | undefined;
  /**
   * Attention read-out (the native trackAttention): on zeroes the sums and starts adding
   * each generation step's attention per cached position. False when the KV policy has
   * no read-out (only specache has one). Not while a generation runs.
   */
  trackAttention?(on: boolean): boolean;
  /** The read-out's sums for positions [0, n). */
  attentionMass?(n: number): Float32Array;
  close(): void;
}

export type EngineFactory = (modelPath: string, config: ServerConfig) => Promise<Engine>;

/**
 * Options beyond ContextOptions that the KV-policy engine reads when it knows
 * them (policy, bits, top-k, device budget, backend). An engine that does not
 * know a key ignores it; the status reports what the engine itself says.
 */
/** KV policies the engine runs (every one the settings offer). */
const ENGINE_POLICIES = ['full', 'offload-all', 'specache', 'specache-sync', 'streamingllm', 'h2o', 'kivi', 'tailorkv', 'gear', 'kvmerger'] as const;

function contextOptions(config: ServerConfig): ContextOptions & Record<string, unknown> {
  const policy = (ENGINE_POLICIES as readonly string[]).includes(config.kvPolicy) ? (config.kvPolicy as ContextOptions['policy']) : undefined;
  if (!policy)
    throw new Error(`KV policy '${config.kvPolicy}' is not one the engine runs; set specode.kvPolicy to one of ${ENGINE_POLICIES.join(', ')}.`);
  return {
    nCtx: config.contextTokens,
    policy,
    bits: config.kvBits === 1 ? 1 : 2,
    topk: config.topK,
    deviceBudgetBytes: config.deviceBudgetMiB * 1024 * 1024,
    backend: config.backend,
    ...(config.kvDiskCache !== false ? { diskCacheDir: join(cacheDir(), 'kv') } : {}),
  };
}

class SessionEngine implements Engine {
  constructor(
    private readonly session: Session,
    readonly model: EngineModel,
    readonly backend: string,
  ) {}

  encode(text: string, first: boolean): number[] {
    return this.session.tokenizer.encode(text, { addSpecial: first, parseSpecial: true });
  }

  count(text: string): number {
    return this.session.tokenizer.encode(text, { addSpecial: false, parseSpecial: false }).length;
  }

  prefill(ids: number[], signal?: AbortSignal): Promise<{ reused: number }> {
    return this.session.prefill(ids, signal);
  }

  generate(ids: number[], opts: GenerateOptions): Promise<GenerateResult> {
    return this.session.generate(ids, opts);
  }

  cachedIds(): readonly number[] {
    return this.session.cachedTokens;
  }

  metrics(): Record<string, number> | undefined {
    const ctx = this.session.ctx as unknown as { metrics?: () => unknown };
    if (typeof ctx.metrics !== 'function') return undefined;
    const raw = ctx.metrics();
    if (typeof raw !== 'object' || raw === null) return undefined;
    const out: Record<string, number> = {};
    flattenNumbers(raw as Record<string, unknown>, '', out, 0);
    return Object.keys(out).length ? out : undefined;
  }

  trackAttention(on: boolean): boolean {
    const ctx = this.session.ctx as unknown as { trackAttention?: (on: boolean) => void };
    if (typeof ctx.trackAttention !== 'function') return false;
    try {
      ctx.trackAttention(on);
      return true;
    } catch (e) {
      if ((e as { code?: string }).code === 'UNSUPPORTED') return false;
      throw e;
    }
  }

  attentionMass(n: number): Float32Array {
    return this.session.ctx.attentionMass(n);
  }

  close(): void {
    this.session.close();
  }
}

/** {a: 1, b: {c: 2}} → {a: 1, 'b.c': 2}; non-numbers are left out. */
function flattenNumbers(o: Record<string, unknown>, prefix: string, out: Record<string, number>, depth: number): void {
  for (const [k, v] of Object.entries(o)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (typeof v === 'number' && Number.isFinite(v)) out[key] = v;
    else if (typeof v === 'bigint') out[key] = Number(v);
    else if (typeof v === 'object' && v !== null && !Array.isArray(v) && depth < 3) flattenNumbers(v as Record<string, unknown>, key, out, depth + 1);
  }
}

/**
 * Before a model is loaded: `specode.backend: cuda` where the engine already knows CUDA cannot
 * run (built without it, or no device answers) fails at once, saying why and what to do.
 */
export function checkBackendRequest(requested: ServerConfig['backend'], cuda: CudaInfo | undefined): void {
  if (requested !== 'cuda' || !cuda) return;
  const why = cuda.backendBuilt === false
    ? 'this engine was built without the CUDA backend (nvcc was not found at install time)'
    : !cuda.available ? `CUDA: ${cuda.reason}` : '';
  if (why) throw new UserError(`specode.backend is 'cuda', but the engine cannot run on CUDA here — ${why}.`, BACKEND_HINT);
}

const BACKEND_HINT = "set specode.backend to 'auto' (or 'cpu') to use the CPU decoder";

export const openSessionEngine: EngineFactory = async (modelPath, config) => {
  const threads = Number(process.env.SPECODE_THREADS) || undefined;
  const addon = loadAddon();
  checkBackendRequest(config.backend, addon.cudaProbe?.());
  const session = await Session.open(modelPath, { ...contextOptions(config), threads }).catch((e: Error & { code?: string }) => {
    // What the engine says when CUDA was asked for and the context cannot run there (no room, policy).
    if (config.backend === 'cuda' && (e.code === 'UNSUPPORTED' || e.code === 'NOMEM')) throw new UserError(e.message, BACKEND_HINT);
    throw e;
  });
  const info = session.info;
  const model: EngineModel = {
    name: info.name || basename(modelPath),
    path: modelPath,
    arch: info.arch,
    fileType: info.fileType,
    nCtx: session.nCtx,
    fim: session.tokenizer.fim !== undefined,
    weightBytes: info.weightBytes,
    nLayer: info.nLayer,
    nHeadKv: info.nHeadKv,
    headDim: info.headDim,
  };
  return new SessionEngine(session, model, describeBackend(session.ctx.backend));
};

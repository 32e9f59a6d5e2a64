// status.ts — the one server-status message: state, model, figures. Changes of
// state are sent at once; figure-only updates at most every `intervalMs`.
import { PROTOCOL_VERSION, type Figures, type KvPolicy, type ModelSummary, type ServerState, type ServerStatus } from '../protocol';
import type { Engine } from './engine';

export type StatusSink = (status: ServerStatus) => void;

/** Engine metric names read into the named figures (first present wins). */
const ENGINE_KEYS: Record<'deviceBytes' | 'hostKvBytes' | 'compressionRatio' | 'prefetchHitRate', string[]> = {
  deviceBytes: ['deviceBytes', 'deviceKvBytes', 'device.totalBytes', 'device.bytes'],
  hostKvBytes: ['hostKvBytes', 'host.kvBytes', 'host.bytes'],
  compressionRatio: ['compressionRatio', 'kv.compressionRatio'],
  prefetchHitRate: ['prefetchHitRate', 'prefetch.hitRate', 'topkOverlap'],
};

export class StatusReporter {
  private status: ServerStatus;
  private timer: NodeJS.Timeout | undefined;
  private lastSent = 0;

  constructor(
    private readonly sink: StatusSink,
    private readonly intervalMs = 250,
  ) {
    this.status = { health: 'ok', state: 'idle', figures: {}, contextFiles: 0, pid: process.pid, protocolVersion: PROTOCOL_VERSION };
  }

  get current(): ServerStatus {
    return this.status;
  }

  setState(state: ServerState, extra: { message?: string; hint?: string; progress?: { done: number; total: number } } = {}): void {
    const health = state === 'error' ? 'error' : this.status.health === 'warning' && state !== 'ready' ? 'warning' : 'ok';
    this.status = { ...this.status, state, health, message: extra.message, hint: extra.hint, progress: extra.progress };
    this.flush();
  }

  /** A problem that does not stop the server (e.g. a failed request). */
  warn(message: string, hint?: string): void {
    this.status = { ...this.status, health: 'warning', message, hint };
    this.flush();
  }

  setProgress(done: number, total: number, message?: string): void {
    this.status = { ...this.status, progress: { done, total }, message: message ?? this.status.message };
    this.schedule();
  }

  setModel(model: ModelSummary | undefined, backend: string | undefined, kvPolicy: KvPolicy | undefined): void {
    this.status = { ...this.status, model, backend, kvPolicy, figures: model ? this.status.figures : {} };
    this.flush();
  }

  setContextFiles(n: number): void {
    this.status = { ...this.status, contextFiles: n };
    this.schedule();
  }

  /** Merge new figures (from a finished request) and the engine's own metrics. */
  updateFigures(engine: Engine | undefined, extra: Figures = {}): void {
    const figures: Figures = { ...this.status.figures, ...extra };
    if (engine) {
      figures.weightBytes = engine.model.weightBytes;
      const kvTokens = engine.cachedIds().length;
      figures.kvTokens = kvTokens;
      const m = engine.model;
      figures.computedKvBytes = kvTokens * m.nLayer * m.nHeadKv * m.headDim * 2 * 2;
      const raw = engine.metrics();
      figures.engine = raw;
      for (const [name, keys] of Object.entries(ENGINE_KEYS) as [keyof typeof ENGINE_KEYS, string[]][]) {
        // The engine measures top-k overlap only in its `measure` mode; 0 samples is "unknown", not 0 %.
        const usable = (k: string) => raw !== undefined && typeof raw[k] === 'number' && !(k === 'topkOverlap' && !raw.overlapSamples);
        const key = raw ? keys.find(usable) : undefined;
        if (key !== undefined && raw) figures[name] = raw[key];
        else delete figures[name];
      }
    }
    this.status = { ...this.status, figures };
    this.schedule();
  }

  private schedule(): void {
    if (this.timer) return;
    const wait = Math.max(0, this.lastSent + this.intervalMs - Date.now());
    this.timer = setTimeout(() => this.flush(), wait);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.lastSent = Date.now();
    this.sink(this.status);
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

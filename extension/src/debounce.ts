// debounce.ts — how long to wait after a keystroke before asking for a
// completion. Adaptive: while the user types faster than the wait, the wait
// grows a little (requests fired mid-word are wasted); when the server is
// slow, waiting longer costs nothing. Pure: the clock is passed in.

export interface DebounceOptions {
  /** The setting `specode.inline.debounceMs`. */
  baseMs: number;
  /** Upper bound as a multiple of baseMs (default 4). */
  maxFactor?: number;
  /** Keystrokes remembered (default 8). */
  window?: number;
}

/** Gaps longer than this end a typing burst and are not counted. */
const BURST_GAP_MS = 1000;

export class AdaptiveDebounce {
  private lastKey: number | undefined;
  private readonly gaps: number[] = [];
  private latencyEwma: number | undefined;
  private readonly maxFactor: number;
  private readonly window: number;

  constructor(private opts: DebounceOptions) {
    this.maxFactor = opts.maxFactor ?? 4;
    this.window = opts.window ?? 8;
  }

  setBase(ms: number): void {
    this.opts = { ...this.opts, baseMs: ms };
  }

  /** A keystroke (a completion was asked for) at time `now` (ms). */
  keystroke(now: number): void {
    if (this.lastKey !== undefined) {
      const gap = now - this.lastKey;
      if (gap >= 0 && gap < BURST_GAP_MS) {
        this.gaps.push(gap);
        if (this.gaps.length > this.window) this.gaps.shift();
      }
    }
    this.lastKey = now;
  }

  /** A completion took `ms` from request to answer. */
  latency(ms: number): void {
    this.latencyEwma = this.latencyEwma === undefined ? ms : 0.7 * this.latencyEwma + 0.3 * ms;
  }

  /** The wait before the next request, ms. */
  delay(): number {
    const base = this.opts.baseMs;
    if (base <= 0) return 0;
    let d = base;
    if (this.gaps.length >= 3) {
      const sorted = [...this.gaps].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      // Typing faster than the wait: wait a bit longer than one gap, so a burst fires once at its end.
      if (median < d * 1.5) d = Math.max(d, median * 1.3);
    }
    if (this.latencyEwma !== undefined) d += Math.min(base, this.latencyEwma * 0.1);
    return Math.round(Math.min(d, base * this.maxFactor));
  }
}

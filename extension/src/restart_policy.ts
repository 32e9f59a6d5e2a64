// restart_policy.ts — when the server process dies, restart it after a
// growing delay; give up after too many deaths in a short time (a server that
// crashes on start would otherwise spin). Pure: the clock is passed in.

export interface RestartDecision {
  restart: boolean;
  delayMs: number;
  /** Deaths inside the window, this one included. */
  recent: number;
}

export class RestartPolicy {
  private deaths: number[] = [];

  constructor(
    readonly maxRestarts = 5,
    readonly windowMs = 3 * 60_000,
    readonly baseDelayMs = 500,
    readonly maxDelayMs = 15_000,
  ) {}

  onDeath(now: number): RestartDecision {
    this.deaths = this.deaths.filter((t) => now - t < this.windowMs);
    this.deaths.push(now);
    const recent = this.deaths.length;
    if (recent > this.maxRestarts) return { restart: false, delayMs: 0, recent };
    return { restart: true, delayMs: Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (recent - 1)), recent };
  }

  /** The user restarted by hand: start counting afresh. */
  reset(): void {
    this.deaths = [];
  }
}

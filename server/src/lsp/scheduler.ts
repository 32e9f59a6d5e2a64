// scheduler.ts — engine work runs one job at a time, in arrival order, with
// one exception: completions do not queue up. A new completion aborts the
// running completion and drops any waiting one (they reject with Superseded),
// because only the text at the newest cursor is worth computing.
//
// It also keeps counters (counters(), resetPeaks()): jobs running now and the
// most ever running at once, waiting and pending peaks, and how jobs ended.
// `specode bench editor` reads them through specode/schedulerStats to show
// that a keystroke storm leaves no backlog. `running` is counted from the
// moment a job's work starts until its promise settles (engine work included),
// independently of the one-slot rule, so a change that let jobs overlap would
// show up as peakRunning > 1.

export type JobKind = 'complete' | 'ask' | 'index' | 'admin';

/** Rejection of a job replaced by a newer completion. */
export class SupersededError extends Error {
  constructor() {
    super('specode: a newer completion request replaced this one');
    this.name = 'SupersededError';
  }
}

/** Rejection of a job cancelled before it started. */
export class CancelledError extends Error {
  constructor(reason = 'the request was cancelled') {
    super(`specode: ${reason}`);
    this.name = 'CancelledError';
  }
}

interface Job {
  kind: JobKind;
  run: (signal: AbortSignal) => Promise<unknown>;
  controller: AbortController;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  /** Why the controller was aborted, once it was. */
  abortReason?: 'superseded' | 'cancelled';
}

export interface JobHandle<T> {
  result: Promise<T>;
  /** Abort the job: dropped if waiting, its signal fires if running. */
  cancel(): void;
}

/** What the scheduler has done; peaks are since the last resetPeaks(). */
export interface SchedulerCounters {
  /** Jobs whose work has started and not yet settled (0 or 1 by design). */
  running: number;
  /** Jobs accepted and not started. */
  waiting: number;
  /** Most jobs running at once. */
  peakRunning: number;
  /** Most jobs waiting at once. */
  peakWaiting: number;
  /** Most jobs running + waiting at once. */
  peakPending: number;
  /** Jobs ever submitted. */
  submitted: number;
  /** Jobs that resolved (including ones that stopped early and returned partial work). */
  finished: number;
  /** Jobs replaced by a newer completion (waiting or running). */
  superseded: number;
  /** Jobs cancelled (waiting, or running and then rejected). */
  cancelled: number;
  /** Jobs that rejected for any other reason. */
  failed: number;
}

export class Scheduler {
  private readonly waiting: Job[] = [];
  private running: Job | undefined;
  private readonly stats: SchedulerCounters = {
    running: 0,
    waiting: 0,
    peakRunning: 0,
    peakWaiting: 0,
    peakPending: 0,
    submitted: 0,
    finished: 0,
    superseded: 0,
    cancelled: 0,
    failed: 0,
  };

  /** A copy of the counters. */
  counters(): SchedulerCounters {
    return { ...this.stats, waiting: this.waiting.length };
  }

  /** Peaks start again from what is running and waiting now. */
  resetPeaks(): void {
    this.stats.peakRunning = this.stats.running;
    this.stats.peakWaiting = this.waiting.length;
    this.stats.peakPending = this.stats.running + this.waiting.length;
  }

  private notePeaks(): void {
    const s = this.stats;
    s.peakRunning = Math.max(s.peakRunning, s.running);
    s.peakWaiting = Math.max(s.peakWaiting, this.waiting.length);
    s.peakPending = Math.max(s.peakPending, s.running + this.waiting.length);
  }

  /** Kind of the running job, if any. */
  get busy(): JobKind | undefined {
    return this.running?.kind;
  }

  get queued(): number {
    return this.waiting.length;
  }

  submit<T>(kind: JobKind, run: (signal: AbortSignal) => Promise<T>): JobHandle<T> {
    let job!: Job;
    const result = new Promise<T>((resolve, reject) => {
      job = { kind, run, controller: new AbortController(), resolve: resolve as (v: unknown) => void, reject };
    });
    this.stats.submitted++;
    if (kind === 'complete') {
      for (let i = this.waiting.length - 1; i >= 0; i--) {
        const w = this.waiting[i];
        if (w.kind === 'complete') {
          this.waiting.splice(i, 1);
          this.stats.superseded++;
          w.reject(new SupersededError());
        }
      }
      if (this.running?.kind === 'complete') this.abort(this.running, 'superseded');
    }
    this.waiting.push(job);
    this.notePeaks();
    this.pump();
    return { result, cancel: () => this.cancel(job) };
  }

  /** Abort everything: the running job's signal fires, waiting jobs reject. */
  cancelAll(): void {
    for (const w of this.waiting.splice(0)) {
      this.stats.cancelled++;
      w.reject(new CancelledError());
    }
    if (this.running) this.abort(this.running, 'cancelled');
  }

  private cancel(job: Job): void {
    const i = this.waiting.indexOf(job);
    if (i >= 0) {
      this.waiting.splice(i, 1);
      this.stats.cancelled++;
      job.reject(new CancelledError());
    } else if (this.running === job) {
      this.abort(job, 'cancelled');
    }
  }

  private abort(job: Job, why: 'superseded' | 'cancelled'): void {
    if (job.controller.signal.aborted) return;
    job.abortReason = why;
    job.controller.abort(why === 'superseded' ? new SupersededError() : new CancelledError());
  }

  private pump(): void {
    if (this.running) return;
    const job = this.waiting.shift();
    if (!job) return;
    this.running = job;
    this.stats.running++;
    this.notePeaks();
    let p: Promise<unknown>;
    try {
      p = job.run(job.controller.signal);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (v) => {
        this.stats.running--;
        if (job.abortReason === 'superseded') {
          this.stats.superseded++;
          job.reject(new SupersededError());
        } else {
          this.stats.finished++;
          job.resolve(v);
        }
      },
      (e) => {
        this.stats.running--;
        if (job.abortReason === 'superseded') this.stats.superseded++;
        else if (job.abortReason === 'cancelled') this.stats.cancelled++;
        else this.stats.failed++;
        job.reject(job.abortReason === 'superseded' ? new SupersededError() : e);
      },
    ).finally(() => {
      this.running = undefined;
      this.pump();
    });
  }
}

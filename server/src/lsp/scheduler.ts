// scheduler.ts — engine work runs one job at a time, in arrival order, with
// one exception: completions do not queue up. A new completion aborts the
// running completion and drops any waiting one (they reject with Superseded),
// because only the text at the newest cursor is worth computing.

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

export class Scheduler {
  private readonly waiting: Job[] = [];
  private running: Job | undefined;

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
    if (kind === 'complete') {
      for (let i = this.waiting.length - 1; i >= 0; i--) {
        const w = this.waiting[i];
        if (w.kind === 'complete') {
          this.waiting.splice(i, 1);
          w.reject(new SupersededError());
        }
      }
      if (this.running?.kind === 'complete') this.abort(this.running, 'superseded');
    }
    this.waiting.push(job);
    this.pump();
    return { result, cancel: () => this.cancel(job) };
  }

  /** Abort everything: the running job's signal fires, waiting jobs reject. */
  cancelAll(): void {
    for (const w of this.waiting.splice(0)) w.reject(new CancelledError());
    if (this.running) this.abort(this.running, 'cancelled');
  }

  private cancel(job: Job): void {
    const i = this.waiting.indexOf(job);
    if (i >= 0) {
      this.waiting.splice(i, 1);
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
    let p: Promise<unknown>;
    try {
      p = job.run(job.controller.signal);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (v) => (job.abortReason === 'superseded' ? job.reject(new SupersededError()) : job.resolve(v)),
      (e) => job.reject(job.abortReason === 'superseded' ? new SupersededError() : e),
    ).finally(() => {
      this.running = undefined;
      this.pump();
    });
  }
}

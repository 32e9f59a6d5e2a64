// session.ts — a loaded model with its tokenizer and one KV context, and the
// generation loop: prefix reuse, sampling, stop sequences, cancellation
// between tokens, streaming text.
import { readGguf } from './gguf';
import { loadAddon, type ContextOptions, type ModelInfo, type NativeContext, type NativeModel, type SamplerOptions } from './native';
import { Tokenizer } from './tokenizer';

export interface GenerateOptions {
  /** Max new tokens (default 128). */
  maxTokens?: number;
  /** Stop when the generated text contains one of these (the stop text is not returned). */
  stop?: string[];
  sampler?: SamplerOptions;
  /** Cancels between tokens; the text so far is returned with stopReason 'cancelled'. */
  signal?: AbortSignal;
  /** Called with each new piece of text as soon as it is complete UTF-8. */
  onText?: (piece: string) => void;
}

export interface GenerateResult {
  text: string;
  tokens: number[];
  stopReason: 'eos' | 'stop' | 'length' | 'cancelled';
  promptTokens: number;
  /** Prompt tokens whose KV was reused from the previous request. */
  reusedTokens: number;
  prefillMs: number;
  decodeMs: number;
}

export class Session {
  private cached: number[] = [];  // tokens whose K/V sit in ctx, in order

  private constructor(
    readonly path: string,
    readonly model: NativeModel,
    readonly tokenizer: Tokenizer,
    readonly ctx: NativeContext,
    readonly info: ModelInfo,
    readonly nCtx: number,
  ) {}

  static async open(path: string, opts: ContextOptions & { threads?: number } = {}): Promise<Session> {
    const addon = loadAddon();
    const file = await readGguf(path);
    const tokenizer = Tokenizer.fromGguf(file);
    const model = await addon.loadModel(path, { threads: opts.threads });
    const info = model.info();
    const nCtx = Math.min(opts.nCtx ?? 8192, info.nCtxTrain);
    const ctx = model.createContext({ ...opts, nCtx });
    return new Session(path, model, tokenizer, ctx, info, nCtx);
  }

  /** Tokens currently cached (for reuse by the next request). */
  get cachedTokens(): readonly number[] {
    return this.cached;
  }

  /**
   * Make the context hold exactly `ids`, reusing the longest common prefix of
   * what is cached; returns the logits of the last token and how many were reused.
   */
  async prefill(ids: number[], signal?: AbortSignal): Promise<{ reused: number }> {
    if (ids.length === 0) throw new Error('specode: the prompt is empty — nothing to complete.');
    if (ids.length >= this.nCtx)
      throw new Error(`specode: the prompt has ${ids.length} tokens but the context holds ${this.nCtx}; shorten it or raise the context size.`);
    let common = 0;
    const max = Math.min(this.cached.length, ids.length);
    while (common < max && this.cached[common] === ids[common]) common++;
    // The last prompt token must be run again to get its logits.
    if (common === ids.length) common--;
    this.ctx.truncate(common);
    this.cached = this.cached.slice(0, common);
    const onAbort = () => this.ctx.cancel();
    signal?.addEventListener('abort', onAbort);
    try {
      if (signal?.aborted) throw abortError();
      await this.ctx.decode(Int32Array.from(ids.slice(common)), { wantLogits: false });
    } catch (e) {
      // Whatever was processed before a cancel is still valid KV.
      this.cached = ids.slice(0, this.ctx.nPast);
      throw e;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    this.cached = ids.slice();
    return { reused: common };
  }

  async generate(prompt: string | number[], opts: GenerateOptions = {}): Promise<GenerateResult> {
    const ids = typeof prompt === 'string' ? this.tokenizer.encode(prompt, { addSpecial: true, parseSpecial: true }) : prompt;
    const maxTokens = opts.maxTokens ?? 128;
    const stops = (opts.stop ?? []).filter((s) => s.length > 0);
    const addon = loadAddon();
    const sampler = addon.createSampler(opts.sampler ?? { temperature: 0 });
    const t0 = performance.now();
    let reused = 0;
    try {
      try {
        ({ reused } = await this.prefill(ids, opts.signal));
      } catch (e) {
        if (isCancel(e)) return emptyResult(ids.length, 'cancelled', performance.now() - t0);
        throw e;
      }
      for (const id of ids) sampler.accept(id);
      const t1 = performance.now();
      const out: number[] = [];
      const decoder = this.tokenizer.streamDecoder();
      let text = '';
      let emitted = 0;  // chars of text already passed to onText
      let stopReason: GenerateResult['stopReason'] = 'length';
      const holdBack = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
      while (out.length < maxTokens) {
        if (opts.signal?.aborted) {
          stopReason = 'cancelled';
          break;
        }
        const tok = sampler.sample(this.ctx);
        if (this.tokenizer.isEog(tok)) {
          stopReason = 'eos';
          break;
        }
        out.push(tok);
        sampler.accept(tok);
        text += decoder.push(tok);
        const hit = firstStop(text, stops);
        if (hit >= 0) {
          text = text.slice(0, hit);
          stopReason = 'stop';
        }
        // Emit all text that can no longer become part of a stop sequence.
        const safe = stopReason === 'stop' ? text.length : Math.max(emitted, text.length - holdBack);
        if (safe > emitted) {
          opts.onText?.(text.slice(emitted, safe));
          emitted = safe;
        }
        if (stopReason === 'stop' || out.length >= maxTokens) break;
        try {
          await this.ctx.decode(Int32Array.of(tok), { wantLogits: false });
          this.cached.push(tok);
        } catch (e) {
          if (isCancel(e)) {
            stopReason = 'cancelled';
            break;
          }
          throw e;
        }
      }
      if (stopReason !== 'stop') {
        text += decoder.flush();
        if (text.length > emitted) opts.onText?.(text.slice(emitted));
      }
      return {
        text,
        tokens: out,
        stopReason,
        promptTokens: ids.length,
        reusedTokens: reused,
        prefillMs: t1 - t0,
        decodeMs: performance.now() - t1,
      };
    } finally {
      sampler.free();
    }
  }

  close(): void {
    this.ctx.free();
    this.model.free();
  }
}

function firstStop(text: string, stops: string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

function isCancel(e: unknown): boolean {
  return (e as { code?: string })?.code === 'CANCELLED' || (e as Error)?.name === 'AbortError';
}

function abortError(): Error {
  const e = new Error('cancelled');
  e.name = 'AbortError';
  return e;
}

function emptyResult(promptTokens: number, stopReason: GenerateResult['stopReason'], prefillMs: number): GenerateResult {
  return { text: '', tokens: [], stopReason, promptTokens, reusedTokens: 0, prefillMs, decodeMs: 0 };
}

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
  /**
   * Prompt-lookup drafts (greedy sampling without a repetition penalty only; ignored
   * otherwise): when the last `ngram` tokens occurred before in the prompt or the output,
   * the tokens that followed them there (at most `maxDraft`) are run with the next token
   * in one forward pass and kept while they equal the model's own argmax. Fewer passes
   * when the text repeats. The check is a multi-token pass, which attends exactly: under
   * `full` (and specache with a top-k covering the context) the output is the greedy
   * output token for token; under specache with a small top-k the drafted positions get
   * exact attention instead of the low-bit approximation, and the step after a check
   * starts a new speculation (a pre-decode pass).
   */
  lookup?: { maxDraft: number; ngram?: number };
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
  /** Prompt lookup: draft tokens run, and how many of them were kept. */
  draftTokens?: number;
  acceptedDrafts?: number;
}

/**
 * Prompt lookup: the tokens that followed the most recent earlier occurrence of
 * seq's last `ngram` tokens (longest match first, down to 2), at most `maxDraft`.
 */
export function lookupDraft(seq: readonly number[], ngram: number, maxDraft: number): number[] {
  const len = seq.length;
  for (let n = Math.min(ngram, len - 1); n >= 2; n--) {
    const tail = len - n;
    for (let i = tail - 1; i >= 0; i--) {
      let j = 0;
      while (j < n && seq[i + j] === seq[tail + j]) j++;
      if (j === n) return seq.slice(i + n, Math.min(len, i + n + maxDraft)) as number[];
    }
  }
  return [];
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
    // Tokens the engine takes from cached host pages (or the disk tier) rather than computing.
    const adoptedBefore = this.adoptedTokens();
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
    return { reused: Math.min(ids.length, common + Math.max(0, this.adoptedTokens() - adoptedBefore)) };
  }

  private adoptedTokens(): number {
    const m = typeof this.ctx.metrics === 'function' ? this.ctx.metrics() : undefined;
    return m && Number.isFinite(m.prefixReusedTokens) ? m.prefixReusedTokens : 0;
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
      let stopReason = 'length' as GenerateResult['stopReason'];
      const holdBack = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
      const greedy = (opts.sampler?.temperature ?? 0) <= 0 && (opts.sampler?.repeatPenalty ?? 1) === 1;
      const lookup = greedy && opts.lookup && opts.lookup.maxDraft > 0 ? opts.lookup : undefined;
      const nVocab = this.info.nVocab;
      let draftTokens = 0;
      let acceptedDrafts = 0;
      // ids ++ out, where drafts are looked up (kept as tokens are taken, not rebuilt each step).
      const seq = lookup ? ids.slice() : [];
      /** Takes a generated token; false when generation ends with it (end of generation, a stop, the limit). */
      const take = (tok: number): boolean => {
        if (this.tokenizer.isEog(tok)) {
          stopReason = 'eos';
          return false;
        }
        out.push(tok);
        if (lookup) seq.push(tok);
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
        return stopReason !== 'stop' && out.length < maxTokens;
      };
      try {
        let tok = -1;
        for (;;) {
          if (opts.signal?.aborted) {
            stopReason = 'cancelled';
            break;
          }
          if (out.length >= maxTokens) break;
          if (tok < 0) tok = sampler.sample(this.ctx);
          if (!take(tok)) break;
          const draft = lookup ? lookupDraft(seq, lookup.ngram ?? 3, Math.min(lookup.maxDraft, maxTokens - out.length)) : [];
          if (draft.length === 0) {
            await this.ctx.decode(Int32Array.of(tok), { wantLogits: false });
            this.cached.push(tok);
            tok = -1;
            continue;
          }
          // tok and the draft in one pass: row r is the model's next token after draft[0..r).
          const logits = (await this.ctx.decode(Int32Array.of(tok, ...draft), { allLogits: true }))!;
          const row = (r: number) => logits.subarray(r * nVocab, (r + 1) * nVocab);
          let kept = 0;
          while (kept < draft.length && sampler.sampleLogits(row(kept)) === draft[kept]) kept++;
          draftTokens += draft.length;
          acceptedDrafts += kept;
          if (kept < draft.length) this.ctx.truncate(this.ctx.nPast - (draft.length - kept));
          this.cached.push(tok, ...draft.slice(0, kept));
          let more = true;
          // (onText may have cancelled the request at a boundary: take nothing after that.)
          for (let i = 0; i < kept && more && !opts.signal?.aborted; i++) more = take(draft[i]);
          if (!more) {
            // Ended inside the draft: drop the KV of tokens after the last one output.
            const keep = ids.length + out.length;
            if (this.ctx.nPast > keep) this.ctx.truncate(keep);
            this.cached = this.cached.slice(0, this.ctx.nPast);
            break;
          }
          tok = sampler.sampleLogits(row(kept));
        }
      } catch (e) {
        // Cancelled mid-pass: `cached` still describes the KV's first positions (the next prefill trims the rest).
        if (!isCancel(e)) throw e;
        stopReason = 'cancelled';
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
        ...(lookup ? { draftTokens, acceptedDrafts } : {}),
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

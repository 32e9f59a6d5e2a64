// prompts.ts — token ids of the long prompts, built from context/prompt.ts.
//
// The repo part (files that change least first) is the same from keystroke to
// keystroke; it is encoded once and cached, and only the tail (the current
// file around the cursor) is encoded per request. For FIM models the tail
// starts with a control token, so encode(head) ++ encode(tail) is exactly
// encode(head + tail); for plain models it is a stable split as well.
import { createHash } from 'node:crypto';
import { ASK_MARKER, askPrompt, fimPrompt, fitToBudget, plainPrompt, repoHeadParts, type TokenCounter } from '../context/prompt';
import type { RepoFile } from '../context/repo';
import type { ContextFile } from '../protocol';
import type { Engine } from './engine';

/** Most characters of the current file kept before / after the cursor (then cut to the token budget). */
export const PREFIX_CHARS = 24_000;
export const SUFFIX_CHARS = 3_000;
/**
 * Tokens kept for the current file (prefix + suffix) and the answer, after the repo head.
 * The repo head's budget is nCtx minus this, the same for `index` and for every completion,
 * so the head (and its KV pages) does not change from keystroke to keystroke whatever the
 * cursor position: only the current file is recomputed, from the first changed token.
 */
export function currentFileReserve(nCtx: number): number {
  return Math.min(nCtx >> 1, Math.max(1024, Math.floor(nCtx / 4)));
}
/** Most tokens of the current file after the cursor: everything after an edit is recomputed. */
const SUFFIX_TOKENS = 256;

export interface BuiltPrompt {
  ids: number[];
  /** Tokens of the repo part (before the current file). */
  headTokens: number;
  files: RepoFile[];
  filesDropped: number;
}

/** Token positions [start, end) of one context file in a prompt. */
export interface FileSpan {
  path: string;
  start: number;
  end: number;
}

function toRepoFile(f: ContextFile): RepoFile {
  return { path: f.path, text: f.text, mtimeMs: f.mtimeMs, bytes: f.text.length };
}

/** Caches token counts per file content and the encoding of the most recent heads. */
export class PromptBuilder {
  private readonly counts = new Map<string, number>();
  private heads = new Map<string, number[]>();

  constructor(private readonly engine: Engine) {}

  private counter(): TokenCounter {
    return {
      count: (text: string) => {
        if (text.length < 64) return this.engine.count(text);
        const key = hash(text);
        let n = this.counts.get(key);
        if (n === undefined) {
          n = this.engine.count(text);
          this.counts.set(key, n);
        }
        return n;
      },
    };
  }

  private encodeHead(head: string): number[] {
    const key = hash(head);
    let ids = this.heads.get(key);
    if (!ids) {
      ids = this.engine.encode(head, true);
      // Keep the last few heads (completion, index and ask each have their own).
      if (this.heads.size >= 4) this.heads.delete(this.heads.keys().next().value as string);
      this.heads.set(key, ids);
    } else {
      this.heads.delete(key);
      this.heads.set(key, ids);
    }
    return ids;
  }

  private fit(files: readonly ContextFile[], budget: number, excludePath?: string): { files: RepoFile[]; dropped: number } {
    const candidates = files.filter((f) => f.path !== excludePath).map(toRepoFile);
    const kept = fitToBudget(candidates, Math.max(0, budget), this.counter());
    return { files: kept, dropped: candidates.length - kept.length };
  }

  /** Completion prompt: repo head, then the current file with the cursor. */
  completion(repoName: string, files: readonly ContextFile[], path: string, prefix: string, suffix: string, contextTokens: number, maxTokens: number): BuiltPrompt {
    const nCtx = Math.min(contextTokens, this.engine.model.nCtx);
    let pre = prefix.length > PREFIX_CHARS ? prefix.slice(prefix.indexOf('\n', prefix.length - PREFIX_CHARS) + 1) : prefix;
    let suf = suffix.length > SUFFIX_CHARS ? suffix.slice(0, suffix.lastIndexOf('\n', SUFFIX_CHARS) + 1 || SUFFIX_CHARS) : suffix;
    if (!this.engine.model.fim) suf = '';
    // The current file gets what the head leaves (see currentFileReserve): the suffix at most
    // SUFFIX_TOKENS (cut at line ends), the prefix the rest (cut at line starts).
    const reserve = currentFileReserve(nCtx);
    const fileBudget = Math.max(64, reserve - maxTokens - this.engine.count(path) - 32);
    const sufBudget = Math.min(SUFFIX_TOKENS, Math.floor(fileBudget / 4));
    while (suf.length > 0 && this.engine.count(suf) > sufBudget) {
      const cut = suf.lastIndexOf('\n', Math.floor((suf.length * 3) / 4));
      suf = cut <= 0 ? suf.slice(0, Math.floor(suf.length / 2)) : suf.slice(0, cut + 1);
    }
    const prefixBudget = fileBudget - this.engine.count(suf);
    while (pre.length > 0 && this.engine.count(pre) > prefixBudget) {
      const cut = pre.indexOf('\n', Math.floor(pre.length / 4));
      pre = cut < 0 ? pre.slice(Math.floor(pre.length / 2)) : pre.slice(cut + 1);
    }
    const budget = nCtx - reserve;
    const fit = this.fit(files, budget, path);
    const input = { repoName: repoName || 'repo', files: fit.files, path, prefix: pre, suffix: suf };
    const whole = this.engine.model.fim ? fimPrompt(input) : plainPrompt(input);
    const marker = this.engine.model.fim ? `<|file_sep|>${path}\n<|fim_prefix|>` : `// File: ${path}\n`;
    return this.split(whole, whole.lastIndexOf(marker), fit);
  }

  /** The repo head alone (what `index` prefills): the same bytes the completion prompt starts with. */
  repoHead(repoName: string, files: readonly ContextFile[], contextTokens: number): BuiltPrompt {
    const nCtx = Math.min(contextTokens, this.engine.model.nCtx);
    const fit = this.fit(files, nCtx - currentFileReserve(nCtx));
    const input = { repoName: repoName || 'repo', files: fit.files, path: '', prefix: '', suffix: '' };
    const whole = this.engine.model.fim ? fimPrompt(input) : plainPrompt(input);
    const marker = this.engine.model.fim ? '<|file_sep|>\n<|fim_prefix|>' : '// File: \n';
    const built = this.split(whole, whole.lastIndexOf(marker), fit);
    built.ids = built.ids.slice(0, built.headTokens);
    return built;
  }

  /** Question prompt (ChatML) over the repo files. */
  ask(repoName: string, files: readonly ContextFile[], question: string, contextTokens: number, maxTokens: number): BuiltPrompt {
    const nCtx = Math.min(contextTokens, this.engine.model.nCtx);
    const budget = nCtx - maxTokens - this.engine.count(question) - 128;
    const fit = this.fit(files, budget);
    const whole = askPrompt(repoName || 'repo', fit.files, question, Boolean(this.engine.model.fim));
    const at = whole.lastIndexOf(ASK_MARKER);
    return this.split(whole, at, fit);
  }

  /**
   * Where each file of an ask/index head sits in its token ids: the head's pieces
   * (preamble, then one per file) encoded one by one. For FIM models every piece
   * starts with a control token, so the spans are exact; for plain prompts a
   * token may straddle two pieces, so a span can be off by one at its ends.
   */
  fileSpans(repoName: string, files: RepoFile[], headTokens: number): FileSpan[] {
    const parts = repoHeadParts(repoName || 'repo', files, Boolean(this.engine.model.fim));
    let pos = this.engine.encode(parts[0], true).length;
    const spans: FileSpan[] = [];
    for (let i = 0; i < files.length && pos < headTokens; i++) {
      const end = Math.min(headTokens, pos + this.engine.encode(parts[i + 1], false).length);
      spans.push({ path: files[i].path, start: pos, end });
      pos = end;
    }
    return spans;
  }

  private split(whole: string, at: number, fit: { files: RepoFile[]; dropped: number }): BuiltPrompt {
    if (at <= 0) {
      const ids = this.engine.encode(whole, true);
      return { ids, headTokens: 0, files: fit.files, filesDropped: fit.dropped };
    }
    const head = this.encodeHead(whole.slice(0, at));
    const tail = this.engine.encode(whole.slice(at), false);
    return { ids: head.concat(tail), headTokens: head.length, files: fit.files, filesDropped: fit.dropped };
  }
}

function hash(text: string): string {
  return createHash('sha1').update(text).digest('base64');
}

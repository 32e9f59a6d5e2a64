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
/**
 * Most tokens of the current file after the cursor. The suffix is recomputed whenever
 * the prompt changes before it (the cursor moved to another line): ~6 ms a token on
 * two CPU cores at 8k context, so 128 tokens (~10 lines) costs ~0.8 s at a jump.
 */
const SUFFIX_TOKENS = 128;
/** Most characters typed after the anchor before a new one is taken (see completion). */
export const MIDDLE_MAX_CHARS = 400;
/** Files whose anchors are remembered. */
const MAX_ANCHORS = 8;

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

/** Where the last completion prompt of a file split the text before the cursor. */
interface Anchor {
  /** The prompt's text between <|fim_prefix|> and <|fim_suffix|>: the prefix up to the anchor (a line start). */
  head: string;
  /** The head started after the prefix's start (a long file: its start was dropped for the budget). */
  trimmed: boolean;
}

/** Caches token counts per file content and the encoding of the most recent heads. */
export class PromptBuilder {
  private readonly counts = new Map<string, number>();
  private heads = new Map<string, number[]>();
  /** Per file: the prefix text before the last completion's anchor (see completion). */
  private readonly anchors = new Map<string, Anchor>();

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
    const ids = this.heads.get(key) ?? this.engine.encode(head, true);
    // Keep the last few heads (completion, index and ask each have their own).
    remember(this.heads, key, ids, 4);
    return ids;
  }

  private fit(files: readonly ContextFile[], budget: number, excludePath?: string): { files: RepoFile[]; dropped: number } {
    const candidates = files.filter((f) => f.path !== excludePath).map(toRepoFile);
    const kept = fitToBudget(candidates, Math.max(0, budget), this.counter());
    return { files: kept, dropped: candidates.length - kept.length };
  }

  /**
   * Completion prompt: repo head, then the current file with the cursor, as
   *   <|fim_prefix|>{prefix up to the anchor}<|fim_suffix|>{suffix}<|fim_middle|>{anchor → cursor}
   * The anchor is a line start at or before the cursor that stays put while the user
   * types on (see Anchor): typing then only appends to the middle, so the prompt's
   * tokens up to the cursor's last position stay the same and their KV is reused —
   * the suffix included. A new anchor (the cursor's line start) is taken when the
   * cursor leaves the anchored stretch, the middle grows past MIDDLE_MAX_CHARS, or
   * the file part no longer fits its budget.
   */
  completion(repoName: string, files: readonly ContextFile[], path: string, prefix: string, suffix: string, contextTokens: number, maxTokens: number): BuiltPrompt {
    const nCtx = Math.min(contextTokens, this.engine.model.nCtx);
    let suf = suffix.length > SUFFIX_CHARS ? suffix.slice(0, suffix.lastIndexOf('\n', SUFFIX_CHARS) + 1 || SUFFIX_CHARS) : suffix;
    if (!this.engine.model.fim) suf = '';
    // The current file gets what the head leaves (see currentFileReserve): the suffix at most
    // SUFFIX_TOKENS (cut at line ends), the prefix the rest (cut at line starts).
    const reserve = currentFileReserve(nCtx);
    const fileBudget = Math.max(64, reserve - maxTokens - this.engine.count(path) - 32);
    const sufBudget = Math.min(SUFFIX_TOKENS, Math.floor(fileBudget / 4));
    const counter = this.counter();
    while (suf.length > 0 && counter.count(suf) > sufBudget) {
      const cut = suf.lastIndexOf('\n', Math.floor((suf.length * 3) / 4));
      suf = cut <= 0 ? suf.slice(0, Math.floor(suf.length / 2)) : suf.slice(0, cut + 1);
    }
    const prefixBudget = fileBudget - counter.count(suf);
    let split = this.anchored(path, prefix, prefixBudget);
    if (!split) {
      let pre = prefix.length > PREFIX_CHARS ? prefix.slice(prefix.indexOf('\n', prefix.length - PREFIX_CHARS) + 1) : prefix;
      while (pre.length > 0 && counter.count(pre) > prefixBudget) {
        const cut = pre.indexOf('\n', Math.floor(pre.length / 4));
        pre = cut < 0 ? pre.slice(Math.floor(pre.length / 2)) : pre.slice(cut + 1);
      }
      const at = pre.lastIndexOf('\n') + 1;
      split = { head: pre.slice(0, at), middle: pre.slice(at), trimmed: pre.length < prefix.length };
    }
    remember(this.anchors, path, { head: split.head, trimmed: split.trimmed }, MAX_ANCHORS);
    const budget = nCtx - reserve;
    const fit = this.fit(files, budget, path);
    const input = { repoName: repoName || 'repo', files: fit.files, path, prefix: split.head, suffix: suf, middle: split.middle };
    const whole = this.engine.model.fim ? fimPrompt(input) : plainPrompt(input);
    const marker = this.engine.model.fim ? `<|file_sep|>${path}\n<|fim_prefix|>` : `// File: ${path}\n`;
    return this.split(whole, whole.lastIndexOf(marker), fit);
  }

  /**
   * The last anchor of `path` if it still holds for `prefix`: the text before it
   * (what the last prompt had between <|fim_prefix|> and <|fim_suffix|>) ends at most
   * MIDDLE_MAX_CHARS before the cursor and still fits `budget` with the middle.
   */
  private anchored(path: string, prefix: string, budget: number): { head: string; middle: string; trimmed: boolean } | undefined {
    const anchor = this.anchors.get(path);
    if (anchor === undefined) return undefined;
    const { head, trimmed } = anchor;
    // The anchor is a line start (or the prefix's start) within the last MIDDLE_MAX_CHARS.
    let end = -1;
    for (let e = prefix.length; e >= Math.max(0, prefix.length - MIDDLE_MAX_CHARS); e--) {
      if (e > 0 && prefix.charCodeAt(e - 1) !== 10) continue;
      const at = e - head.length;
      // Text before the head is dropped only if the last prompt dropped some too (a long file).
      if (at === 0 || (at > 0 && trimmed && head.length > 0 && prefix.charCodeAt(at - 1) === 10)) {
        if (!prefix.startsWith(head, at)) continue;
        end = e;
        break;
      }
    }
    if (end < 0) return undefined;
    const middle = prefix.slice(end);
    const counter = this.counter();
    if (counter.count(head) + this.engine.count(middle) > budget) return undefined;
    return { head, middle, trimmed: end - head.length > 0 };
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

/** Sets key (now the most recently used) and drops the least recently used beyond `cap`. */
function remember<V>(map: Map<string, V>, key: string, value: V, cap: number): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > cap) map.delete(map.keys().next().value as string);
}

function hash(text: string): string {
  return createHash('sha1').update(text).digest('base64');
}

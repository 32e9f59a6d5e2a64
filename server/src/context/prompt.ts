// prompt.ts — the long prompt: repo files that change least first, the
// current file last, in Qwen2.5-Coder's repo-level FIM format; or a chat
// prompt for questions. Chosen under a token budget.
import type { RepoFile } from './repo';

export interface FimTokens {
  prefix: number;
  suffix: number;
  middle: number;
  repoName?: number;
  fileSep?: number;
}

export interface TokenCounter {
  /** Token count of a text (an estimate is fine for budgeting). */
  count(text: string): number;
}

/** Order files so the ones that change least come first (oldest mtime first, then path). */
export function orderByStability(files: RepoFile[]): RepoFile[] {
  return [...files].sort((a, b) => a.mtimeMs - b.mtimeMs || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** Keep files (in the given order) until the budget is spent; the rest are dropped. */
export function fitToBudget(files: RepoFile[], budget: number, counter: TokenCounter, perFileOverhead = 4): RepoFile[] {
  const kept: RepoFile[] = [];
  let used = 0;
  for (const f of files) {
    const cost = counter.count(f.path) + counter.count(f.text) + perFileOverhead;
    if (used + cost > budget) continue;
    kept.push(f);
    used += cost;
  }
  return kept;
}

export interface FimPromptInput {
  repoName: string;
  files: RepoFile[];
  path: string;
  prefix: string;
  suffix: string;
  /**
   * Text already typed between `prefix` and the cursor, placed after <|fim_middle|>
   * (the model continues it). Typing only appends to it, so the KV of everything
   * before it, the suffix included, stays valid from keystroke to keystroke.
   */
  middle?: string;
}

/**
 * The repository part every long prompt starts with, so that completions and
 * questions share its KV pages. FIM models: Qwen2.5-Coder's repo-level format
 *   <|repo_name|>name\n<|file_sep|>path\ncontent\n ...
 * others: "// File: path" headers.
 */
export function repoHead(repoName: string, files: RepoFile[], fim: boolean): string {
  return repoHeadParts(repoName, files, fim).join('');
}

/** repoHead in pieces: the preamble, then one piece per file (in order). */
export function repoHeadParts(repoName: string, files: RepoFile[], fim: boolean): string[] {
  const parts = [fim ? `<|repo_name|>${repoName}\n` : ''];
  for (const f of files) {
    const body = `${f.text}${f.text.endsWith('\n') ? '' : '\n'}`;
    parts.push(fim ? `<|file_sep|>${f.path}\n${body}` : `// File: ${f.path}\n${body}`);
  }
  return parts;
}

/**
 * Repo-level fill-in-the-middle: the repo head, then the current file as
 *   <|file_sep|>path\n<|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>
 * then the start of the middle that is already typed, if any.
 * Returned as text with the special tokens spelled out (the tokenizer parses them).
 */
export function fimPrompt(inp: FimPromptInput): string {
  return `${repoHead(inp.repoName, inp.files, true)}<|file_sep|>${inp.path}\n<|fim_prefix|>${inp.prefix}<|fim_suffix|>${inp.suffix}<|fim_middle|>${inp.middle ?? ''}`;
}

/** Plain continuation prompt for models without FIM tokens. */
export function plainPrompt(inp: FimPromptInput): string {
  return `${repoHead(inp.repoName, inp.files, false)}// File: ${inp.path}\n${inp.prefix}${inp.middle ?? ''}`;
}

/** Marks where a question prompt's own part starts (after the shared repo head). */
export const ASK_MARKER = '<|im_start|>system\n';

/**
 * A question about the repository: the same repo head as completions (so its
 * KV is reused), then a ChatML turn (Qwen2.5 / SmolLM2 instruct).
 */
export function askPrompt(repoName: string, files: RepoFile[], question: string, fim: boolean): string {
  return (
    `${repoHead(repoName, files, fim)}${ASK_MARKER}You are a coding assistant. Answer questions about the repository "${repoName}" ` +
    `using its files above. Name the files you rely on.<|im_end|>\n<|im_start|>user\nQuestion: ${question}<|im_end|>\n<|im_start|>assistant\n`
  );
}

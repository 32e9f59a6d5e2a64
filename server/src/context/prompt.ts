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
}

/**
 * Qwen2.5-Coder repo-level completion:
 *   <|repo_name|>name\n<|file_sep|>path\ncontent\n ... <|file_sep|>current\n<|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>
 * Returned as text with the special tokens spelled out (the tokenizer parses them).
 */
export function fimPrompt(inp: FimPromptInput): string {
  let s = `<|repo_name|>${inp.repoName}\n`;
  for (const f of inp.files) s += `<|file_sep|>${f.path}\n${f.text}${f.text.endsWith('\n') ? '' : '\n'}`;
  s += `<|file_sep|>${inp.path}\n<|fim_prefix|>${inp.prefix}<|fim_suffix|>${inp.suffix}<|fim_middle|>`;
  return s;
}

/** Plain continuation prompt for models without FIM tokens. */
export function plainPrompt(inp: FimPromptInput): string {
  let s = '';
  for (const f of inp.files) s += `// File: ${f.path}\n${f.text}\n`;
  s += `// File: ${inp.path}\n${inp.prefix}`;
  return s;
}

/** ChatML question about the repository (Qwen2.5 / SmolLM2 instruct). */
export function askPrompt(repoName: string, files: RepoFile[], question: string): string {
  let ctx = '';
  for (const f of files) ctx += `<|file_sep|>${f.path}\n${f.text}${f.text.endsWith('\n') ? '' : '\n'}`;
  return (
    `<|im_start|>system\nYou are a coding assistant. Answer questions about the repository "${repoName}" using its files below. ` +
    `Name the files you rely on.<|im_end|>\n<|im_start|>user\n${ctx}\nQuestion: ${question}<|im_end|>\n<|im_start|>assistant\n`
  );
}

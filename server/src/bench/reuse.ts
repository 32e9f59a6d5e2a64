// reuse.ts — `specode bench reuse`: what an edit near the end of a long repo
// context costs (issue #3, acceptance 5). One Session (the server's own
// prefix-reuse path) with a repo-level FIM prompt of ~ctx tokens built from
// real installed sources; then:
//   cold    the first completion: the whole prompt is prefilled;
//   repeat  the same request again: nothing but the last token is recomputed;
//   edit    a line inserted a few lines above the cursor in the current file
//           (the end of the prompt): only the tail from the edit on is recomputed;
//   cold-edited  a fresh context on the edited prompt: the cost the reuse avoids;
//   restart a fresh context (a restarted server) on the first prompt with the disk
//           tier the first context wrote (paged policies): pages read, not prefilled.
// Each row reports prompt tokens, tokens recomputed, reused, and seconds.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { KvPolicy } from '../engine/native';
import { Session } from '../engine/session';
import { fimPrompt } from '../context/prompt';
import type { RepoFile } from '../context/repo';
import { envelope, log, projectRoot, realSourceFiles, type Envelope } from './common';

export interface ReuseOptions {
  modelName: string;
  modelPath: string;
  threads: number;
  ctx: number;
  policies: KvPolicy[];
  /** Tokens generated per completion (default 16). */
  genTokens?: number;
}

export interface ReuseRow {
  policy: string;
  case: 'cold' | 'repeat' | 'edit' | 'cold-edited' | 'restart';
  prompt_tokens: number;
  reused_tokens: number;
  recomputed_tokens: number;
  /** Whole request: prefill (reuse + recompute) and gen_tokens of generation. */
  seconds: number;
  /** The prefill part alone. */
  prefill_s: number;
  /** Where the edit starts, in tokens from the end of the prompt (edit rows). */
  edit_from_end?: number;
  completion: string;
}

export async function benchReuse(o: ReuseOptions): Promise<Envelope> {
  const env = await envelope('reuse', o.modelName, o.modelPath, o.threads);
  const gen = o.genTokens ?? 16;
  const probe = await Session.open(o.modelPath, { nCtx: 64, threads: o.threads });
  const count = (s: string) => probe.tokenizer.encode(s, { addSpecial: false, parseSpecial: true }).length;
  // Repo: real sources, oldest-first order as the client sends them; the current file is
  // the last one, cut in the middle at a line start.
  const pool = realSourceFiles([join(projectRoot(), 'node_modules')], 8 * o.ctx);
  const cur = pool.find((f) => f.path.endsWith('.js') && f.text.split('\n').length > 120) ?? pool[pool.length - 1];
  const lines = cur.text.split('\n');
  const cutLine = Math.floor(lines.length / 2);
  const prefix = lines.slice(0, cutLine).join('\n') + '\n';
  const suffix = lines.slice(cutLine).join('\n');
  const files: RepoFile[] = [];
  let used = count(prefix) + count(suffix) + 64 + gen;
  for (const f of pool) {
    if (f === cur) continue;
    const n = count(f.text) + 8;
    if (used + n > o.ctx) continue;
    files.push({ path: f.path.slice(f.path.indexOf('node_modules')), text: f.text, mtimeMs: 0, bytes: f.text.length });
    used += n;
    if (used > o.ctx - 256) break;
  }
  const curPath = cur.path.slice(cur.path.indexOf('node_modules'));
  const prompt = (pre: string) => fimPrompt({ repoName: 'bench', files, path: curPath, prefix: pre, suffix });
  // The edit: one new line five lines above the cursor.
  const preLines = prefix.split('\n');
  const at = Math.max(0, preLines.length - 6);
  const edited = [...preLines.slice(0, at), '  // edited: a line the user just typed', ...preLines.slice(at)].join('\n');
  const ids = probe.tokenizer.encode(prompt(prefix), { addSpecial: false, parseSpecial: true });
  const idsEdited = probe.tokenizer.encode(prompt(edited), { addSpecial: false, parseSpecial: true });
  probe.close();
  let firstDiff = 0;
  while (firstDiff < ids.length && ids[firstDiff] === idsEdited[firstDiff]) firstDiff++;
  env.input = {
    repo_files: files.length,
    current_file: curPath,
    cursor_line: cutLine,
    prompt_tokens: ids.length,
    edited_prompt_tokens: idsEdited.length,
    first_changed_token: firstDiff,
    source: `real sources under node_modules (${basename(projectRoot())}), FIM repo format`,
  };
  log(`reuse: prompt ${ids.length} tokens from ${files.length} files + ${curPath}; the edit changes tokens from ${firstDiff} on (${idsEdited.length - firstDiff} from the end)`);
  const rows: ReuseRow[] = [];
  for (const policy of o.policies) {
    const paged = policy === 'specache' || policy === 'specache-sync' || policy === 'offload-all';
    const disk = paged ? mkdtempSync(join(tmpdir(), 'specode-reuse-kv-')) : undefined;
    const open = (diskCacheDir?: string) =>
      Session.open(o.modelPath, { nCtx: Math.max(ids.length, idsEdited.length) + gen + 16, threads: o.threads, policy, ...(diskCacheDir ? { diskCacheDir } : {}) });
    const run = async (s: Session, input: number[], kase: ReuseRow['case']) => {
      const t0 = performance.now();
      const r = await s.generate(input, { maxTokens: gen });
      const seconds = (performance.now() - t0) / 1000;
      const row: ReuseRow = {
        policy, case: kase, prompt_tokens: input.length, reused_tokens: r.reusedTokens,
        recomputed_tokens: input.length - r.reusedTokens, seconds, prefill_s: r.prefillMs / 1000, completion: r.text,
      };
      if (kase === 'edit') row.edit_from_end = input.length - firstDiff;
      rows.push(row);
      log(`reuse ${policy} ${kase}: ${row.recomputed_tokens} of ${row.prompt_tokens} tokens recomputed, prefill ${row.prefill_s.toFixed(2)} s, request ${seconds.toFixed(2)} s`);
      return r;
    };
    const s = await open(disk);
    try {
      await run(s, ids, 'cold');
      await run(s, ids, 'repeat');
      await run(s, idsEdited, 'edit');
    } finally {
      s.close();
    }
    const s2 = await open();
    try {
      await run(s2, idsEdited, 'cold-edited');
    } finally {
      s2.close();
    }
    if (disk) {
      const s3 = await open(disk);
      try {
        await run(s3, ids, 'restart');
      } finally {
        s3.close();
        rmSync(disk, { recursive: true, force: true });
      }
    }
  }
  env.rows = rows;
  return env;
}

// specode complete FILE --line L --column C [--repo DIR]
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fimPrompt, plainPrompt } from '../context/prompt';
import { boundaryContext, cutCompletion, finishCompletion } from '../lsp/completion_boundary';
import { UserError } from '../errors';
import { parseArgs, usage, type FlagSpec } from './args';
import { MODEL_FLAGS, openSession, repoContext } from './common';
import { interrupt } from './interrupt';

const FLAGS: Record<string, FlagSpec> = {
  line: { type: 'number', help: '1-based line of the cursor' },
  column: { type: 'number', help: '1-based column of the cursor (default: end of the line)' },
  repo: { type: 'string', help: 'repository folder to put in the context' },
  ...MODEL_FLAGS,
  'max-tokens': { type: 'number', help: 'most tokens to generate', default: 64 },
  'max-lines': { type: 'number', help: 'most lines in the completion', default: 8 },
};

export async function runComplete(argv: string[]): Promise<number> {
  const p = parseArgs(argv, FLAGS, 'complete');
  if (p.help) {
    console.log(usage('complete', 'FILE --line L [--column C] [--repo DIR]', 'Print the completion the model proposes at the cursor (fill-in-the-middle when the model supports it).', FLAGS));
    return 0;
  }
  if (p.positionals.length !== 1) throw new UserError('complete: give exactly one FILE', "run 'specode complete --help'");
  const file = resolve(p.positionals[0]);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UserError(`complete: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  const lines = text.split('\n');
  const line = p.flags.line === undefined ? lines.length : Number(p.flags.line);
  if (!Number.isInteger(line) || line < 1 || line > lines.length)
    throw new UserError(`complete: --line ${p.flags.line} is outside ${file} (1..${lines.length})`);
  const lineText = lines[line - 1];
  const column = p.flags.column === undefined ? lineText.length + 1 : Number(p.flags.column);
  if (!Number.isInteger(column) || column < 1 || column > lineText.length + 1)
    throw new UserError(`complete: --column ${p.flags.column} is outside line ${line} (1..${lineText.length + 1})`);
  const offset = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0) + column - 1;
  const prefix = text.slice(0, offset);
  const suffix = text.slice(offset);

  const session = await openSession(p.flags);
  try {
    const maxTokens = Number(p.flags['max-tokens']);
    const fim = session.tokenizer.fim;
    const own = session.tokenizer.encode(prefix + suffix, { addSpecial: false, parseSpecial: false }).length;
    const budget = session.nCtx - maxTokens - own - 64;
    if (budget < 0) throw new UserError(`complete: ${file} alone (${own} tokens) does not fit in the ${session.nCtx}-token context`, 'use --ctx with a larger value');
    const repo = repoContext(p.flags.repo as string | undefined, session, budget, file);
    const rel = p.flags.repo ? file.slice(resolve(String(p.flags.repo)).length + 1) : file.split('/').pop()!;
    const input = { repoName: repo.name || 'repo', files: repo.files, path: rel, prefix, suffix };
    const prompt = fim ? fimPrompt(input) : plainPrompt(input);
    // Stop at a sensible boundary (end of the block, a blank line, the suffix
    // being re-typed) as the text streams; print only what is kept.
    const boundary = boundaryContext(prefix, suffix, Number(p.flags['max-lines']));
    const stop = new AbortController();
    interrupt.signal.addEventListener('abort', () => stop.abort());
    let text = '';
    let shown = 0;
    const r = await session.generate(prompt, {
      maxTokens,
      sampler: { temperature: Number(p.flags.temperature) },
      signal: stop.signal,
      onText: (t) => {
        if (stop.signal.aborted) return;
        text += t;
        const cut = cutCompletion(text, boundary);
        if (cut.done) {
          text = cut.text;
          stop.abort();
        }
        // Hold back the unfinished last line until it is judged.
        const safe = cut.done ? text.length : text.lastIndexOf('\n') + 1;
        if (safe > shown) {
          process.stdout.write(text.slice(shown, safe));
          shown = safe;
        }
      },
    });
    const final = stop.signal.aborted && !interrupt.signal.aborted ? text : finishCompletion(text, boundary);
    const rest = final.slice(shown);
    process.stdout.write(rest + ((shown > 0 && !rest) || rest.endsWith('\n') ? '' : '\n'));
    process.stderr.write(
      `specode: ${repo.files.length} repo files, ${r.promptTokens} prompt tokens (prefill ${(r.promptTokens / (r.prefillMs / 1000)).toFixed(1)} tok/s), ` +
        `${r.tokens.length} generated (${(r.tokens.length / Math.max(1e-9, r.decodeMs / 1000)).toFixed(1)} tok/s), stop: ${stop.signal.aborted && !interrupt.signal.aborted ? 'boundary' : r.stopReason}\n`,
    );
    return 0;
  } finally {
    session.close();
  }
}

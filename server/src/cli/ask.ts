// specode ask "QUESTION" [--repo DIR] — the answer streams to stdout.
import { askPrompt } from '../context/prompt';
import { UserError } from '../errors';
import { parseArgs, usage, type FlagSpec } from './args';
import { MODEL_FLAGS, openSession, repoContext } from './common';
import { interrupt } from './interrupt';

const FLAGS: Record<string, FlagSpec> = {
  repo: { type: 'string', help: 'repository folder to ask about', default: '.' },
  ...MODEL_FLAGS,
  'max-tokens': { type: 'number', help: 'most tokens to generate', default: 256 },
};

export async function runAsk(argv: string[]): Promise<number> {
  const p = parseArgs(argv, FLAGS, 'ask');
  if (p.help) {
    console.log(usage('ask', '"QUESTION" [--repo DIR]', 'Ask a question about a repository; the whole repo (under the context budget) is in the prompt.', FLAGS));
    return 0;
  }
  const question = p.positionals.join(' ').trim();
  if (!question) throw new UserError('ask: the question is empty', 'specode ask "where is the config parsed?" --repo .');
  const session = await openSession(p.flags);
  try {
    const maxTokens = Number(p.flags['max-tokens']);
    const budget = session.nCtx - maxTokens - session.tokenizer.encode(question).length - 128;
    const repo = repoContext(String(p.flags.repo), session, budget);
    process.stderr.write(`specode: ${repo.files.length} files of ${repo.name} in the context\n`);
    const r = await session.generate(askPrompt(repo.name || 'repo', repo.files, question, Boolean(session.tokenizer.fim)), {
      maxTokens,
      sampler: { temperature: Number(p.flags.temperature) },
      signal: interrupt.signal,
      onText: (t) => process.stdout.write(t),
    });
    process.stdout.write('\n');
    process.stderr.write(`specode: ${r.promptTokens} prompt tokens, ${r.tokens.length} generated, stop: ${r.stopReason}\n`);
    return 0;
  } finally {
    session.close();
  }
}

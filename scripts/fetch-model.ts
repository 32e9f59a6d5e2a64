// fetch-model.ts — fetch registry models into the cache (dev helper; the CLI has `specode model fetch`).
//   npx tsx scripts/fetch-model.ts [--force] [--verify] [--keep-wheels] [--list] NAME... | --all
import { UserError } from '../server/src/errors.js';
import { fetchModel } from '../server/src/models/fetch.js';
import { DEFAULT_MODEL, listModels, mib, MODELS } from '../server/src/models/registry.js';

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const flags = new Set(argv.filter((a) => a.startsWith('--')));
  let names = argv.filter((a) => !a.startsWith('--'));
  if (flags.has('--list')) {
    for (const m of listModels()) {
      console.log(`${m.isDefault ? '*' : ' '} ${m.name.padEnd(20)} ${m.fetched ? 'fetched ' : m.partial ? 'partial ' : '-       '} ${mib(m.size).padStart(10)}  download ${mib(m.downloadSize).padStart(10)}  ${m.description}`);
      console.log(`  ${''.padEnd(20)} ${m.path}`);
    }
    return 0;
  }
  if (flags.has('--all')) names = MODELS.map((m) => m.name);
  if (names.length === 0) names = [DEFAULT_MODEL];
  const ac = new AbortController();
  process.on('SIGINT', () => { console.error('\ncancelling...'); ac.abort(); });
  for (const name of names) {
    let last = 0;
    const t0 = Date.now();
    const r = await fetchModel(name, {
      force: flags.has('--force'), verify: flags.has('--verify'), keepWheels: flags.has('--keep-wheels'), signal: ac.signal,
      onProgress: (msg, f) => {
        const now = Date.now();
        if (msg.startsWith('Extracting') && !msg.includes(' from ') && now - last < 1000) return;
        last = now;
        console.error(`[${((now - t0) / 1000).toFixed(1).padStart(6)}s ${f === undefined ? '    ' : `${Math.round(f * 100)}%`.padStart(4)}] ${msg}`);
      },
    });
    console.log(`${r.name}: ${r.skipped ? 'already present' : 'fetched'} ${r.path} ${r.size} bytes sha256 ${r.sha256} ` +
      `(downloaded ${mib(r.downloadedBytes)}) in ${(r.elapsedMs / 1000).toFixed(1)} s`);
  }
  return 0;
}

main().then((c) => process.exit(c), (e) => {
  if (e instanceof UserError) {
    console.error(`error: ${e.message}${e.hint ? `\n  hint: ${e.hint}` : ''}`);
    process.exit(e.name === 'AbortError' ? 130 : 1);
  }
  console.error(e);
  process.exit(2);
});

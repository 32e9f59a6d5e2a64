#!/usr/bin/env node
// plot-fidelity.mjs — draw `specode bench fidelity --json` output as an SVG
// (no dependencies): per context size, a RULER-style heat map of needle
// accuracy by depth for each task and policy, and bars of code-completion
// greedy agreement with `full`. With --md it prints the results table instead.
//
//   node scripts/plot-fidelity.mjs [docs/fidelity.json] [docs/fidelity.svg]
//   node scripts/plot-fidelity.mjs docs/fidelity.json --md
//   node scripts/plot-fidelity.mjs --out docs/fidelity.svg A.json B.json ...
//
// Several runs: rows of one configuration (policy, bits, and the engine
// settings top-k, rerank, group, residual) on one task and context are pooled
// across runs with different seeds (accuracy by samples, agreement by
// positions); a later run with the same seed over the same candidate files
// replaces the earlier one (same inputs). Configurations that differ from the defaults say so in their label.
import { readFileSync, writeFileSync } from 'node:fs';

const args = process.argv.slice(2);
const md = args.includes('--md');
const outAt = args.indexOf('--out');
const output = outAt >= 0 ? args[outAt + 1] : (args.find((a) => a.endsWith('.svg')) ?? 'docs/fidelity.svg');
const inputs = args.filter((a, i) => !a.startsWith('--') && a !== output && !(outAt >= 0 && i === outAt + 1));
if (!inputs.length) inputs.push('docs/fidelity.json');
const runs = inputs.map((f) => ({ file: f, ...JSON.parse(readFileSync(f, 'utf8')) }));
const data = runs[0];

// The rerank width a run used at a bit width: a number, or the engine's automatic choice.
const rerankOf = (params, bits) => (typeof params?.rerank === 'number' ? params.rerank : params?.rerank ? (bits === 1 ? 16 : 4) : 1);
function label(r) {
  if (!r.bits) return r.policy;
  const extra = [];
  if (r.topk !== undefined && r.topk !== 64) extra.push(`k ${r.topk}`);
  if (r.rerank !== (r.bits === 1 ? 16 : 4)) extra.push(`rerank ${r.rerank}`);
  if (r.group !== undefined && r.group !== 64) extra.push(`g ${r.group}`);
  if (r.residual !== undefined && r.residual !== 64) extra.push(`R ${r.residual}`);
  if (r.sym_values) extra.push('sym. values');
  // The engine's automatic scales and zeros: 8-bit for the 2-bit copy, fp16 for the 1-bit one
  // (rows from before bench rows carried param_bits are fp16).
  const params = r.param_bits ?? 16;
  if (params !== (r.bits === 2 && !r.sym_values ? 8 : 16)) extra.push(params === 8 ? '8-bit params' : 'fp16 params');
  return `${r.policy} ${r.bits}-bit${extra.length ? ` (${extra.join(', ')})` : ''}`;
}
const weighted = (a, b, wa, wb, key) =>
  a[key] === null || a[key] === undefined ? b[key] : b[key] === null || b[key] === undefined ? a[key] : (a[key] * wa + b[key] * wb) / (wa + wb);
function pool(a, b) {
  const sa = a.samples, sb = b.samples, pa = a.positions ?? 0, pb = b.positions ?? 0, da = a.decode_steps ?? sa, db = b.decode_steps ?? sb;
  const byDepth = new Map();
  for (const d of [...(a.accuracy_by_depth ?? []), ...(b.accuracy_by_depth ?? [])]) {
    const k = d.depth.toFixed(6);
    const o = byDepth.get(k) ?? { depth: d.depth, correct: 0, n: 0 };
    o.correct += d.correct;
    o.n += d.n;
    byDepth.set(k, o);
  }
  return {
    ...a,
    samples: sa + sb,
    positions: a.positions === undefined ? undefined : pa + pb,
    accuracy: weighted(a, b, sa, sb, 'accuracy'),
    greedy_agreement: weighted(a, b, pa, pb, 'greedy_agreement'),
    device_kv_bytes: weighted(a, b, sa, sb, 'device_kv_bytes'),
    fp16_kv_bytes: weighted(a, b, sa, sb, 'fp16_kv_bytes'),
    topk_overlap: weighted(a, b, da, db, 'topk_overlap'),
    spec_match: weighted(a, b, da, db, 'spec_match'),
    stall_frac: weighted(a, b, da, db, 'stall_frac'),
    decode_steps: da + db,
    accuracy_by_depth: [...byDepth.values()].sort((x, y) => x.depth - y.depth),
    sources: [...a.sources, ...b.sources],
  };
}
const merged = new Map();  // ctx|task|label -> { seeds: Map(seed -> row) }
for (const run of runs) {
  const p = run.params ?? {};
  for (const r0 of run.rows) {
    const r = { ...r0, rerank: r0.bits ? rerankOf(p, r0.bits) : undefined, residual: p.residual, sym_values: Boolean(p.sym_values) && r0.bits === 2, param_bits: r0.param_bits, sources: [run.file] };
    const key = `${r.ctx}|${r.task}|${label(r)}`;
    const e = merged.get(key) ?? { seeds: new Map() };
    // The same seed over the same candidate files: the same inputs, and the later run wins.
    const inputs = `${p.seed ?? 1}|${(run.inputs?.haystack ?? '').replace(/from \S+/, '')}`;
    e.seeds.set(inputs, r);
    merged.set(key, e);
  }
}
const rows = [...merged.values()].map((e) => [...e.seeds.values()].reduce(pool));
rows.forEach((r) => { if (r.fp16_kv_bytes && r.device_kv_bytes) r.compression_ratio = r.fp16_kv_bytes / r.device_kv_bytes; });
const TASKS = ['needle-single', 'needle-multikey', 'code-agreement'];
const order = (r) => [r.policy === 'full' ? 0 : 1, -(r.bits ?? 0), label(r)];
const cmpCfg = (a, b) => { const x = order(a), y = order(b); return x[0] - y[0] || x[1] - y[1] || (x[2] < y[2] ? -1 : x[2] > y[2] ? 1 : 0); };
rows.sort((a, b) => a.ctx - b.ctx || TASKS.indexOf(a.task) - TASKS.indexOf(b.task) || cmpCfg(a, b));

const contexts = [...new Set(rows.map((r) => r.ctx))].sort((a, b) => a - b);
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? '—' : Number(x).toFixed(d));
const mib = (x) => (x === null || x === undefined ? '—' : (x / 2 ** 20).toFixed(1));

if (md) {
  console.log('| ctx | configuration | bits | task | samples | accuracy | greedy agreement | device KV MiB | fp16 KV MiB | compression | top-k overlap | spec match | stall frac |');
  console.log('|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const samples = r.task === 'code-agreement' ? `${r.samples} (${r.positions} pos.)` : String(r.samples);
    console.log(
      `| ${r.ctx} | ${label(r)} | ${r.bits ?? '—'} | ${r.task} | ${samples} | ${fmt(r.accuracy, 2)} | ${fmt(r.greedy_agreement, 4)} | ` +
        `${mib(r.device_kv_bytes)} | ${mib(r.fp16_kv_bytes)} | ${r.compression_ratio ? fmt(r.compression_ratio, 2) + '×' : '—'} | ` +
        `${fmt(r.topk_overlap)} | ${fmt(r.spec_match)} | ${fmt(r.stall_frac)} |`,
    );
  }
  process.exit(0);
}

// ---------------------------------------------------------------- SVG
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const parts = [];
const W = 1500;
const left = 215;
const cell = 30;
const rowH = 22;
let y = 0;

function text(x, yy, s, opts = {}) {
  const a = Object.entries({ 'font-size': 12, ...opts }).map(([k, v]) => `${k}="${esc(v)}"`).join(' ');
  parts.push(`<text x="${x}" y="${yy}" ${a}>${esc(s)}</text>`);
}
// Accuracy 0 → red, 1 → green, through yellow.
function color(a) {
  if (a === null || a === undefined) return '#ddd';
  const h = Math.round(120 * a);
  return `hsl(${h}, 70%, ${55 + 10 * (1 - Math.abs(2 * a - 1))}%)`;
}

text(10, (y += 24), `specode bench fidelity — ${data.model?.name ?? ''} (${data.backend ?? ''}) — ${runs.length} run(s), ${runs.map((r) => (r.date ?? '').slice(0, 10)).filter((d, i, a) => a.indexOf(d) === i).join(', ')}`, { 'font-size': 15, 'font-weight': 'bold' });
y += 8;
for (const ctx of contexts) {
  text(10, (y += 26), `context ${ctx} tokens`, { 'font-size': 14, 'font-weight': 'bold' });
  y += 6;
  // One row per configuration run at this context, in the same place in every column.
  const cfgs = [];
  for (const r of rows.filter((q) => q.ctx === ctx).sort(cmpCfg)) if (!cfgs.includes(label(r))) cfgs.push(label(r));
  const find = (task, cfg) => rows.find((r) => r.ctx === ctx && r.task === task && label(r) === cfg);
  const top = y + 18;
  const rowY = (i) => top + 18 + i * rowH;
  cfgs.forEach((c, i) => text(left - 6, rowY(i) + 15, c, { 'text-anchor': 'end' }));
  let x0 = left;
  const needleTasks = ['needle-single', 'needle-multikey'].filter((t) => rows.some((r) => r.ctx === ctx && r.task === t));
  for (const task of needleTasks) {
    const trs = rows.filter((r) => r.ctx === ctx && r.task === task);
    const ds = [...new Set(trs.flatMap((r) => (r.accuracy_by_depth ?? []).map((d) => d.depth.toFixed(6))))].map(Number).sort((p, q) => p - q);
    text(x0, top - 4, `${task}: accuracy by depth`, { 'font-weight': 'bold' });
    ds.forEach((d, j) => text(x0 + j * cell + cell / 2, top + 12, `${Math.round(100 * d)}`, { 'text-anchor': 'middle', 'font-size': 10 }));
    cfgs.forEach((c, i) => {
      const r = find(task, c);
      if (!r) return;
      const yy = rowY(i);
      for (const [j, d] of ds.entries()) {
        const v = (r.accuracy_by_depth ?? []).find((q) => Math.abs(q.depth - d) < 1e-6);
        const acc = v ? v.correct / v.n : null;
        parts.push(`<rect x="${x0 + j * cell}" y="${yy}" width="${cell - 2}" height="${rowH - 2}" fill="${color(acc)}"><title>${esc(`${c} depth ${Math.round(100 * d)}%: ${v ? `${v.correct}/${v.n}` : 'n/a'}`)}</title></rect>`);
      }
      text(x0 + ds.length * cell + 6, yy + 15, `${fmt(r.accuracy, 2)} (${r.samples})`, { 'font-size': 11 });
    });
    text(x0 + (ds.length * cell) / 2, rowY(cfgs.length) + 12, 'depth (%)', { 'text-anchor': 'middle', 'font-size': 10 });
    x0 += Math.max(ds.length * cell + 70, 250);
  }
  // Code agreement bars.
  if (rows.some((r) => r.ctx === ctx && r.task === 'code-agreement')) {
    const bw = W - x0 - 230;
    text(x0, top - 4, 'code-agreement: greedy agreement', { 'font-weight': 'bold' });
    const lo = 0.5;  // axis from 0.5 to 1
    cfgs.forEach((c, i) => {
      const r = find('code-agreement', c);
      if (!r) return;
      const yy = rowY(i);
      const g = r.greedy_agreement ?? 0;
      const w = Math.max(0, ((g - lo) / (1 - lo)) * bw);
      const who = r.policy === 'full' ? ' (own replay)' : '';
      parts.push(`<rect x="${x0}" y="${yy}" width="${w.toFixed(1)}" height="${rowH - 4}" fill="#4a7bd0"><title>${esc(`${c}: ${fmt(r.greedy_agreement, 4)} over ${r.positions} positions`)}</title></rect>`);
      text(x0 + w + 4, yy + 13, `${fmt(r.greedy_agreement, 3)}${who}  [${r.samples} prompts${r.compression_ratio && r.policy !== 'full' ? `, KV 1/${fmt(r.compression_ratio, 2)}` : ''}]`, { 'font-size': 11 });
    });
    const ay = rowY(cfgs.length) + 4;
    parts.push(`<line x1="${x0}" y1="${ay}" x2="${x0 + bw}" y2="${ay}" stroke="#888"/>`);
    for (const t of [0.5, 0.75, 1]) text(x0 + ((t - lo) / (1 - lo)) * bw, ay + 12, String(t), { 'text-anchor': 'middle', 'font-size': 10 });
  }
  y = rowY(cfgs.length) + 26;
}
const notes = [];
for (const run of runs) {
  notes.push(`${run.file}: ${(run.date ?? '').slice(0, 16)}, commit ${run.commit ?? '?'}, ${run.device ?? '?'}, ${run.threads ?? '?'} threads`);
  notes.push(`    ${run.command ?? '(command not recorded)'}`);
}
for (const n of notes) text(10, (y += 16), n, { 'font-size': 10, fill: '#555' });
y += 12;
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" viewBox="0 0 ${W} ${y}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`;
writeFileSync(output, svg);
console.error(`wrote ${output} (${rows.length} rows, contexts ${contexts.join(', ')})`);

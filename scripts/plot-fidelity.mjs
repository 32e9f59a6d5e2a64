#!/usr/bin/env node
// plot-fidelity.mjs — draw `specode bench fidelity --json` output as an SVG
// (no dependencies): per context size, a RULER-style heat map of needle
// accuracy by depth for each task and policy, and bars of code-completion
// greedy agreement with `full`. With --md it prints the results table instead.
//
//   node scripts/plot-fidelity.mjs [docs/fidelity.json] [docs/fidelity.svg]
//   node scripts/plot-fidelity.mjs docs/fidelity.json --md
import { readFileSync, writeFileSync } from 'node:fs';

const args = process.argv.slice(2);
const md = args.includes('--md');
const files = args.filter((a) => !a.startsWith('--'));
const input = files[0] ?? 'docs/fidelity.json';
const output = files[1] ?? 'docs/fidelity.svg';
const data = JSON.parse(readFileSync(input, 'utf8'));
const rows = data.rows;

const label = (r) => (r.bits ? `${r.policy} ${r.bits}-bit` : r.policy);
const configs = [];
for (const r of rows) if (!configs.includes(label(r))) configs.push(label(r));
const contexts = [...new Set(rows.map((r) => r.ctx))].sort((a, b) => a - b);
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? '—' : Number(x).toFixed(d));
const mib = (x) => (x === null || x === undefined ? '—' : (x / 2 ** 20).toFixed(1));

if (md) {
  console.log('| ctx | policy | bits | task | samples | accuracy | greedy agreement | device KV MiB | fp16 KV MiB | compression | top-k overlap | spec match | stall frac |');
  console.log('|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const samples = r.task === 'code-agreement' ? `${r.samples} (${r.positions} pos.)` : String(r.samples);
    console.log(
      `| ${r.ctx} | ${r.policy} | ${r.bits ?? '—'} | ${r.task} | ${samples} | ${fmt(r.accuracy, 2)} | ${fmt(r.greedy_agreement, 4)} | ` +
        `${mib(r.device_kv_bytes)} | ${mib(r.fp16_kv_bytes)} | ${r.compression_ratio ? fmt(r.compression_ratio, 2) + '×' : '—'} | ` +
        `${fmt(r.topk_overlap)} | ${fmt(r.spec_match)} | ${fmt(r.stall_frac)} |`,
    );
  }
  process.exit(0);
}

// ---------------------------------------------------------------- SVG
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const parts = [];
const W = 1200;
const left = 150;
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

text(10, (y += 24), `specode bench fidelity — ${data.model?.name ?? ''} (${data.backend ?? ''}, ${data.threads ?? '?'} threads) — ${(data.date ?? '').slice(0, 10)}`, { 'font-size': 15, 'font-weight': 'bold' });
y += 8;
for (const ctx of contexts) {
  text(10, (y += 26), `context ${ctx} tokens`, { 'font-size': 14, 'font-weight': 'bold' });
  y += 6;
  let x0 = left;
  const needleTasks = ['needle-single', 'needle-multikey'].filter((t) => rows.some((r) => r.ctx === ctx && r.task === t));
  let blockH = 0;
  for (const task of needleTasks) {
    const trs = rows.filter((r) => r.ctx === ctx && r.task === task);
    const ds = [...new Set(trs.flatMap((r) => (r.accuracy_by_depth ?? []).map((d) => d.depth)))].sort((a, b) => a - b);
    const top = y + 18;
    text(x0, top - 4, `${task}: accuracy by depth`, { 'font-weight': 'bold' });
    ds.forEach((d, j) => text(x0 + j * cell + cell / 2, top + 12, `${Math.round(100 * d)}`, { 'text-anchor': 'middle', 'font-size': 10 }));
    trs.forEach((r, i) => {
      const yy = top + 18 + i * rowH;
      if (x0 === left) text(left - 6, yy + 15, label(r), { 'text-anchor': 'end' });
      for (const [j, d] of ds.entries()) {
        const v = (r.accuracy_by_depth ?? []).find((q) => q.depth === d);
        const a = v ? v.correct / v.n : null;
        parts.push(`<rect x="${x0 + j * cell}" y="${yy}" width="${cell - 2}" height="${rowH - 2}" fill="${color(a)}"><title>${esc(`${label(r)} depth ${Math.round(100 * d)}%: ${v ? `${v.correct}/${v.n}` : 'n/a'}`)}</title></rect>`);
      }
      text(x0 + ds.length * cell + 6, yy + 15, fmt(r.accuracy, 2), { 'font-size': 11 });
    });
    text(x0 + (ds.length * cell) / 2, top + 18 + trs.length * rowH + 12, 'depth (%)', { 'text-anchor': 'middle', 'font-size': 10 });
    blockH = Math.max(blockH, 18 + 18 + trs.length * rowH + 16);
    x0 += Math.max(ds.length * cell + 50, 250);
  }
  // Code agreement bars.
  const crs = rows.filter((r) => r.ctx === ctx && r.task === 'code-agreement');
  if (crs.length) {
    const top = y + 18;
    const bw = W - x0 - 190;
    text(x0, top - 4, 'code-agreement: greedy agreement with full', { 'font-weight': 'bold' });
    const lo = 0.5;  // axis from 0.5 to 1
    crs.forEach((r, i) => {
      const yy = top + 18 + i * rowH;
      if (!needleTasks.length) text(x0 - 6, yy + 15, label(r), { 'text-anchor': 'end' });
      const g = r.greedy_agreement ?? 0;
      const w = Math.max(0, ((g - lo) / (1 - lo)) * bw);
      parts.push(`<rect x="${x0}" y="${yy}" width="${w.toFixed(1)}" height="${rowH - 4}" fill="#4a7bd0"><title>${esc(`${label(r)}: ${fmt(r.greedy_agreement, 4)} over ${r.positions} positions`)}</title></rect>`);
      text(x0 + w + 4, yy + 13, `${fmt(r.greedy_agreement, 3)}${r.device_kv_bytes !== null && r.device_kv_bytes !== undefined ? `  (device KV ${mib(r.device_kv_bytes)} MiB)` : ''}`, { 'font-size': 11 });
    });
    const ay = top + 18 + crs.length * rowH + 4;
    parts.push(`<line x1="${x0}" y1="${ay}" x2="${x0 + bw}" y2="${ay}" stroke="#888"/>`);
    for (const t of [0.5, 0.75, 1]) text(x0 + ((t - lo) / (1 - lo)) * bw, ay + 12, String(t), { 'text-anchor': 'middle', 'font-size': 10 });
    blockH = Math.max(blockH, 18 + 18 + crs.length * rowH + 20);
  }
  y += blockH + 10;
}
const notes = [`command: ${data.command ?? '(not recorded)'}`, `commit ${data.commit ?? '?'}, device: ${data.device ?? '?'}`, ...(data.notes ?? []).map((n) => `note: ${n}`)];
for (const n of notes) text(10, (y += 16), n, { 'font-size': 10, fill: '#555' });
y += 12;
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" viewBox="0 0 ${W} ${y}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`;
writeFileSync(output, svg);
console.error(`wrote ${output} (${rows.length} rows, contexts ${contexts.join(', ')})`);

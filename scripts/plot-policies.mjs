#!/usr/bin/env node
// plot-policies.mjs — turn `specode bench policies --json` output into the README table
// and an SVG (no dependencies). Several JSON files from one run (one invocation per
// context/task, same build) are merged: their rows are concatenated.
//
//   node scripts/plot-policies.mjs docs/policies.json --svg docs/policies.svg
//   node scripts/plot-policies.mjs docs/policies.json --md      (the README table)
//   node scripts/plot-policies.mjs a.json b.json --merge docs/policies.json
import { readFileSync, writeFileSync } from 'node:fs';

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const outputs = new Set([flag('--svg'), flag('--merge')]);
const inputs = args.filter((a, i) => !a.startsWith('--') && !outputs.has(a) && !(i > 0 && args[i - 1].startsWith('--')));
if (!inputs.length) {
  console.error('usage: plot-policies.mjs FILE.json… [--md] [--svg OUT.svg] [--merge OUT.json]');
  process.exit(2);
}
const docs = inputs.map((f) => JSON.parse(readFileSync(f, 'utf8')));
for (const d of docs) if (d.suite !== 'policies') throw new Error(`plot-policies: ${d.suite} is not a 'policies' result`);
const data = { ...docs[0], rows: docs.flatMap((d) => d.rows), command: docs.map((d) => d.command).join(' ; ') };

const BUDGETS = data.budgets ?? [{ name: '1/8', fraction: 0.125 }, { name: '1/4', fraction: 0.25 }];
const rows = data.rows;
const score = (r) => r.accuracy ?? r.greedy_agreement ?? null;
const key = (r) => `${r.task}@${r.ctx}`;
const columns = [...new Set(rows.map(key))].sort((a, b) => {
  const [ta, ca] = a.split('@');
  const [tb, cb] = b.split('@');
  return Number(ca) - Number(cb) || ta.localeCompare(tb);
});

// Winner per budget and column: best score among settings within the budget, ties to
// the smaller device footprint (the same rule as the bench).
const winners = {};
for (const b of BUDGETS) {
  winners[b.name] = {};
  for (const c of columns) {
    const cands = rows.filter((r) => r.budget === b.name && key(r) === c && r.within_budget && score(r) !== null);
    cands.sort((x, y) => score(y) - score(x) || x.device_fraction - y.device_fraction);
    const best = cands.length ? score(cands[0]) : null;
    winners[b.name][c] = { best, labels: cands.filter((r) => score(r) === best).map((r) => r.label) };
  }
}
data.winners = Object.fromEntries(
  Object.entries(winners).map(([b, w]) => [b, Object.fromEntries(Object.entries(w).map(([c, v]) => [c, v.best === null ? 'none within budget' : `${v.labels.join(', ')} (${v.best.toFixed(3)})`]))]),
);

const mergeOut = flag('--merge');
if (mergeOut) {
  writeFileSync(mergeOut, JSON.stringify(data, null, 2) + '\n');
  console.error(`plot-policies: ${rows.length} rows → ${mergeOut}`);
}

const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? '—' : Number(x).toFixed(d));
const configs = [];
for (const r of rows) if (!configs.includes(r.label ?? r.policy)) configs.push(r.label ?? r.policy);
const budgetOf = (label) => rows.find((r) => (r.label ?? r.policy) === label)?.budget ?? null;

if (args.includes('--md')) {
  const head = columns.map((c) => c.replace('@', ' ').replace(/(\d+)$/, (n) => `${Number(n) / 1024}k`));
  console.log(`| budget | policy | device KV / fp16 | ${head.join(' | ')} | decode tok/s |`);
  console.log(`|---|---|---:|${columns.map(() => '---:').join('|')}|---:|`);
  const order = [null, ...BUDGETS.map((b) => b.name)];
  for (const b of order)
    for (const label of configs.filter((l) => budgetOf(l) === b)) {
      const mine = rows.filter((r) => (r.label ?? r.policy) === label);
      const frac = Math.max(...mine.map((r) => r.device_fraction ?? 0));
      const within = mine.every((r) => r.within_budget !== false);
      const cells = columns.map((c) => {
        const r = mine.find((x) => key(x) === c);
        if (!r) return '—';
        const s = fmt(score(r), r.accuracy !== null && r.accuracy !== undefined ? 2 : 3);
        return b && within && winners[b][c]?.labels.includes(label) ? `**${s}**` : s;
      });
      const speed = mine.find((r) => r.task === 'code-agreement') ?? mine[0];
      const name = (label ?? '').replace(/ @.*/, '');
      console.log(`| ${b ?? 'none (reference)'} | ${name} | ${fmt(frac, 3)}${b && !within ? ' (over budget)' : ''} | ${cells.join(' | ')} | ${fmt(speed.decode_tok_s, 1)} |`);
    }
  process.exit(0);
}

// ---------------------------------------------------------------- SVG
// One panel per task@ctx: score (y) against device KV fraction (x), one dot per setting,
// dashed lines at the budgets, the `full` score as a horizontal reference.
const svgOut = flag('--svg') ?? 'docs/policies.svg';
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const parts = [];
const text = (x, y, s, o = {}) => parts.push(`<text x="${x}" y="${y}" ${Object.entries({ 'font-size': 11, ...o }).map(([k, v]) => `${k}="${esc(v)}"`).join(' ')}>${esc(s)}</text>`);
const PALETTE = { specache: '#d62728', kivi: '#1f77b4', gear: '#9467bd', h2o: '#8c564b', streamingllm: '#7f7f7f', kvmerger: '#2ca02c', tailorkv: '#ff7f0e', full: '#000' };
const SHAPE = { '1/8': 'circle', '1/4': 'square' };
const pw = 380, ph = 240, m = { l: 48, t: 46, r: 30, b: 40 };
const perRow = 2;
const W = perRow * (pw + m.l + m.r) + 170;
const nRows = Math.ceil(columns.length / perRow);
const H = nRows * (ph + m.t + m.b) + 40;
const xMax = 0.35;
text(10, 22, `specode bench policies — ${data.model?.name ?? ''} (${data.backend ?? 'cpu'}, ${data.threads ?? '?'} threads, commit ${data.commit ?? '?'}, ${(data.date ?? '').slice(0, 10)})`, { 'font-size': 14, 'font-weight': 'bold' });
columns.forEach((c, i) => {
  const ox = (i % perRow) * (pw + m.l + m.r) + m.l;
  const oy = Math.floor(i / perRow) * (ph + m.t + m.b) + m.t + 10;
  const X = (f) => ox + (Math.min(f, xMax) / xMax) * pw;
  const Y = (s) => oy + ph - s * ph;
  const mine = rows.filter((r) => key(r) === c && score(r) !== null);
  const isAcc = mine.some((r) => r.accuracy !== null && r.accuracy !== undefined);
  text(ox, oy - 10, `${c.split('@')[0]}, ${Number(c.split('@')[1]) / 1024}k tokens — ${isAcc ? 'accuracy' : 'agreement with full'}`, { 'font-weight': 'bold', 'font-size': 12 });
  parts.push(`<rect x="${ox}" y="${oy}" width="${pw}" height="${ph}" fill="#fafafa" stroke="#999"/>`);
  for (let s = 0; s <= 1.0001; s += 0.25) {
    parts.push(`<line x1="${ox}" x2="${ox + pw}" y1="${Y(s)}" y2="${Y(s)}" stroke="#e4e4e4"/>`);
    text(ox - 6, Y(s) + 4, s.toFixed(2), { 'text-anchor': 'end', 'font-size': 10 });
  }
  for (let f = 0; f <= xMax + 1e-9; f += 0.05) text(X(f), oy + ph + 14, f.toFixed(2), { 'text-anchor': 'middle', 'font-size': 10 });
  text(ox + pw / 2, oy + ph + 30, 'device KV bytes / fp16 KV bytes', { 'text-anchor': 'middle', 'font-size': 10 });
  for (const b of BUDGETS) {
    parts.push(`<line x1="${X(b.fraction)}" x2="${X(b.fraction)}" y1="${oy}" y2="${oy + ph}" stroke="#555" stroke-dasharray="4 3"/>`);
    text(X(b.fraction) + 3, oy + 12, `budget ${b.name}`, { 'font-size': 10, fill: '#555' });
  }
  const full = mine.find((r) => r.policy === 'full');
  if (full) {
    parts.push(`<line x1="${ox}" x2="${ox + pw}" y1="${Y(score(full))}" y2="${Y(score(full))}" stroke="#000" stroke-width="1.5"/>`);
    text(ox + pw - 4, Y(score(full)) - 4, `full ${fmt(score(full), 2)}`, { 'text-anchor': 'end', 'font-size': 10 });
  }
  for (const r of mine) {
    if (r.policy === 'full') continue;
    const col = PALETTE[r.policy] ?? '#333';
    const x = X(r.device_fraction ?? 0), y = Y(score(r));
    const tip = `<title>${esc(`${r.label}: ${fmt(score(r))} at ${fmt(r.device_fraction)} of fp16${r.within_budget ? '' : ' (over budget)'}`)}</title>`;
    const fill = r.within_budget ? col : 'none';
    if (SHAPE[r.budget] === 'square') parts.push(`<rect x="${x - 5}" y="${y - 5}" width="10" height="10" fill="${fill}" stroke="${col}" stroke-width="1.5">${tip}</rect>`);
    else parts.push(`<circle cx="${x}" cy="${y}" r="5.5" fill="${fill}" stroke="${col}" stroke-width="1.5">${tip}</circle>`);
  }
});
// Legend.
const lx = perRow * (pw + m.l + m.r) + 10;
let ly = 70;
text(lx, ly, 'policy', { 'font-weight': 'bold' });
for (const [p, col] of Object.entries(PALETTE)) {
  if (p === 'full' || !rows.some((r) => r.policy === p)) continue;
  ly += 18;
  parts.push(`<circle cx="${lx + 6}" cy="${ly - 4}" r="5" fill="${col}"/>`);
  text(lx + 16, ly, p);
}
ly += 30;
text(lx, ly, 'setting', { 'font-weight': 'bold' });
parts.push(`<circle cx="${lx + 6}" cy="${ly + 14}" r="5" fill="#666"/>`);
text(lx + 16, ly + 18, 'for budget 1/8');
parts.push(`<rect x="${lx + 1}" y="${ly + 29}" width="10" height="10" fill="#666"/>`);
text(lx + 16, ly + 38, 'for budget 1/4');
parts.push(`<circle cx="${lx + 6}" cy="${ly + 54}" r="5" fill="none" stroke="#666" stroke-width="1.5"/>`);
text(lx + 16, ly + 58, 'hollow: over its budget');
text(lx, ly + 80, 'black line: full (fp16)');
text(lx, ly + 100, 'equal points overlap:', { 'font-size': 10 });
text(lx, ly + 114, 'the README table has all', { 'font-size': 10 });
writeFileSync(svgOut, `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="#fff"/>\n${parts.join('\n')}\n</svg>\n`);
console.error(`plot-policies: ${columns.length} panels → ${svgOut}`);

// citations.ts — which context files an answer rests on.
//
// DESIGN asks for the files whose KV pages got the most attention mass. Each
// citation says how it was found:
//   'attention' — the engine's attention read-out (specache: the probabilities
//               its top-k choice reads) summed over the file's tokens while the
//               answer was generated; files within half of the top file's mass,
//               among those that share a word with the question or answer;
//   'mention' — the answer names the file (its path or its file name);
//   'overlap' — the file holds rare words that the question and the answer
//               share with it (identifiers, numbers), weighted by rarity
//               across the context files, the answer's words double.
import type { Citation, ContextFile } from '../protocol';

const WORD = /[A-Za-z_][A-Za-z0-9_]{2,}|\d{3,}/g;
const STOP = new Set(
  'the and for with that this from what where which when how are was were has have does did not you your can will its into than then there their them they use used using return const let var function class import export def self true false null none undefined string number file files code repo repository question answer'.split(' '),
);

function words(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of text.matchAll(WORD)) {
    const w = m[0].toLowerCase();
    if (!STOP.has(w)) out.add(w);
  }
  return out;
}

function lineOf(text: string, index: number): number {
  let n = 1;
  for (let i = 0; i < index && i < text.length; i++) if (text.charCodeAt(i) === 10) n++;
  return n;
}

/** Tokens at the very start of a prompt take attention that is not about their content (sinks). */
const SINK_TOKENS = 4;

/** Attention mass per file: the read-out summed over each file's token span. */
export function attentionByFile(mass: Float32Array, spans: readonly { path: string; start: number; end: number }[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of spans) {
    let m = 0;
    for (let i = Math.max(s.start, SINK_TOKENS); i < Math.min(s.end, mass.length); i++) m += mass[i];
    out.set(s.path, (out.get(s.path) ?? 0) + m);
  }
  return out;
}

const HOW_ORDER: Record<Citation['how'], number> = { mention: 0, attention: 1, overlap: 2 };

/** Up to `max` citations, strongest first. `attention`: mass per path (attentionByFile), when the engine has a read-out. */
export function citeFiles(
  question: string,
  answer: string,
  files: readonly ContextFile[],
  max = 3,
  attention?: ReadonlyMap<string, number>,
): Citation[] {
  if (files.length === 0) return [];
  const found = new Map<string, Citation>();
  const lowerAnswer = answer.toLowerCase();
  for (const f of files) {
    const path = f.path.toLowerCase();
    const name = path.slice(path.lastIndexOf('/') + 1);
    if (lowerAnswer.includes(path) || (name.length >= 4 && new RegExp(`(^|[^\\w.-])${escapeRe(name)}($|[^\\w-])`).test(lowerAnswer)))
      found.set(f.path, { path: f.path, how: 'mention', score: 1 });
  }
  // Rarity of each word across the context files.
  const fileWords = files.map((f) => words(f.text));
  const df = new Map<string, number>();
  for (const ws of fileWords) for (const w of ws) df.set(w, (df.get(w) ?? 0) + 1);
  // Words of the answer count double: they are what the model took from the context.
  const answerWords = words(answer);
  const query = new Set([...words(question), ...answerWords]);
  if (attention && attention.size) {
    // Attention alone also lands on sink-like tokens (a file's first newlines) whatever the
    // question; a file is cited for it only when it shares a word with the question or answer.
    const relevant = new Set(files.filter((_, i) => [...query].some((w) => fileWords[i].has(w))).map((f) => f.path));
    const masses = [...attention].filter(([path, m]) => relevant.has(path) && m > 0);
    const topMass = Math.max(0, ...masses.map(([, m]) => m));
    for (const [path, m] of masses) {
      // Within half of the most attended file; weaker files are background.
      if (m < topMass * 0.5 || found.has(path)) continue;
      found.set(path, { path, how: 'attention', score: m / topMass });
    }
  }
  const scored: { file: ContextFile; score: number; best?: string }[] = [];
  files.forEach((f, i) => {
    let score = 0;
    let best: string | undefined;
    let bestWeight = 0;
    for (const w of query) {
      if (!fileWords[i].has(w)) continue;
      const weight = Math.log(1 + files.length / (df.get(w) ?? 1)) * (answerWords.has(w) ? 2 : 1);
      score += weight;
      if (weight > bestWeight) {
        bestWeight = weight;
        best = w;
      }
    }
    if (score > 0) scored.push({ file: f, score, best });
  });
  scored.sort((a, b) => b.score - a.score);
  const top = scored[0]?.score ?? 0;
  for (const s of scored) {
    const at = s.best ? s.file.text.toLowerCase().indexOf(s.best) : -1;
    const line = at >= 0 ? lineOf(s.file.text, at) : undefined;
    const prev = found.get(s.file.path);
    if (prev) {
      prev.line ??= line;
      continue;
    }
    // Keep only files close to the best one; a long tail of weak overlaps is noise.
    if (s.score < top * 0.5) continue;
    found.set(s.file.path, { path: s.file.path, how: 'overlap', score: top > 0 ? s.score / top : 0, line });
  }
  return [...found.values()].sort((a, b) => b.score - a.score || HOW_ORDER[a.how] - HOW_ORDER[b.how]).slice(0, max);
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

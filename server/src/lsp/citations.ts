// citations.ts — which context files an answer rests on.
//
// DESIGN asks for the files whose KV pages got the most attention mass. The
// engine does not report attention yet, so citations are marked with how they
// were found instead:
//   'mention' — the answer names the file (its path or its file name);
//   'overlap' — the file holds rare words that the question and the answer
//               share with it (identifiers, numbers), weighted by rarity
//               across the context files, the answer's words double.
// When the engine gains an attention read-out, add 'attention' citations here.
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

/** Up to `max` citations, strongest first. */
export function citeFiles(question: string, answer: string, files: readonly ContextFile[], max = 3): Citation[] {
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
  return [...found.values()].sort((a, b) => b.score - a.score || (a.how === 'mention' ? -1 : 1)).slice(0, max);
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

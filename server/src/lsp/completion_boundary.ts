// completion_boundary.ts — where an inline completion should end. Applied to
// the text as it streams, so generation stops as soon as the boundary shows.
//
//   - cursor before text on its line: one line only (never run into the code after the cursor);
//   - otherwise several lines, ending before: a blank line after some content,
//     a line indented less than the cursor's line (the block closed),
//     a line that repeats the first non-blank line after the cursor (the model
//     re-typing the suffix), or the line limit.

export interface BoundaryContext {
  /** Text of the cursor's line before the cursor. */
  linePrefix: string;
  /** Text of the cursor's line after the cursor. */
  lineSuffix: string;
  /** First non-blank line after the cursor's line, if any. */
  nextLine?: string;
  /** Most lines in the completion (>= 1). */
  maxLines: number;
}

export interface Cut {
  text: string;
  /** A boundary was reached: nothing generated later can be kept. */
  done: boolean;
}

export function boundaryContext(prefix: string, suffix: string, maxLines: number): BoundaryContext {
  const lineStart = prefix.lastIndexOf('\n') + 1;
  const nl = suffix.indexOf('\n');
  const lineSuffix = nl < 0 ? suffix : suffix.slice(0, nl);
  const after = nl < 0 ? [] : suffix.slice(nl + 1).split('\n');
  const nextLine = after.find((l) => l.trim() !== '');
  return { linePrefix: prefix.slice(lineStart), lineSuffix, nextLine, maxLines: Math.max(1, maxLines) };
}

function indentWidth(line: string): number {
  let w = 0;
  for (const ch of line) {
    if (ch === ' ') w += 1;
    else if (ch === '\t') w += 4;
    else break;
  }
  return w;
}

export function cutCompletion(text: string, ctx: BoundaryContext): Cut {
  const singleLine = ctx.lineSuffix.trim() !== '' || ctx.maxLines === 1;
  const lines = text.split('\n');
  if (singleLine) {
    if (lines.length > 1) return { text: lines[0].trimEnd(), done: true };
    return { text, done: false };
  }
  // The first line continues the cursor's line; its indentation is the cursor line's.
  const cursorLine = ctx.linePrefix + lines[0];
  const base = indentWidth(ctx.linePrefix.trim() === '' && lines[0].trim() === '' && lines.length > 1 ? lines[1] : cursorLine);
  const next = ctx.nextLine?.trim();
  let sawContent = (ctx.linePrefix + lines[0]).trim() !== '';
  // Only whole lines (followed by '\n') are judged; the last, partial line waits for more text.
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const complete = i < lines.length - 1;
    const keep = (n: number) => ({ text: lines.slice(0, n).join('\n').trimEnd(), done: true });
    if (i >= ctx.maxLines) return keep(i);
    if (!complete) break;
    if (line.trim() === '') {
      if (sawContent) return keep(i);
      continue;
    }
    if (next !== undefined && line.trim() === next) return keep(i);
    if (indentWidth(line) < base) return keep(i);
    sawContent = true;
  }
  return { text, done: false };
}

/** Final form of a completion whose generation ended (not at a boundary): trailing blank lines dropped. */
export function finishCompletion(text: string, ctx: BoundaryContext): string {
  const cut = cutCompletion(text + '\n', ctx);
  return (cut.done ? cut.text : text).replace(/\s+$/, (ws) => (ws.includes('\n') ? '' : ws));
}

/**
 * The first line of a completion that may run to several lines, once it is complete
 * (a newline followed it) and holds some non-blank text: the start of the cursor's line
 * continued. Every later cut keeps at least this line, so it is a prefix of the final
 * completion. Undefined while the line is still being written, when the completion
 * opens with a line break, or when it is single-line anyway.
 */
export function firstLine(text: string, ctx: BoundaryContext): string | undefined {
  if (ctx.lineSuffix.trim() !== '' || ctx.maxLines === 1) return undefined;
  const nl = text.indexOf('\n');
  if (nl < 0) return undefined;
  const line = text.slice(0, nl).trimEnd();
  return line.trim() === '' ? undefined : line;
}

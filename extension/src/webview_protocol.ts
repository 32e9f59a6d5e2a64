// webview_protocol.ts — messages between the Q&A panel (media/panel.js) and
// the extension. The webview's messages are checked before use.
import type { Citation } from '../../server/src/protocol';

export type ToWebview =
  | { type: 'start'; id: number; question: string }
  | { type: 'delta'; id: number; text: string }
  | { type: 'done'; id: number; text: string; citations: Citation[]; stopReason: string; stats: string }
  | { type: 'error'; id: number; message: string; hint?: string }
  /** Paths of the files in the context, so the answer can link the ones it names. */
  | { type: 'files'; paths: string[] };

export type FromWebview =
  | { type: 'ready' }
  | { type: 'ask'; question: string }
  | { type: 'stop' }
  | { type: 'open'; path: string; line?: number };

/** The message if it is a well-formed FromWebview, else undefined. */
export function parseFromWebview(x: unknown): FromWebview | undefined {
  if (typeof x !== 'object' || x === null) return undefined;
  const m = x as Record<string, unknown>;
  switch (m.type) {
    case 'ready':
    case 'stop':
      return { type: m.type };
    case 'ask':
      return typeof m.question === 'string' && m.question.trim() && m.question.length < 20_000 ? { type: 'ask', question: m.question.trim() } : undefined;
    case 'open': {
      if (typeof m.path !== 'string' || !m.path || m.path.length > 4096) return undefined;
      const line = typeof m.line === 'number' && Number.isInteger(m.line) && m.line >= 1 ? m.line : undefined;
      return line === undefined ? { type: 'open', path: m.path } : { type: 'open', path: m.path, line };
    }
    default:
      return undefined;
  }
}

/** A repo-relative path the panel may open: no absolute paths, no '..' segments. */
export function safeRelativePath(p: string): string | undefined {
  const norm = p.replace(/\\/g, '/').replace(/^\.\//, '');
  if (norm.startsWith('/') || /^[a-zA-Z]:/.test(norm)) return undefined;
  if (norm.split('/').some((s) => s === '..' || s === '')) return undefined;
  return norm;
}

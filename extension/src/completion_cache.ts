// completion_cache.ts — answers a completion request without the model when
// the user is typing what was already proposed:
//   - PrefixCache: finished completions by (document, prefix); if the new
//     prefix is an old prefix plus a start of its completion, the rest of that
//     completion is the answer;
//   - InFlight: the same test against the request still running, whose answer
//     is awaited instead of starting a new one.
// Pure (no vscode import), so it is unit-tested on its own.

export interface CompletionKey {
  /** Document identity (uri) and version-independent. */
  doc: string;
  /** Text before the cursor. */
  prefix: string;
  /** Text after the cursor on the same line and a little beyond (must not change). */
  suffixHead: string;
}

/** What remains of `completion` once `typed` was typed; undefined if the user typed something else or everything. */
export function remainder(completion: string, typed: string): string | undefined {
  if (!completion.startsWith(typed)) return undefined;
  const rest = completion.slice(typed.length);
  return rest.length > 0 ? rest : undefined;
}

/** The typed text since `from`, if `to` extends it (same document and suffix). */
export function typedSince(from: CompletionKey, to: CompletionKey): string | undefined {
  if (from.doc !== to.doc || from.suffixHead !== to.suffixHead) return undefined;
  if (to.prefix.length < from.prefix.length || !to.prefix.startsWith(from.prefix)) return undefined;
  return to.prefix.slice(from.prefix.length);
}

/** How many characters after the cursor take part in the key. */
export const SUFFIX_HEAD_CHARS = 200;

export function suffixHead(suffix: string): string {
  return suffix.slice(0, SUFFIX_HEAD_CHARS);
}

interface Entry {
  key: CompletionKey;
  text: string;
}

export class PrefixCache {
  private entries: Entry[] = [];

  constructor(private readonly capacity = 64) {}

  get size(): number {
    return this.entries.length;
  }

  put(key: CompletionKey, text: string): void {
    if (!text) return;
    this.entries = this.entries.filter((e) => !(e.key.doc === key.doc && e.key.prefix === key.prefix && e.key.suffixHead === key.suffixHead));
    this.entries.push({ key, text });
    if (this.entries.length > this.capacity) this.entries.shift();
  }

  /** The completion for `key` from a cached one, newest first. */
  get(key: CompletionKey): string | undefined {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i];
      const typed = typedSince(e.key, key);
      if (typed === undefined) continue;
      const rest = remainder(e.text, typed);
      if (rest !== undefined) {
        // Move to the back (most recently used).
        this.entries.splice(i, 1);
        this.entries.push(e);
        return rest;
      }
    }
    return undefined;
  }

  /** Forget a document's entries (closed, or edited away from the cursor). */
  dropDocument(doc: string): void {
    this.entries = this.entries.filter((e) => e.key.doc !== doc);
  }

  clear(): void {
    this.entries = [];
  }
}

export interface Pending {
  key: CompletionKey;
  /** Resolves with the completion text at `key` (undefined if none). */
  result: Promise<string | undefined>;
  /**
   * Resolves as soon as something can be shown: the first line of a multi-line
   * completion (a prefix of `result`'s text), or `result`'s text, whichever comes first.
   */
  first?: Promise<string | undefined>;
  cancel(): void;
}

/**
 * The one completion request in flight. `claim` returns a promise for a new
 * key if the running request can answer it (the user typed along its start);
 * otherwise the running request is cancelled.
 */
export class InFlight {
  private pending: Pending | undefined;
  private claims = 0;

  get current(): Pending | undefined {
    return this.pending;
  }

  start(p: Pending): void {
    if (this.pending && this.pending !== p) this.pending.cancel();
    this.pending = p;
    this.claims = 0;
    const clear = () => {
      if (this.pending === p) this.pending = undefined;
    };
    p.result.then(clear, clear);
  }

  /** Reuse the running request for `key`, or cancel it when it cannot serve. */
  claim(key: CompletionKey): Promise<string | undefined> | undefined {
    const p = this.pending;
    if (!p) return undefined;
    const typed = typedSince(p.key, key);
    if (typed === undefined) {
      this.cancel();
      return undefined;
    }
    this.claims++;
    const rest = (text: string | undefined) => (text === undefined ? undefined : remainder(text, typed));
    if (!p.first) return p.result.then(rest);
    // The first line if the typed text leaves some of it, else the whole completion.
    return p.first.then((text) => rest(text) ?? p.result.then(rest));
  }

  /** Number of later keystrokes that reused the running request. */
  get reuseCount(): number {
    return this.claims;
  }

  cancel(): void {
    const p = this.pending;
    this.pending = undefined;
    p?.cancel();
  }
}

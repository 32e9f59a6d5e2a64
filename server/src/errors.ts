// errors.ts — errors meant for the user (bad argument, missing model, no network...).
// Code that catches a UserError shows `message` (and `hint`, when set) without a
// stack trace; any other error is a bug and is reported as such.

export interface UserErrorOptions {
  /** One line telling the user what to do next, e.g. the exact command to run. */
  hint?: string;
  cause?: unknown;
}

export class UserError extends Error {
  hint?: string;

  /** `new UserError(msg)`, `new UserError(msg, 'hint')` or `new UserError(msg, { hint, cause })`. */
  constructor(message: string, hintOrOptions?: string | UserErrorOptions) {
    const opts: UserErrorOptions = typeof hintOrOptions === 'string' ? { hint: hintOrOptions } : (hintOrOptions ?? {});
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'UserError';
    if (opts.hint) this.hint = opts.hint;
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

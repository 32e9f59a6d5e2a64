// interrupt.ts — Ctrl-C aborts in-flight work (generation stops between
// tokens and prints what it has); a second Ctrl-C exits at once.
export const interrupt = new AbortController();

export function installInterruptHandler(): void {
  process.on('SIGINT', () => {
    if (interrupt.signal.aborted) process.exit(130);
    interrupt.abort();
  });
}

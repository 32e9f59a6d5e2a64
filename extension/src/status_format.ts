// status_format.ts — the words and figures of the status-bar item and of the
// details page, from the server's one status message. Pure (no vscode), so
// tests can check what a user reads. A figure the engine did not report is
// shown as missing, never estimated.
import type { Figures, ServerStatus } from '../../server/src/protocol';

export type Connection = 'starting' | 'running' | 'restarting' | 'stopped';

export interface StatusView {
  text: string;
  /** Markdown. */
  tooltip: string;
  severity: 'ok' | 'warning' | 'error';
}

export function formatBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function pct(x: number): string {
  return `${(x * 100).toFixed(0)}%`;
}

/** The short figures for the status bar, in a fixed order; only those known. */
export function figureParts(f: Figures): string[] {
  const parts: string[] = [];
  if (f.tokensPerSecond !== undefined) parts.push(`${f.tokensPerSecond.toFixed(1)} tok/s`);
  if (f.deviceBytes !== undefined) parts.push(`dev ${formatBytes(f.deviceBytes)}`);
  const total = f.engine?.deviceTotalBytes, free = f.engine?.deviceFreeBytes;
  if (total && free !== undefined) parts.push(`VRAM ${formatBytes(total - free)}/${formatBytes(total)}`);
  if (f.hostKvBytes !== undefined) parts.push(`host KV ${formatBytes(f.hostKvBytes)}`);
  else if (f.computedKvBytes !== undefined && f.kvTokens) parts.push(`KV ${formatBytes(f.computedKvBytes)}`);
  if (f.compressionRatio !== undefined) parts.push(`${f.compressionRatio.toFixed(1)}×`);
  if (f.prefetchHitRate !== undefined) parts.push(`hit ${pct(f.prefetchHitRate)}`);
  return parts;
}

export function formatStatus(s: ServerStatus | undefined, connection: Connection, paused: boolean): StatusView {
  if (connection === 'restarting') return { text: '$(sync~spin) specode: restarting', tooltip: 'The specode server stopped; restarting it.', severity: 'warning' };
  if (connection === 'stopped') return { text: '$(error) specode: stopped', tooltip: 'The specode server is not running. Click for details.', severity: 'error' };
  if (!s || connection === 'starting') return { text: '$(sync~spin) specode', tooltip: 'Starting the specode server…', severity: 'ok' };
  const tip = tooltip(s);
  if (paused || s.state === 'paused') return { text: '$(debug-pause) specode: paused', tooltip: tip, severity: 'ok' };
  switch (s.state) {
    case 'error':
      return { text: '$(error) specode', tooltip: tip, severity: 'error' };
    case 'loading':
      return { text: '$(sync~spin) specode: loading model', tooltip: tip, severity: 'ok' };
    case 'indexing': {
      const p = s.progress && s.progress.total > 0 ? ` ${Math.floor((100 * s.progress.done) / s.progress.total)}%` : '';
      return { text: `$(sync~spin) specode: indexing${p}`, tooltip: tip, severity: 'ok' };
    }
    default: {
      const icon = s.state === 'busy' ? '$(loading~spin)' : s.health === 'warning' ? '$(warning)' : '$(hubot)';
      const parts = figureParts(s.figures);
      const text = s.state === 'idle' && !s.model ? `${icon} specode` : `${icon} specode${parts.length ? ' ' + parts.join(' · ') : ''}`;
      return { text, tooltip: tip, severity: s.health };
    }
  }
}

function tooltip(s: ServerStatus): string {
  const lines = [`**specode** — ${s.state}${s.message ? `: ${s.message}` : ''}`];
  if (s.hint) lines.push(`_${s.hint}_`);
  if (s.model) lines.push(`model: ${s.model.name} (${s.model.arch}, ${s.model.fileType}), backend ${s.backend ?? '?'}`);
  const parts = figureParts(s.figures);
  if (parts.length) lines.push(parts.join(' · '));
  lines.push('Click for details.');
  return lines.join('\n\n');
}

/** The details page (markdown) the status item opens. */
export function detailsMarkdown(s: ServerStatus | undefined, connection: Connection, restarts: number): string {
  const out: string[] = ['# specode status', ''];
  if (!s) {
    out.push(`Server: ${connection}. No status received yet.`);
    return out.join('\n');
  }
  const f = s.figures;
  const row = (name: string, value: string | undefined, note: string, missing = '— (not reported by the engine)') => out.push(`| ${name} | ${value ?? missing} | ${note} |`);
  out.push(`- state: **${s.state}** (${s.health})${s.message ? ` — ${s.message}` : ''}`);
  if (s.hint) out.push(`- what to do: ${s.hint}`);
  out.push(`- server: ${connection}, pid ${s.pid}, protocol ${s.protocolVersion}, restarts this session: ${restarts}`);
  out.push(`- model: ${s.model ? `${s.model.name} — ${s.model.path} (${s.model.arch}, ${s.model.fileType}, context ${s.model.nCtx}, FIM ${s.model.fim ? 'yes' : 'no'})` : 'not loaded'}`);
  out.push(`- backend: ${s.backend ?? 'not loaded'}; KV policy requested: ${s.kvPolicy ?? '?'}`);
  out.push(`- repository context: ${s.contextFiles} files`);
  out.push('', '| figure | value | source |', '|---|---|---|');
  row('device bytes', f.deviceBytes !== undefined ? formatBytes(f.deviceBytes) : undefined, 'engine');
  row('host KV bytes', f.hostKvBytes !== undefined ? formatBytes(f.hostKvBytes) : undefined, 'engine');
  row('compression ratio', f.compressionRatio !== undefined ? `${f.compressionRatio.toFixed(2)}×` : undefined, 'engine');
  row('prefetch hit rate', f.prefetchHitRate !== undefined ? pct(f.prefetchHitRate) : undefined, 'engine');
  const notLoaded = '— (model not loaded)';
  const noRequest = '— (no request yet)';
  row('weights', f.weightBytes !== undefined ? formatBytes(f.weightBytes) : undefined, 'GGUF file', notLoaded);
  row('tokens in KV cache', f.kvTokens !== undefined ? String(f.kvTokens) : undefined, 'session', notLoaded);
  row('fp16 KV size', f.computedKvBytes !== undefined ? formatBytes(f.computedKvBytes) : undefined, 'computed: tokens × layers × kv-heads × head-dim × 2 × 2 B', notLoaded);
  row('generation speed', f.tokensPerSecond !== undefined ? `${f.tokensPerSecond.toFixed(1)} tok/s` : undefined, 'last request', noRequest);
  row('prefill speed', f.prefillTokensPerSecond !== undefined ? `${f.prefillTokensPerSecond.toFixed(0)} tok/s` : undefined, 'last request, recomputed tokens', noRequest);
  row('last prompt', f.lastPromptTokens !== undefined ? `${f.lastPromptTokens} tokens, ${f.lastReusedTokens ?? 0} reused from the KV cache` : undefined, 'last request', noRequest);
  if (f.engine && Object.keys(f.engine).length) {
    const e = f.engine;
    const onGpu = (e.deviceTotalBytes ?? 0) > 0;
    out.push('', `## Device memory${onGpu ? '' : ' (CPU backend: held in RAM, counted as VRAM would be)'}`, '', '| kind | bytes |', '|---|---|');
    const kinds: [string, string][] = [
      ['weights', 'deviceWeightBytes'], ['low-bit KV', 'deviceLowbitBytes'], ['fp16 residual', 'deviceResidualBytes'],
      ['prefetch buffers', 'devicePrefetchBytes'], ['full-precision KV rows', 'deviceFullBytes'], ['workspace', 'deviceWorkspaceBytes'],
    ];
    for (const [label, key] of kinds) if (e[key] !== undefined) out.push(`| ${label} | ${formatBytes(e[key])} |`);
    if (onGpu) out.push(`| free / total on the device | ${formatBytes(e.deviceFreeBytes ?? 0)} / ${formatBytes(e.deviceTotalBytes)} |`);
    if (e.hostKvBytes !== undefined) out.push(`| host KV (fp16 rows${onGpu ? ', pinned' : ''}) | ${formatBytes(e.hostKvBytes)} |`);
    out.push('', '## Engine metrics (ctx.metrics())', '', '| name | value |', '|---|---|');
    for (const [k, v] of Object.entries(f.engine)) out.push(`| ${k} | ${v} |`);
  } else if (s.model) {
    out.push('', 'The engine does not report KV metrics (ctx.metrics()) yet; figures marked "engine" are therefore missing.');
  } else {
    out.push('', 'No model is loaded, so there are no engine figures yet.');
  }
  return out.join('\n');
}

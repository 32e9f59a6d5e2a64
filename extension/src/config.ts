// config.ts — specode's settings. Declared once in package.json
// (contributes.configuration); this table reads exactly those keys with the
// same defaults, and test/unit/extension-config.test.ts checks that it does.
// No `vscode` import at run time, so the test can load it.
import { DEFAULT_MODEL } from '../../server/src/models/registry';
import { BACKENDS, KV_POLICIES, type Backend, type KvPolicy, type ServerConfig } from '../../server/src/protocol';

/** The part of vscode.WorkspaceConfiguration used here. */
export interface ConfigSource {
  get<T>(section: string, defaultValue: T): T;
}

export const SECTION = 'specode';

/** Every setting: key under `specode.` → default. Keep in step with package.json. */
export const DEFAULTS = {
  model: DEFAULT_MODEL as string,
  backend: 'auto' as Backend,
  deviceBudgetMiB: 0,
  contextTokens: 8192,
  kvPolicy: 'specache' as KvPolicy,
  kvBits: 2 as 1 | 2,
  topK: 64,
  kvDiskCache: true,
  'inline.debounceMs': 120,
  'inline.languages': ['*'] as string[],
};

export type SettingKey = keyof typeof DEFAULTS;

export interface Config {
  model: string;
  backend: Backend;
  deviceBudgetMiB: number;
  contextTokens: number;
  kvPolicy: KvPolicy;
  kvBits: 1 | 2;
  topK: number;
  kvDiskCache: boolean;
  debounceMs: number;
  languages: string[];
}

function intIn(v: unknown, min: number, max: number, fallback: number): number {
  return typeof v === 'number' && Number.isFinite(v) ? Math.min(max, Math.max(min, Math.round(v))) : fallback;
}

/** Reads every setting once; values of the wrong type fall back to the default. */
export function readConfig(src: ConfigSource): Config {
  const get = <K extends SettingKey>(key: K): (typeof DEFAULTS)[K] => src.get(key, DEFAULTS[key]);
  const backend = get('backend');
  const kvPolicy = get('kvPolicy');
  const kvBits = get('kvBits');
  const languages = get('inline.languages');
  const model = get('model');
  return {
    model: typeof model === 'string' && model.trim() ? model.trim() : DEFAULTS.model,
    backend: BACKENDS.includes(backend) ? backend : DEFAULTS.backend,
    deviceBudgetMiB: intIn(get('deviceBudgetMiB'), 0, 1 << 24, DEFAULTS.deviceBudgetMiB),
    contextTokens: intIn(get('contextTokens'), 256, 1 << 20, DEFAULTS.contextTokens),
    kvPolicy: KV_POLICIES.includes(kvPolicy) ? kvPolicy : DEFAULTS.kvPolicy,
    kvBits: kvBits === 1 || kvBits === 2 ? kvBits : DEFAULTS.kvBits,
    topK: intIn(get('topK'), 1, 1 << 16, DEFAULTS.topK),
    kvDiskCache: get('kvDiskCache') !== false,
    debounceMs: intIn(get('inline.debounceMs'), 0, 5000, DEFAULTS['inline.debounceMs']),
    languages: Array.isArray(languages) ? languages.filter((l): l is string => typeof l === 'string') : DEFAULTS['inline.languages'],
  };
}

export function toServerConfig(c: Config): ServerConfig {
  return { model: c.model, backend: c.backend, deviceBudgetMiB: c.deviceBudgetMiB, contextTokens: c.contextTokens, kvPolicy: c.kvPolicy, kvBits: c.kvBits, topK: c.topK, kvDiskCache: c.kvDiskCache };
}

/** Whether inline completions are on for a language id. */
export function languageEnabled(c: Config, languageId: string): boolean {
  if (c.languages.includes(`!${languageId}`)) return false;
  return c.languages.includes('*') || c.languages.includes(languageId);
}

/** Settings whose change needs the server to be told (all but the client-only ones). */
export function serverSettingChanged(affects: (section: string) => boolean): boolean {
  return (Object.keys(DEFAULTS) as SettingKey[]).some((k) => !k.startsWith('inline.') && affects(`${SECTION}.${k}`));
}

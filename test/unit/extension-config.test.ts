// The settings declared in package.json are exactly the ones config.ts reads, with the same defaults.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DEFAULTS, languageEnabled, readConfig, SECTION, serverSettingChanged, toServerConfig, type ConfigSource } from '../../extension/src/config';
import { BACKENDS, KV_POLICIES, parseServerConfig } from '../../server/src/protocol';

const pkg = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8'));
const declared: Record<string, { default: unknown; enum?: unknown[] }> = pkg.contributes.configuration.properties;

function recordingSource(values: Record<string, unknown> = {}): ConfigSource & { reads: Map<string, unknown> } {
  const reads = new Map<string, unknown>();
  return {
    reads,
    get<T>(key: string, def: T): T {
      reads.set(key, def);
      return (key in values ? values[key] : def) as T;
    },
  };
}

test('config.ts reads exactly the settings package.json declares, with the same defaults', () => {
  const src = recordingSource();
  readConfig(src);
  const read = [...src.reads.keys()].map((k) => `${SECTION}.${k}`).sort();
  assert.deepEqual(read, Object.keys(declared).sort());
  for (const [key, def] of src.reads) assert.deepEqual(def, declared[`${SECTION}.${key}`].default, `default of ${SECTION}.${key}`);
  assert.deepEqual(Object.keys(DEFAULTS).sort(), [...src.reads.keys()].sort());
});

test('enum settings list the values the server accepts', () => {
  assert.deepEqual(declared['specode.backend'].enum, [...BACKENDS]);
  assert.deepEqual(declared['specode.kvPolicy'].enum, [...KV_POLICIES]);
  assert.deepEqual(declared['specode.kvBits'].enum, [1, 2]);
});

test('the model setting is restricted in untrusted workspaces', () => {
  assert.equal(pkg.capabilities.untrustedWorkspaces.supported, 'limited');
  assert.deepEqual(pkg.capabilities.untrustedWorkspaces.restrictedConfigurations, ['specode.model']);
});

test('the defaults make a config the server accepts', () => {
  const c = readConfig(recordingSource());
  assert.deepEqual(parseServerConfig(JSON.parse(JSON.stringify(toServerConfig(c)))), toServerConfig(c));
});

test('values of the wrong type or out of range fall back or are clamped, never reach the server broken', () => {
  const c = readConfig(recordingSource({ backend: 'tpu', kvBits: 3, topK: -5, contextTokens: 'big', 'inline.languages': 'python', model: '  ' }));
  assert.equal(c.backend, 'auto');
  assert.equal(c.kvBits, 2);
  assert.equal(c.topK, 1);
  assert.equal(c.contextTokens, 8192);
  assert.deepEqual(c.languages, ['*']);
  assert.equal(c.model, DEFAULTS.model);
  parseServerConfig(toServerConfig(c));
});

test('language filter: * and !id', () => {
  const c = readConfig(recordingSource({ 'inline.languages': ['*', '!markdown'] }));
  assert.equal(languageEnabled(c, 'typescript'), true);
  assert.equal(languageEnabled(c, 'markdown'), false);
  const only = readConfig(recordingSource({ 'inline.languages': ['python'] }));
  assert.equal(languageEnabled(only, 'python'), true);
  assert.equal(languageEnabled(only, 'rust'), false);
});

test('only server settings trigger a reconfigure', () => {
  assert.equal(serverSettingChanged((s) => s === 'specode.inline.debounceMs'), false);
  assert.equal(serverSettingChanged((s) => s === 'specode.kvPolicy'), true);
});

test('every declared command has a title and the commands the extension registers are declared', () => {
  const src = readFileSync(join(__dirname, '..', '..', 'extension', 'src', 'commands.ts'), 'utf8');
  const registered = [...src.matchAll(/registerCommand\('([^']+)'/g)].map((m) => m[1]).sort();
  const declaredCommands = pkg.contributes.commands.map((c: { command: string; title: string }) => {
    assert.ok(c.title, `${c.command} has a title`);
    return c.command;
  });
  assert.deepEqual(registered, [...declaredCommands].sort());
});

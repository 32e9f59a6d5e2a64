// The end-to-end setup installs code-server with an npm of its own; when it runs
// under `npm test` / `npm start` the outer npm's lifecycle variables must not reach
// it (code-server's install script reads the Node version from npm_config_user_agent).
import assert from 'node:assert/strict';
import { test } from 'node:test';
// @ts-expect-error: a plain .mjs module without types
import { withoutOuterNpm } from '../e2e/setup.mjs';

test('the inner npm does not inherit the outer npm and its Node, but keeps user settings', () => {
  const env = withoutOuterNpm({
    PATH: '/usr/bin',
    npm_config_user_agent: 'npm/11.19.1 node/v20.20.2 linux x64 workspaces/false',
    npm_node_execpath: '/usr/bin/node',
    npm_execpath: '/usr/lib/node_modules/npm/bin/npm-cli.js',
    npm_config_local_prefix: '/tmp/fc',
    npm_lifecycle_event: 'test',
    npm_package_name: 'specode',
    npm_config_registry: 'https://registry.example/',
    npm_config_cache: '/root/.npm',
    npm_config_cafile: '/etc/ssl/certs/ca-certificates.crt',
  });
  assert.deepEqual(Object.keys(env).sort(), ['PATH', 'npm_config_cache', 'npm_config_cafile', 'npm_config_registry']);
});

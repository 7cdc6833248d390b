// Unit tests of the extension's pure logic (src/logic.ts, built to out/logic.js by `npm test`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { serverLaunch, serverSettings, removedSinceStart, LatencyTracker, statusView, CLIENT_ONLY_KEYS } =
  require('../out/logic.js');
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

test('serverLaunch runs dgemma-lsp from PATH by default', () => {
  assert.deepEqual(serverLaunch({}), { command: 'dgemma-lsp', args: [] });
  assert.deepEqual(serverLaunch({ command: '  ', pythonPath: '' }), { command: 'dgemma-lsp', args: [] });
});

test('serverLaunch prefers a Python path, as python -m dgemma_lsp', () => {
  assert.deepEqual(serverLaunch({ command: '/x/dgemma-lsp', pythonPath: ' /venv/bin/python ' }), {
    command: '/venv/bin/python',
    args: ['-m', 'dgemma_lsp'],
  });
});

test('serverLaunch passes the log level and extra arguments, ignoring non-strings', () => {
  assert.deepEqual(serverLaunch({ command: '/v/bin/dgemma-lsp', logLevel: 'debug', args: ['--log-file', 7, '/tmp/l'] }), {
    command: '/v/bin/dgemma-lsp',
    args: ['--log-level', 'DEBUG', '--log-file', '/tmp/l'],
  });
  assert.deepEqual(serverLaunch({ logLevel: 'default', args: 'not a list' }).args, []);
});

test('serverSettings drops the extension-only keys and keeps what the user set', () => {
  const section = {
    enabled: true,
    model: '/ckpt',
    steps: 8,
    seed: null,
    server: { command: 'dgemma-lsp' },
    statusBar: { slowMs: 1000 },
    trace: { server: 'off' },
    get: () => 1,
  };
  const userSet = new Set(['model', 'steps', 'server', 'trace']);
  assert.deepEqual(serverSettings(section, (k) => userSet.has(k)), { model: '/ckpt', steps: 8 });
  assert.deepEqual(serverSettings(section), { enabled: true, model: '/ckpt', steps: 8, seed: null });
  assert.deepEqual(serverSettings(undefined), {});
});

test('serverSettings sends an empty model or endpoint as null (unset), other strings as they are', () => {
  assert.deepEqual(serverSettings({ model: ' ', endpoint: '', device: 'cpu', apiKeyEnv: '' }), {
    model: null,
    endpoint: null,
    device: 'cpu',
    apiKeyEnv: null,
  });
});

test('removedSinceStart lists settings the server still holds from its initialization options', () => {
  assert.deepEqual(removedSinceStart({ model: '/a', steps: 4 }, { steps: 8 }), ['model']);
  assert.deepEqual(removedSinceStart({ model: '/a' }, { model: null }), []);
  assert.deepEqual(removedSinceStart({}, { model: '/a' }), []);
});

test('LatencyTracker is slow only when the median of the last requests exceeds the threshold', () => {
  const tracker = new LatencyTracker(1000, 5);
  assert.equal(tracker.isSlow(), false);
  tracker.add(3000);
  tracker.add(3000);
  assert.equal(tracker.isSlow(), false, 'needs three samples');
  tracker.add(10);
  assert.equal(tracker.median(), 3000);
  assert.equal(tracker.isSlow(), true);
  for (const ms of [20, 30, 40]) tracker.add(ms);
  assert.equal(tracker.median(), 30, 'only the last five count');
  assert.equal(tracker.isSlow(), false);
  tracker.reset();
  assert.equal(tracker.median(), undefined);
});

test('statusView maps client phase and server status to loading / ready / slow / error', () => {
  const ready = { state: 'ready', backend: 'engine (embedded, cpu)' };
  assert.equal(statusView({ phase: 'starting', enabled: true, slow: false }).state, 'starting');
  assert.equal(statusView({ phase: 'running', server: { state: 'loading' }, enabled: true, slow: false }).state, 'loading');
  const view = statusView({ phase: 'running', server: ready, enabled: true, slow: false });
  assert.equal(view.state, 'ready');
  assert.equal(view.text, '$(sparkle) dgemma');
  assert.match(view.tooltip, /engine \(embedded, cpu\)/);
  const slow = statusView({ phase: 'running', server: ready, enabled: true, slow: true, medianMs: 2400.4 });
  assert.equal(slow.state, 'slow');
  assert.equal(slow.text, '$(watch) dgemma: slow');
  assert.match(slow.tooltip, /2400 ms/);
  assert.equal(statusView({ phase: 'running', server: ready, enabled: false, slow: true }).state, 'disabled');
  const failed = statusView({ phase: 'running', server: { state: 'failed', error: 'no such folder' }, enabled: true, slow: false });
  assert.equal(failed.state, 'error');
  assert.match(failed.tooltip, /no such folder/);
  const crashed = statusView({ phase: 'failed', enabled: true, slow: false, clientError: 'spawn dgemma-lsp ENOENT' });
  assert.equal(crashed.state, 'error');
  assert.match(crashed.tooltip, /ENOENT/);
  assert.equal(statusView({ phase: 'stopped', server: ready, enabled: true, slow: false }).state, 'stopped');
});

test('package.json contributes every setting the extension reads and every command it registers', () => {
  const properties = pkg.contributes.configuration.properties;
  for (const key of ['dgemma.enabled', 'dgemma.model', 'dgemma.device', 'dgemma.steps', 'dgemma.server.command', 'dgemma.server.pythonPath', 'dgemma.server.args', 'dgemma.server.logLevel', 'dgemma.statusBar.slowMs', 'dgemma.trace.server']) {
    assert.ok(properties[key], key);
  }
  for (const key of Object.keys(properties)) {
    const first = key.split('.')[1];
    const nested = key.split('.').length > 2;
    assert.equal(nested, CLIENT_ONLY_KEYS.includes(first), `${key}: only extension settings are nested`);
  }
  const commands = pkg.contributes.commands.map((c) => c.command).sort();
  assert.deepEqual(commands, ['dgemma.restartServer', 'dgemma.showLog', 'dgemma.showMenu', 'dgemma.showServerStatus', 'dgemma.toggleSuggestions']);
  // The server's own commands are registered by vscode-languageclient: no clash allowed.
  for (const serverCommand of ['dgemma.status', 'dgemma.acceptSuggestion', 'dgemma.applyCodeAction']) {
    assert.ok(!commands.includes(serverCommand), serverCommand);
  }
});

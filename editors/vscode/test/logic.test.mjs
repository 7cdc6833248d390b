// Unit tests of the extension's pure logic (src/logic.ts, built to out/logic.js by `npm test`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const {
  serverLaunch,
  serverSettings,
  removedSinceStart,
  LatencyTracker,
  statusView,
  CLIENT_ONLY_KEYS,
  userChoseServer,
  managedLayout,
  bundledWheel,
  needsInstall,
  pythonCandidates,
  parsePythonProbe,
  pipInstallArgs,
  pipProgress,
  TORCH_REQUIREMENT,
} = require('../out/logic.js');
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
  for (const key of ['dgemma.enabled', 'dgemma.model', 'dgemma.device', 'dgemma.steps', 'dgemma.server.command', 'dgemma.server.pythonPath', 'dgemma.server.args', 'dgemma.server.logLevel', 'dgemma.server.install.python', 'dgemma.server.install.pipArgs', 'dgemma.statusBar.slowMs', 'dgemma.trace.server']) {
    assert.ok(properties[key], key);
  }
  for (const key of Object.keys(properties)) {
    const first = key.split('.')[1];
    const nested = key.split('.').length > 2;
    assert.equal(nested, CLIENT_ONLY_KEYS.includes(first), `${key}: only extension settings are nested`);
  }
  const commands = pkg.contributes.commands.map((c) => c.command).sort();
  assert.deepEqual(commands, ['dgemma.reinstallServer', 'dgemma.restartServer', 'dgemma.showLog', 'dgemma.showMenu', 'dgemma.showServerStatus', 'dgemma.toggleSuggestions']);
  // The server's own commands are registered by vscode-languageclient: no clash allowed.
  for (const serverCommand of ['dgemma.status', 'dgemma.acceptSuggestion', 'dgemma.applyCodeAction']) {
    assert.ok(!commands.includes(serverCommand), serverCommand);
  }
});

// ---- the server the extension installs itself ----

test('the extension installs its own server unless the user named one', () => {
  assert.equal(userChoseServer({}), false);
  assert.equal(userChoseServer({ command: '  ', pythonPath: '' }), false);
  assert.equal(userChoseServer({ command: 'dgemma-lsp' }), true);
  assert.equal(userChoseServer({ pythonPath: '/venv/bin/python' }), true);
  // The contributed default must mean "install": an empty command.
  assert.equal(pkg.contributes.configuration.properties['dgemma.server.command'].default, '');
});

test('managedLayout keeps the environment and its stamp in the global storage folder', () => {
  assert.deepEqual(managedLayout('/g/dgemma.dgemma', 'linux'), {
    venv: '/g/dgemma.dgemma/server-env',
    python: '/g/dgemma.dgemma/server-env/bin/python',
    server: '/g/dgemma.dgemma/server-env/bin/dgemma-lsp',
    stamp: '/g/dgemma.dgemma/server-env.json',
    lock: '/g/dgemma.dgemma/server-env.lock',
  });
  assert.equal(managedLayout('C:\\g', 'win32').python, 'C:\\g\\server-env\\Scripts\\python.exe');
  assert.equal(managedLayout('C:\\g', 'win32').server, 'C:\\g\\server-env\\Scripts\\dgemma-lsp.exe');
});

test('bundledWheel picks the newest dgemma_lsp wheel and ignores other files', () => {
  assert.equal(bundledWheel([]), undefined);
  assert.equal(bundledWheel(['README.md', 'torch-2.13.0-cp311-x.whl']), undefined);
  assert.equal(
    bundledWheel(['dgemma_lsp-0.9.0-py3-none-any.whl', 'dgemma_lsp-0.10.0-py3-none-any.whl', 'x.txt']),
    'dgemma_lsp-0.10.0-py3-none-any.whl',
  );
});

test('needsInstall: missing, half-written or other-wheel stamps rebuild the environment', () => {
  const wanted = { sha256: 'abc', torch: TORCH_REQUIREMENT };
  assert.equal(needsInstall(undefined, wanted), true);
  assert.equal(needsInstall('garbage', wanted), true);
  assert.equal(needsInstall({ sha256: 'old', torch: TORCH_REQUIREMENT }, wanted), true);
  assert.equal(needsInstall({ sha256: 'abc', torch: 'torch==2.4.0' }, wanted), true);
  assert.equal(needsInstall({ wheel: 'w', sha256: 'abc', torch: TORCH_REQUIREMENT, python: '/p' }, wanted), false);
});

test('pythonCandidates: the setting, then the Python extension, then PATH, without repeats', () => {
  assert.deepEqual(pythonCandidates(undefined, undefined, 'linux'), ['python3', 'python']);
  assert.deepEqual(pythonCandidates(' /opt/py/bin/python3 ', '/venv/bin/python', 'linux'), [
    '/opt/py/bin/python3',
    '/venv/bin/python',
    'python3',
    'python',
  ]);
  assert.deepEqual(pythonCandidates('', 'python3', 'linux'), ['python3', 'python']);
  assert.deepEqual(pythonCandidates(undefined, undefined, 'win32'), ['py', 'python']);
});

test('parsePythonProbe accepts Python 3.10+ only', () => {
  assert.deepEqual(parsePythonProbe('/usr/bin/python3\n3.11\n'), { executable: '/usr/bin/python3', version: '3.11' });
  assert.deepEqual(parsePythonProbe('C:\\Py\\python.exe\r\n3.13\r\n').version, '3.13');
  assert.equal(parsePythonProbe('/usr/bin/python3\n3.9\n'), undefined);
  assert.equal(parsePythonProbe('/usr/bin/python2\n2.7\n'), undefined);
  assert.equal(parsePythonProbe(''), undefined);
});

test('pipInstallArgs installs the README torch and the wheel, user arguments first', () => {
  assert.equal(TORCH_REQUIREMENT, 'torch==2.13.0');
  const args = pipInstallArgs('/ext/server/dgemma_lsp-0.1.0-py3-none-any.whl', [
    '--extra-index-url',
    'https://download.pytorch.org/whl/cpu',
    7,
    '',
  ]);
  assert.deepEqual(args.slice(0, 3), ['-m', 'pip', 'install']);
  assert.deepEqual(args.slice(-4), [
    '--extra-index-url',
    'https://download.pytorch.org/whl/cpu',
    'torch==2.13.0',
    '/ext/server/dgemma_lsp-0.1.0-py3-none-any.whl',
  ]);
  assert.deepEqual(pipInstallArgs('/w.whl', 'not a list').slice(-2), ['torch==2.13.0', '/w.whl']);
});

test('pipProgress turns pip lines into short progress messages', () => {
  assert.equal(pipProgress('Collecting torch==2.13.0'), 'fetching torch');
  assert.equal(pipProgress('Collecting pygls<3,>=2.1 (from dgemma-lsp==0.1.0)'), 'fetching pygls');
  assert.equal(pipProgress('Processing /ext/server/dgemma_lsp-0.1.0-py3-none-any.whl'), 'reading dgemma_lsp-0.1.0-py3-none-any.whl');
  assert.match(pipProgress('Installing collected packages: torch, pygls'), /^installing/);
  assert.equal(pipProgress('Successfully installed torch-2.13.0'), 'installed');
  assert.equal(pipProgress('  Downloading pygls-2.1.1-py3-none-any.whl (1 MB)'), undefined);
});

test('statusView shows the first-start install', () => {
  const view = statusView({ phase: 'installing', enabled: true, slow: false });
  assert.equal(view.state, 'installing');
  assert.equal(view.text, '$(loading~spin) dgemma: installing');
});

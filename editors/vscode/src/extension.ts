// dgemma for VS Code: starts `dgemma-lsp` and lets vscode-languageclient (11+) turn its LSP inline
// completions into ghost text (Tab accepts) and its refactor code actions into lightbulb entries.
// This file adds the settings plumbing, a status bar item and the commands; installer.ts sets up
// the server on first start unless the user named one.
import * as vscode from 'vscode';
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  ServerOptions,
  State,
  TransportKind,
} from 'vscode-languageclient/node';
import { InstallError, ensureManagedServer } from './installer';
import {
  ClientPhase,
  LatencyTracker,
  ServerLaunch,
  ServerStatus,
  removedSinceStart,
  serverLaunch,
  serverSettings,
  statusView,
  userChoseServer,
} from './logic';

const SECTION = 'dgemma';
/** Language ids the server has a grammar for (dgemma_lsp/syntax.py). */
export const LANGUAGES = [
  'python',
  'javascript',
  'javascriptreact',
  'typescript',
  'typescriptreact',
  'go',
  'rust',
  'c',
  'cpp',
  'java',
];

let client: LanguageClient | undefined;
let extensionContext: vscode.ExtensionContext;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let phase: ClientPhase = 'starting';
let serverStatus: ServerStatus | undefined;
let clientError: string | undefined;
let stopping = false;
let tracker = new LatencyTracker(1000);
let settingsAtStart: Record<string, unknown> = {};

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function enabled(): boolean {
  return config().get<boolean>('enabled', true);
}

/** The settings the user set in the `dgemma` section, for the server, as plain JSON. */
function currentServerSettings(): Record<string, unknown> {
  const section = config();
  return serverSettings(JSON.parse(JSON.stringify(section)) as Record<string, unknown>, (key) => {
    const inspected = section.inspect(key);
    return (
      inspected !== undefined &&
      (inspected.globalValue !== undefined ||
        inspected.workspaceValue !== undefined ||
        inspected.workspaceFolderValue !== undefined)
    );
  });
}

function refreshStatus(): void {
  const view = statusView({
    phase,
    server: serverStatus,
    enabled: enabled(),
    slow: tracker.isSlow(),
    medianMs: tracker.median(),
    clientError,
  });
  statusItem.text = view.text;
  statusItem.tooltip = view.tooltip;
  statusItem.backgroundColor =
    view.state === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
}

/**
 * The server the user named (`server.pythonPath` or `server.command`), else the one in the
 * extension's own environment, installed first when needed.
 */
async function resolveLaunch(forceInstall = false): Promise<ServerLaunch> {
  const settings = {
    command: config().get<string>('server.command'),
    pythonPath: config().get<string>('server.pythonPath'),
    args: config().get<unknown>('server.args'),
    logLevel: config().get<string>('server.logLevel'),
  };
  if (userChoseServer(settings)) {
    return serverLaunch(settings);
  }
  const server = await ensureManagedServer(
    extensionContext,
    output,
    {
      python: config().get<string>('server.install.python'),
      pipArgs: config().get<unknown>('server.install.pipArgs'),
      force: forceInstall,
    },
    () => {
      phase = 'installing';
      refreshStatus();
    },
  );
  return serverLaunch({ ...settings, command: server, pythonPath: undefined });
}

function createClient(launch: ServerLaunch): LanguageClient {
  output.info(`starting the server: ${launch.command} ${launch.args.join(' ')}`);
  const serverOptions: ServerOptions = {
    command: launch.command,
    args: launch.args,
    transport: TransportKind.stdio,
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: LANGUAGES.flatMap((language) => [
      { scheme: 'file', language },
      { scheme: 'untitled', language },
    ]),
    outputChannel: output,
    revealOutputChannelOn: RevealOutputChannelOn.Never,
    initializationOptions: () => {
      settingsAtStart = currentServerSettings();
      return { [SECTION]: settingsAtStart };
    },
    middleware: {
      workspace: {
        // The server asks for the `dgemma` section: hand it only the server's settings.
        configuration: async (params, token, next) => {
          const result = await next(params, token);
          if (!Array.isArray(result)) {
            return result;
          }
          return params.items.map((item, i) => (item.section === SECTION ? currentServerSettings() : result[i]));
        },
        // Send `settings: null` so that the server pulls them through the filter above.
        didChangeConfiguration: (_sections, next) => next(undefined),
      },
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!enabled()) {
          return null;
        }
        const started = Date.now();
        const result = await next(document, position, context, token);
        if (!token.isCancellationRequested) {
          tracker.add(Date.now() - started);
          refreshStatus();
        }
        return result;
      },
    },
  };
  const created = new LanguageClient('dgemma', 'dgemma', serverOptions, clientOptions);
  created.onNotification('dgemma/status', (params: ServerStatus) => {
    serverStatus = params;
    refreshStatus();
  });
  created.onDidChangeState((event) => {
    if (event.newState === State.Starting) {
      phase = 'starting';
    } else if (event.newState === State.Running) {
      phase = 'running';
      clientError = undefined;
    } else {
      phase = stopping ? 'stopped' : 'failed';
      serverStatus = undefined;
    }
    refreshStatus();
  });
  return created;
}

async function startClient(forceInstall = false): Promise<void> {
  stopping = false;
  clientError = undefined;
  serverStatus = undefined;
  tracker.reset();
  phase = 'starting';
  refreshStatus();
  let launch: ServerLaunch;
  try {
    launch = await resolveLaunch(forceInstall);
  } catch (error) {
    phase = 'failed';
    clientError = error instanceof Error ? error.message : String(error);
    refreshStatus();
    output.error(`installing the server failed: ${clientError}`);
    const retry = error instanceof InstallError && clientError === 'cancelled' ? [] : ['Retry'];
    // Not awaited: a restart must not wait for the user to answer.
    void vscode.window
      .showErrorMessage(`dgemma: the language server could not be installed (${clientError}).`, ...retry, 'Show Log', 'Open Settings')
      .then(async (choice) => {
        if (choice === 'Retry') {
          await serially(() => startClient(forceInstall));
        } else if (choice === 'Show Log') {
          output.show(true);
        } else if (choice === 'Open Settings') {
          await vscode.commands.executeCommand('workbench.action.openSettings', 'dgemma.server');
        }
      });
    return;
  }
  phase = 'starting';
  refreshStatus();
  client = createClient(launch);
  try {
    await client.start();
  } catch (error) {
    phase = 'failed';
    clientError = error instanceof Error ? error.message : String(error);
    refreshStatus();
    output.appendLine(`dgemma-lsp did not start: ${clientError}`);
    void vscode.window
      .showErrorMessage(
        `dgemma: the language server did not start (${clientError}). Check "dgemma.server.command" ` +
          'and "dgemma.server.pythonPath", or leave both empty for the server the extension installs.',
        'Open Settings',
        'Show Log',
      )
      .then(async (choice) => {
        if (choice === 'Open Settings') {
          await vscode.commands.executeCommand('workbench.action.openSettings', 'dgemma.server');
        } else if (choice === 'Show Log') {
          output.show(true);
        }
      });
  }
}

async function stopClient(): Promise<void> {
  const old = client;
  client = undefined;
  if (!old) {
    return;
  }
  stopping = true;
  try {
    if (old.isRunning()) {
      await old.stop(5000);
    }
  } catch (error) {
    output.appendLine(`stopping dgemma-lsp: ${String(error)}`);
  }
  await old.dispose().catch(() => undefined);
}

/** Starts and stops run one after another: a restart asked during a first-start install waits
 * for it instead of starting a second client. */
let lifecycle: Promise<void> = Promise.resolve();
function serially(step: () => Promise<void>): Promise<void> {
  lifecycle = lifecycle.then(step, step);
  return lifecycle;
}

function restart(): Promise<void> {
  return serially(async () => {
    await stopClient();
    await startClient();
  });
}

function reinstall(): Promise<void> {
  return serially(async () => {
    await stopClient();
    await startClient(true);
  });
}

async function toggle(): Promise<void> {
  const inspected = config().inspect<boolean>('enabled');
  const target =
    inspected?.workspaceFolderValue !== undefined
      ? vscode.ConfigurationTarget.WorkspaceFolder
      : inspected?.workspaceValue !== undefined
        ? vscode.ConfigurationTarget.Workspace
        : vscode.ConfigurationTarget.Global;
  await config().update('enabled', !enabled(), target);
  refreshStatus();
  vscode.window.setStatusBarMessage(`dgemma: suggestions ${enabled() ? 'on' : 'off'}`, 3000);
}

async function showServerStatus(): Promise<void> {
  if (!client || !client.isRunning()) {
    vscode.window.showWarningMessage('dgemma: the language server is not running.');
    return;
  }
  const status = await client.sendRequest(ExecuteCommandRequest.type, { command: 'dgemma.status', arguments: [] });
  output.appendLine(`dgemma.status: ${JSON.stringify(status, null, 2)}`);
  output.show(true);
}

async function showMenu(): Promise<void> {
  const items: (vscode.QuickPickItem & { command: string })[] = [
    { label: enabled() ? 'Turn suggestions off' : 'Turn suggestions on', command: 'dgemma.toggleSuggestions' },
    { label: 'Restart the server', command: 'dgemma.restartServer' },
    { label: 'Reinstall the server', command: 'dgemma.reinstallServer' },
    { label: 'Show the server log', command: 'dgemma.showLog' },
    { label: 'Show the server status', command: 'dgemma.showServerStatus' },
  ];
  const picked = await vscode.window.showQuickPick(items, { title: statusItem.tooltip?.toString() });
  if (picked) {
    await vscode.commands.executeCommand(picked.command);
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extensionContext = context;
  output = vscode.window.createOutputChannel('dgemma', { log: true });
  statusItem = vscode.window.createStatusBarItem('dgemma.status', vscode.StatusBarAlignment.Right, 100);
  statusItem.name = 'dgemma';
  statusItem.command = 'dgemma.showMenu';
  tracker = new LatencyTracker(config().get<number>('statusBar.slowMs', 1000));
  refreshStatus();
  statusItem.show();
  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand('dgemma.toggleSuggestions', toggle),
    vscode.commands.registerCommand('dgemma.restartServer', restart),
    vscode.commands.registerCommand('dgemma.reinstallServer', reinstall),
    vscode.commands.registerCommand('dgemma.showLog', () => output.show(true)),
    vscode.commands.registerCommand('dgemma.showServerStatus', showServerStatus),
    vscode.commands.registerCommand('dgemma.showMenu', showMenu),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration('dgemma.statusBar')) {
        tracker = new LatencyTracker(config().get<number>('statusBar.slowMs', 1000));
      }
      if (
        event.affectsConfiguration('dgemma.server') ||
        (event.affectsConfiguration(SECTION) && removedSinceStart(settingsAtStart, currentServerSettings()).length > 0)
      ) {
        await restart();
      }
      refreshStatus();
    }),
  );
  void serially(() => startClient()); // not awaited: a first start installs the server for minutes
}

export async function deactivate(): Promise<void> {
  await stopClient(); // at once: the editor waits only seconds for this
}

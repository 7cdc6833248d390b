// Pure logic of the extension, free of the `vscode` module so that plain node can test it.

/** Settings under `dgemma.` that belong to the extension, not to the server. */
export const CLIENT_ONLY_KEYS = ['server', 'statusBar', 'trace'] as const;

/** Server settings whose empty string means "not set" (the server's None). */
const NULLABLE_STRINGS = new Set(['model', 'endpoint', 'apiKeyEnv']);

export interface ServerLaunch {
  command: string;
  args: string[];
}

export interface LaunchSettings {
  command?: string;
  pythonPath?: string;
  args?: unknown;
  logLevel?: string;
}

/**
 * Whether the user named a server (`server.pythonPath` or `server.command`): then it runs as set,
 * and the extension installs nothing. Empty both = the server the extension installs itself.
 */
export function userChoseServer(settings: LaunchSettings): boolean {
  return Boolean(settings.pythonPath?.trim() || settings.command?.trim());
}

/**
 * How to start the server: `pythonPath` wins (`python -m dgemma_lsp`, for a virtual environment
 * that is not on PATH), else `command` (`dgemma-lsp` from PATH when empty).
 */
export function serverLaunch(settings: LaunchSettings): ServerLaunch {
  const extra = Array.isArray(settings.args) ? settings.args.filter((a): a is string => typeof a === 'string') : [];
  const level = settings.logLevel && settings.logLevel !== 'default' ? ['--log-level', settings.logLevel.toUpperCase()] : [];
  const python = settings.pythonPath?.trim();
  if (python) {
    return { command: python, args: ['-m', 'dgemma_lsp', ...level, ...extra] };
  }
  const command = settings.command?.trim() || 'dgemma-lsp';
  return { command, args: [...level, ...extra] };
}

/**
 * The `dgemma` section as the server reads it: only the settings the user set (the server owns
 * the defaults), without the extension's own keys; an empty string of a nullable setting is sent
 * as null (unset).
 */
export function serverSettings(
  section: Record<string, unknown> | undefined | null,
  userSet: (key: string) => boolean = () => true,
): Record<string, unknown> {
  const result: Record<string, unknown> = {};
  if (!section || typeof section !== 'object') {
    return result;
  }
  for (const [key, value] of Object.entries(section)) {
    if ((CLIENT_ONLY_KEYS as readonly string[]).includes(key) || typeof value === 'function' || !userSet(key)) {
      continue;
    }
    result[key] = NULLABLE_STRINGS.has(key) && typeof value === 'string' && value.trim() === '' ? null : value;
  }
  return result;
}

/**
 * Whether the server must restart for a settings change: it merges its initialization options
 * under every later configuration, so a setting sent at start that the user has since removed
 * would stay in force.
 */
export function removedSinceStart(atStart: Record<string, unknown>, now: Record<string, unknown>): string[] {
  return Object.keys(atStart).filter((key) => !(key in now));
}

/** Median latency of the last few inline requests, to tell "slow" from "ready". */
export class LatencyTracker {
  private readonly samples: number[] = [];

  constructor(
    private readonly thresholdMs: number,
    private readonly window = 5,
  ) {}

  add(ms: number): void {
    this.samples.push(ms);
    if (this.samples.length > this.window) {
      this.samples.shift();
    }
  }

  reset(): void {
    this.samples.length = 0;
  }

  median(): number | undefined {
    if (this.samples.length === 0) {
      return undefined;
    }
    const sorted = [...this.samples].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  /** Slow once at least 3 requests were seen and their median exceeds the threshold. */
  isSlow(): boolean {
    const median = this.median();
    return this.samples.length >= 3 && median !== undefined && median > this.thresholdMs;
  }
}

/** What the server says in its `dgemma/status` notification (dgemma_lsp/server.py). */
export interface ServerStatus {
  state?: string; // none | loading | ready | failed | closed
  backend?: string | null;
  error?: string | null;
  [key: string]: unknown;
}

export type ClientPhase = 'installing' | 'starting' | 'running' | 'stopped' | 'failed';
export type UiState = 'installing' | 'starting' | 'loading' | 'ready' | 'slow' | 'error' | 'disabled' | 'stopped';

export interface StatusInput {
  phase: ClientPhase;
  server?: ServerStatus;
  enabled: boolean;
  slow: boolean;
  medianMs?: number;
  clientError?: string;
}

export interface StatusView {
  state: UiState;
  text: string;
  tooltip: string;
}

const ICONS: Record<UiState, string> = {
  installing: '$(loading~spin)',
  starting: '$(loading~spin)',
  loading: '$(loading~spin)',
  ready: '$(sparkle)',
  slow: '$(watch)',
  error: '$(error)',
  disabled: '$(circle-slash)',
  stopped: '$(debug-stop)',
};

/** The status bar item for a client phase and the server's last status. */
export function statusView(input: StatusInput): StatusView {
  const backend = input.server?.backend ? `\n${input.server.backend}` : '';
  let state: UiState;
  let detail: string;
  if (input.phase === 'failed') {
    state = 'error';
    detail = `The server failed: ${input.clientError ?? 'see the log'}`;
  } else if (input.phase === 'installing') {
    state = 'installing';
    detail = 'Installing the server in its own environment (first start)';
  } else if (input.phase === 'stopped') {
    state = 'stopped';
    detail = 'The server is not running';
  } else if (input.server?.state === 'failed') {
    state = 'error';
    detail = `The model could not be loaded: ${input.server.error ?? 'see the log'}`;
  } else if (input.phase === 'starting' || !input.server || input.server.state === 'none') {
    state = 'starting';
    detail = 'Starting dgemma-lsp';
  } else if (input.server.state === 'loading') {
    state = 'loading';
    detail = 'Loading the model';
  } else if (!input.enabled) {
    state = 'disabled';
    detail = 'Suggestions are off';
  } else if (input.slow) {
    state = 'slow';
    detail = `Suggestions are slow (median ${Math.round(input.medianMs ?? 0)} ms)`;
  } else if (input.server.state === 'ready') {
    state = 'ready';
    detail = 'Suggestions are on';
  } else {
    state = 'error';
    detail = `Unexpected server state ${String(input.server.state)}`;
  }
  const label = state === 'ready' ? 'dgemma' : `dgemma: ${state}`;
  return { state, text: `${ICONS[state]} ${label}`, tooltip: `dgemma — ${detail}${backend}\nClick for actions` };
}

// ---- the server the extension installs itself -------------------------------------------------

/** The torch the README installs (CPU wheel here; `server.install.pipArgs` can name an index). */
export const TORCH_REQUIREMENT = 'torch==2.13.0';
/** The oldest Python the server supports (pyproject.toml `requires-python`). */
export const MIN_PYTHON: [number, number] = [3, 10];

export interface ManagedLayout {
  /** The virtual environment, in the extension's global storage. */
  venv: string;
  /** Its Python, which pip runs with. */
  python: string;
  /** Its `dgemma-lsp` script, the server command: not `python -m dgemma_lsp`, which would put the
   * working directory (the user's workspace, where a `typing.py` shadows the standard library)
   * first on the server's import path. */
  server: string;
  /** Written last by a finished install: what was installed. */
  stamp: string;
  /** A folder that exists while one window installs. */
  lock: string;
}

export function managedLayout(storageDir: string, platform: string = process.platform): ManagedLayout {
  const sep = platform === 'win32' ? '\\' : '/';
  const join = (...parts: string[]) => parts.join(sep);
  const venv = join(storageDir, 'server-env');
  const bin = platform === 'win32' ? join(venv, 'Scripts') : join(venv, 'bin');
  return {
    venv,
    python: join(bin, platform === 'win32' ? 'python.exe' : 'python'),
    server: join(bin, platform === 'win32' ? 'dgemma-lsp.exe' : 'dgemma-lsp'),
    stamp: join(storageDir, 'server-env.json'),
    lock: join(storageDir, 'server-env.lock'),
  };
}

/** The server wheel among the files of the extension's `server/` folder (the newest version). */
export function bundledWheel(files: string[]): string | undefined {
  const wheels = files.filter((f) => /^dgemma_lsp-[^-]+-.+\.whl$/.test(f));
  return wheels.sort((a, b) => a.localeCompare(b, 'en', { numeric: true })).at(-1);
}

/** What a finished install records, and what the next start compares with. */
export interface InstallStamp {
  wheel: string;
  sha256: string;
  torch: string;
  python: string;
}

/** Whether the environment must be (re)built: never installed, half installed, or another wheel. */
export function needsInstall(stamp: unknown, wanted: Pick<InstallStamp, 'sha256' | 'torch'>): boolean {
  if (!stamp || typeof stamp !== 'object') {
    return true;
  }
  const s = stamp as Partial<InstallStamp>;
  return s.sha256 !== wanted.sha256 || s.torch !== wanted.torch;
}

/** Python interpreters to try, in order: the setting, the Python extension's, then PATH's. */
export function pythonCandidates(
  configured: string | undefined,
  fromPythonExtension: string | undefined,
  platform: string = process.platform,
): string[] {
  const found = [configured, fromPythonExtension]
    .map((p) => p?.trim())
    .filter((p): p is string => Boolean(p));
  const fallbacks = platform === 'win32' ? ['py', 'python'] : ['python3', 'python'];
  return [...new Set([...found, ...fallbacks])];
}

/** Run with `python -c`: prints the interpreter's path and version when it can make a venv. */
export const PYTHON_PROBE =
  'import sys, venv, ensurepip; print(sys.executable); print("%d.%d" % sys.version_info[:2])';

/** The interpreter and version from PYTHON_PROBE's output; undefined when it is too old. */
export function parsePythonProbe(stdout: string): { executable: string; version: string } | undefined {
  const [executable, version] = stdout.trim().split(/\r?\n/);
  const match = /^(\d+)\.(\d+)$/.exec(version ?? '');
  if (!executable || !match) {
    return undefined;
  }
  const [major, minor] = [Number(match[1]), Number(match[2])];
  if (major < MIN_PYTHON[0] || (major === MIN_PYTHON[0] && minor < MIN_PYTHON[1])) {
    return undefined;
  }
  return { executable, version: `${major}.${minor}` };
}

/** `pip install` of torch and the wheel into the environment, with the user's extra arguments. */
export function pipInstallArgs(wheelPath: string, extra: unknown): string[] {
  const user = Array.isArray(extra) ? extra.filter((a): a is string => typeof a === 'string' && a !== '') : [];
  return [
    '-m',
    'pip',
    'install',
    '--disable-pip-version-check',
    '--no-input',
    '--progress-bar',
    'off',
    ...user,
    TORCH_REQUIREMENT,
    wheelPath,
  ];
}

/** A short progress message for one line of pip's output, or undefined for lines not worth one. */
export function pipProgress(line: string): string | undefined {
  const text = line.trim();
  let match = /^Collecting (\S+)/.exec(text);
  if (match) {
    return `fetching ${match[1].replace(/[<>=!~;].*$/, '')}`;
  }
  match = /^Processing (\S+)/.exec(text);
  if (match) {
    return `reading ${match[1].split(/[\\/]/).at(-1)}`;
  }
  if (text.startsWith('Installing collected packages')) {
    return 'installing the packages (torch takes a while)';
  }
  if (text.startsWith('Successfully installed')) {
    return 'installed';
  }
  return undefined;
}

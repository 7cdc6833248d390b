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
 * How to start the server: `pythonPath` wins (`python -m dgemma_lsp`, for a virtual environment
 * that is not on PATH), else `command` (default `dgemma-lsp` from PATH).
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

export type ClientPhase = 'starting' | 'running' | 'stopped' | 'failed';
export type UiState = 'starting' | 'loading' | 'ready' | 'slow' | 'error' | 'disabled' | 'stopped';

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

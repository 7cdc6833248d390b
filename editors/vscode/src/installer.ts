// The server the extension installs itself on first start (as Tabby, Continue and Copilot do):
// a virtual environment in the extension's global storage, with torch and the dgemma-lsp wheel
// shipped inside the .vsix (server/*.whl, built by scripts/build-wheel.mjs). The decisions are
// pure functions in logic.ts; this file runs the processes and shows the progress.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import {
  InstallStamp,
  MIN_PYTHON,
  PYTHON_PROBE,
  TORCH_REQUIREMENT,
  bundledWheel,
  managedLayout,
  needsInstall,
  parsePythonProbe,
  pipInstallArgs,
  pipProgress,
  pythonCandidates,
} from './logic';

/** A lock older than this is stale even if its process id is in use again. */
const STALE_LOCK_MS = 30 * 60 * 1000;

export interface InstallOptions {
  /** `dgemma.server.install.python`: the interpreter that creates the environment. */
  python?: string;
  /** `dgemma.server.install.pipArgs`: e.g. `["--extra-index-url", "https://download.pytorch.org/whl/cpu"]`. */
  pipArgs?: unknown;
  /** Rebuild even when the stamp matches (the "Reinstall the Server" command). */
  force?: boolean;
}

export class InstallError extends Error {}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(
  command: string,
  args: string[],
  onLine?: (line: string) => void,
  token?: vscode.CancellationToken,
): Promise<Run> {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let child;
    try {
      child = spawn(command, args, { env: { ...process.env, PIP_NO_INPUT: '1', PYTHONUNBUFFERED: '1' } });
    } catch (error) {
      resolve({ code: null, stdout, stderr: String(error) });
      return;
    }
    const cancel = token?.onCancellationRequested(() => child.kill());
    const lines = (chunk: Buffer, sink: 'out' | 'err') => {
      const text = chunk.toString();
      if (sink === 'out') stdout += text;
      else stderr += text;
      for (const line of text.split(/\r?\n/)) if (line.trim()) onLine?.(line);
    };
    child.stdout.on('data', (c: Buffer) => lines(c, 'out'));
    child.stderr.on('data', (c: Buffer) => lines(c, 'err'));
    child.on('error', (error) => {
      cancel?.dispose();
      resolve({ code: null, stdout, stderr: stderr + String(error) });
    });
    child.on('close', (code) => {
      cancel?.dispose();
      resolve({ code, stdout, stderr });
    });
  });
}

/** The interpreter the Python extension has selected, when it is installed. */
async function pythonExtensionInterpreter(): Promise<string | undefined> {
  const extension = vscode.extensions.getExtension('ms-python.python');
  if (!extension) {
    return undefined;
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const api: any = extension.isActive ? extension.exports : await extension.activate();
    const environments = api?.environments;
    if (environments?.getActiveEnvironmentPath) {
      const active = environments.getActiveEnvironmentPath();
      const resolved = await environments.resolveEnvironment(active);
      const executable: string | undefined = resolved?.executable?.uri?.fsPath ?? active?.path;
      if (executable) return executable;
    }
    const details = api?.settings?.getExecutionDetails?.();
    return details?.execCommand?.[0];
  } catch {
    return undefined;
  }
}

async function findPython(options: InstallOptions, output: vscode.LogOutputChannel): Promise<string> {
  const tried: string[] = [];
  for (const candidate of pythonCandidates(options.python, await pythonExtensionInterpreter())) {
    const probe = await run(candidate, ['-c', PYTHON_PROBE]);
    const found = probe.code === 0 ? parsePythonProbe(probe.stdout) : undefined;
    if (found) {
      output.info(`install: Python ${found.version} at ${found.executable}`);
      return found.executable;
    }
    tried.push(`${candidate}: ${(probe.stderr || probe.stdout).trim().split('\n').at(-1) || 'too old'}`);
  }
  throw new InstallError(
    `no Python ${MIN_PYTHON.join('.')}+ with venv found (${tried.join('; ')}). Install Python 3.10 or later ` +
      '(on Debian/Ubuntu also python3-venv), or set "dgemma.server.install.python".',
  );
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function readStamp(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

function lockHolderAlive(lock: string): boolean {
  try {
    const pid = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
    if (!pid) return Date.now() - fs.statSync(lock).mtimeMs < 10_000; // just made, pid not yet written
    process.kill(pid, 0); // signal 0: only asks whether the process exists
    return Date.now() - fs.statSync(lock).mtimeMs < STALE_LOCK_MS;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One window installs at a time; the others wait, then find the environment ready. */
async function acquireLock(lock: string, token: vscode.CancellationToken, onWait: () => void): Promise<void> {
  for (let waited = false; ; ) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (!lockHolderAlive(lock)) {
      fs.rmSync(lock, { recursive: true, force: true }); // left by a window that died mid-install
      continue;
    }
    if (token.isCancellationRequested) throw new InstallError('cancelled');
    if (!waited) onWait();
    waited = true;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/**
 * The `dgemma-lsp` of the extension's own server environment, installed first when it is missing,
 * half installed, or from another wheel. Shows a progress notification while it installs.
 */
export async function ensureManagedServer(
  context: vscode.ExtensionContext,
  output: vscode.LogOutputChannel,
  options: InstallOptions,
  onInstalling: () => void,
): Promise<string> {
  const storage = context.globalStorageUri.fsPath;
  fs.mkdirSync(storage, { recursive: true });
  const layout = managedLayout(storage);
  const serverDir = context.asAbsolutePath('server');
  const wheelName = bundledWheel(fs.existsSync(serverDir) ? fs.readdirSync(serverDir) : []);
  if (!wheelName) {
    throw new InstallError(
      'this build of the extension ships no server wheel (server/*.whl). Set "dgemma.server.command" ' +
        'to a dgemma-lsp you installed, or package the extension with `npx vsce package`.',
    );
  }
  const wheel = path.join(serverDir, wheelName);
  const wanted = { sha256: sha256(wheel), torch: TORCH_REQUIREMENT };
  if (!options.force && !needsInstall(readStamp(layout.stamp), wanted) && fs.existsSync(layout.server)) {
    output.info(`server environment ${layout.venv} is up to date (${wheelName})`);
    return layout.server;
  }
  onInstalling();
  return vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'dgemma: installing the language server', cancellable: true },
    async (progress, token) => {
      const step = (message: string) => {
        output.info(`install: ${message}`);
        progress.report({ message });
      };
      await acquireLock(layout.lock, token, () => step('waiting for another window to finish installing'));
      try {
        // Another window may have finished the same install while this one waited.
        if (!options.force && !needsInstall(readStamp(layout.stamp), wanted) && fs.existsSync(layout.server)) {
          return layout.server;
        }
        step('finding Python');
        const python = await findPython(options, output);
        fs.rmSync(layout.stamp, { force: true });
        fs.rmSync(layout.venv, { recursive: true, force: true });
        step(`creating ${layout.venv}`);
        const venv = await run(python, ['-m', 'venv', layout.venv], undefined, token);
        if (venv.code !== 0) {
          throw new InstallError(`${python} -m venv failed: ${venv.stderr.trim() || venv.stdout.trim()}`);
        }
        step(`installing ${TORCH_REQUIREMENT} and ${wheelName}`);
        const args = pipInstallArgs(wheel, options.pipArgs);
        output.info(`install: ${layout.python} ${args.join(' ')}`);
        const pip = await run(
          layout.python,
          args,
          (line) => {
            output.info(`pip: ${line}`);
            const message = pipProgress(line);
            if (message) progress.report({ message });
          },
          token,
        );
        if (token.isCancellationRequested) throw new InstallError('cancelled');
        if (pip.code !== 0) {
          const tail = pip.stderr.trim().split('\n').slice(-3).join(' ');
          throw new InstallError(`pip install failed (${tail}); see the dgemma log`);
        }
        step('checking the server');
        const check = await run(layout.server, ['--version']);
        if (check.code !== 0) {
          throw new InstallError(`the installed server does not start: ${check.stderr.trim()}`);
        }
        const stamp: InstallStamp = { wheel: wheelName, ...wanted, python };
        fs.writeFileSync(layout.stamp, JSON.stringify(stamp, null, 2));
        output.info(`install: done, ${check.stdout.trim()} in ${layout.venv}`);
        return layout.server;
      } finally {
        fs.rmSync(layout.lock, { recursive: true, force: true });
      }
    },
  );
}

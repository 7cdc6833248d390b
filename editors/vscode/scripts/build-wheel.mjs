// Build the server wheel the extension ships and installs on first start:
//   `pip wheel --no-deps <repo> -w server/` (run by `vscode:prepublish`, so every .vsix has one).
// Python: $DGEMMA_PYTHON, else python3. Older wheels in server/ are removed first, so the .vsix
// carries exactly one. The wheel holds what pyproject.toml packages: dgemma_lsp, engine (with the
// embedded model and the chat template) and kernels.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const extension = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repo = path.resolve(extension, '..', '..');
const out = path.join(extension, 'server');
const python = process.env.DGEMMA_PYTHON || 'python3';

if (!fs.existsSync(path.join(repo, 'pyproject.toml'))) {
  console.error(`build-wheel: no pyproject.toml in ${repo}`);
  process.exit(1);
}
fs.mkdirSync(out, { recursive: true });
for (const name of fs.readdirSync(out)) {
  if (name.endsWith('.whl')) fs.rmSync(path.join(out, name));
}
// setuptools builds in the source tree: it would reuse a build/ left there (with files deleted
// since) and collide with another build of the checkout. Build a copy of what the wheel holds.
const source = fs.mkdtempSync(path.join(os.tmpdir(), 'dgemma-wheel-'));
const skip = (p) => /(^|[\\/])(__pycache__|[^\\/]*\.egg-info)([\\/]|$)|\.pyc$/.test(p);
for (const entry of ['pyproject.toml', 'README.md', 'LICENSE', 'dgemma_lsp', 'engine', 'kernels']) {
  fs.cpSync(path.join(repo, entry), path.join(source, entry), { recursive: true, filter: (p) => !skip(p) });
}
const run = spawnSync(python, ['-m', 'pip', 'wheel', '--no-deps', '--disable-pip-version-check', '-w', out, source], {
  stdio: 'inherit',
});
fs.rmSync(source, { recursive: true, force: true });
if (run.error || run.status !== 0) {
  console.error(`build-wheel: ${python} -m pip wheel failed${run.error ? `: ${run.error.message}` : ''}`);
  process.exit(1);
}
const wheels = fs.readdirSync(out).filter((n) => n.endsWith('.whl'));
if (wheels.length !== 1) {
  console.error(`build-wheel: expected one wheel in ${out}, found ${wheels.join(', ') || 'none'}`);
  process.exit(1);
}
console.log(`build-wheel: ${path.join('server', wheels[0])}`);

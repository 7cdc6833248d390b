"""Run untrusted Python (a completed program and its tests) in a subprocess with limits.

What the child gets, in this order (`_preexec` runs between fork and exec):

1. its own session, so a timeout kills its whole process group;
2. new namespaces where the kernel allows them: a network namespace (only a loopback that is down,
   so every connection fails with "Network is unreachable") and a PID namespace (the program runs
   as its PID 1: when it exits or is killed, the kernel kills every process it left behind, even
   ones that started their own session). As root `unshare(CLONE_NEWNET | CLONE_NEWPID)` works;
   otherwise a new user namespace is tried with them; where neither is allowed the network is cut
   inside Python instead (`socket` creation raises), which code that loads `_socket` itself or
   runs other programs could get around: `isolation()` says which one is in force;
3. resource limits: CPU seconds (`RLIMIT_CPU`), address space (`RLIMIT_AS`), size of any file it
   writes (`RLIMIT_FSIZE`, which also bounds its captured output), open files, no core dumps, and
   `RLIMIT_NPROC` for the number of processes. Linux does not enforce `RLIMIT_NPROC` on root in the
   initial user namespace (checked on this machine), so as root a fork bomb is bounded only by the
   wall-clock timeout and the PID namespace cleanup;
4. an empty environment (just `PATH` and `LANG`), `python -I` (no user site, no `PYTHON*`
   variables), stdin from /dev/null and a fresh temporary working folder.

The parent enforces a wall-clock timeout and then kills the process group with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1

OUTPUT_LIMIT = 64 * 1024

# Runs as the program's parent inside the new PID namespace: its child is PID 1 there.
_PID1_WRAPPER = r"""
import ctypes, os, signal, sys
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # die with this wrapper
    os.execv(sys.executable, [sys.executable, "-I", "-B", sys.argv[1]])
while True:
    try:
        _, status = os.waitpid(pid, 0)
        break
    except InterruptedError:
        pass
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
"""

# Prepended when no network namespace is available.
_NETWORK_GUARD = """\
import socket as _sandbox_socket
def _sandbox_no_network(*args, **kwargs):
    raise OSError(101, "Network is unreachable (sandbox)")
_sandbox_socket.socket = _sandbox_no_network
_sandbox_socket.create_connection = _sandbox_no_network
_sandbox_socket.socketpair = _sandbox_no_network
del _sandbox_socket, _sandbox_no_network
"""


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file the program may write (stdout/stderr included)
    max_processes: int = 64
    max_open_files: int = 256


@dataclass
class SandboxResult:
    returncode: int | None  # None when killed on timeout; negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    isolation: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _try_unshare(flags: int) -> bool:
    """Does unshare(flags) work in a child? (The parent's namespaces are never touched.)"""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        code = 0 if _libc().unshare(flags) == 0 else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@lru_cache(maxsize=1)
def _namespace_flags() -> int:
    for flags in (CLONE_NEWNET | CLONE_NEWPID, CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID):
        if _try_unshare(flags):
            return flags
    return 0


def isolation() -> str:
    """How the sandbox cuts the network and reaps processes on this machine."""
    flags = _namespace_flags()
    if not flags:
        return "python-guard (no namespaces: sockets blocked inside Python)"
    kind = "user+net+pid namespaces" if flags & CLONE_NEWUSER else "net+pid namespaces"
    return kind


def _preexec(limits: Limits, flags: int) -> None:  # pragma: no cover - runs in the forked child
    if flags and _libc().unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")
    cpu = max(1, int(limits.timeout) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))


def _read_limited(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(OUTPUT_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_python(source: str, limits: Limits | None = None) -> SandboxResult:
    """Run `source` as a Python program under the limits above and report how it ended."""
    limits = limits or Limits()
    flags = _namespace_flags()
    with tempfile.TemporaryDirectory(prefix="dgemma-sandbox-") as folder:
        program = os.path.join(folder, "program.py")
        with open(program, "w", encoding="utf-8") as handle:
            handle.write(source if flags else _NETWORK_GUARD + source)
        out_path, err_path = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        if flags & CLONE_NEWPID:
            command = [sys.executable, "-I", "-B", "-c", _PID1_WRAPPER, program]
        else:
            command = [sys.executable, "-I", "-B", program]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        start = time.perf_counter()
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                command,
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=lambda: _preexec(limits, flags),
            )
            try:
                returncode: int | None = process.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                returncode = None
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        seconds = time.perf_counter() - start
        return SandboxResult(
            returncode=returncode,
            stdout=_read_limited(out_path),
            stderr=_read_limited(err_path),
            timed_out=timed_out,
            seconds=seconds,
            isolation=isolation(),
        )

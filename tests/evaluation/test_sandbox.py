"""The test sandbox: timeouts, no network, cleanup of stray processes, resource limits."""

from __future__ import annotations

import os
import socket
import time

import pytest

from engine.evaluation.sandbox import Limits, isolation, run_python


def test_a_passing_program_exits_zero_with_its_output():
    result = run_python("print('ok')")
    assert result.passed and result.stdout == "ok\n" and not result.timed_out


def test_a_failing_program_reports_its_status():
    result = run_python("import sys\nsys.stderr.write('boom')\nsys.exit(3)")
    assert result.returncode == 3 and not result.passed and result.stderr == "boom"


def test_an_infinite_loop_is_killed_within_its_timeout():
    result = run_python("while True:\n    pass\n", Limits(timeout=1.0))
    assert result.timed_out and not result.passed  # the loop never ends on its own


def test_a_sleeping_program_is_killed_on_wall_clock_time():
    result = run_python("import time\ntime.sleep(60)\n", Limits(timeout=0.5))
    assert result.timed_out and result.seconds < 60  # killed long before its sleep ended


def test_the_network_is_unreachable_inside():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
        )
        result = run_python(code, Limits(timeout=5))
    finally:
        server.close()
    assert not result.passed and "connected" not in result.stdout
    assert "unreachable" in result.stderr.lower() or "refused" in result.stderr.lower()


def test_the_environment_is_empty():
    result = run_python("import os\nprint(sorted(os.environ))")
    assert result.stdout.strip() == "['LANG', 'PATH']"


def test_memory_is_limited():
    result = run_python("x = bytearray(4 * 1024 ** 3)\n", Limits(memory_mb=512))
    assert not result.passed and "MemoryError" in result.stderr


def test_written_files_are_limited_in_size():
    result = run_python("open('big', 'wb').write(b'x' * (8 * 1024 * 1024))\n", Limits(file_mb=1))
    assert not result.passed


@pytest.mark.skipif("namespaces" not in isolation(), reason="needs a PID namespace")
def test_processes_left_behind_die_with_the_program(tmp_path):
    os.chmod(tmp_path, 0o777)
    marker = tmp_path / "alive"
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', "
        f"\"import time; time.sleep(1.0); open({str(marker)!r}, 'w').write('x')\"], start_new_session=True)\n"
    )
    result = run_python(code, Limits(timeout=5))
    assert result.passed
    time.sleep(1.5)
    assert not marker.exists()

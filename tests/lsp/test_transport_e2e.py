"""The command line: `dgemma-lsp --tcp HOST:PORT` serves LSP over TCP; bad arguments are refused."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from tests.lsp.conftest import server_command, server_env

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def read_message(sock: socket.socket) -> dict:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    header, rest = data.split(b"\r\n\r\n", 1)
    length = int(
        next(h for h in header.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
    )
    while len(rest) < length:
        rest += sock.recv(4096)
    return json.loads(rest[:length])


def test_tcp_transport_answers_initialize():
    port = free_port()
    process = subprocess.Popen(
        [*server_command(), "--tcp", f"127.0.0.1:{port}"], env=server_env(), stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.1)
        with sock:
            sock.sendall(
                frame(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {
                            "capabilities": {},
                            "initializationOptions": {"dgemma": {"enabled": False}},
                        },
                    }
                )
            )
            reply = read_message(sock)
        capabilities = reply["result"]["capabilities"]
        # eglot and other plist readers need a non-empty object here (editors-testing.md 1.2).
        assert capabilities["inlineCompletionProvider"] == {"workDoneProgress": False}
        assert capabilities["codeActionProvider"]["resolveProvider"] is True
        assert reply["result"]["serverInfo"]["name"] == "dgemma-lsp"
    finally:
        # pygls 2.1.1 keeps a TCP server running after `exit` (editors-testing.md 1.2): stop it here.
        process.kill()
        process.wait(timeout=10)


def test_bad_arguments_are_refused_with_a_message():
    result = subprocess.run(
        [*server_command(), "--tcp", "nowhere"], env=server_env(), capture_output=True, text=True
    )
    assert result.returncode == 2 and "HOST:PORT" in result.stderr
    version = subprocess.run(
        [*server_command(), "--version"], env=server_env(), capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("dgemma-lsp ")

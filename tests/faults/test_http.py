"""Hostile requests, big bodies, idle connections: the real `rigwatch-detector serve` and
`rigwatch-exporter --backend sim` processes, over raw sockets where a client library would tidy the
request up.

Limits under test (rigwatch/http_server.py): a 64 KiB body and a 16 KiB header limit answered
before the body is read, as JSON like every other API error; nothing a client sends is spooled to
disk; 500 connections, so idle sockets cannot lock out a scrape; idle connections closed after the
idle timeout; a client hanging up mid-answer is no traceback. Timeouts here are generous liveness
bounds, not benchmarks (bench/bench_exporter_scrape.py measures latency).
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from harness.processes import free_port, wait_http_ok

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TOKEN = "tok-Zq81-never-logged"


def _start(argv: list[str], log: Path, env: dict[str, str], ready_url: str) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_http_ok(ready_url, timeout=60, proc=proc)
    except Exception:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()}") from None
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """serve with an unreachable Prometheus (never a start-up failure), its own TMPDIR and token file."""
    d = tmp_path_factory.mktemp("http-detector")
    (d / "tmp").mkdir()
    token_file = d / "api_token"
    token_file.write_text(TOKEN + "\n")
    config = d / "detector.yml"
    config.write_text(f"prometheus: {{url: 'http://127.0.0.1:{free_port()}', retries: 0, timeout: 2s}}\n"
                      "detectors:\n  - {name: temp, query: gpu_temperature_celsius, model: robust_z}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIGWATCH_API_TOKEN")}
    env.update(TMPDIR=str(d / "tmp"), RIGWATCH_API_TOKEN_FILE=str(token_file))
    log = d / "serve.log"
    proc = _start([str(BIN / "rigwatch-detector"), "serve", "--config", str(config), "--store", str(d / "store"),
                   "--listen", f"127.0.0.1:{port}"], log, env, f"http://127.0.0.1:{port}/healthz")
    yield {"proc": proc, "port": port, "tmp": d / "tmp", "log": log, "token_file": token_file}
    _stop(proc)


IDLE_TIMEOUT = 2


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    d = tmp_path_factory.mktemp("http-exporter")
    port = free_port()
    log = d / "exporter.log"
    proc = _start([str(BIN / "rigwatch-exporter"), "--backend", "sim", "--listen", f"127.0.0.1:{port}",
                   "--idle-timeout", str(IDLE_TIMEOUT)], log, dict(os.environ), f"http://127.0.0.1:{port}/metrics")
    yield {"proc": proc, "port": port, "log": log}
    _stop(proc)


def _read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.x response off a raw socket: (status, lower-cased headers, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a complete response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return _read_response(s, timeout)


def _json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    assert status == expected, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    doc = json.loads(body)
    assert doc["status"] == expected and isinstance(doc["error"], str) and doc["error"], doc
    return doc


def _open_fds_under(pid: int, directory: Path) -> list[str]:
    """The process's open files inside `directory`: a spooled body shows here even as an unnamed
    O_TMPFILE ("/dir/#123 (deleted)"), which a directory listing cannot see."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(directory)):
            out.append(target)
    return out


# -- the detector API ------------------------------------------------------------------------------

def test_metrics_answers_while_150_idle_connections_are_held(detector):
    idle = [socket.create_connection(("127.0.0.1", detector["port"]), timeout=5) for _ in range(150)]
    try:
        r = requests.get(f"http://127.0.0.1:{detector['port']}/metrics", timeout=8)
        assert r.status_code == 200 and "rigwatch_detector" in r.text
    finally:
        for s in idle:
            s.close()


def test_huge_content_length_is_a_json_413_before_the_body_and_the_token(detector):
    request = (b"POST /api/v1/retrain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 300000000\r\n\r\n{\"detec")
    before = set(os.listdir(detector["tmp"]))
    status, headers, body = _raw(detector["port"], request, timeout=10)
    doc = _json_error(status, headers, body, 413)
    assert "65536" in doc["error"]
    assert set(os.listdir(detector["tmp"])) == before
    assert _open_fds_under(detector["proc"].pid, detector["tmp"]) == []


def test_no_request_body_is_spooled_to_disk(detector):
    """A chunked body has no Content-Length to refuse up front: it is refused when it reaches the
    limit, and until then held in memory. 1 MiB sent (waitress's default spools above 512 KiB)."""
    pid, tmp = detector["proc"].pid, detector["tmp"]
    before = set(os.listdir(tmp))
    s = socket.create_connection(("127.0.0.1", detector["port"]), timeout=10)
    try:
        s.sendall(b"POST /api/v1/retrain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
        for _ in range(64):
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: nothing more is read
            assert _open_fds_under(pid, tmp) == []
        # the server may still be reading what was sent: look until its answer is there
        deadline = time.monotonic() + 10
        while not select.select([s], [], [], 0.05)[0] and time.monotonic() < deadline:
            assert _open_fds_under(pid, tmp) == []
        status, headers, body = _read_response(s)
        _json_error(status, headers, body, 413)
    finally:
        s.close()
    assert _open_fds_under(pid, tmp) == [] and set(os.listdir(tmp)) == before


def test_oversized_headers_are_a_json_431(detector):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
    _json_error(*_raw(detector["port"], request), 431)


def test_malformed_request_line_is_a_json_400(detector):
    _json_error(*_raw(detector["port"], b"NONSENSE\r\nHost: x\r\n\r\n"), 400)


def test_unsupported_transfer_encoding_is_a_json_501(detector):
    request = b"POST /api/v1/retrain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
    _json_error(*_raw(detector["port"], request), 501)


def test_retrain_with_the_token_file_gone_is_a_json_503(detector):
    url = f"http://127.0.0.1:{detector['port']}/api/v1/retrain"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    detector["token_file"].unlink()
    try:
        r = requests.post(url, headers=auth, json={}, timeout=10)
        assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/json")
        assert "RIGWATCH_API_TOKEN_FILE" in r.json()["error"] and "Traceback" not in r.text
    finally:
        detector["token_file"].write_text(TOKEN + "\n")
    assert requests.post(url, headers=auth, json={"detectors": ["temp"]}, timeout=10).status_code == 202
    log = detector["log"].read_text()
    assert "API token unreadable" in log and TOKEN not in log and "Traceback" not in log


# -- the exporter ----------------------------------------------------------------------------------

def _listen_overflows() -> int:
    """TcpExt ListenOverflows: connections that found a listen backlog full (system-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    raise AssertionError("no TcpExt in /proc/net/netstat")


def test_exporter_answers_50_concurrent_scrapers(exporter):
    n, url = 50, f"http://127.0.0.1:{exporter['port']}/metrics"
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def scrape(i: int) -> None:
        barrier.wait()
        try:
            r = requests.get(url, timeout=10)
            results[i] = (r.status_code, "gpu_exporter_up 1.0" in r.text)
        except requests.RequestException as e:
            results[i] = e

    overflows = _listen_overflows()
    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [(200, True)] * n
    # none of them waited for a retransmitted SYN because the listen backlog was full
    assert _listen_overflows() == overflows


def test_client_hanging_up_mid_answer_is_no_traceback(exporter):
    port = exporter["port"]
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        if i % 2:
            s.recv(100)  # part of the answer, then gone
        # RST rather than FIN: the server's next write or read fails at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(1)
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    log = exporter["log"].read_text()
    for word in ("Traceback", "BrokenPipeError", "ConnectionResetError"):
        assert word not in log, log


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_the_server_loop_sleeps_while_connections_are_idle(detector):
    """A waitress loop that never blocks (a loop timeout of 0) burns a whole core whatever the load.
    A generous bound: the detector with 50 idle connections uses far less than half a core."""
    pid = detector["proc"].pid
    idle = [socket.create_connection(("127.0.0.1", detector["port"]), timeout=5) for _ in range(50)]
    try:
        time.sleep(0.5)
        before = _cpu_seconds(pid)
        time.sleep(3)
        used = _cpu_seconds(pid) - before
    finally:
        for s in idle:
            s.close()
    assert used < 1.5, f"{used:.2f} s of CPU in 3 s while idle"


def test_idle_connection_is_closed_after_the_idle_timeout(exporter):
    with socket.create_connection(("127.0.0.1", exporter["port"]), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = _read_response(s)
        assert status == 200
        s.settimeout(IDLE_TIMEOUT + 10)
        assert s.recv(1) == b""  # EOF: the server closed the kept-alive connection

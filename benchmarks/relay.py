#!/usr/bin/env python3
"""Benchmark: what the relay (the tool's own local port, issue 19) costs next to ssh's own -L.

Since the tool listens on its local port itself (``jupyter_tunnel.Relay``: 127.0.0.1 and
[::1], each connection checked to be the user's own, then spliced into ssh's forward, a unix
socket in the run's private directory), every byte the browser exchanges with Jupyter
passes through one more process.  This measures what that costs, against what the tool did
before: ssh listening on the TCP port itself (``-L 127.0.0.1:PORT:HOST:RPORT``).

1. Stand up the integration tests' environment (tests/realenv.py): the test lock, users,
   the sshd on 127.0.0.1/.2/.3 and one real Jupyter server of jtmulti, with a file of
   ``--megabytes`` random bytes in its root directory.
2. For 1 and 2 hops (srv; gw srv), start ``jupyter_tunnel.py -b none`` and wait for its
   URL.  Beside the tool's own port (through the relay), add a direct forward to the same
   server on the tool's own master (``ssh -S ITS_SOCKET -O forward -L 127.0.0.1:Q:…``): the
   same ssh connection, only the relay differs.
3. ``--runs`` times, in turn (relay, direct, relay, direct…): (a) download the file
   (``GET /files/NAME`` with the token; Jupyter reads it whole, the same for both);
   (b) ``--requests`` small requests (``GET /api/status``), each on a new connection (the
   relay's worst case: an accept, a peer check, a thread and a unix connect per request);
   (c) the same number on one keep-alive connection.
4. Print a Markdown table: medians [min–max], the ratio relay/direct, the milliseconds added
   per request, and whether the targets hold (download <= 1.2x, <= 1 ms added per request).

Run as root, with the test venv's Python: ``/opt/jupyter-tunnel-test/bin/python
benchmarks/relay.py`` (./tests/run.sh makes the venv).
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import jupyter_tunnel as jt  # noqa: E402
import realenv  # noqa: E402
from helpers import free_port, wait_for  # noqa: E402
from tunnelrun import TunnelRun  # noqa: E402

USER = realenv.MULTI_USER
ROUTES = {1: ("srv",), 2: ("gw", "srv")}
FILE = "jt-relay-bench.bin"
TARGET_RATIO = 1.2  # the download through the relay, next to ssh's own -L
TARGET_ADDED_MS = 1.0  # per request


def note(text: str) -> None:
    """A progress line on stderr (stdout holds the table)."""
    print(f"[relay.py] {text}", file=sys.stderr, flush=True)


def download(port: int, token: str, size: int) -> float:
    """Seconds to GET the whole file through ``port``."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", f"/files/{FILE}", headers={"Authorization": f"token {token}"})
        answer = conn.getresponse()
        got = 0
        while True:
            chunk = answer.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    finally:
        conn.close()
    if answer.status != 200 or got != size:
        raise RuntimeError(f"download through port {port}: HTTP {answer.status}, {got} of {size} bytes")
    return time.perf_counter() - started


def small_requests(port: int, token: str, count: int, keep_alive: bool) -> float:
    """Milliseconds per ``GET /api/status``: a new connection each, or one kept alive."""
    headers = {"Authorization": f"token {token}"}
    conn = None
    started = time.perf_counter()
    for _ in range(count):
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/status", headers=headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"/api/status through port {port}: HTTP {answer.status}")
        if not keep_alive:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return (time.perf_counter() - started) * 1000 / count


def median_range(values: Sequence[float], digits: int = 3) -> str:
    """``0.318 [0.278–0.490]``: the median, then the range."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def measure(hops: int, sshd: realenv.SshServer, server: realenv.JupyterProc, size: int,
            runs: int, requests: int) -> Dict[str, Dict[str, List[float]]]:
    """The samples of one route: {"relay"|"direct": {"download"|"new"|"alive": [...]}}."""
    run = TunnelRun(sshd.config, "-s", *[f"{USER}@{host}" for host in ROUTES[hops]])
    try:
        url = run.url(timeout=60)
        relay_port = urllib.parse.urlsplit(url).port
        control = os.path.join(run.states()[0]["control_dir"], jt.CONTROL_SOCKET)
        direct_port = free_port(("127.0.0.1", "::1"))
        done = subprocess.run(["ssh", "-S", control, "-O", "forward", "-L",
                               f"127.0.0.1:{direct_port}:127.0.0.1:{server.port}", "x"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"cannot add the direct forward: {done.stderr.strip()}")
        def answers() -> bool:
            try:
                small_requests(direct_port, server.token, 1, False)
            except (OSError, RuntimeError):
                return False
            return True

        wait_for(answers, 10, what="the direct forward")
        samples: Dict[str, Dict[str, List[float]]] = {
            side: {"download": [], "new": [], "alive": []} for side in ("relay", "direct")}
        for side, port in (("relay", relay_port), ("direct", direct_port)):  # warm-up
            download(port, server.token, size)
        for _ in range(runs):
            for side, port in (("relay", relay_port), ("direct", direct_port)):
                samples[side]["download"].append(download(port, server.token, size))
                samples[side]["new"].append(small_requests(port, server.token, requests, False))
                samples[side]["alive"].append(small_requests(port, server.token, requests, True))
        return samples
    finally:
        if run.process.poll() is None:
            run.stop(signal.SIGINT, timeout=30)
        run.kill()


def report(results: Dict[int, Dict[str, Dict[str, List[float]]]], megabytes: int, runs: int, requests: int) -> str:
    """The Markdown table of the samples, with the ratios, the time added and the targets."""
    lines = [f"Relay vs ssh's own -L, {runs} runs each (A B A B …), {megabytes} MB file, {requests} requests:",
             "",
             "| hops | what | through the relay | ssh -L direct | relay / direct (median) | added | target |",
             "|---|---|---|---|---|---|---|"]
    for hops, samples in results.items():
        relay, direct = samples["relay"], samples["direct"]
        ratio = statistics.median(relay["download"]) / statistics.median(direct["download"])
        mbps = megabytes / statistics.median(relay["download"])
        lines.append(f"| {hops} | download {megabytes} MB, s | {median_range(relay['download'])} | "
                     f"{median_range(direct['download'])} | {ratio:.2f} | {mbps:.0f} MB/s via relay | "
                     f"<= {TARGET_RATIO:g}x: {'met' if ratio <= TARGET_RATIO else 'missed'} |")
        for key, what in (("new", "request, new connection each, ms"), ("alive", "request, kept-alive, ms")):
            added = statistics.median(relay[key]) - statistics.median(direct[key])
            lines.append(f"| {hops} | {what} | {median_range(relay[key])} | {median_range(direct[key])} | "
                         f"{statistics.median(relay[key]) / statistics.median(direct[key]):.2f} | "
                         f"{added:+.3f} ms | <= {TARGET_ADDED_MS:g} ms: "
                         f"{'met' if added <= TARGET_ADDED_MS else 'missed'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets met or not), 1 when it could not."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2], choices=sorted(ROUTES))
    parser.add_argument("--no-lock", action="store_true",
                        help="the caller (a test session) holds the tests' lock and has set the users up")
    args = parser.parse_args(argv)
    results = {}
    try:
        with realenv.environment(USER, no_lock=args.no_lock, on_wait=note) as (sshd, server, _directory):
            path = Path(server.root_dir) / FILE
            try:
                path.write_bytes(os.urandom(args.megabytes * 1_000_000))
                account = realenv.user_accounts()[USER]  # set up by environment()
                os.chown(path, account.uid, account.gid)
                for hops in args.hops:
                    note(f"{hops} hop(s): {args.runs} runs...")
                    results[hops] = measure(hops, sshd, server, args.megabytes * 1_000_000, args.runs, args.requests)
            finally:
                path.unlink(missing_ok=True)
    except (realenv.SetupError, RuntimeError, AssertionError) as error:
        note(f"error: {error}")
        return 1
    sys.stdout.write(report(results, args.megabytes, args.runs, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())

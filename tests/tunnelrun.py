"""Running jupyter_tunnel.py as a user would, for the integration tests (and the checks
they share): the ``TunnelRun`` driver, the page check through the tunnel, and the check of
the command ``jupyter-node`` prints, run through a gateway."""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

import jupyter_tunnel as jt
from helpers import alive, http_get, kill_all, wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "jupyter_tunnel.py"
SHUTDOWN = SCRIPT.with_name("jupyter_tunnel_shutdown.py")
READY_TIMEOUT = 30.0
# A program that runs a tunnel inside itself, as the README allows
IN_PROCESS = "import sys, jupyter_tunnel; sys.exit(jupyter_tunnel.main(sys.argv[1:]))"


def processes_of_run(tmp: str, tool: int, word: str = "") -> list[tuple[int, str]]:
    """(pid, command line) of the live processes but ``tool`` whose command line mentions
    ``tmp``, a run's private TMPDIR (its ssh, jump hosts, agent, helpers), and ``word``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        if tmp in cmdline and word in cmdline and int(entry) != tool and alive(entry):
            found.append((int(entry), cmdline))
    return found


class TunnelRun:
    """A running jupyter_tunnel.py, with its output collected as it comes."""

    def __init__(self, config: "str | os.PathLike[str]", *args: str, stdin: str | None = None, env: dict | None = None,
                 registry: str | None = None, in_process: bool = False, profile: str | None = None) -> None:
        # A private short TMPDIR per run: whatever the tool leaves behind shows up there.
        self.tmp = tempfile.mkdtemp(prefix="jtt-", dir="/tmp")
        # the registry the caller's other runs share, or a private one
        self.own_registry = registry is None
        self.registry = registry or tempfile.mkdtemp(prefix="jtr-", dir="/tmp")
        self.env = dict(os.environ, TMPDIR=self.tmp, NO_COLOR="1", JUPYTER_TUNNEL_REGISTRY=self.registry)
        self.env.pop("SSH_AUTH_SOCK", None)
        self.env.update(env or {})
        # in_process: jupyter_tunnel.main([...]) called by another program (python -c), whose
        # command line says nothing of jupyter-tunnel
        program = ["-c", IN_PROCESS] if in_process else [str(SCRIPT)]
        if in_process:
            self.env["PYTHONPATH"] = str(SCRIPT.parent)
        # profile: "jupyter-tunnel PROFILE ARGS", the profile naming the ssh config and the browser itself
        fixed = [profile] if profile else ["-F", str(config), "-b", "none"]
        self.argv = [sys.executable, *program, *fixed, *args]
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, text=True, start_new_session=True,
        )
        if stdin is not None:
            self.process.stdin.write(stdin)
        self.process.stdin.close()
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.lines.put), daemon=True).start()
        self._err = threading.Thread(target=self._pump, args=(self.process.stderr, self.stderr_lines.append),
                                     daemon=True)
        self._err.start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        """Everything the tool printed on stderr so far."""
        return "\n".join(self.stderr_lines)

    def url(self, timeout: float = READY_TIMEOUT) -> str:
        """The URL printed on stdout once the tunnel answers."""
        try:
            url = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no URL within {timeout} s; stderr:\n{self.stderr}") from None
        # stderr comes through another pipe: wait for the line printed right before the URL,
        # so that tests see every message the tool printed before it
        wait_for(lambda: "Info: Port used on localhost:" in self.stderr, 10, what="the messages before the URL")
        return url

    def wait(self, timeout: float = 30.0) -> int:
        """Exit code of the tool (it must exit by itself within ``timeout``)."""
        code = self.process.wait(timeout=timeout)
        self._err.join(timeout=5)
        return code

    def stop(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> int:
        """Send ``signum`` as a terminal would (to the tool's process group) and wait."""
        os.killpg(self.process.pid, signum)
        return self.wait(timeout)

    def leftovers(self) -> list[str]:
        """Processes whose command line mentions this run's TMPDIR (master, hops, agent), as "PID: CMDLINE"."""
        return [f"{pid}: {cmdline}" for pid, cmdline in processes_of_run(self.tmp, self.process.pid)]

    def assert_clean(self) -> None:
        """Nothing of the run is left: no process, no control dir, no temp file."""
        wait_for(lambda: not self.leftovers(), 10, what=f"processes of the run to go: {self.leftovers()}")
        assert os.listdir(self.tmp) == [], "the run left files in its TMPDIR"
        left = os.listdir(self.registry)
        if not self.own_registry:  # other runs' entries may be there
            left = [name for name in left if name == f"{self.process.pid}.json"]
        assert left == [], "the run left its registry entry"

    def states(self) -> list[dict]:
        """The registry entries of running tunnels."""
        return [json.loads((Path(self.registry) / name).read_text()) for name in os.listdir(self.registry)]

    def __enter__(self) -> "TunnelRun":
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()

    def kill(self) -> None:
        """Last-resort cleanup for a failed test (and the end of ``with TunnelRun(...) as run:``)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        kill_all(pid for pid, _ in processes_of_run(self.tmp, self.process.pid))
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.own_registry:
            shutil.rmtree(self.registry, ignore_errors=True)


def get_status(url: str) -> tuple[int, dict]:
    """GET /api/status through the tunnel with the URL's token, as the browser's page does."""
    parts = urllib.parse.urlsplit(url)
    token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
    status, body = http_get(f"{parts.scheme}://{parts.netloc}{parts.path}api/status",
                            headers={"Authorization": f"token {token}"}, timeout=10)
    return status, json.loads(body) if status == 200 else {}


def get_once(url: str) -> tuple[int, dict, str]:
    """GET ``url`` without following a redirect: (status, headers, body)."""
    import http.client

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path or "/")
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read().decode(errors="replace")
    finally:
        conn.close()


def local_port_of(url: str) -> int:
    """The local port in a printed URL."""
    return urllib.parse.urlsplit(url).port


def through_gateway(printed: str) -> list[str]:
    """The arguments of the ``jupyter-tunnel -s USER@HEAD -n NODE`` command jupyter-node
    printed, with gw as the first hop: ``-s gw USER@HEAD -n NODE``."""
    argv = shlex.split(printed)[1:]
    argv[argv.index("-s") + 1:argv.index("-s") + 1] = ["gw"]
    return argv


def check_printed_command(hosts, printed: str, token: str, user: str) -> None:
    """Run the ``jupyter-tunnel -s USER@head -n NODE`` command jupyter-node printed, through
    gw: the page answers, one login per host (the head's own into the node with the agent),
    and Ctrl+C leaves nothing behind."""
    offsets = hosts.log_offsets()
    tunnel = TunnelRun(hosts.config, *through_gateway(printed))
    try:
        url = tunnel.url(timeout=60)
        assert url == f"http://localhost:{local_port_of(url)}/?token={token}"
        assert get_status(url)[0] == 200
        assert hosts.logins_since(offsets) == {"gw": [user], "head": [user], "node": [user]}
        assert tunnel.stop(signal.SIGINT) == jt.EXIT_OK
        tunnel.assert_clean()
    finally:
        tunnel.kill()


class Terminal:
    """jupyter_tunnel.py on a pseudo-terminal, as a person at a terminal runs it (a private
    TMPDIR, as ``TunnelRun``'s: the run's processes are found by it)."""

    def __init__(self, *args: str, env: dict | None = None, argv: list[str] | None = None) -> None:
        import pty

        self.screen = b""
        self.tmp = tempfile.mkdtemp(prefix="jtt-", dir="/tmp")
        argv = argv or [sys.executable, str(SCRIPT), *args]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the tool, with the terminal as its controlling tty
            os.environ.update(NO_COLOR="1", TMPDIR=self.tmp, **(env or {}))
            os.environ.pop("SSH_AUTH_SOCK", None)
            os.execv(argv[0], argv)
        self.code: int | None = None

    @classmethod
    def command(cls, argv: list[str]) -> "Terminal":
        """Any command on a pseudo-terminal (a helper of the tool, run as ssh runs it)."""
        return cls(argv=argv)

    def read_until(self, text: bytes, timeout: float = 30) -> None:
        """Read the terminal until ``text`` shows on it."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while text not in self.screen:
            assert time.monotonic() < deadline, \
                f"no {text!r} on the terminal:\n{self.screen.decode(errors='replace')}"
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    self.screen += os.read(self.fd, 4096)
                except OSError:  # the terminal closed: everything on it has been read
                    assert text in self.screen, \
                        f"no {text!r} on the terminal, which closed:\n{self.screen.decode(errors='replace')}"
                    return

    def drain(self, seconds: float) -> None:
        """Read whatever the terminal shows within ``seconds``."""
        import select
        import time

        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.screen += os.read(self.fd, 4096)
                except OSError:
                    return

    def type(self, text: str) -> None:
        """Type a line."""
        os.write(self.fd, text.encode() + b"\n")

    def echo(self) -> bool:
        """Whether the terminal echoes what is typed (its termios, as the tool left it)."""
        import termios

        return bool(termios.tcgetattr(self.fd)[3] & termios.ECHO)

    def ctrl_c(self, timeout: float = 10) -> int:
        """Press Ctrl+C (the terminal signals its foreground process group); returns the exit code."""
        os.write(self.fd, b"\x03")
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        """The tool's exit code, once it has exited by itself within ``timeout`` s (the
        terminal read meanwhile, so nothing it writes blocks)."""
        import time

        deadline = time.monotonic() + timeout
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < deadline, \
                f"still running after {timeout} s:\n{self.screen.decode(errors='replace')}"
            self.drain(0.1)
        self.drain(0.2)  # what it wrote last
        return self.code

    def interrupt(self) -> int:
        """Ctrl+C; returns the exit code."""
        os.kill(self.pid, signal.SIGINT)
        return self.wait()

    def processes(self, word: str = "") -> list[tuple[int, str]]:
        """The run's live processes but the tool (its ssh, jump hosts, helpers), whose command
        line mentions its TMPDIR and ``word``."""
        return processes_of_run(self.tmp, self.pid, word)

    def close(self) -> None:
        """Kill the tool and what it left if it still runs, and close the terminal."""
        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        kill_all(pid for pid, _ in self.processes())
        os.close(self.fd)
        shutil.rmtree(self.tmp, ignore_errors=True)

"""Integration tests of ``--forward PORT[:LOCAL]`` (issue 24): another port of the session's host
reached through the same login, for real.  The service is a real ``python3 -m http.server`` that
the test user jtmulti runs on srv (127.0.0.1 only, as a dashboard on a node's loopback would not
be: srv is the target here, whose sshd resolves ``localhost``); the tunnel is jtuser's, to its
Jupyter server.  Each test checks what a user would: the page answers on the local port, again
after the connection was killed, the Info lines, ``--json``, the registry and
``jupyter-tunnel-shutdown --list``, and nothing left after Ctrl+C."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from helpers import free_port, http_get, port_is_free, tcp_open, wait_for
from realenv import MULTI_USER
from test_profiles import profiles_home
from tunnelrun import TunnelRun, get_status

pytestmark = pytest.mark.integration

NO_MASTER = "--no-control-master"
MODES = pytest.mark.parametrize("mode", [[], [NO_MASTER]], ids=["master", "no-master"])


class Service:
    """``python3 -m http.server PORT --bind 127.0.0.1`` run as jtmulti, serving a directory with
    one file whose name the page lists (it tells this service's page from any other)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.directory = tempfile.mkdtemp(prefix="jtfwd-")
        os.chmod(self.directory, 0o755)
        self.marker = f"dashboard-{port}.txt"
        Path(self.directory, self.marker).write_text("a forwarded page\n")
        account = pwd.getpwnam(MULTI_USER)
        # the system's python3: a command line without "jupyter" in it (the venv's path has it), so
        # that conftest's check for Jupyter processes left behind does not take it for one
        self.process = subprocess.Popen(
            ["/usr/bin/python3", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
             self.directory], user=account.pw_uid, group=account.pw_gid, extra_groups=[], cwd=self.directory,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: tcp_open("127.0.0.1", port) or self.process.poll() is not None, 15,
                 what=f"http.server on port {port}")
        assert self.process.poll() is None, "http.server did not start"

    def answers_on(self, local_port: int) -> bool:
        """Whether this service's page answers on ``local_port`` (through the tunnel)."""
        status, body = http_get(f"http://127.0.0.1:{local_port}/", timeout=10)
        return status == 200 and self.marker.encode() in body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def service():
    """service(port) -> Service: started now, stopped after the test."""
    started: list[Service] = []

    def start(port: int) -> Service:
        started.append(Service(port))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def refused_or_closed(local_port: int) -> bool:
    """Whether a request on ``local_port`` gets no page (the relay ends it: nothing answers there)."""
    try:
        http_get(f"http://127.0.0.1:{local_port}/", timeout=15)
    except OSError:  # http.client's RemoteDisconnected and ConnectionResetError among them
        return True
    return False


@MODES
def test_the_forwarded_page_answers_again_after_the_connection_is_killed(tunnel, sshd, jtuser_server, service,
                                                                        shutdown, mode):
    first, second = service(free_port()), service(free_port())
    local = free_port(exclude=(first.port, second.port))
    offset = sshd.log_offset()
    run = tunnel(*mode, "-s", "gw", "srv", "--json", "--forward", str(first.port),
                 "--forward", f"{second.port}:{local}")
    printed = json.loads(run.url())
    assert get_status(printed["url"])[0] == 200
    # PORT: that one is the service's own here (the same machine): the next free one above it
    [(remote, free_above), (remote2, fixed)] = [(f["remote_port"], f["local_port"]) for f in printed["forwards"]]
    assert (remote, remote2, fixed) == (first.port, second.port, local) and free_above > first.port
    wait_for(lambda: "Info: Press Ctrl+C" in run.stderr, 10, what="the forwards' lines")
    assert f"Info: Also forwarding localhost:{free_above} -> srv:{first.port} (answers)" in run.stderr
    assert f"Info: Also forwarding localhost:{local} -> srv:{second.port} (answers)" in run.stderr
    assert first.answers_on(free_above) and second.answers_on(local)
    assert len(sshd.logins_since(offset)) == 2  # the same login: one per hop
    [state] = run.states()
    assert state["forwards"] == printed["forwards"]
    listed = shutdown("--list")
    assert f"{free_above}->{first.port},{local}->{second.port}" in listed.stdout.splitlines()[1], listed.stdout
    assert json.loads(shutdown("--json").stdout)[0]["forwards"] == printed["forwards"]

    killed = state["master_pid"]
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: "Info: Reconnected." in run.stderr, 30, what="the tunnel to reconnect")
    assert run.states()[0]["master_pid"] != killed
    assert first.answers_on(free_above) and second.answers_on(local)  # the same local ports
    assert get_status(printed["url"])[0] == 200

    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert "Traceback" not in run.stderr
    run.assert_clean()
    assert port_is_free(local) and port_is_free(free_above)  # free again


@MODES
def test_a_port_nothing_listens_on_yet_is_told_when_it_answers(tunnel, sshd, jtuser_server, service, mode):
    port = free_port()
    local = free_port(exclude=(port,))
    run = tunnel(*mode, "-s", "srv", "--check-interval", "1", "--forward", f"{port}:{local}")
    assert get_status(run.url())[0] == 200
    wait_for(lambda: "Info: Press Ctrl+C" in run.stderr, 10, what="the forward's line")
    assert (f"Info: Also forwarding localhost:{local} -> srv:{port} (nothing answers there yet: you will be told "
            "when it does)") in run.stderr
    assert refused_or_closed(local)  # the run goes on, its port open, nothing behind it
    started = service(port)
    wait_for(lambda: f"Info: localhost:{local} -> srv:{port} answers now." in run.stderr, 15,
             what="the run to tell that the port answers")
    assert started.answers_on(local)
    assert run.stderr.count("answers now") == 1  # told once
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert "Traceback" not in run.stderr
    run.assert_clean()
    assert port_is_free(local)


def test_a_forward_in_a_profile(sshd, jtuser_server, service, tmp_path):
    started = service(free_port())
    local = free_port(exclude=(started.port,))
    env = profiles_home(tmp_path, f"[lab]\nhost = srv\nssh-config = {sshd.config}\nbrowser = none\n"
                                  f"forward = {started.port}:{local}\n")
    with TunnelRun(sshd.config, profile="lab", env=env) as run:
        assert get_status(run.url())[0] == 200
        assert started.answers_on(local)
        assert [forward["local_port"] for forward in run.states()[0]["forwards"]] == [local]
        assert run.stop(signal.SIGINT) == jt.EXIT_OK
        run.assert_clean()


def test_a_fixed_local_port_that_is_taken_ends_the_run(tunnel, jtuser_server, service):
    started = service(free_port())  # its own port, on this machine's 127.0.0.1: taken
    run = tunnel("-s", "srv", "--forward", f"{started.port}:{started.port}")
    assert run.wait() == jt.EXIT_PORT
    assert f"Error: local port {started.port} is already in use" in run.stderr
    run.assert_clean()

"""Integration tests: the run's one login without an ssh master (issue 23), for real on Linux.

``--no-control-master`` (and Windows' own OpenSSH, which cannot be a master) holds the login
in one ssh: a remote sh on its stdin/stdout runs the run's commands, and its SOCKS port (-D)
carries every connection to the server.  Each test runs the real script against the real
sshd and Jupyter, and checks what a user would: the page answers, sshd saw one login per
hop, the same URL works after the connection died, nothing is left behind.  An ``ssh`` first
on PATH that behaves as Win32-OpenSSH does (refuses -M/-S/-O, says OpenSSH_for_Windows to -V,
passes the rest to the real ssh) shows that the run picks the mode by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from helpers import alive, wait_for
from realenv import CODE_PROMPT, MULTI_USER
from test_browser import browser_result, chromium, end_browser
import test_start
from test_start import ACTIVATE, runtime_files
from test_2fa import url_on
from tunnelrun import Terminal, get_status, local_port_of

pytestmark = pytest.mark.integration

NO_MASTER = "--no-control-master"
no_server = test_start.no_server  # a fixture: jtmulti runs no Jupyter server before the test, none after

# Windows' own OpenSSH as far as multiplexing goes (../shared/notes/facts-round-3.md, section 1):
# its words for -S and ControlMaster, its -V; everything else is the real ssh.
WINDOWS_SSH = """#!/bin/sh
for arg in "$@"; do
    case $arg in
        -V) echo "OpenSSH_for_Windows_9.5p1, LibreSSL 3.8.2" >&2; exit 0 ;;
        -S|-O) echo "getsockname failed: Not a socket" >&2; exit 255 ;;
        -M) echo "getsockname failed: Bad file descriptor" >&2; exit 255 ;;
    esac
done
exec {ssh} "$@"
"""


def stdio_ssh(run) -> int:
    """The pid of the run's one ssh (the one with the SOCKS port)."""
    [line] = [line for line in run.leftovers() if " -D 127.0.0.1:" in line and " -W " not in line]
    return int(line.split(":")[0])


@pytest.fixture
def windows_ssh() -> str:
    """A directory whose ``ssh`` behaves as Win32-OpenSSH does, to put first on PATH."""
    directory = tempfile.mkdtemp(prefix="jtwin-")
    os.chmod(directory, 0o755)
    path = Path(directory, "ssh")
    path.write_text(WINDOWS_SSH.format(ssh=shutil.which("ssh")))
    path.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.parametrize("hosts", [["srv"], ["gw", "srv"], ["gw", "head", "srv"]], ids=["direct", "1jump", "2jumps"])
def test_one_login_per_hop_and_the_page_answers(tunnel, sshd, jtuser_server, hosts):
    offset = sshd.log_offset()
    run = tunnel(NO_MASTER, "-s", *hosts)
    url = run.url()
    status, body = get_status(url)
    assert status == 200 and "started" in body
    assert len(sshd.logins_since(offset)) == len(hosts)
    assert not [line for line in run.leftovers() if " -M " in line or " -S " in line]  # no master, no mux client
    [state] = run.states()
    assert state["master_pid"] == stdio_ssh(run) and state["remote_port"] == jtuser_server.port
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert "Traceback" not in run.stderr
    run.assert_clean()
    assert len(sshd.logins_since(offset)) == len(hosts)


def test_the_same_url_works_again_after_the_connection_is_killed(tunnel, sshd, jtuser_server):
    run = tunnel(NO_MASTER, "-s", "gw", "srv")
    url = run.url()
    killed = stdio_ssh(run)
    offset = sshd.log_offset()
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: "Info: Reconnected." in run.stderr, 30, what="the tunnel to reconnect")
    assert get_status(url)[0] == 200  # the same local port, the same URL
    assert len(sshd.logins_since(offset)) == 2
    assert run.states()[0]["master_pid"] == stdio_ssh(run) != killed
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_the_one_ssh_ends_by_itself_when_the_run_is_killed(tunnel, jtuser_server):
    """Its stdin is the run's: a run killed (SIGKILL) closes it, the remote shell ends, and ssh
    with it; on Windows nothing else may end it (docs/windows.md)."""
    run = tunnel(NO_MASTER, "-s", "gw", "srv")
    assert get_status(run.url())[0] == 200
    ssh = stdio_ssh(run)
    run.process.kill()
    run.process.wait(10)
    wait_for(lambda: not alive(ssh), 30, what="the one ssh to end by itself")


def test_windows_ssh_is_noticed_and_the_run_works(tunnel, sshd, jtuser_server, windows_ssh):
    offset = sshd.log_offset()
    run = tunnel("-s", "gw", "srv", env={"PATH": f"{windows_ssh}:{os.environ['PATH']}"})
    url = run.url()
    assert get_status(url)[0] == 200
    assert ("Info: OpenSSH_for_Windows_9.5p1 cannot share a connection (no ControlMaster): one ssh carries "
            "this run's commands and forwards instead (--no-control-master).") in run.stderr
    assert len(sshd.logins_since(offset)) == 2
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_an_ssh_that_cannot_be_a_master_is_used_without_one(tunnel, sshd, jtuser_server, windows_ssh):
    """An ssh whose -V tells nothing, but whose master fails with Win32-OpenSSH's words."""
    script = Path(windows_ssh, "ssh")
    script.write_text(script.read_text().replace("OpenSSH_for_Windows_9.5p1", "OpenSSH_9.9p1"))
    run = tunnel("-s", "srv", env={"PATH": f"{windows_ssh}:{os.environ['PATH']}"})
    assert get_status(run.url())[0] == 200
    assert "Info: ssh could not become a master (getsockname failed: Bad file descriptor)" in run.stderr
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


@pytest.mark.usefixtures("no_server")
def test_start_and_stop_server_through_the_shell(tunnel, sshd):
    offset = sshd.log_offset()
    run = tunnel(NO_MASTER, "-s", "gw", f"{MULTI_USER}@srv", "--start", "--stop-server", "-t", "server",
                 "--pre", ACTIVATE)
    url = run.url(timeout=90)
    assert get_status(url)[0] == 200
    assert "Info: Started jupyter server (pid " in run.stderr
    assert len(sshd.logins_since(offset)) == 2
    assert run.stop() == jt.EXIT_OK
    assert "Info: The Jupyter server has stopped." in run.stderr
    run.assert_clean()
    wait_for(lambda: not runtime_files(), 30, what="the started server to be gone")


@pytest.mark.usefixtures("no_server")
def test_stop_chooses_and_stops_through_the_shell(tunnel, sshd, start_jupyter):
    kept, stopped = start_jupyter(MULTI_USER), start_jupyter(MULTI_USER)
    offset = sshd.log_offset()
    run = tunnel(NO_MASTER, "-s", "gw", f"{MULTI_USER}@srv", "--stop", "--port", str(stopped.port))
    assert run.wait() == jt.EXIT_OK, run.stderr
    assert "Info: The Jupyter server has stopped." in run.stderr
    wait_for(lambda: not stopped.alive, 10, what="the stopped server's process to end")
    assert kept.alive
    assert len(sshd.logins_since(offset)) == 2
    run.assert_clean()


def test_a_unix_socket_server_is_refused_with_the_reason(tunnel, start_jupyter, test_users):
    sock = Path(tempfile.mkdtemp(prefix="jts-", dir=test_users[MULTI_USER].home)) / "j.sock"
    os.chown(sock.parent, test_users[MULTI_USER].uid, test_users[MULTI_USER].gid)
    start_jupyter.typed("server", f"--sock={sock}")
    wait_for(sock.exists, 30, what="the socket")
    run = tunnel(NO_MASTER, "-s", f"{MULTI_USER}@srv")
    assert run.wait() == jt.EXIT_NO_SERVER
    assert (f"Error: the Jupyter server on {MULTI_USER}@srv listens on a unix socket ({sock}), which a connection "
            "without ControlMaster cannot reach") in run.stderr
    run.assert_clean()


def test_a_real_browser_runs_a_cell_and_the_tab_works_after_the_connection_died(
        tunnel, start_jupyter, test_users, tmp_path):
    # kernel_info_timeout: jupyter_server holds a reconnecting kernel websocket until the kernel
    # answers its nudge, or this many seconds (60 by default): the kernel was idle all along
    start_jupyter(MULTI_USER, app="lab", args=["--MappingKernelManager.kernel_info_timeout=10"])
    go = tmp_path / "go"
    browser, env = chromium(tmp_path, JT_BROWSER_GO=str(go), JT_BROWSER_CELL="1")
    run = tunnel(NO_MASTER, "-s", "gw", f"{MULTI_USER}@srv", "-b", browser, env=env)
    url = run.url()
    seen = browser_result(tmp_path, lambda seen: seen.get("waiting") or "error" in seen)
    browser_pid = seen.get("pid")
    try:
        assert seen["lab_ui"] and seen.get("cell", "").strip() == "42", seen
        assert seen["final_url"].startswith(f"http://localhost:{local_port_of(url)}/lab"), seen
        os.kill(run.states()[0]["master_pid"], signal.SIGKILL)
        go.touch()
        wait_for(lambda: "Info: Reconnected." in run.stderr, 60, what="the run to reconnect")
        seen = browser_result(tmp_path, lambda seen: "cell_after_drop" in seen or "after_drop" in seen
                              and seen["after_drop"][-1:] != [200], timeout=240)
        assert seen["after_drop"][-1:] == [200] and seen.get("cell_after_drop", "").strip() == "49", seen
        assert run.stop() == jt.EXIT_OK, run.stderr
        run.assert_clean()
    finally:
        end_browser(go, browser_pid)
        home = Path(test_users[MULTI_USER].home)  # the notebook it saved, the layout the lab keeps
        for path in [*home.glob("Untitled*.ipynb"), home / ".jupyter/lab/workspaces"]:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def test_json_and_the_registry_say_the_same_as_with_a_master(tunnel, jtuser_server):
    run = tunnel(NO_MASTER, "-s", "srv", "--json")
    printed = json.loads(run.url())
    assert printed["remote_port"] == jtuser_server.port and get_status(printed["url"])[0] == 200
    assert run.states()[0]["local_port"] == printed["local_port"]
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_a_code_prompt_comes_once_on_the_terminal(two_factor_sshd, sshd, jtuser_server, tmp_path):
    """ssh asks on the terminal as with a master (its stdin is the remote shell's: the prompts
    open /dev/tty, as Win32-OpenSSH's open the console): the gateway's 2FA code, typed once."""
    offsets = (two_factor_sshd.log_offset(), sshd.log_offset())
    term = Terminal("-F", str(two_factor_sshd.config), "-b", "none", NO_MASTER, "-s", "kgw", "srv",
                    env={"JUPYTER_TUNNEL_REGISTRY": str(tmp_path)})
    try:
        term.read_until(CODE_PROMPT.encode())
        term.type(two_factor_sshd.code())
        term.read_until(f"?token={jtuser_server.token}".encode(), timeout=30)
        assert get_status(url_on(term))[0] == 200
        assert len(two_factor_sshd.logins_since(offsets[0])) == 1 and len(sshd.logins_since(offsets[1])) == 1
        assert two_factor_sshd.failures_since(offsets[0]) == []
        assert term.ctrl_c() == jt.EXIT_OK
        assert term.processes() == []
    finally:
        term.close()

"""Integration tests of ``--start``: a real sshd, the real Jupyter of the test venv started by
the tool on the "remote" as jtmulti (whose non-interactive PATH has no jupyter), through the
run's one login per hop."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from helpers import free_port, jupyter_processes, kill_all, wait_for
from realenv import MULTI_USER
from tunnelrun import SCRIPT, get_status

pytestmark = pytest.mark.integration

VENV = Path(sys.prefix)  # the venv running pytest: jupyter_server, jupyterlab, notebook 7
NB6_VENV = Path("/opt/jupyter-tunnel-test-nb6")  # notebook 6, no jupyterlab
ACTIVATE = f". {VENV}/bin/activate"


def runtime_files(user: str = MULTI_USER) -> list[Path]:
    """The user's Jupyter runtime files."""
    directory = Path(pwd.getpwnam(user).pw_dir) / ".local/share/jupyter/runtime"
    return sorted(directory.glob("*server-*.json")) if directory.is_dir() else []


def listening_addresses(pid: int) -> set[str]:
    """The local addresses (``IP:port``, IPv4) the pid listens on, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                address, port = fields[1].split(":")
                if len(address) == 8:
                    ip = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
                else:
                    ip = "::" if set(address) == {"0"} else address
                found.add(f"{ip}:{int(port, 16)}")
    return found


@pytest.fixture
def no_server(sshd):
    """jtmulti runs no Jupyter server before the test; whatever the test started is gone after it."""
    assert not jupyter_processes(MULTI_USER), f"{MULTI_USER} already runs Jupyter: {jupyter_processes(MULTI_USER)}"
    for path in runtime_files():
        path.unlink()
    yield
    kill_all(jupyter_processes(MULTI_USER))
    wait_for(lambda: not jupyter_processes(MULTI_USER), 10, what=f"{MULTI_USER}'s Jupyter processes to go")
    for path in runtime_files():
        path.unlink()
    shutil.rmtree(Path(pwd.getpwnam(MULTI_USER).pw_dir) / ".local/state/jupyter-tunnel", ignore_errors=True)


@pytest.mark.parametrize("hosts", [[f"{MULTI_USER}@srv"], ["gw", "head", f"{MULTI_USER}@srv"]],
                         ids=["direct", "2jumps"])
def test_start_starts_a_server_that_outlives_the_tunnel(tunnel, sshd, no_server, hosts):
    offset = sshd.log_offset()
    run = tunnel("-s", *hosts, "--start", "--pre", ACTIVATE)
    url = run.url(timeout=90)
    status, body = get_status(url)
    assert status == 200 and "started" in body
    assert len(sshd.logins_since(offset)) == len(hosts)  # the start went through the master
    assert (f"Info: No Jupyter server runs on {MULTI_USER}@srv: starting jupyter lab in the home directory..."
            in run.stderr)
    [started] = [line for line in run.stderr.splitlines() if line.startswith("Info: Started jupyter lab (pid ")]
    pid = int(started.split("(pid ")[1].split(")")[0])
    log = Path(started.split("its log: ")[1])
    assert log.stat().st_mode & 0o777 == 0o600 and log.parent.stat().st_mode & 0o777 == 0o700
    assert log.stat().st_uid == pwd.getpwnam(MULTI_USER).pw_uid
    [address] = listening_addresses(pid)
    assert address.startswith("127.0.0.1:")  # never all interfaces
    [state] = run.states()
    assert state["started_server"] is True and state["server_pid"] == pid
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert "keeps running" in run.stderr
    run.assert_clean()
    assert pid in jupyter_processes(MULTI_USER)
    # a later run attaches to it, without --start
    again = tunnel("-s", *hosts)
    assert get_status(again.url())[0] == 200
    assert again.states()[0]["server_pid"] == pid and again.states()[0]["started_server"] is False
    assert again.stop(signal.SIGINT) == jt.EXIT_OK


def test_start_with_stop_server_leaves_nothing(tunnel, no_server):
    run = tunnel("-s", "gw", f"{MULTI_USER}@srv", "--start", "--stop-server", "-t", "server",
                 "--jupyter", f"{VENV}/bin/jupyter")
    assert get_status(run.url(timeout=90))[0] == 200
    assert runtime_files()
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert "The Jupyter server has stopped." in run.stderr
    run.assert_clean()
    wait_for(lambda: not jupyter_processes(MULTI_USER), 10, what=f"{MULTI_USER}'s Jupyter to exit")
    assert runtime_files() == []


def test_stop_server_through_jupyter_tunnel_shutdown(tunnel, no_server):
    run = tunnel("-s", f"{MULTI_USER}@srv", "--start", "--stop-server", "--pre", ACTIVATE, "-t", "server")
    assert get_status(run.url(timeout=90))[0] == 200
    shutdown = [sys.executable, str(SCRIPT.parent / "jupyter_tunnel_shutdown.py")]
    listed = subprocess.run([*shutdown, "--list"], env=run.env, capture_output=True, text=True, timeout=30)
    header, row = listed.stdout.splitlines()
    assert row.split()[header.split().index("SERVER") - 1] == "started"  # "LOCAL PORT" is one column
    listed = subprocess.run([*shutdown, "--list", "--json"], env=run.env, capture_output=True, text=True,
                            timeout=30)
    assert json.loads(listed.stdout)[0]["started_server"] is True
    done = subprocess.run(shutdown, env=run.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert run.wait(30) == jt.EXIT_OK
    assert "The Jupyter server has stopped." in run.stderr
    run.assert_clean()
    wait_for(lambda: not jupyter_processes(MULTI_USER), 10, what=f"{MULTI_USER}'s Jupyter to exit")
    assert runtime_files() == []


def test_start_attaches_when_a_server_runs(tunnel, no_server, start_jupyter):
    server = start_jupyter(MULTI_USER)
    run = tunnel("-s", f"{MULTI_USER}@srv", "--start", "--pre", ACTIVATE)
    assert get_status(run.url())[0] == 200
    assert "--start was not needed" in run.stderr
    assert "Started jupyter" not in run.stderr
    assert list(jupyter_processes(MULTI_USER)) == [server.pid]
    assert run.states()[0]["started_server"] is False
    assert run.stop(signal.SIGINT) == jt.EXIT_OK


def test_start_stop_server_leaves_a_server_it_only_attached_to(tunnel, no_server, start_jupyter):
    # --start --stop-server stops the server the run started; this one ran before the run
    server = start_jupyter(MULTI_USER)
    run = tunnel("-s", f"{MULTI_USER}@srv", "--start", "--stop-server", "--pre", ACTIVATE)
    assert get_status(run.url())[0] == 200
    assert "--start was not needed" in run.stderr
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert (f"Info: The Jupyter server on {MULTI_USER}@srv was already running: left running (--stop-server "
            "stops only a server this run started when used with --start)") in run.stderr
    assert "Stopping the Jupyter server" not in run.stderr
    run.assert_clean()
    assert server.alive and server.api()[0] == 200
    # plain --stop-server names the attached server: it stops it
    run = tunnel("-s", f"{MULTI_USER}@srv", "--stop-server")
    assert get_status(run.url())[0] == 200
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert "The Jupyter server has stopped." in run.stderr
    run.assert_clean()
    wait_for(lambda: not server.alive, 10, what="the attached server to stop")


@pytest.mark.parametrize("args, said", [
    ((), "jupyter not found"),  # not on the non-interactive PATH
    (("--pre", "false"), "failed: false"),
    # "." of a missing file ended sh before "|| fail" spoke: now its command and dash's words
    (("--pre", ". /nonexistent/activate"), "failed: . /nonexistent/activate (log: "),
    # "cd -L" went home and started the server there
    (("--root-dir=-L", "--pre", ACTIVATE), "no directory -L (log: "),
    # the notebook 6 venv has no jupyterlab: jupyter says so in the log, whose end is shown
    (("-t", "lab", "--jupyter", f"{NB6_VENV}/bin/jupyter"), "the server exited (log: "),
], ids=["no-jupyter", "pre-fails", "dot-fails", "root-dir-dash", "lab-missing"])
def test_start_failures_say_why_and_leave_nothing(tunnel, no_server, args, said):
    run = tunnel("-s", "gw", f"{MULTI_USER}@srv", "--start", *args)
    assert run.wait(90) == jt.EXIT_START
    [error] = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: could not start jupyter ") and said in error, error
    assert "(log: " in error
    if "-t" in args:
        assert "its log ends with: " in error and "jupyter-lab" in error, error
    if ". /nonexistent/activate" in args:
        assert "its log ends with: " in error and ".: cannot open /nonexistent/activate" in error, error
    run.assert_clean()
    assert jupyter_processes(MULTI_USER) == {} and runtime_files() == []


@pytest.fixture
def tools_dir():
    """A directory jtmulti can read, for programs the remote PATH of a test is limited to
    (pytest's tmp_path lies under a directory private to root)."""
    path = Path(tempfile.mkdtemp(prefix="jt-tools-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_start_without_setsid_detaches_with_nohup(tunnel, no_server, tools_dir):
    # A remote without setsid(1) (some BSDs, busybox builds): the script falls back to nohup.
    for tool in ("nohup", "tail", "cat", "tr", "sleep"):
        (tools_dir / tool).symlink_to(shutil.which(tool))
    run = tunnel("-s", f"{MULTI_USER}@srv", "--start", "-t", "server", "--pre", f"PATH={tools_dir}",
                 "--jupyter", f"{VENV}/bin/jupyter")
    assert get_status(run.url(timeout=90))[0] == 200
    pid = run.states()[0]["server_pid"]
    assert os.getsid(pid) != pid  # not setsid's new session: the fallback ran
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    run.assert_clean()
    assert pid in jupyter_processes(MULTI_USER)  # it outlived the ssh session and the tunnel


def test_start_notebook_not_installed(tunnel, no_server, tools_dir):
    # A real jupyter whose environment lacks the notebook package: jupyter looks for
    # jupyter-notebook next to its own Python (sysconfig "scripts") and on PATH, and finds
    # none in a bare venv that borrows the test venv's packages through a .pth file.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tools_dir / "bare")], check=True)
    [site] = (tools_dir / "bare/lib").glob("python3*/site-packages")
    (site / "borrowed.pth").write_text(f"{next(VENV.glob('lib/python3*/site-packages'))}\n")
    jupyter = tools_dir / "jupyter"
    jupyter.write_text(f"#!/bin/sh\nexec {tools_dir}/bare/bin/python -m jupyter \"$@\"\n")
    jupyter.chmod(0o755)
    run = tunnel("-s", f"{MULTI_USER}@srv", "--start", "-t", "notebook", "--jupyter", str(jupyter))
    assert run.wait(90) == jt.EXIT_START
    [error] = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert "the server exited" in error and "jupyter-notebook" in error and "not found" in error, error
    run.assert_clean()
    assert jupyter_processes(MULTI_USER) == {} and runtime_files() == []


# A jupyter that writes a valid runtime file for its own pid (setsid does not fork: $$ is the
# pid the start script knows), then crashes: at once, or once the start script has seen it.
CRASHING_JUPYTER = """#!/bin/sh
echo "fake jupyter: writing its runtime file"
d="$HOME/.local/share/jupyter/runtime"
mkdir -p "$d"
printf '{"port": @PORT@, "token": "t", "pid": %s, "url": "http://127.0.0.1:@PORT@/", "hostname": "127.0.0.1", \
"base_url": "/", "root_dir": "/", "sock": "", "version": "2.21.1"}' $$ >"$d/jpserver-$$.json"
sleep @DELAY@
echo "fake jupyter: crashing"
exit 1
"""


@pytest.mark.parametrize("delay", ["0", "0.5"], ids=["at-once", "after-the-script-saw-it"])
def test_start_fails_for_a_server_that_dies_after_its_runtime_file(tunnel, no_server, tools_dir, delay):
    jupyter = tools_dir / "crashing-jupyter"
    jupyter.write_text(CRASHING_JUPYTER.replace("@PORT@", str(free_port())).replace("@DELAY@", delay))
    jupyter.chmod(0o755)
    run = tunnel("-s", f"{MULTI_USER}@srv", "--start", "-t", "server", "--jupyter", str(jupyter))
    assert run.wait(60) == jt.EXIT_START, run.stderr
    assert run.lines.empty(), "a URL was printed"
    [error] = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert re.match(r"Error: could not start jupyter server on jtmulti@srv: the server( \(pid \d+\))? exited "
                    r"right after writing its runtime file \(log: ", error), error
    assert "its log ends with: fake jupyter: writing its runtime file | fake jupyter: crashing" in error, error
    assert "keeps running" not in run.stderr
    run.assert_clean()
    assert jupyter_processes(MULTI_USER) == {} and runtime_files() == []


RUNS = 8


def test_starts_at_the_same_moment_start_one_server(tunnel, sshd, no_server, registry):
    # eight terminals, one account, no server: one start, and every run on that server
    offset = sshd.log_offset()
    runs = [tunnel("-s", f"{MULTI_USER}@srv", "--start", "-t", "server", "--jupyter", f"{VENV}/bin/jupyter")
            for _ in range(RUNS)]
    urls = [run.url(timeout=90) for run in runs]
    [pid] = jupyter_processes(MULTI_USER)
    for url in urls:
        assert get_status(url)[0] == 200
    assert len(sshd.logins_since(offset)) == RUNS
    entries = [json.loads(path.read_text()) for path in Path(registry).iterdir()]
    assert {entry["server_pid"] for entry in entries} == {pid}
    assert sorted(entry["started_server"] for entry in entries) == [False] * (RUNS - 1) + [True]
    for run in runs:
        assert "Error" not in run.stderr and "Warning" not in run.stderr, run.stderr
        assert run.stop(signal.SIGINT) == jt.EXIT_OK
        run.assert_clean()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not jupyter_processes(MULTI_USER), 30, what="the started server to stop")
    lock = Path(pwd.getpwnam(MULTI_USER).pw_dir) / ".local/state/jupyter-tunnel/start.lock"
    assert not lock.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_while_the_server_starts_leaves_nothing(tunnel, no_server, tools_dir, signum):
    # A jupyter that takes 3 s before it even starts: the run is stopped after the server's
    # process exists and before its runtime file does.
    jupyter = tools_dir / "slow-jupyter"
    jupyter.write_text(f"#!/bin/sh\nsleep 3\nexec {VENV}/bin/jupyter \"$@\"\n")
    jupyter.chmod(0o755)
    run = tunnel("-s", "gw", f"{MULTI_USER}@srv", "--start", "-t", "server", "--jupyter", str(jupyter))
    wait_for(lambda: jupyter_processes(MULTI_USER), 60, what="the server's process")
    assert runtime_files() == []
    assert run.stop(signum) == jt.EXIT_INTERRUPTED
    assert "Info: Interrupted." in run.stderr
    run.assert_clean()
    # the start script notices that the run went away, and stops what it started
    wait_for(lambda: not jupyter_processes(MULTI_USER), 30, what=f"{MULTI_USER}'s Jupyter to be stopped")
    assert runtime_files() == []


def test_stop_stops_the_chosen_server_and_opens_no_tunnel(tunnel, sshd, no_server, start_jupyter):
    """--stop: one command that stops a server (issue 22), chosen as a run chooses: --port here."""
    kept, stopped = start_jupyter(MULTI_USER), start_jupyter(MULTI_USER)
    offset = sshd.log_offset()
    run = tunnel("-s", "gw", f"{MULTI_USER}@srv", "--stop", "--port", str(stopped.port))
    assert run.wait() == jt.EXIT_OK, run.stderr
    assert f"Info: Stopping the Jupyter server on {MULTI_USER}@srv (pid {stopped.pid})..." in run.stderr
    assert "Info: The Jupyter server has stopped." in run.stderr
    assert run.lines.empty() and "Port used on localhost" not in run.stderr  # no tunnel, no URL
    # jupyter removes its runtime file (what the run waits for) just before its process ends
    wait_for(lambda: not stopped.alive, 10, what="the stopped server's process to end")
    assert kept.alive and kept.api()[0] == 200
    assert len(sshd.logins_since(offset)) == 2  # gw and srv, once each
    run.assert_clean()
    # with several left and none chosen, nothing is stopped: the run asks for a choice
    other = start_jupyter(MULTI_USER)
    run = tunnel("-s", f"{MULTI_USER}@srv", "--stop")
    assert run.wait() == jt.EXIT_NO_SERVER
    assert "choose one with --port PORT, --dir TEXT or --pick N" in run.stderr
    assert kept.alive and other.alive

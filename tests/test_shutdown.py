"""Integration tests of jupyter_tunnel_shutdown.py: real tunnels through the real sshd to real
Jupyter servers, stopped by real signals.

Every tunnel of a test registers in ONE registry directory of the test's own
(JUPYTER_TUNNEL_REGISTRY), and the shutdown script runs with the same one: it then sees, and
stops, only that test's tunnels, never another run's on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd
from helpers import port_is_free, wait_for
from tunnelrun import SHUTDOWN, get_status, local_port_of


def line_of(stderr: str, pid: int) -> str:
    """The one line of the shutdown's stderr about process ``pid`` (it ends "(pid N).")."""
    [line] = [line for line in stderr.splitlines() if line.endswith(f" (pid {pid}).")]
    return line

def entries(registry: str) -> list[str]:
    """The registry's file names."""
    return sorted(os.listdir(registry))


def test_list_then_stop_one_by_port_then_the_rest(tunnel, shutdown, registry, start_jupyter):
    first, second = start_jupyter.many(2)
    one = tunnel("-s", "jtmulti@srv", "--port", str(first.port))
    two = tunnel("-s", "gw", "jtmulti@srv", "--port", str(second.port))
    url_one, url_two = one.url(), two.url()
    port_one, port_two = local_port_of(url_one), local_port_of(url_two)
    pid_one, pid_two = one.process.pid, two.process.pid

    done = shutdown("--list", "--json")
    assert (done.returncode, done.stderr) == (sd.EXIT_OK, "")
    listed = {e["pid"]: (e["registered"], e["state"], e["local_port"], e["hosts"], e["remote_port"])
              for e in json.loads(done.stdout)}
    assert listed == {pid_one: (True, "ready", port_one, ["jtmulti@srv"], first.port),
                      pid_two: (True, "ready", port_two, ["gw", "jtmulti@srv"], second.port)}
    done = shutdown("--list")
    assert done.returncode == sd.EXIT_OK
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["PID", "LOCAL", "PORT", "HOSTS", "NODE", "REMOTE", "SERVER", "JOB", "TIME", "LEFT",
                              "STATE", "STARTED", "FORWARDS"]
    assert [row.split()[-1] for row in rows] == ["-", "-"]  # no --forward
    assert sorted(row.split()[:9] for row in rows) == sorted([
        [str(pid_one), str(port_one), "jtmulti@srv", "-", str(first.port), "found", "-", "-", "ready"],
        [str(pid_two), str(port_two), "gw,jtmulti@srv", "-", str(second.port), "found", "-", "-", "ready"],
    ])

    # --port stops that one only, and returns once it is gone
    done = shutdown("--port", str(port_one))
    assert done.returncode == sd.EXIT_OK
    assert done.stderr == f"Info: Closed the tunnel localhost:{port_one} -> jtmulti@srv:{first.port} (pid {pid_one}).\n"
    assert one.wait() == jt.EXIT_OK and "Info: Closing the tunnel." in one.stderr  # its own cleanup ran
    one.assert_clean()  # no ssh master, hop or agent left, no control dir
    assert entries(registry) == [f"{pid_two}.json"]
    assert port_is_free(port_one)
    assert get_status(url_two)[0] == 200  # the other one still serves

    done = shutdown("--host", "elsewhere")
    assert (done.returncode, done.stderr) == (sd.EXIT_OK, "Info: No tunnel matches --port/--host (1 running: jupyter-tunnel-shutdown --list shows them).\n")

    # no argument: the rest
    done = shutdown()
    assert done.returncode == sd.EXIT_OK
    assert done.stderr == \
        f"Info: Closed the tunnel localhost:{port_two} -> jtmulti@srv:{second.port} via gw (pid {pid_two}).\n"
    assert two.wait() == jt.EXIT_OK
    two.assert_clean()
    assert entries(registry) == []

    done = shutdown()
    assert (done.returncode, done.stdout, done.stderr) == (sd.EXIT_OK, "", "Info: No tunnel is running.\n")


@pytest.mark.parametrize("cleaner", ["shutdown", "next tunnel"])
def test_sigkilled_tunnel_leftovers_are_pruned(tunnel, shutdown, registry, jtuser_server, cleaner):
    dead = tunnel("-s", "gw", "srv")
    port = local_port_of(dead.url())
    pid = dead.process.pid
    dead.process.kill()  # the tunnel alone: its ssh master and agent outlive it
    assert dead.wait() == -signal.SIGKILL
    assert any(" -M " in line for line in dead.leftovers()), dead.leftovers()
    assert entries(registry) == [f"{pid}.json"]
    # --list only reads: the leftovers are still there after it
    assert shutdown("--list", TMPDIR=dead.tmp).returncode == sd.EXIT_OK
    assert any(" -M " in line for line in dead.leftovers()) and entries(registry) == [f"{pid}.json"]

    # the cleaner looks for leftover directories where the tool makes them: in its TMPDIR
    if cleaner == "shutdown":
        done = shutdown(TMPDIR=dead.tmp)
        assert done.returncode == sd.EXIT_OK
        assert done.stderr.splitlines() == [
            f"Info: Cleaned up after the tunnel localhost:{port} -> srv:{jtuser_server.port} via gw "
            f"(pid {pid}), which had died.",
            "Info: No tunnel is running.",
        ]
    else:
        after = tunnel("-s", "srv", env={"TMPDIR": dead.tmp})  # any tunnel prunes the registry as it starts
        after.url()
        assert entries(registry) == [f"{after.process.pid}.json"]
        assert shutdown().returncode == sd.EXIT_OK
        assert after.wait() == jt.EXIT_OK
        after.assert_clean()
    dead.assert_clean()
    assert entries(registry) == []
    wait_for(lambda: port_is_free(port), 5, what="the dead tunnel's local port to be free")


def test_damaged_entries_never_stop_the_rest(tunnel, shutdown, registry, jtuser_server):
    live = tunnel("-s", "srv")
    live_url = live.url()
    dead = subprocess.Popen(["true"])
    dead.wait()
    damaged = {
        "fifo.json": lambda path: os.mkfifo(path),  # a plain open() blocks for ever
        "x.json": lambda path: os.mkdir(path),
        "huge.json": lambda path: open(path, "wb").write(b'{"pid": 3, "x": "' + b"y" * 2**21 + b'"}'),
        "bytes.json": lambda path: open(path, "wb").write(b'{"pid": 3, "hosts": ["\xff"]}'),
        "list.json": lambda path: open(path, "w").write("[1, 2]"),
        f"{dead.pid}.json": lambda path: open(path, "w").write(
            f'{{"pid": {dead.pid}, "state": NaN, "hosts": [1e400], "local_port": 1e400, "remote_port": NaN, '
            f'"started": 1e400, "started_server": 1e400, "job": 1e400, "scheduler": [1], "job_end": -1e400, '
            f'"control_dir": 1e400, "master_pid": 1e400, "agent_pid": NaN, "shared_forward": 1e400}}'),
    }
    for name, make in damaged.items():
        make(os.path.join(registry, name))
    # a run prunes the registry as it starts
    other = tunnel("-s", "srv")
    other_url = other.url()
    assert "Traceback" not in other.stderr and "Error" not in other.stderr, other.stderr
    assert f"{dead.pid}.json" not in entries(registry)  # the dead run's entry was pruned, damaged as it is
    for args in (["--list"], ["--json"]):
        done = shutdown(*args)
        assert (done.returncode, done.stderr) == (sd.EXIT_OK, ""), done.stderr
        assert str(live.process.pid) in done.stdout and str(other.process.pid) in done.stdout
    assert get_status(live_url)[0] == 200 and get_status(other_url)[0] == 200
    done = shutdown()
    assert done.returncode == sd.EXIT_OK and "Traceback" not in done.stderr, done.stderr
    for run in (live, other):
        assert line_of(done.stderr, run.process.pid).startswith("Info: Closed the tunnel localhost:")
    assert live.wait() == jt.EXIT_OK and other.wait() == jt.EXIT_OK
    live.assert_clean()
    other.assert_clean()
    # what is no entry at all is left for the user to look at
    assert entries(registry) == sorted(set(damaged) - {f"{dead.pid}.json"})


def test_force_kills_a_tunnel_that_does_not_stop(tunnel, shutdown, registry, jtuser_server):
    run = tunnel("-s", "gw", "srv")
    port = local_port_of(run.url())
    pid = run.process.pid
    described = f"the tunnel localhost:{port} -> srv:{jtuser_server.port} via gw (pid {pid})"
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGINT

    done = shutdown("--timeout", "1")
    assert done.returncode == sd.EXIT_NOT_STOPPED
    assert done.stderr == f"Warning: {described} did not close within 1 s; jupyter-tunnel-shutdown --force kills it\n"
    assert run.process.poll() is None and entries(registry) == [f"{pid}.json"]

    done = shutdown("--timeout", "1", "--force", TMPDIR=run.tmp)  # where its directory is
    assert done.returncode == sd.EXIT_OK
    assert done.stderr.splitlines() == [
        f"Warning: {described} did not close within 1 s: killing it (SIGKILL)",
        f"Info: Killed {described}.",
    ]
    assert run.wait() == -signal.SIGKILL
    run.assert_clean()  # its orphaned ssh master and agent were stopped, its directory removed
    assert entries(registry) == []


def test_unregistered_tunnel_is_found_by_the_process_scan(tunnel, shutdown, registry, jtuser_server):
    run = tunnel("-s", "gw", "srv")
    port = local_port_of(run.url())
    pid = run.process.pid
    os.unlink(os.path.join(registry, f"{pid}.json"))  # as a version without the registry runs

    [entry] = json.loads(shutdown("--json").stdout)
    assert (entry["pid"], entry["registered"], entry["hosts"], entry["local_port"]) == (pid, False, ["gw", "srv"], None)
    # its local port is unknown: --port cannot pick it, and says so
    done = shutdown("--port", str(port))
    assert done.returncode == sd.EXIT_OK and run.process.poll() is None
    assert done.stderr.splitlines() == [
        f"Warning: process {pid} is a tunnel that did not register (an older version): its local "
        "port is unknown, so --port leaves it alone",
        "Info: No tunnel matches --port/--host (1 running: jupyter-tunnel-shutdown --list shows them).",
    ]
    done = shutdown("--host", "srv")  # its hosts are read from its command line
    assert (done.returncode, done.stderr) == (sd.EXIT_OK, f"Info: Closed the unregistered tunnel to srv via gw (pid {pid}).\n")
    assert run.wait() == jt.EXIT_OK
    run.assert_clean()


def test_background_tunnel_with_sigint_ignored_stops_too(tunnel, shutdown, registry, jtuser_server):
    # a shell starts a background job ("jupyter-tunnel ... &") with SIGINT ignored, and the
    # child inherits that; the tunnel turns SIGINT back on, so the shutdown still reaches it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = tunnel("-s", "srv")
    finally:
        signal.signal(signal.SIGINT, previous)
    run.url()
    done = shutdown()
    assert done.returncode == sd.EXIT_OK and line_of(done.stderr, run.process.pid).startswith("Info: Closed the tunnel ")
    assert run.wait() == jt.EXIT_OK
    run.assert_clean()
    assert entries(registry) == []


def test_tunnels_of_another_registry_are_left_alone(tunnel, shutdown, registry, jtuser_server):
    # what keeps concurrent runs apart: JUPYTER_TUNNEL_REGISTRY names a separate set of tunnels
    other = tempfile.mkdtemp(prefix="jtr-", dir="/tmp")
    try:
        run = tunnel("-s", "srv", registry_dir=other)
        url = run.url()
        done = shutdown()
        assert (done.returncode, done.stderr) == (sd.EXIT_OK, "Info: No tunnel is running.\n")
        assert get_status(url)[0] == 200
        assert run.stop() == jt.EXIT_OK
        run.assert_clean()
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_no_tunnel_running_when_run_from_a_checkout(tmp_path):
    # ./jupyter_tunnel_shutdown.py: its own directory is on sys.path, so jupyter_tunnel imports
    env = dict(os.environ, NO_COLOR="1", **{sd.REGISTRY_ENV: str(tmp_path)})
    done = subprocess.run([str(SHUTDOWN)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env, timeout=30, cwd="/")
    assert (done.returncode, done.stdout, done.stderr) == (sd.EXIT_OK, "", "Info: No tunnel is running.\n")

"""Integration tests of the registry: real tunnels, real processes, a second local user.

A registry entry is never taken at its word: the next run and jupyter-tunnel-shutdown stop
a process or delete a directory only once proven to be a dead tunnel's own leftover, never
read a registry directory that another user could have written, and find a run that was
killed while it was still connecting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd
from helpers import alive, kill_all, port_is_free, wait_for
from tunnelrun import TunnelRun, get_status

pytestmark = pytest.mark.integration


@pytest.fixture
def orphans():
    """Factory: start a process of ours with the given argv, orphaned as a dead run's master is."""
    pids: list[int] = []

    def start(*argv: str) -> int:
        # the shell exits at once: its child is adopted by init, like the master of a killed run
        done = subprocess.run(["sh", "-c", 'exec "$@" >/dev/null 2>&1 </dev/null & echo $!', "sh", *argv],
                              capture_output=True, text=True, check=True)
        pid = int(done.stdout)
        wait_for(lambda: sd.parent_pid(pid) not in (None, os.getpid()), 5, what="the orphan to be adopted")
        pids.append(pid)
        return pid

    yield start
    kill_all(pids)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def write_entry(registry: str, **fields) -> str:
    """A registry entry for a dead tunnel, as crafted as the test wants it."""
    state = {"pid": dead_pid(), "state": "ready", "hosts": ["srv"], "node": "", "local_port": None,
             "remote_host": "srv", "started": 1.0, "master_pid": None, "agent_pid": None, **fields}
    path = os.path.join(registry, f"{state['pid']}.json")
    Path(path).write_text(json.dumps(state))
    os.chmod(path, 0o600)
    return path


def snapshot(*paths: str) -> dict:
    """Every file and directory under ``paths``, with its mode: to see that nothing was deleted."""
    found = {}
    for top in paths:
        for root, dirs, files in os.walk(top):
            for name in [root, *(os.path.join(root, f) for f in files)]:
                found[name] = os.lstat(name).st_mode
    return found


def test_crafted_entries_make_nothing_signalled_or_deleted(tunnel, shutdown, registry, orphans,
                                                           jtuser_server):
    # a live tunnel: its directory, master and agent are named by a crafted entry too
    live = tunnel("-a", "-s", "srv")
    live_url = live.url()
    tmp = live.tmp  # every run and shutdown of the test looks for leftovers there
    [live_state] = [json.loads(Path(registry, name).read_text()) for name in os.listdir(registry)]
    # a directory of ours with a file; one named as the tool names them but with mode 0755;
    # one that is right in every way but whose socket a process listens on
    ordinary = Path(tmp, "work")
    ordinary.mkdir(mode=0o700)
    (ordinary / "notes.txt").write_text("keep me")
    loose = Path(tempfile.mkdtemp(prefix="jt-", dir=tmp))
    loose.chmod(0o755)
    (loose / "data").write_text("keep me")
    busy = Path(tempfile.mkdtemp(prefix="jt-", dir=tmp))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(busy / "c"))
    listener.listen()
    # processes of ours, orphaned, whose command lines name those directories' sockets
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    master_like = orphans(*sleep, "-F", f"{busy}/ssh_config", "-M", "-S", f"{busy}/c", "-N", "-T", "srv")
    agent_like = orphans(*sleep, "-D", "-a", f"{busy}/a")
    mentions = orphans(*sleep, "-S", f"{loose}/c")
    crafted = [
        write_entry(registry, control_dir="/"),
        write_entry(registry, control_dir=str(ordinary), master_pid=mentions),
        write_entry(registry, control_dir=str(loose), master_pid=mentions),
        write_entry(registry, control_dir=str(busy), master_pid=master_like, agent_pid=agent_like),
        write_entry(registry, control_dir=live_state["control_dir"], master_pid=live_state["master_pid"],
                    agent_pid=live_state["agent_pid"]),
    ]
    before = snapshot(str(ordinary), str(loose), str(busy), live_state["control_dir"])
    processes = [master_like, agent_like, mentions, live_state["master_pid"], live_state["agent_pid"]]

    def nothing_touched() -> None:
        assert all(alive(pid) for pid in processes), [pid for pid in processes if not alive(pid)]
        assert snapshot(str(ordinary), str(loose), str(busy), live_state["control_dir"]) == before
        assert all(os.path.exists(path) for path in crafted)
        assert get_status(live_url)[0] == 200

    def warned(stderr: str) -> None:
        for path, why in zip(crafted, ["it is not a directory jupyter-tunnel makes",
                                       "it is not a directory jupyter-tunnel makes",
                                       "its mode is 0755, not 0700",
                                       "a process still listens on its sockets",
                                       "a process still listens on its sockets"]):
            assert f"Warning: registry entry {path!r}: left " in stderr and why in stderr, stderr

    # a tunnel start prunes the registry
    run = tunnel("-s", "srv", env={"TMPDIR": tmp})
    run.url()
    warned(run.stderr)
    nothing_touched()
    # --list and --json only read
    for args in (["--list"], ["--json"]):
        done = shutdown(*args, TMPDIR=tmp)
        assert done.returncode == sd.EXIT_OK and "Warning" not in done.stderr, done.stderr
        nothing_touched()
    # the shutdown stops the two tunnels, and leaves alone what the entries name
    done = shutdown(TMPDIR=tmp)
    assert done.returncode == sd.EXIT_OK
    warned(done.stderr)
    for pid in (live.process.pid, run.process.pid):
        assert re.search(rf"^Info: Closed the tunnel localhost:\d+ -> .* \(pid {pid}\)\.$", done.stderr, re.M)
    assert live.wait() == jt.EXIT_OK and run.wait() == jt.EXIT_OK
    wait_for(lambda: not alive(live_state["master_pid"]) and not alive(live_state["agent_pid"]), 10,
             what="the live tunnel's own master and agent to go with it")
    assert all(alive(pid) for pid in (master_like, agent_like, mentions))
    assert (ordinary / "notes.txt").read_text() == "keep me" and (loose / "data").exists()
    assert (busy / "c").exists() and Path("/").exists()
    assert sorted(os.listdir(registry)) == sorted(os.path.basename(path) for path in crafted)
    listener.close()


def test_a_tunnel_inside_another_program_is_not_taken_for_dead(tunnel, shutdown, registry, jtuser_server):
    # python -c '...main([...])': its command line is no jupyter-tunnel's, its lock tells it lives
    hosted = tunnel("-a", "-s", "srv", in_process=True)
    url = hosted.url()
    assert not sd.is_tunnel_argv(sd.process_info(hosted.process.pid)[1])
    [state] = [json.loads(Path(registry, name).read_text()) for name in os.listdir(registry)]
    before = snapshot(state["control_dir"])
    # another run prunes the registry, and shutdown lists, looking where its directory is
    other = tunnel("-s", "srv", env={"TMPDIR": hosted.tmp})
    other.url()
    assert "Warning" not in other.stderr, other.stderr
    done = shutdown("--list", "--json", TMPDIR=hosted.tmp)
    assert done.returncode == sd.EXIT_OK and done.stderr == "", done.stderr
    assert sorted(entry["pid"] for entry in json.loads(done.stdout)) == sorted([hosted.process.pid,
                                                                                 other.process.pid])
    assert alive(state["master_pid"]) and alive(state["agent_pid"])
    assert snapshot(state["control_dir"]) == before
    assert get_status(url)[0] == 200
    # and shutdown stops it as it stops the script: main() cleans up and returns 0
    done = shutdown(TMPDIR=hosted.tmp)
    assert done.returncode == sd.EXIT_OK, done.stderr
    for pid in (hosted.process.pid, other.process.pid):
        assert re.search(rf"^Info: Closed the tunnel localhost:\d+ -> .* \(pid {pid}\)\.$", done.stderr, re.M)
    assert hosted.wait() == jt.EXIT_OK and "Info: Closing the tunnel." in hosted.stderr
    assert other.wait() == jt.EXIT_OK
    hosted.assert_clean()
    other.assert_clean()
    assert os.listdir(registry) == []


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_registry_other_users_can_write_is_not_used(tunnel, shutdown, jtuser_server, test_users, kind):
    # the user is made by the fixtures: looked up here, not when the module is collected (a
    # fresh machine has no jtnone before the session starts)
    jtnone = test_users["jtnone"]
    as_jtnone = dict(user=jtnone.uid, group=jtnone.gid, extra_groups=[], check=True)
    # jtnone makes a world-writable directory and writes an entry that names a directory of
    # ours that is right in every way: only the registry's own check protects it
    shared = subprocess.run(["mktemp", "-d", "/tmp/jtx-XXXXXXXX"], capture_output=True, text=True,
                            **as_jtnone).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="jtt-", dir="/tmp")  # the TMPDIR of the run and the shutdowns
    ours = Path(tempfile.mkdtemp(prefix="jt-", dir=tmp))
    (ours / "data").write_text("keep me")
    try:
        subprocess.run(["chmod", "1777", shared], **as_jtnone)
        entry = json.dumps(dict(pid=dead_pid(), hosts=["srv"], control_dir=str(ours), started=1.0))
        subprocess.run(["sh", "-c", 'printf %s "$1" > "$2"', "sh", entry, f"{shared}/4.json"], **as_jtnone)
        registry = shared
        if kind == "symlink":
            registry = f"{shared}-link"
            subprocess.run(["ln", "-s", shared, registry], **as_jtnone)
        problem = "it is a symbolic link" if kind == "symlink" else f"it belongs to uid {jtnone.uid}"
        warning = f"Warning: not using the registry directory {registry!r}: {problem}"
        before = snapshot(shared, str(ours))

        run = tunnel("-s", "srv", registry_dir=registry, env={"TMPDIR": tmp})
        url = run.url()
        assert snapshot(shared, str(ours)) == before  # nothing read from there acted on, nothing written
        assert warning in run.stderr
        assert "this tunnel is not registered; jupyter-tunnel-shutdown finds it by its command line" in run.stderr
        assert get_status(url)[0] == 200

        done = shutdown("--list", TMPDIR=tmp, **{sd.REGISTRY_ENV: registry})
        assert done.returncode == sd.EXIT_OK and warning in done.stderr
        assert done.stdout.splitlines()[1].split()[:2] == [str(run.process.pid), "?"]  # found by the scan
        done = shutdown(TMPDIR=tmp, **{sd.REGISTRY_ENV: registry})
        assert done.returncode == sd.EXIT_OK and warning in done.stderr
        assert f"Info: Closed the unregistered tunnel to srv (pid {run.process.pid})." in done.stderr
        assert run.wait() == jt.EXIT_OK
        assert snapshot(shared, str(ours)) == before
    finally:
        subprocess.run(["rm", "-rf", shared, f"{shared}-link"], user=jtnone.uid, group=jtnone.gid,
                       extra_groups=[])
        shutil.rmtree(tmp, ignore_errors=True)


def start_connecting(tunnel, registry: str, *args: str) -> tuple[TunnelRun, dict]:
    """A run waiting for a server that never answers, its port forwarded, its entry "connecting"."""
    run = tunnel(*args, "-s", "jtnone@srv")

    def forwarded() -> dict | None:
        entries = [sd.read_state(os.path.join(registry, name)) for name in os.listdir(registry)]
        return next((e for e in entries if e and e["local_port"]), None)

    state = wait_for(forwarded, 30, what="the run to forward its port")
    assert (state["pid"], state["state"]) == (run.process.pid, "connecting")
    assert not port_is_free(state["local_port"])
    return run, state


@pytest.mark.parametrize("cleaner", ["next run", "shutdown --force"])
def test_run_killed_before_ready_leaves_nothing(tunnel, shutdown, registry, jtuser_server, hung_server,
                                                cleaner):
    dead, state = start_connecting(tunnel, registry, "-a")
    masters = [line for line in dead.leftovers() if " -M " in line]
    agents = [line for line in dead.leftovers() if "ssh-agent" in line]
    assert len(masters) == 1 and len(agents) == 1, dead.leftovers()
    assert (state["master_pid"], state["agent_pid"]) == (int(masters[0].split(":")[0]), int(agents[0].split(":")[0]))
    done = shutdown("--list")
    assert done.stdout.splitlines()[1].split()[:9] == [str(dead.process.pid), str(state["local_port"]), "jtnone@srv",
                                                       "-", str(hung_server), "found", "-", "-", "connecting"]

    dead.process.kill()  # the tool alone, as the OOM killer would: its master and agent stay
    assert dead.wait() == -signal.SIGKILL
    # the port was the run's own (its relay): free with it, while its master stays
    assert dead.leftovers() and port_is_free(state["local_port"])
    if cleaner == "next run":
        after = tunnel("-s", "srv", env={"TMPDIR": dead.tmp})  # any tunnel prunes the registry as it starts
        after.url()
        assert "Warning" not in after.stderr, after.stderr
        assert after.stop() == jt.EXIT_OK
    else:
        done = shutdown("--force", TMPDIR=dead.tmp)  # where the run made its directory
        assert done.returncode == sd.EXIT_OK
        assert done.stderr.splitlines() == [
            f"Info: Cleaned up after the tunnel localhost:{state['local_port']} -> jtnone@srv:{hung_server} "
            f"(pid {dead.process.pid}), which had died.",
            "Info: No tunnel is running.",
        ]
    dead.assert_clean()  # no master, hop or agent of the run, no directory
    assert os.listdir(registry) == []


def test_shutdown_stops_a_connecting_run(tunnel, shutdown, registry, hung_server):
    run, state = start_connecting(tunnel, registry)
    done = shutdown()
    assert done.returncode == sd.EXIT_OK
    assert done.stderr == \
        f"Info: Closed the tunnel localhost:{state['local_port']} -> jtnone@srv:{hung_server} (pid {run.process.pid}).\n"
    assert run.wait() == jt.EXIT_INTERRUPTED and run.stderr.splitlines()[-1] == "Info: Interrupted."
    run.assert_clean()
    assert os.listdir(registry) == []


def test_force_kills_a_stuck_connecting_run_and_its_leftovers(tunnel, shutdown, registry, hung_server):
    run, state = start_connecting(tunnel, registry, "-a")
    os.kill(run.process.pid, signal.SIGSTOP)  # stuck: SIGINT cannot reach its cleanup
    done = shutdown("--timeout", "1", "--force", TMPDIR=run.tmp)
    assert done.returncode == sd.EXIT_OK
    assert done.stderr.splitlines()[-1] == f"Info: Killed the tunnel localhost:{state['local_port']} -> " \
        f"jtnone@srv:{hung_server} (pid {run.process.pid})."
    assert run.wait() == -signal.SIGKILL
    run.assert_clean()  # its master and agent, found through the entry read again, are gone
    assert os.listdir(registry) == []
    wait_for(lambda: port_is_free(state["local_port"]), 5, what="the killed run's local port to be free")

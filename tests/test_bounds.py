"""Issue 19: a hostile or broken remote must not hang, bloat or mislead the run.

Real remotes through the fixtures' sshd: a head whose "python" (``--python``) never answers
and never closes its output, streams output for ever, or writes one endless line; a runtime
file far larger than any Jupyter writes.  Each run must end by itself, within its time bound,
with one ``Error:`` line that names the stage, and stay small in memory.  Last, the helper
that bounds them (jupyter_tunnel.run_bounded), on local processes.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

import helpers
import jupyter_tunnel as jt
from helpers import kill_all, wait_for
from realenv import MULTI_USER
from tunnelrun import SCRIPT

MAX_RSS_KIB = 200 * 1024  # a generous bound: the tool needs ~30 MB; unbounded reads took GBs
# The tool runs with its address space limited: a regression that reads without bound then
# fails this test with a MemoryError, rather than the machine with an OOM.
ADDRESS_SPACE_LIMIT = 2 * 1024**3


class Ended(NamedTuple):
    """A run that ended by itself: exit code, stderr, seconds it took, its peak RSS (KiB)."""

    code: int
    stderr: str
    seconds: float
    max_rss_kib: int


def run_measured(config: Path, *args: str, timeout: float) -> Ended:
    """jupyter_tunnel.py with ``args``, to its end; its peak RSS from wait4 (the kernel's
    account of that process, not a sample)."""
    tmp = tempfile.mkdtemp(prefix="jtt-", dir="/tmp")
    env = dict(os.environ, TMPDIR=tmp, NO_COLOR="1", JUPYTER_TUNNEL_REGISTRY=tmp)
    env.pop("SSH_AUTH_SOCK", None)
    stderr_path = Path(tmp) / "stderr"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    started = time.monotonic()
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, str(SCRIPT), "-F", str(config), "-b", "none", *args],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                   preexec_fn=limit, start_new_session=True)
    try:
        pid, status, usage = wait_for(lambda: _reaped(process.pid), timeout, interval=0.1,
                                      what="the run to end by itself")
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        return Ended(process.returncode, stderr_path.read_text(), seconds, usage.ru_maxrss)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _reaped(pid: int):
    """(pid, status, rusage) once ``pid`` has exited (reaped by this call), else None."""
    found = os.wait4(pid, os.WNOHANG)
    return found if found[0] == pid else None


@pytest.fixture
def remote_programs(sshd) -> Iterator[Path]:
    """A directory jtmulti can read, for the programs a test gives as --python; what they
    left running on the remote (a program that never ends) is killed after the test."""
    path = Path(tempfile.mkdtemp(prefix="jt-hostile-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    uid = pwd.getpwnam(MULTI_USER).pw_uid
    kill_all(helpers.user_processes(uid, str(path)))
    wait_for(lambda: not helpers.user_processes(uid, str(path)), 10, what="the remote programs to go")
    shutil.rmtree(path, ignore_errors=True)


def program(directory: Path, name: str, body: str) -> str:
    """An executable sh script ``name`` in ``directory``; its path."""
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


# sleeps for ever with its stdout and stderr open (the marker: its directory, to be found and killed)
SLEEPS = "exec python3 -c 'import time; time.sleep(1000)' {dir}"


@pytest.mark.parametrize("body, said", [
    # never answers, never closes its output: the mux client killed at the deadline leaves
    # the pipes open in the master, so a read to EOF waited for ever
    (SLEEPS, "did not answer within 61 s"),
    # an endless answer: it was read whole into memory
    ("exec yes {dir}", "sent more than 4 MiB of output, which no answer of ours is"),
    # one endless line on stderr, then silence
    ("yes {dir} | tr -d '\\n' >&2", "wrote a line longer than 64 KiB on its standard error"),
], ids=["hangs", "endless-stdout", "endless-stderr-line"])
def test_a_head_python_that_hangs_or_floods_ends_the_run(sshd, remote_programs, body, said):
    python = program(remote_programs, "python", body.format(dir=remote_programs))
    # -w 1: jupyter_node.py gets --timeout + NODE_GRACE (60 s) in all, as for a hung scheduler
    ended = run_measured(sshd.config, "-s", f"{MULTI_USER}@srv", "--submit", "--python", python, "-w", "1",
                         timeout=1 + jt.NODE_GRACE + 60)
    assert ended.code == jt.EXIT_ERROR, ended.stderr
    [error] = [line for line in ended.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith(f"Error: jupyter_node.py on {MULTI_USER}@srv (submitting the job) {said}"), ended.stderr
    assert "Traceback" not in ended.stderr
    assert ended.seconds < 1 + jt.NODE_GRACE + 30  # its bound, and a generous margin
    assert ended.max_rss_kib < MAX_RSS_KIB, ended


def test_a_runtime_file_larger_than_any_answer_ends_the_discovery(sshd, forged_file):
    # a live "jupyter" process of jtmulti whose runtime file is 5 MB: the discovery prints it
    forged_file('{"port": 1, "x": "' + "x" * 5_000_000 + '", "pid": @PID@}')
    ended = run_measured(sshd.config, "-s", f"{MULTI_USER}@srv", timeout=60)
    assert ended.code == jt.EXIT_ERROR, ended.stderr
    [error] = [line for line in ended.stderr.splitlines() if line.startswith("Error: ")]
    assert error == (f"Error: looking for Jupyter servers on {MULTI_USER}@srv sent more than 4 MiB of output, "
                     "which no answer of ours is: stopped reading it"), ended.stderr
    assert ended.max_rss_kib < MAX_RSS_KIB, ended


# --- the helper on its own, with local processes (no ssh: quick, and no sshd needed) ---


def run_bounded(script: str, timeout: float = 30.0, stdin: bytes = b"") -> tuple[int, bytes, list[str]]:
    """jt.run_bounded on a local ``sh -c script`` (as a stand-in for a mux client: the bounds
    are the helper's own; the tests above check them through the real ssh)."""
    return jt.run_bounded(["sh", "-c", script], dict(os.environ), stdin, timeout, lambda line: True, "the test")


@pytest.mark.parametrize("script, said", [
    ("yes", "the test sent more than 4 MiB of output, which no answer of ours is: stopped reading it"),
    ("yes | tr -d '\\n' >&2", "the test wrote a line longer than 64 KiB on its standard error"),
    ("head -c 70000 /dev/zero | tr '\\0' x >&2; echo >&2", "the test wrote a line longer than 64 KiB"),
])
def test_run_bounded_stops_reading_at_its_caps(script, said):
    with pytest.raises(jt.TunnelError, match=said) as caught:
        run_bounded(script)
    assert caught.value.code == jt.EXIT_ERROR


# a sleep the test can find again (its argument is the test's own directory) and stop
SLEEP = "python3 -c 'import time; time.sleep(60)' {mark}"


@pytest.mark.parametrize("script", [
    "{sleep}",  # never ends
    # ends, but leaves its output open in another process, as the ssh master holds a mux
    # client's pipes after it is killed: a read to EOF waited for ever
    "{sleep} & exit 0",
    "exec 1>&- 2>&-; {sleep}",  # closes its output, never exits
])
def test_run_bounded_ends_at_its_deadline(script, tmp_path):
    started = time.monotonic()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            run_bounded(script.format(sleep=SLEEP.format(mark=tmp_path)), timeout=0.5)
        assert time.monotonic() - started < 10  # a generous bound
    finally:  # run_bounded kills the command it ran (sh), not what that left running
        kill_all(helpers.user_processes(os.getuid(), str(tmp_path)))


def test_run_bounded_answers():
    lines = "".join(f"echo line {n} >&2; " for n in range(jt.REMOTE_STDERR_LINES + 5))
    code, stdout, stderr = run_bounded(f"cat; {lines} printf 'no newline' >&2; exit 3", stdin=b"x" * 300_000)
    assert (code, len(stdout), stdout[:3]) == (3, 300_000, b"xxx")  # stdin larger than a pipe's buffer
    # the last lines only, the one without a newline included
    assert len(stderr) == jt.REMOTE_STDERR_LINES and stderr[-2:] == [f"line {jt.REMOTE_STDERR_LINES + 4}",
                                                                        "no newline"]
    kept = []
    jt.run_bounded(["sh", "-c", "echo 'debug1: x' >&2; echo 'reason' >&2"], dict(os.environ), b"", 30,
                   lambda line: kept.append(line) or not line.startswith("debug1:"), "the test")
    assert kept == ["debug1: x", "reason"]


# --- the same bounds without a master (StdioMaster): one shell runs every command ---


# A stand-in for the one ssh without a master: it listens on its -D port, as ssh does once
# logged in, and runs PROGRAM on its stdin and stdout (the remote shell).
FAKE_SSH = """#!{python}
import socket, subprocess, sys
port = int(sys.argv[sys.argv.index("-D") + 1].rpartition(":")[2])
listener = socket.socket()
listener.bind(("127.0.0.1", port))
listener.listen()
sys.exit(subprocess.call({program}))
"""


def stdio_master(tmp_path, program: list[str]) -> jt.StdioMaster:
    """A StdioMaster whose "ssh" is FAKE_SSH running ``program`` (a stand-in, as above: the bounds
    are the class's own; tests/test_no_control_master.py runs it through the real ssh and sshd)."""
    fake = tmp_path / "ssh"
    fake.write_text(FAKE_SSH.format(python=sys.executable, program=program))
    fake.chmod(0o755)
    return jt.StdioMaster(str(fake), jt.Route(("srv",)), str(tmp_path), dict(os.environ))


@pytest.fixture
def local_shell(tmp_path) -> Iterator[jt.StdioMaster]:
    """A StdioMaster open on a local sh."""
    master = stdio_master(tmp_path, ["sh"])
    master.open()
    yield master
    master.close()
    kill_all(helpers.user_processes(os.getuid(), str(tmp_path)))


def test_a_login_whose_shell_never_answers_is_an_error_in_time(tmp_path):
    master = stdio_master(tmp_path, ["sleep", "60"])  # an account whose fixed command runs no shell
    master.shell_timeout = 0.5
    try:
        with pytest.raises(jt.TunnelError, match=r"logged in to srv, but no shell answered within 0\.5 s") as caught:
            master.open()
        assert caught.value.code == jt.EXIT_CONNECT and not master.alive()
    finally:
        master.close()
        kill_all(helpers.user_processes(os.getuid(), str(tmp_path)))


def test_one_shell_answers_command_after_command(local_shell):
    kept: list[str] = []
    done = local_shell.run("cat | wc -c; echo 'Info: relayed' >&2; echo reason >&2; exit 4", stdin="x" * 300_000,
                           keep=lambda line: kept.append(line) or not line.startswith("Info:"))
    assert (done.returncode, done.stdout.strip(), done.stderr) == (4, b"300001", b"reason")  # the newline added
    assert kept == ["Info: relayed", "reason"]
    assert [local_shell.run(f"echo {n}").stdout for n in range(3)] == [b"0\n", b"1\n", b"2\n"]


def test_a_command_that_never_ends_spends_the_connection(local_shell, tmp_path):
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        local_shell.run(SLEEP.format(mark=tmp_path), timeout=0.5)
    assert time.monotonic() - started < 10
    assert not local_shell.alive()  # its shell is held: the run logs in again
    assert local_shell.run("echo late").returncode == 255  # as a mux client's, with its master gone


def test_a_command_that_sends_for_ever_is_cut(local_shell):
    with pytest.raises(jt.TunnelError, match="sent more than 4 MiB of output, which no answer of ours is"):
        local_shell.run("yes")
    assert not local_shell.alive()

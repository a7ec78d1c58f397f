"""No input gives a traceback: each bad value is one error line and a documented exit code.

Each case runs the real script as a user would (a subprocess).  These inputs fail while
the command line is read, before any login, so no sshd is needed; the inputs that come
from the remote (runtime files) are in tests/test_servers.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_node as jn
import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd

REPO = Path(__file__).resolve().parent.parent
TUNNEL = REPO / "jupyter_tunnel.py"
NODE = REPO / "jupyter_node.py"
SHUTDOWN = REPO / "jupyter_tunnel_shutdown.py"


def run(script: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    """The script with ``args``, in a private TMPDIR (whatever it creates shows there)."""
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, TMPDIR=str(tmp), NO_COLOR="1"), stdin=subprocess.DEVNULL)


def assert_usage_error(done: subprocess.CompletedProcess, prog: str, message: str) -> None:
    """argparse's answer: the usage, then one ``PROG: error: ...`` line; exit 2 (EXIT_USAGE of all three)."""
    assert done.returncode == jt.EXIT_USAGE == sd.EXIT_USAGE == jn.EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"usage: {prog} ")
    assert [line for line in lines if "error:" in line] == [lines[-1]]
    assert lines[-1].startswith(f"{prog}: error: ") and message in lines[-1], lines[-1]
    assert done.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["-b", ""], 'argument -b/--browser: empty browser command: give a program, or "none"'),
    (["-b", '"'], "argument -b/--browser: '\"' does not split into words like a shell command: no closing quotation"),
    (["--check-interval", "inf"], "argument --check-interval: expected seconds, more than 0 and at most 3600, "
                                  "not 'inf'"),
    (["--check-interval", "1e300"], "argument --check-interval: expected seconds, more than 0 and at most 3600"),
    (["--check-interval", "nan"], "argument --check-interval: expected seconds, more than 0 and at most 3600"),
    (["--timeout", "nan"], "argument -w/--timeout: expected seconds, more than 0 and at most 86400, not 'nan'"),
    (["--timeout=-inf"], "argument -w/--timeout: expected seconds"),
    (["--keepalive", "99999"], "argument --keepalive: expected a whole number from 1 to 3600"),
    (["--max-retries", "1e9"], "argument --max-retries: expected a whole number from 1 to 1000000"),
    (["-o", "User=me\nProxyCommand touch /tmp/x"], "argument -o/--ssh-option: control characters (a newline, "
                                                   "say) are not allowed"),
    (["-F", "/etc/ssh/ssh_config\nProxyCommand x"], "argument -F/--ssh-config: control characters"),
])
def test_tunnel_bad_values(tmp_path, args, message):
    assert_usage_error(run(TUNNEL, "-s", "srv", *args, tmp=tmp_path), "jupyter-tunnel", message)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--timeout", "nan"], "argument --timeout: expected seconds, more than 0 and at most 86400, not 'nan'"),
    (["--port", "1e999"], "argument --port: expected a whole number from 1 to 65535, not '1e999'"),
])
def test_shutdown_bad_values(tmp_path, args, message):
    assert_usage_error(run(SHUTDOWN, *args, tmp=tmp_path), "jupyter-tunnel-shutdown", message)


@pytest.mark.parametrize("args, message", [
    (["-l", "{tmp}"], "argument -l/--log: {tmp} is a directory: give a file name"),
    (["-l", "{tmp}/missing/job.log"], "argument -l/--log: no directory {tmp}/missing for the log "
                                      "{tmp}/missing/job.log"),
    (["-r", "-pe 'smp 4"], "argument -r/--resource: \"-pe 'smp 4\" does not split like a shell command: "
                           "no closing quotation"),
])
def test_node_bad_values(tmp_path, args, message):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert_usage_error(run(NODE, *args, tmp=tmp_path), "jupyter-node", message.replace("{tmp}", str(tmp_path)))
    assert os.listdir(tmp_path) == []  # no empty log left behind


@pytest.mark.integration  # root: it runs the script as another user
def test_node_log_in_a_directory_it_cannot_write():
    """Found only when the log is made (as a user who may not write there): one Error line."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="jtl-", dir="/tmp"))  # not under pytest's 0700 tmp_path
    try:
        top.chmod(0o755)
        locked = top / "locked"
        locked.mkdir(mode=0o555)
        bin_dir = top / "bin"  # a scheduler and jupyter on PATH, to get that far
        bin_dir.mkdir()
        for name in ("qrsh", "jupyter"):
            (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
            (bin_dir / name).chmod(0o755)
        done = subprocess.run([sys.executable, str(NODE), "--scheduler", "sge", "-l", str(locked / "job.log")],
                              capture_output=True, text=True, timeout=30, user="nobody", group="nogroup",
                              extra_groups=[], env={"PATH": f"{bin_dir}:/usr/bin:/bin", "NO_COLOR": "1"})
        assert (done.returncode, done.stderr) == (
            jn.EXIT_USAGE, f"Error: cannot write the log {locked / 'job.log'}: Permission denied\n")
        assert os.listdir(locked) == []
    finally:
        shutil.rmtree(top)


def test_main_in_process_gives_the_signal_handlers_back(tmp_path, monkeypatch):
    import signal

    import jupyter_tunnel as jt

    # a login that fails at once, without any network: the proxy command exits
    monkeypatch.setenv(sd.REGISTRY_ENV, str(tmp_path / "registry"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    before = {signum: signal.getsignal(signum) for signum in jt.HANDLED_SIGNALS}
    code = jt.main(["-s", "nowhere", "-o", "ProxyCommand=false", "-b", "none", "--no-reconnect"])
    assert code == jt.EXIT_CONNECT
    assert {signum: signal.getsignal(signum) for signum in jt.HANDLED_SIGNALS} == before
    assert [p.name for p in tmp_path.iterdir()] == ["registry"]  # the private dir is gone
    assert list((tmp_path / "registry").iterdir()) == []  # and the entry

"""Unit tests of --start's pure parts: the start script and the parsing of its answer."""

from __future__ import annotations

import os
import subprocess

import pytest

import jupyter_tunnel as jt
from helpers import kill_all

M = jt.MARK
FILE = '{"port": 8888, "token": "abc", "pid": 4242, "root_dir": "/home/u", "version": "2.21.1", "url": "http://127.0.0.1:8888/", "hostname": "127.0.0.1", "base_url": "/", "secure": false, "sock": ""}'


def test_conda_env_is_activated_by_conda_shell_posix_after_pre():
    script = jt.build_start_script(jt.StartOptions(pre=("module load anaconda",), conda_env="my env"), 60)
    load = script.index("command eval 'module load anaconda' </dev/null || fail 'failed: module load anaconda'")
    conda = script.index("""command eval 'eval "$(conda shell.posix activate '"'"'my env'"'"' || echo false)"' """
                         "</dev/null || fail")
    start = script.index('setsid "$J" lab --no-browser --ip=127.0.0.1 </dev/null 3>&- &')
    assert load < conda < start


@pytest.mark.parametrize("options, expected", [
    (jt.StartOptions(), ["J=jupyter", 'cd || fail', '"$J" lab --no-browser --ip=127.0.0.1']),
    (jt.StartOptions(app="notebook", jupyter="/opt/my venv/bin/jupyter", root_dir="/data/x y"),
     ["J='/opt/my venv/bin/jupyter'", "cd '/data/x y' || fail 'no directory /data/x y'", '"$J" notebook --no-browser']),
    # a user's command holding a placeholder is not filled in
    (jt.StartOptions(pre=("echo @MARK@ $HOME",)), ["command eval 'echo @MARK@ $HOME' </dev/null"]),
    # a directory that looks like an option of cd: "cd -L" would go home instead
    (jt.StartOptions(root_dir="-L"), ["cd ./-L || fail 'no directory -L'"]),
    (jt.StartOptions(root_dir="-"), ["cd ./- || fail 'no directory -'"]),
    (jt.StartOptions(root_dir="a-b"), ["cd a-b || fail"]),
])
def test_start_script_quotes_what_it_is_given(options, expected):
    script = jt.build_start_script(options, 30)
    for text in expected:
        assert text in script
    assert "[ $tries -le 300 ]" in script and "within 30 s" in script


def test_start_script_is_valid_sh():
    script = jt.build_start_script(jt.StartOptions(pre=("a; b # c", "x 'y'")), 5)
    assert subprocess.run(["sh", "-n"], input=script.encode(), capture_output=True).returncode == 0


@pytest.mark.parametrize("pre, failure, said", [
    # "." of a missing file ends a POSIX sh at once, before "|| fail": command eval keeps it going
    (". /nonexistent/activate", "failed: . /nonexistent/activate", "/nonexistent/activate"),
    ("true # a comment", "no-such-jupyter not found", ""),  # the comment eats nothing after it
    ("sleep 0 &", "no-such-jupyter not found", ""),  # a background command is no syntax error
    ("if", "failed: if", "syntax error"),  # a syntax error of the user's: the shell's words
])
def test_start_script_runs_each_pre_on_its_own(tmp_path, pre, failure, said):
    """Run for real with sh (dash on Debian): each --pre either fails with its own reason, or
    the script goes on to its next step (looking for jupyter)."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    script = jt.build_start_script(jt.StartOptions(jupyter="no-such-jupyter", pre=(pre,)), 5)
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env)
    result = jt.parse_start_output(done.stdout)
    assert result.failure.startswith(failure), done.stdout
    assert said in " ".join(result.tail).lower()  # the shell's own words, from the log


def test_start_script_reports_a_missing_jupyter(tmp_path):
    """Run for real with sh: no jupyter, so it fails before starting anything."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    script = jt.build_start_script(jt.StartOptions(jupyter="no-such-jupyter", pre=("echo activated",)), 5)
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env)
    result = jt.parse_start_output(done.stdout)
    assert result.failure.startswith("no-such-jupyter not found") and result.server is None
    assert result.tail == ("activated",)  # the log's lines
    state = tmp_path / ".local/state/jupyter-tunnel"
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert oct(os.stat(result.log).st_mode & 0o777) == "0o600" and os.path.dirname(result.log) == str(state)


@pytest.mark.parametrize("output, log, pid, failure, tail, port", [
    (f"{M} log /s/l\n{M} pid 4242\n{M} file /r/jpserver-4242.json\n{M} cmd python jupyter-lab\n{FILE}\n{M} end\n",
     "/s/l", 4242, "", (), 8888),
    (f"{M} log /s/l\n{M} pid 4242\n{M} fail the server exited\n{M} tail\nline 1\n{M} not a marker here\n",
     "/s/l", 4242, "the server exited", ("line 1", f"{M} not a marker here"), None),
    (f"{M} fail cannot create the directory /x\n", "", None, "cannot create the directory /x", (), None),
    # a runtime file of another pid is not the started server
    (f"{M} pid 7\n{M} file /r/jpserver-4242.json\n{FILE}\n{M} end\n", "", 7, "", (), None),
    (f"{M} pid 1\n", "", None, "", (), None),  # never init
    # its runtime file refused: which field and why, not "ssh gave no reason" (issue 22)
    (f"{M} pid 4242\n{M} file /r/jpserver-4242.json\n{FILE.replace('8888', '99999')}\n{M} end\n", "", 4242,
     "its runtime file was refused (skipping Jupyter runtime file /r/jpserver-4242.json: its port 99999 is not a "
     "whole number from 0 to 65535)", (), None),
    ("chatter from .profile\n", "", None, "", (), None),
])
def test_parse_start_output(output, log, pid, failure, tail, port):
    result = jt.parse_start_output(output)
    assert (result.log, result.pid, result.failure, result.tail) == (log, pid, failure, tail)
    assert (result.server.port if result.server else None) == port


def test_shutdown_request_carries_the_token():
    server = jt.Server(pid=1, port=8888, host="127.0.0.1", base_url="/x/", token="t0k", root_dir="/")
    request = jt.build_probe_request(server, "POST", "api/shutdown")
    assert request == (b"POST /x/api/shutdown HTTP/1.0\r\nHost: localhost\r\n"
                       b"Authorization: token t0k\r\nContent-Length: 0\r\n\r\n")


def test_start_with_node_is_refused(capsys):
    with pytest.raises(SystemExit) as exit:
        jt.main(["-s", "head", "-n", "node1", "--start"])
    assert exit.value.code == jt.EXIT_USAGE and "jupyter-node" in capsys.readouterr().err


@pytest.mark.parametrize("line, shown", [
    ("    http://127.0.0.1:8888/lab?token=5d24abc", "    http://127.0.0.1:8888/lab?token=…"),
    ("http://localhost:8888/tree?token=ab12&foo=1", "http://localhost:8888/tree?token=…&foo=1"),
    ("[E] address already in use", "[E] address already in use"),
])
def test_the_error_never_shows_a_token_from_the_log(line, shown):
    assert jt.TOKEN_RE.sub("token=…", line) == shown


@pytest.mark.parametrize("lines, expected", [
    ([], ""),
    (["", "  "], ""),
    (["  one  ", "", "two"], "; its log ends with: one | two"),
    (["http://127.0.0.1:8888/lab?token=abc123&x=1"], "; its log ends with: http://127.0.0.1:8888/lab?token=…&x=1"),
    ([str(n) for n in range(20)], "; its log ends with: " + " | ".join(str(n) for n in range(5, 20))),
])
def test_log_tail_in_an_error_is_short_and_masks_tokens(lines, expected):
    assert jt.format_log_tail(lines) == expected


@pytest.mark.parametrize("output, changed, pid", [
    (f"{M} wait\n{M} wait\n{M} changed 4242 4243\n", (4242, 4243), None),  # another run's server
    (f"{M} changed 1 x 99999999999\n", (1,), None),  # only pids pass
    (f"{M} log /s/l\n{M} pid 7\n", (), 7),
])
def test_parse_start_output_changed(output, changed, pid):
    result = jt.parse_start_output(output)
    assert (result.changed, result.pid, result.server) == (changed, pid, None)


@pytest.mark.parametrize("output, expect", [
    (f"{M} alive\n", None),
    (f"{M} gone exited right after writing its runtime file\n{M} tail\nboom\nTraceback\n",
     ("exited right after writing its runtime file", ("boom", "Traceback"))),
    (f"{M} gone runs, but its runtime file /r/jpserver-7.json is gone\n{M} tail\n",
     ("runs, but its runtime file /r/jpserver-7.json is gone", ())),
    ("", None),  # no answer (a lost connection): not a verdict
])
def test_parse_started_check(output, expect):
    assert jt.parse_started_check(output) == expect


# A fake jupyter for the real start script, run here with sh: it writes a valid runtime file
# for its own pid (the script starts it with setsid, which does not fork: $$ is $!) and then
# exits or stays, as FAKE_MODE says.
FAKE_JUPYTER = """#!/bin/sh
echo "fake jupyter: starting"
printf '{"port": 1, "token": "t", "pid": %s, "url": "http://127.0.0.1:1/", "base_url": "/"}' $$ \
    >"$JUPYTER_RUNTIME_DIR/jpserver-$$.json"
echo "fake jupyter: crashing"
[ "$FAKE_MODE" = exit ] || exec sleep 30
"""


@pytest.fixture
def remote(tmp_path):
    """A home, a runtime directory and a fake jupyter for running the start script with sh here."""
    jupyter = tmp_path / "jupyter"
    jupyter.write_text(FAKE_JUPYTER)
    jupyter.chmod(0o755)
    (tmp_path / "runtime").mkdir()
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "FAKE_MODE": "exit"}
    started: list[int] = []

    def run(known=(), timeout=5, **more_env) -> "jt.Started":
        script = jt.build_start_script(jt.StartOptions(jupyter=str(jupyter)), timeout, known)
        done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env={**env, **more_env},
                              timeout=60)
        result = jt.parse_start_output(done.stdout)
        if result.pid:
            started.append(result.pid)
        return result

    yield run
    kill_all(started, group=True)


def test_start_script_fails_for_a_server_that_dies_after_its_runtime_file(remote, tmp_path):
    result = remote()
    assert result.server is None and result.failure == "the server exited right after writing its runtime file"
    assert result.tail == ("fake jupyter: starting", "fake jupyter: crashing")
    assert list((tmp_path / "runtime").iterdir()) == []  # its runtime file removed
    assert not (tmp_path / ".local/state/jupyter-tunnel/start.lock").exists()  # the lock released


def lock_dir(home) -> "os.PathLike[str]":
    """The start lock of the account whose home is ``home``."""
    return home / ".local/state/jupyter-tunnel/start.lock"


def take_lock(home, owner: str) -> None:
    """Make the start lock as another run holds it."""
    lock = lock_dir(home)
    lock.mkdir(parents=True)
    (lock / "owner").write_text(owner + "\n")


def test_start_script_takes_over_the_lock_of_a_dead_run(remote, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    take_lock(tmp_path, f"{dead.pid} {os.uname().nodename} 1")
    result = remote(FAKE_MODE="stay")
    assert result.server is not None and result.failure == ""
    assert not lock_dir(tmp_path).exists()


def test_start_script_waits_for_a_live_lock_then_gives_up(remote, tmp_path, monkeypatch):
    monkeypatch.setattr(jt, "START_LOCK_GRACE", 1.0)
    take_lock(tmp_path, f"{os.getpid()} {os.uname().nodename} 1")  # this live process holds it
    result = remote(timeout=0.5)
    assert result.server is None and result.pid is None  # nothing started
    assert result.failure.startswith("another jupyter-tunnel --start of this account has held "
                                     f"{lock_dir(tmp_path)} for 1.5 s ({os.getpid()} ")
    assert lock_dir(tmp_path).exists()  # not ours to remove


def test_start_script_takes_over_an_old_lock_of_another_host(remote, tmp_path):
    take_lock(tmp_path, f"{os.getpid()} another-login-node 1")  # epoch 1: long past
    result = remote(FAKE_MODE="stay")
    assert result.server is not None


def test_start_script_starts_nothing_when_another_run_started_a_server(remote, tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "runtime" / f"jpserver-{other.pid}.json").write_text("{}")
        result = remote(known=[4242])
        assert (result.changed, result.pid, result.server) == ((other.pid,), None, None)
        assert not lock_dir(tmp_path).exists()
        # once the run knows it (it discovered again), it is no news
        result = remote(known=[4242, other.pid], FAKE_MODE="stay")
        assert result.changed == () and result.server is not None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("output, marks, tail", [
    ("", {}, ()),
    (f"chatty rc\n{jt.MARK} log /s/l\n{jt.MARK} pid 42\n", {"log": "/s/l", "pid": "42"}, ()),
    (f"{jt.MARK} fail it died\n{jt.MARK} tail\nline 1\n{jt.MARK} pid 9\n", {"fail": "it died"},
     ("line 1", f"{jt.MARK} pid 9")),  # after the tail marker, lines are the log's own
    (f"{jt.MARK} gone\n", {"gone": ""}, ()),
])
def test_parse_marks(output, marks, tail):
    assert jt.parse_marks(output) == (marks, tail)


def test_a_failing_pre_is_named_whole_backslashes_included(tmp_path):
    """The failure line is printf's, not echo's: dash's echo would turn a "\\n" in the user's
    command into a line break and cut the message."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    pre = r"printf 'a\nb' >/dev/null; false"
    script = jt.build_start_script(jt.StartOptions(jupyter="no-such-jupyter", pre=(pre,)), 5)
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env)
    assert jt.parse_start_output(done.stdout).failure == f"failed: {pre}", done.stdout

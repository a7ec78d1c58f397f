"""Unit tests of --start's pure parts: the start script and the parsing of its answer."""

from __future__ import annotations

import os
import subprocess

import pytest

import jupyter_tunnel as jt

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
    assert exit.value.code == 2 and "jupyter-node" in capsys.readouterr().err


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

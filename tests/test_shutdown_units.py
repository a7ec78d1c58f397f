"""Unit tests of jupyter_tunnel_shutdown's pure parts, by tables: no network, no tunnels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import jupyter_node as jn
import jupyter_tunnel_shutdown as sd

# A registry entry as build_state writes it (plus "file", added by read_states).
STATE = {
    "pid": 4242, "state": "ready", "hosts": ["gw", "u@srv"], "node": "", "local_port": 8889,
    "remote_host": "u@srv", "remote_port": 8888, "sock": "", "server_pid": 77, "root_dir": "/w",
    "started": 1700000000.5, "control_dir": "/tmp/jt-abc", "master_pid": 4243, "agent_pid": None,
    "file": "/run/user/1000/jupyter-tunnel/4242.json",
}
DIRECT = sd.RunningTunnel.from_state(dict(STATE, pid=1, hosts=["srv"], remote_host="srv", local_port=9000))
VIA_GW = sd.RunningTunnel.from_state(dict(STATE, started_server=True))
ON_NODE = sd.RunningTunnel.from_state(dict(STATE, pid=3, hosts=["gw", "head"], node="node1", job="4711",
                                           scheduler="sge", remote_host="node1", local_port=9001,
                                           forwards=[{"remote_port": 8787, "local_port": 8787},
                                                     {"remote_port": 6006, "local_port": 7006}]))
UNREGISTERED = sd.RunningTunnel.from_argv(4, ["python3", "./jupyter_tunnel.py", "-s", "gw", "srv:2222"])


@pytest.mark.parametrize("argv, expect", [
    (["python3", "./jupyter_tunnel.py", "-s", "srv"], True),  # run from a checkout (shebang)
    (["/venv/bin/python", "/venv/bin/jupyter-tunnel", "-s", "srv"], True),  # console script
    (["/usr/bin/python3.11", "-u", "-X", "dev", "/opt/jupyter_tunnel.py"], True),
    (["python3", "-m", "jupyter_tunnel", "-s", "srv"], True),
    (["python3", "-mjupyter_tunnel"], True),
    (["jupyter-tunnel", "-s", "srv"], True),  # a frozen build
    (["/Library/Frameworks/Python.framework/Resources/Python.app/Contents/MacOS/Python",
      "/usr/local/bin/jupyter-tunnel"], True),
    (["bash", "/home/u/bin/jupyter-tunnel.sh", "-s", "srv"], True),  # the original tool
    (["python3", "./jupyter_tunnel_shutdown.py"], False),  # never the shutdown script itself
    (["/venv/bin/python", "/venv/bin/jupyter-tunnel-shutdown", "--port", "8888"], False),
    (["/opt/jupyter-tunnel-test/bin/python", "-m", "pytest", "tests"], False),  # a mere mention
    (["vim", "jupyter_tunnel.py"], False),
    (["python3", "-m", "pytest", "jupyter_tunnel.py"], False),
    (["python3", "-c", "import jupyter_tunnel", "jupyter_tunnel.py"], False),
    (["sh", "-c", "jupyter-tunnel -s srv"], False),  # the shell that runs it is not the tunnel
    (["ssh", "-S", "/tmp/jt-x/c", "jupyter-tunnel"], False),
    (["python3"], False),
    ([], False),
])
def test_is_tunnel_argv(argv, expect):
    assert sd.is_tunnel_argv(argv) is expect


@pytest.mark.parametrize("argv, hosts, node", [
    (["python3", "jupyter_tunnel.py", "-s", "gw", "srv", "-b", "none"], ("gw", "srv"), ""),
    (["python3", "jupyter_tunnel.py", "-b", "none", "--host", "gw,head", "-n", "node1"], ("gw", "head"), "node1"),
    (["jupyter-tunnel", "-s", "gw srv", "--node=n2"], ("gw", "srv"), "n2"),
    (["python3", "-m", "jupyter_tunnel", "--host=srv"], ("srv",), ""),
    (["jupyter-tunnel", "-ssrv", "--port", "8888"], ("srv",), ""),
    (["jupyter-tunnel", "--port", "8888"], (), ""),
])
def test_hosts_from_argv(argv, hosts, node):
    assert sd.hosts_from_argv(argv) == (hosts, node)


@pytest.mark.parametrize("host, parts", [
    ("srv", ("", "srv", "")),
    ("u@srv", ("u", "srv", "")),
    ("u@srv:2222", ("u", "srv", "2222")),
    ("ssh://u@srv:2222", ("u", "srv", "2222")),
    ("a@b@srv", ("a@b", "srv", "")),
    ("fe80::1", ("", "fe80::1", "")),
])
def test_split_host(host, parts):
    assert jn.split_host(host) == parts


@pytest.mark.parametrize("pattern, host, expect", [
    ("srv", "srv", True),
    ("srv", "u@srv:2222", True),  # the user and port left out match any
    ("u@srv", "u@srv:2222", True),
    ("v@srv", "u@srv", False),
    ("srv:22", "srv:2222", False),
    ("srv", "srv2", False),  # whole names only
    ("", "srv", False),
    ("srv", "", False),
])
def test_host_matches(pattern, host, expect):
    assert sd.host_matches(pattern, host) is expect


ALL = [DIRECT, VIA_GW, ON_NODE, UNREGISTERED]


@pytest.mark.parametrize("ports, hosts, pids", [
    ([], [], [1, 4242, 3, 4]),
    ([8889], [], [4242]),
    ([9000, 9001], [], [1, 3]),
    ([1234], [], []),
    ([], ["gw"], [4242, 3, 4]),  # a jump host matches too
    ([], ["srv"], [1, 4242, 4]),  # u@srv and srv:2222 included
    ([], ["node1"], [3]),
    ([], ["head", "srv"], [1, 4242, 3, 4]),
    ([8889], ["srv"], [4242]),  # both must match
    ([9000], ["gw"], []),
])
def test_select_tunnels(ports, hosts, pids):
    assert [t.pid for t in sd.select_tunnels(ALL, ports, hosts)] == pids


@pytest.mark.parametrize("tunnel, text", [
    (DIRECT, "tunnel localhost:9000 -> srv:8888"),
    (VIA_GW, "tunnel localhost:8889 -> u@srv:8888 via gw"),
    (ON_NODE, "tunnel localhost:9001 -> node1:8888 via gw, head"),
    (sd.RunningTunnel.from_state(dict(STATE, remote_port=0, sock="/tmp/j.sock")),
     "tunnel localhost:8889 -> u@srv:/tmp/j.sock via gw"),
    (UNREGISTERED, "unregistered tunnel to srv:2222 via gw"),
    (sd.RunningTunnel.from_state(dict(STATE, state="connecting", local_port=None, remote_port=None)),
     "connecting tunnel to u@srv via gw"),
    (sd.RunningTunnel.from_state(dict(STATE, state="connecting")),  # reconnecting: its port is known
     "tunnel localhost:8889 -> u@srv:8888 via gw"),
    (sd.RunningTunnel.from_argv(5, ["jupyter-tunnel"]), "unregistered tunnel"),
])
def test_describe(tunnel, text):
    assert tunnel.describe() == text


def test_from_state_drops_odd_fields():
    tunnel = sd.RunningTunnel.from_state({"pid": "12", "hosts": "srv", "local_port": "x", "started": None})
    assert (tunnel.pid, tunnel.hosts, tunnel.local_port, tunnel.started) == (12, (), None, None)
    assert tunnel.registered and not UNREGISTERED.registered


def test_to_json_has_the_same_keys_for_all_and_no_token():
    registered, unregistered = VIA_GW.to_json(), UNREGISTERED.to_json()
    assert registered.keys() == unregistered.keys()
    assert (registered["pid"], registered["local_port"], registered["hosts"], registered["registered"],
            registered["state"], registered["started_server"]) == (4242, 8889, ["gw", "u@srv"], True, "ready", True)
    assert (unregistered["local_port"], unregistered["registered"], unregistered["command"],
            unregistered["state"], unregistered["started_server"]) == \
        (None, False, "python3 ./jupyter_tunnel.py -s gw srv:2222", None, None)
    assert "token" not in json.dumps([registered, unregistered])


def test_server_column_is_unknown_until_the_run_has_its_server():
    connecting = sd.RunningTunnel.from_state(dict(STATE, state="connecting", server_pid=None))
    assert (connecting.started_server, ON_NODE.started_server, VIA_GW.started_server) == (None, False, True)
    assert sd.table_row(connecting)[5] == "?"


def test_table():
    rows = [sd.TABLE_COLUMNS, sd.table_row(VIA_GW), sd.table_row(ON_NODE), sd.table_row(UNREGISTERED)]
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(STATE["started"]))
    assert jn.format_table(rows).splitlines() == [
        "PID   LOCAL PORT  HOSTS        NODE   REMOTE  SERVER   JOB   TIME LEFT      STATE  STARTED              FORWARDS",
        f"4242  8889        gw,u@srv     -      8888    started  -     -              ready  {started}  -",
        f"3     9001        gw,head      node1  8888    found    4711  no time limit  ready  {started}  8787->8787,7006->6006",
        "4     ?           gw,srv:2222  -      ?       ?        -     -              ?      ?                    -",
    ]
    assert jn.format_table([]) == ""


def test_table_escapes_what_the_registry_says():
    """An entry's hosts could hold anything: no newline or ESC reaches the terminal raw."""
    forged = sd.RunningTunnel.from_state(dict(STATE, hosts=["gw\nInfo: forged", "\x1b[2Jsrv"], node="n\r1"))
    table = jn.format_table([sd.TABLE_COLUMNS, sd.table_row(forged)])
    assert len(table.splitlines()) == 2
    assert "\x1b" not in table and "\r" not in table
    assert "gw\\nInfo: forged,\\x1b[2Jsrv" in table and "n\\r1" in table


@pytest.mark.parametrize("ours, environ, expect", [
    ("", None, True),  # no override: every tunnel of the user
    ("", {"JUPYTER_TUNNEL_REGISTRY": "/tmp/a"}, True),
    ("/tmp/a", {"JUPYTER_TUNNEL_REGISTRY": "/tmp/a"}, True),
    ("/tmp/a", {"JUPYTER_TUNNEL_REGISTRY": "/tmp/b"}, False),  # another set of tunnels
    ("/tmp/a", {}, False),
    ("/tmp/a", None, False),  # cannot tell: leave it alone
])
def test_in_registry_scope(ours, environ, expect):
    assert sd.in_registry_scope(ours, environ) is expect


def test_proc_parsers():
    status = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1000\t1000\nGid:\t1000\n"
    assert sd.parse_status_uid(status) == 1000
    assert sd.parse_status_uid("Name:\tx\n") is None
    assert sd.split_cmdline(b"python3\0./jupyter_tunnel.py\0-s\0gw srv\0") == \
        ["python3", "./jupyter_tunnel.py", "-s", "gw srv"]
    assert sd.split_cmdline(b"") == []  # a zombie
    assert sd.parse_environ(b"A=1\0B=x=y\0junk\0") == {"A": "1", "B": "x=y"}
    ps = " 123   501 /usr/bin/python3 /usr/local/bin/jupyter-tunnel -s srv\n  7 0 -bash\nbad line\n"
    assert sd.parse_ps(ps) == [(123, 501, ["/usr/bin/python3", "/usr/local/bin/jupyter-tunnel", "-s", "srv"]),
                               (7, 0, ["-bash"])]


def uid_without_run_user() -> int:
    """A uid that has no /run/user/UID directory on this machine (no login session)."""
    return next(uid for uid in range(2**31 - 2, 2**31 - 100, -1) if not os.path.exists(f"/run/user/{uid}"))


def test_registry_dirs(monkeypatch, tmp_path):
    """Right whatever this machine has under /run/user (a desktop session, root over ssh on systemd)."""
    monkeypatch.setenv(sd.REGISTRY_ENV, str(tmp_path))
    assert sd.registry_dirs() == [str(tmp_path)]  # the override is the one place
    monkeypatch.delenv(sd.REGISTRY_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = str(tmp_path / "cache" / "jupyter-tunnel")
    session = f"/run/user/{os.getuid()}"
    # a desktop session: its runtime dir first, then the places other environments use
    (tmp_path / "xdg").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert sd.registry_dirs() == [str(tmp_path / "xdg" / "jupyter-tunnel"), f"{session}/jupyter-tunnel", cache]
    # cron and sleep hooks have no XDG_RUNTIME_DIR: a session's dir of ours is still the usual
    # place, and read in any case
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    ours = os.path.isdir(session) and os.stat(session).st_uid == os.getuid()
    usual = [f"{session}/jupyter-tunnel", cache]
    assert sd.registry_dirs() == (usual if ours else usual[::-1])
    # and for a user with no session at all, the cache first
    uid = uid_without_run_user()
    monkeypatch.setattr(os, "getuid", lambda: uid)
    assert sd.registry_dirs() == [cache, f"/run/user/{uid}/jupyter-tunnel"]


@pytest.mark.parametrize("argv, message", [
    (["--list", "--force"], "--force stops tunnels: it cannot go with --list/--json"),
    (["--json", "-f"], "--force stops tunnels"),
    (["--timeout", "0"], "argument --timeout: expected seconds, more than 0 and at most 86400, not '0'"),
    (["--timeout", "nan"], "argument --timeout: expected seconds, more than 0 and at most 86400, not 'nan'"),
    (["--port", "0"], "argument --port: expected a whole number from 1 to 65535, not '0'"),
    (["--port", "http"], "argument --port: expected a whole number from 1 to 65535, not 'http'"),
    (["srv"], "unrecognized arguments: srv"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sd.main(argv)
    assert exit_info.value.code == sd.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sd.main(["--help"])
    assert exit_info.value.code == sd.EXIT_OK
    out = capsys.readouterr().out
    assert "exit codes: 0 all stopped (or none was running), 1 some did not stop" in out
    assert "--force" in out and "--list" in out and "--port LPORT" in out and "--host HOST" in out


def test_nothing_registered(monkeypatch, tmp_path, capsys):
    # an empty registry of its own: the scan then takes only tunnels started with it, so none
    monkeypatch.setenv(sd.REGISTRY_ENV, str(tmp_path))
    monkeypatch.setenv("NO_COLOR", "1")
    assert sd.main([]) == sd.EXIT_OK
    assert capsys.readouterr().err == "Info: No tunnel is running.\n"
    assert sd.main(["--json"]) == sd.EXIT_OK
    assert json.loads(capsys.readouterr().out) == []
    assert sd.main(["--list"]) == sd.EXIT_OK
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "Info: No tunnel is running.\n")


@pytest.mark.parametrize("job, job_end, now, cell, seconds", [
    ("", None, 0, "-", None),
    ("4711", None, 0, "no time limit", None),  # or none known
    ("4711", 5399.5, 0, "1 h 29 min", 5399),
    ("4711", 2 * 86400 + 3 * 3600, 0, "2 d 3 h", 2 * 86400 + 3 * 3600),
    ("4711", 10, 20, "0 s", 0),  # past its end: the tunnel closes at once
])
def test_time_left_column(job, job_end, now, cell, seconds):
    assert sd.time_left_cell(job, job_end, now) == cell
    assert sd.time_left(job_end, now) == (seconds if job_end is not None else None)


def test_job_fields_from_the_registry_are_checked():
    tunnel = sd.RunningTunnel.from_state(dict(STATE, job="4711;rm -rf ~", scheduler="pbs", job_end="soon"))
    assert (tunnel.job, tunnel.scheduler, tunnel.job_end) == ("", "", None)
    for end in ("nan", float("inf"), "-inf", "1e999"):  # a number no time can be computed from
        tunnel = sd.RunningTunnel.from_state(dict(STATE, job="4711", job_end=end))
        assert tunnel.job_end is None and tunnel.to_json()["time_left"] is None
        assert sd.table_row(tunnel)[7] == "no time limit"
    tunnel = sd.RunningTunnel.from_state(dict(STATE, job="81234_3", scheduler="slurm", job_end=time.time() + 600))
    info = tunnel.to_json()
    assert (info["job"], info["scheduler"]) == ("81234_3", "slurm") and 590 <= info["time_left"] <= 600
    assert VIA_GW.to_json()["job"] is None and VIA_GW.to_json()["time_left"] is None


@pytest.mark.parametrize("started", [float("nan"), float("inf"), 1e20, "x", None])
def test_a_registry_start_time_that_is_no_time_shows_as_unknown(started):
    tunnel = sd.RunningTunnel.from_state({"pid": 4242, "hosts": ["srv"], "started": started})
    assert sd.table_row(tunnel)[sd.TABLE_COLUMNS.index("STARTED")] == "?"


# What a damaged registry entry may hold in any field: numbers no float or int takes, NaN,
# a 400-digit integer, and values of the wrong type.
DAMAGED_VALUES = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" + "0" * 400, '"x"', "[1, [2]]",
                  "{}", "true", "null", '"\\u001b[31m"']
FIELDS = ["hosts", "node", "local_port", "remote_host", "remote_port", "sock", "root_dir", "started", "state",
          "started_server", "server_pid", "job", "scheduler", "job_end", "control_dir", "master_pid",
          "agent_pid", "shared_forward"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", DAMAGED_VALUES)
def test_a_damaged_field_is_listed_without_a_traceback(field, value):
    state = sd.parse_state(f'{{"pid": 4242, "state": "ready", "{field}": {value}}}'.encode())
    tunnel = sd.RunningTunnel.from_state({**state, "file": "/r/4242.json"})
    assert tunnel.pid == 4242
    json.dumps(tunnel.to_json(), allow_nan=False)  # --json prints valid JSON
    assert jn.format_table([sd.TABLE_COLUMNS, sd.table_row(tunnel)])
    assert tunnel.describe()
    if field == "started":
        assert sd._number(state["started"]) == 0.0  # the sort key: not a finite number, so 0


@pytest.mark.parametrize("text", ["1e400", "NaN", "[4242]", '{"pid": 1e400}', '{"pid": NaN}', '{"pid": "4242"}',
                                  '{"pid": ' + "1" * 400 + "}", "[" * 100000, "\\xff\\xfe{}", ""])
def test_an_entry_that_is_no_entry_is_skipped(text):
    data = text.encode().decode("unicode_escape").encode("latin-1")
    assert sd.parse_state(data) is None


@pytest.mark.parametrize("tunnel, text", [
    (VIA_GW, "the tunnel localhost:8889 -> u@srv:8888 via gw (pid 4242)"),
    (UNREGISTERED, "the unregistered tunnel to srv:2222 via gw (pid 4)"),
    (sd.RunningTunnel.from_state(dict(STATE, state="connecting", local_port=None, remote_port=None)),
     "the connecting tunnel to u@srv via gw (pid 4242)"),
])
def test_name_is_the_subject_of_the_messages(tunnel, text):
    assert tunnel.name() == text and tunnel.name(first=True) == "T" + text[1:]


class ChildTunnel(sd.RunningTunnel):
    """A RunningTunnel that is a child process of the test (alive until it exits)."""

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
        except OSError:
            return False


def test_stop_tunnels_says_closed_for_sigint_and_killed_only_for_sigkill(monkeypatch, capsys):
    monkeypatch.setenv("NO_COLOR", "1")
    # one honours SIGINT (Python's KeyboardInterrupt ends it), one ignores it as a stuck tunnel would
    polite = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stuck = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, "
                              "signal.SIG_IGN); print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        for child in (polite, stuck):
            child.stdout.readline()  # its handlers are set up
        tunnels = [ChildTunnel(child.pid, ("srv",), remote_host="srv", local_port=port, remote_port=8888,
                               phase="ready", state={"pid": child.pid})  # registered
                   for child, port in ((polite, 9000), (stuck, 9001))]
        assert sd.stop_tunnels(tunnels, 0.5, force=True) == sd.EXIT_OK
        assert capsys.readouterr().err.splitlines() == [
            f"Info: Closed the tunnel localhost:9000 -> srv:8888 (pid {polite.pid}).",
            f"Warning: the tunnel localhost:9001 -> srv:8888 (pid {stuck.pid}) did not close within 0.5 s: "
            "killing it (SIGKILL)",
            f"Info: Killed the tunnel localhost:9001 -> srv:8888 (pid {stuck.pid}).",
        ]
        assert polite.wait(5) != 0 and stuck.wait(5) == -signal.SIGKILL
    finally:
        for child in (polite, stuck):
            child.kill()
            child.wait()

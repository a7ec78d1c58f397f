"""Unit tests of the registry's pure parts, by tables: what proves that a process or a
directory named by a registry entry is a dead tunnel's own leftover (no processes here)."""

from __future__ import annotations

import os
import stat
import shutil
import threading

import pytest

import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd

DIR = "/tmp/jt-a1b_c9zq"
ROUTES = [jt.Route(("srv",)), jt.Route(("gw", "head", "u@srv:2222")), jt.Route(("gw", "head"), "node1")]


@pytest.mark.parametrize("route", ROUTES, ids=["direct", "jumps", "node"])
def test_the_masters_the_tool_starts_are_recognised(route):
    argv = jt.build_master_argv("/usr/bin/ssh", f"{DIR}/ssh_config", f"{DIR}/c", route)
    assert sd.is_master_argv(argv, DIR)
    assert sd.is_master_argv([*argv[:1], "-vv", *argv[1:]], DIR)  # ssh's own debug output asked for
    assert not sd.is_master_argv(argv, "/tmp/jt-otherdir")  # another run's master
    assert not sd.is_agent_argv(argv, DIR)


MASTER = jt.build_master_argv("/usr/bin/ssh", f"{DIR}/ssh_config", f"{DIR}/c", jt.Route(("srv",)))


@pytest.mark.parametrize("argv", [
    ["/usr/bin/sleep", "600", f"{DIR}/c"],  # merely mentions the socket
    ["python3", "-c", "import time; time.sleep(600)", *MASTER[1:]],  # the shape, but not ssh
    ["/usr/bin/ssh-keygen", *MASTER[1:]],
    [m for m in MASTER if m != "-M"],  # not a master
    [*MASTER[:-1], "srv", "sleep", "600"],  # runs a command: not ours
    [*MASTER[:-1], "-L", "8888:localhost:8888", "srv"],  # an option the tool never gives
    [*MASTER[:-1], "-oProxyCommand=x", "srv"],
    [x.replace("ControlPersist=no", "ControlPersist=yes") for x in MASTER],  # it would have forked
    [x.replace(f"{DIR}/c", f"{DIR}/../c") for x in MASTER],
    [x.replace(f"{DIR}/ssh_config", "/etc/ssh/ssh_config") for x in MASTER],
    [*MASTER[:5], f"{DIR}/c", "-S", f"{DIR}/c", *MASTER[5:]],  # -S twice
    MASTER[:-1],  # no destination: its last word is an option's value
    ["ssh"],
    [],
])
def test_other_command_lines_are_not_a_master(argv):
    assert not sd.is_master_argv(argv, DIR)


@pytest.mark.parametrize("argv, expect", [
    (["/usr/bin/ssh-agent", "-D", "-a", f"{DIR}/a"], True),
    (["ssh-agent", "-D", "-a", f"{DIR}/a"], True),
    (["/usr/bin/ssh-agent", "-D", "-a", "/tmp/jt-otherdir/a"], False),
    (["/usr/bin/ssh-agent", "-a", f"{DIR}/a"], False),  # a forking agent: not the tool's
    (["/usr/bin/ssh-agent", "-D", "-a", f"{DIR}/a", "-t", "1"], False),
    (["/usr/bin/sleep", "-D", "-a", f"{DIR}/a"], False),
    (["python3", "ssh-agent", "-D", "-a", f"{DIR}/a"], False),
    ([], False),
])
def test_is_agent_argv(argv, expect):
    assert sd.is_agent_argv(argv, DIR) is expect


@pytest.mark.parametrize("path, expect", [
    ("/tmp/jt-a1b_c9zq", True),
    ("/var/tmp/u/jt-abcdefgh", True),  # the temp dir the tool uses
    ("/", False),
    ("/tmp", False),
    ("/home/u/jt-abcdefgh", False),  # the right name, elsewhere
    ("/tmp/../home/u/jt-abcdefgh", False),
    ("/tmp/x/../jt-abcdefgh", False),  # not normalised: never guess what is meant
    ("/tmp/jt-abcdefgh/", False),
    ("tmp/jt-abcdefgh", False),
    ("/tmp/jt-abcdefg", False),  # mkdtemp's suffix has 8 characters
    ("/tmp/jt-abcdefghi", False),
    ("/tmp/jt-ABCDEFGH", False),  # of its alphabet
    ("/tmp/jt-abc.efgh", False),
    ("/tmp/xx-abcdefgh", False),
    ("", False),
    (None, False),
    (["/tmp/jt-abcdefgh"], False),
])
def test_is_private_dir_path(path, expect):
    assert sd.is_private_dir_path(path, ["/var/tmp/u", "/tmp"]) is expect


@pytest.mark.parametrize("mode, owner, problem", [
    (stat.S_IFDIR | 0o700, 1000, ""),
    (stat.S_IFDIR | 0o755, 1000, "its mode is 0755, not 0700"),
    (stat.S_IFDIR | 0o1777, 1000, "its mode is 1777, not 0700"),
    (stat.S_IFDIR | 0o770, 1000, "its mode is 0770, not 0700"),
    (stat.S_IFDIR | 0o700, 1002, "it belongs to uid 1002"),
    (stat.S_IFLNK | 0o777, 1000, "it is a symbolic link"),
    (stat.S_IFREG | 0o700, 1000, "it is not a directory"),
])
def test_private_dir_problem(mode, owner, problem):
    assert sd.private_dir_problem(mode, owner, 1000) == problem


@pytest.mark.parametrize("value, pid", [
    (4242, 4242), (2, 2), (1, None), (0, None), (-5, None), (True, None), ("4242", None),
    (4242.0, None), (None, None), (2**31, None), ([4242], None),
])
def test_as_pid(value, pid):
    assert sd.as_pid(value) == pid


def test_parse_status_field():
    status = "Name:\tssh\nUmask:\t0022\nPid:\t77\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\n"
    assert (sd.parse_status_field(status, "PPid"), sd.parse_status_field(status, "Pid")) == (1, 77)
    assert sd.parse_status_field(status, "Gid") is None


def test_entry_of_a_connecting_run():
    server = jt.Server(pid=77, port=8888, host="localhost", base_url="/", token="secret", root_dir="/w")
    state = sd.build_state(4242, ("gw", "srv"), "", "srv", DIR, 1700000000.5)
    assert (state["state"], state["local_port"], state["master_pid"], state["control_dir"]) == \
        ("connecting", None, None, DIR)
    state.update(jt.build_forward_state(server, 8889))  # still connecting: waiting for the server
    assert (state["state"], state["local_port"], state["remote_port"], state["server_pid"]) == \
        ("connecting", 8889, 8888, 77)
    assert "secret" not in repr(state)


def _fifo(path) -> None:
    os.mkfifo(path)


def _huge(path) -> None:
    path.write_bytes(b'{"pid": 4242, "pad": "' + b"x" * (sd.MAX_STATE_BYTES + 10) + b'"}')


@pytest.mark.parametrize("make, expect", [
    (lambda path: path.write_text('{"pid": 4242, "state": "ready"}'), 4242),
    (lambda path: path.write_text('{"pid": 4242, "local_port": 1e400, "started": NaN}'), 4242),  # read; fields checked later
    (_fifo, None),  # a plain open() blocks until a writer comes: for ever
    (lambda path: path.mkdir(), None),  # a directory named x.json
    (_huge, None),
    (lambda path: path.write_bytes(b'{"pid": 4242, "hosts": ["\xff\xfe"]}'), None),  # not UTF-8
    (lambda path: path.write_text("[4242]"), None),
    (lambda path: path.write_text('{"pid": 1e400}'), None),
    (lambda path: path.write_text("[" * 100000), None),
    (lambda path: path.symlink_to("/etc/hostname"), None),  # never followed
], ids=["entry", "odd-fields", "fifo", "directory", "huge", "not-utf8", "list", "pid-1e400", "deep", "symlink"])
def test_read_state_never_hangs_on_a_damaged_entry(tmp_path, make, expect):
    path = tmp_path / "4242.json"
    make(path)
    found: list = []

    def read() -> None:
        try:
            found.append(sd.read_state(str(path)))
        except Exception as error:  # a traceback in the tool
            found.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    try:
        assert found, "read_state hung"
    finally:
        if reader.is_alive():  # unblock the old code's open() of the FIFO, which waits for a writer
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    state = found[0]
    assert not isinstance(state, Exception), repr(state)
    assert (state and state["pid"]) == expect
    if state:
        assert state["file"] == str(path)


def _lock_fifo(directory: str) -> None:
    os.mkfifo(os.path.join(directory, sd.RUN_LOCK))


@pytest.mark.parametrize("prepare, pid, expect", [
    (lambda d: sd.take_run_lock(d), "me", True),  # held by this process, which its file names
    (lambda d: sd.take_run_lock(d), "parent", False),  # held, but the entry names another pid
    (lambda d: os.close(sd.take_run_lock(d)), "me", False),  # released: the run is gone
    (lambda d: None, "me", False),  # no lock file
    (_lock_fifo, "me", False),  # never a wait on a FIFO
    (lambda d: os.chmod(d, 0o755) or sd.take_run_lock(d), "me", False),  # not a private directory
], ids=["held", "other-pid", "released", "none", "fifo", "loose-dir"])
def test_holds_run_lock(prepare, pid, expect):
    directory = sd.make_private_dir()
    try:
        held = prepare(directory)
        assert sd.holds_run_lock(os.getpid() if pid == "me" else os.getppid(), directory) is expect
        assert sd.is_live_run({"pid": os.getpid(), "control_dir": directory}) is (expect or pid == "parent")
        if isinstance(held, int):
            os.close(held)
    finally:
        shutil.rmtree(directory)


STDIO = jt.build_stdio_argv("/usr/bin/ssh", f"{DIR}/ssh_config", 40123, jt.Route(("srv",)))


@pytest.mark.parametrize("route", ROUTES, ids=["direct", "jumps", "node"])
def test_the_one_ssh_without_a_master_is_recognised(route):
    argv = jt.build_stdio_argv("/usr/bin/ssh", f"{DIR}/ssh_config", 40123, route)
    assert sd.is_master_argv(argv, DIR) and sd.is_master_argv([*argv[:1], "-vv", *argv[1:]], DIR)
    assert not sd.is_master_argv(argv, "/tmp/jt-otherdir")


@pytest.mark.parametrize("argv", [
    [*STDIO[:-1], "bash"],  # another remote command
    STDIO[:-1],  # none: not the shape of either
    [x.replace("127.0.0.1:40123", "0.0.0.0:40123") for x in STDIO],  # a SOCKS port for the network
    [x.replace("127.0.0.1:40123", "40123") for x in STDIO],
    [*STDIO[:3], "-D", "127.0.0.1:40124", *STDIO[3:]],  # two SOCKS ports
    [x for x in STDIO if x not in ("-o", "ControlPath=none")],  # it could ride or be a master
    [*STDIO[:3], "-M", *STDIO[3:]],
    [*STDIO[:3], "-S", f"{DIR}/c", *STDIO[3:]],
    [*MASTER[:-1], "-D", "127.0.0.1:40123", "srv"],  # a master with a SOCKS port: never the tool's
])
def test_other_command_lines_are_not_the_one_ssh(argv):
    assert not sd.is_master_argv(argv, DIR)

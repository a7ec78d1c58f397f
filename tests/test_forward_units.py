"""Unit tests of ``--forward PORT[:LOCAL]`` (issue 24), by tables: the option, where each forward
leads (node or not), the forward asked of the master, the probe that tells whether something
answers (against real local sockets that do what ssh does), the Info lines, ``--json`` and the
registry's fields as jupyter-tunnel-shutdown reads them."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections import deque

import pytest

import jupyter_node as jn
import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd


def forwards_of(*args: str) -> tuple:
    """Settings.forwards for a command line."""
    return jt.settings_from(jt.build_parser().parse_args(["-s", "srv", *args])).forwards


@pytest.mark.parametrize("args, forwards", [
    ([], ()),
    (["--forward", "8787"], ((8787, None),)),
    (["--forward", "6006:7006"], ((6006, 7006),)),
    (["--forward=1:65535", "--forward", "65535:1"], ((1, 65535), (65535, 1))),
    (["--forward", "8787", "--forward", "6006", "--forward", "8787"], ((8787, None), (6006, None))),  # each once
    (["--forward", "8787", "--forward", "8787:8787"], ((8787, None), (8787, 8787))),  # not the same ask
])
def test_forward_option(args, forwards):
    assert forwards_of(*args) == forwards


@pytest.mark.parametrize("text", ["0", "65536", "8787:0", "8787:65536", "x", "8787:", ":8787", "8787:1:2", "",
                                  "8787 6006", "-1", "1e3", "8787:x"])
def test_forward_option_refuses(text, capsys):
    with pytest.raises(SystemExit) as caught:
        jt.build_parser().parse_args(["-s", "srv", f"--forward={text}"])
    assert caught.value.code == jt.EXIT_USAGE
    assert (f"argument --forward: expected PORT or PORT:LOCAL, each a whole number from 1 to 65535, not {text!r}"
            in capsys.readouterr().err)


def test_forward_is_a_profile_key_in_its_group():
    parser = jt.build_parser()
    action = jn.profile_keys(parser)["forward"]
    assert action is not None and action.dest == "forward"
    [group] = [group for group in parser._action_groups if action in group._group_actions]
    assert group.title == "the browser and the local port"


@pytest.mark.parametrize("port, node, target", [
    (8787, "", "localhost:8787"),  # the target's sshd resolves it
    (6006, "node7", "node7:6006"),  # from the head
    (6006, "node7.cluster.example", "node7.cluster.example:6006"),
    (8787, "fe80::1", "[fe80::1]:8787"),
    (8787, "[fe80::1]", "[fe80::1]:8787"),
])
def test_extra_target(port, node, target):
    assert jt.extra_target(port, node) == target


class RecordingMaster(jt.Master):
    """A Master whose control requests are recorded and answered as given (no ssh is run): the spec
    asked for, and what the run makes of ssh's answer."""

    def __init__(self, route: jt.Route, directory: str, answer: tuple[bool, str] = (True, ""),
                 alive: bool = True) -> None:
        super().__init__("ssh", route, directory, {})
        self.asked: list[str] = []
        self.answer, self.up = answer, alive

    def forward(self, spec: str) -> tuple[bool, str]:
        self.asked.append(spec)
        return self.answer

    def alive(self) -> bool:
        return self.up


@pytest.mark.parametrize("route, spec", [
    (jt.Route(("srv",)), "{dir}/f2:localhost:8787"),
    (jt.Route(("gw", "head"), "node7"), "{dir}/f2:node7:8787"),
])
def test_an_extra_forward_is_a_socket_of_its_own_in_the_private_dir(route, spec, tmp_path):
    master = RecordingMaster(route, str(tmp_path))
    (tmp_path / "f2").write_text("a dead socket's file")  # ssh would not bind over it
    assert jt.add_extra_forward(master, 2, 8787) == str(tmp_path / "f2")
    assert master.asked == [spec.format(dir=tmp_path)]
    assert not (tmp_path / "f2").exists()


def test_an_extra_forward_the_master_refuses(tmp_path):
    master = RecordingMaster(jt.Route(("srv",)), str(tmp_path), (False, "mux_client_forward: forwarding request failed: "
                                                                         "Port forwarding failed"))
    with pytest.raises(jt.TunnelError, match="^cannot forward to port 8787 on srv: mux_client_forward") as caught:
        jt.add_extra_forward(master, 1, 8787)
    assert caught.value.code == jt.EXIT_PORT
    master.up = False  # gone meanwhile: the reconnection's business
    with pytest.raises(jt.TunnelError, match="^the connection to srv was lost") as caught:
        jt.add_extra_forward(master, 1, 8787)
    assert caught.value.code == jt.EXIT_LOST


@pytest.mark.parametrize("node, forward", [
    ("", "socks5://127.0.0.1:40123/localhost:8787"),
    ("node7", "socks5://127.0.0.1:40123/node7:8787"),
])
def test_without_a_master_an_extra_forward_is_a_socks_connect(node, forward):
    master = jt.StdioMaster("ssh", jt.Route(("head",), node), "/tmp/jt-x", {})
    master.socks_port = 40123
    assert jt.add_extra_forward(master, 1, 8787) == forward
    assert jt.parse_socks_forward(forward) == (40123, node or "localhost", 8787)


# ------------------------------------------------------------------ the probe, on real sockets


@contextlib.contextmanager
def unix_forward(behaviour: str):
    """A unix socket that does what ssh's -L socket does once connected: "refused" closes the
    connection at once (the remote connect failed), "open" keeps it open and silent (a server
    waiting for a request), "banner" sends a line; yields its path."""
    directory = tempfile.mkdtemp(prefix="jtf-")
    path = os.path.join(directory, "f1")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                if behaviour == "refused":
                    conn.close()
                    continue
                if behaviour == "banner":
                    conn.sendall(b"SSH-2.0-x\r\n")
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield path
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in held:
            conn.close()
        os.unlink(path)
        os.rmdir(directory)


@contextlib.contextmanager
def socks_port(connected: bool | None):
    """A SOCKS5 port that answers every CONNECT as ssh -D does: a success once the remote side
    connected (True), else the connection closed without an answer (False), or, while the remote
    connect hangs, nothing (None); yields the forward to node7:8787 and the requests it got."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(3)
            conn.sendall(bytes([5, 0]))
            requests.append(conn.recv(300))
            if connected:
                conn.sendall(bytes([5, 0, 0, 1, 127, 0, 0, 1, 0, 0]))
            if connected is not False:
                conn.recv(1)  # until the client is done

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=answer, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield jt.build_socks_forward(listener.getsockname()[1], "node7:8787"), requests
    finally:
        listener.close()


@pytest.mark.parametrize("behaviour, answers", [("refused", False), ("open", True), ("banner", True)])
def test_forward_answers_through_a_unix_socket(behaviour, answers):
    with unix_forward(behaviour) as path:
        started = time.monotonic()
        assert jt.forward_answers(path, timeout=0.5) is answers
        assert time.monotonic() - started < 2.0


def test_forward_answers_nothing_without_the_socket(tmp_path):
    assert jt.forward_answers(str(tmp_path / "f1"), timeout=0.5) is False


@pytest.mark.parametrize("connected, answers", [(True, True), (False, False), (None, False)])
def test_forward_answers_through_socks(connected, answers):
    with socks_port(connected) as (forward, requests):
        started = time.monotonic()
        assert jt.forward_answers(forward, timeout=0.5) is answers
        assert time.monotonic() - started < 2.0  # a hung remote connect: the timeout, no more
    assert requests == [jt.build_socks_request("node7", 8787)]


def test_probe_forwards_probes_them_all_at_once():
    with socks_port(None) as (hung, _), socks_port(True) as (connected, _), socks_port(None) as (other, _):
        started = time.monotonic()
        # two that each take the whole timeout: about one timeout in all, not two
        assert jt.probe_forwards([hung, connected, other], timeout=1.0) == [False, True, False]
        assert time.monotonic() - started < 1.9
    assert jt.probe_forwards([]) == []


def test_a_forward_that_failed_is_not_why_the_connection_ended():
    master = jt.Master("ssh", jt.Route(("gw", "srv")), "/tmp/jt-x", {})
    master.stderr = deque(["channel 3: open failed: connect failed: Connection refused",
                           "Timeout, server srv not responding."])
    assert master.why() == "gw cannot connect to srv (Connection refused)"  # what it would say
    assert master.why(lost=True) == "Timeout, server srv not responding."


# -------------------------------------------------------- what the run says and registers


@pytest.mark.parametrize("answers, line", [
    (True, "Also forwarding localhost:8787 -> node7:8787 (answers)"),
    (False, "Also forwarding localhost:8787 -> node7:8787 (nothing answers there yet: you will be told when it does)"),
])
def test_build_extra_line(answers, line):
    assert jt.build_extra_line("localhost:8787 -> node7:8787", answers) == line


def test_announce_says_each_forward_and_json_lists_them(capsys):
    settings = jt.settings_from(jt.build_parser().parse_args(["-s", "srv", "--json", "--forward", "28787",
                                                              "--forward", "26006:27006"]))
    tunnel = jt.Tunnel(settings, "ssh", jt.Route(("srv",)))
    tunnel.server = jt.Server(pid=77, port=28888, host="localhost", base_url="/", token="t", root_dir="/w")
    tunnel.relay = jt.Relay(jt.open_local_port(28888, False))
    first, second = tunnel.extras
    try:
        with socks_port(False) as (refused, _), socks_port(True) as (listening, _):
            for extra, forward in ((first, refused), (second, listening)):
                extra.forward = forward
                extra.relay = jt.Relay(jt.open_local_port(extra.fixed or extra.remote_port, extra.fixed is not None),
                                       forward, secure=True)
            tunnel.announce()
            tunnel.announce_extras()  # run() says them after the URL and the browser's start
            out, err = capsys.readouterr()
            ports = [first.relay.port, second.relay.port, tunnel.relay.port]
            assert second.relay.port == 27006 and first.relay.port >= 28787
            assert [line for line in err.splitlines() if "forwarding" in line or "Port used" in line] == [
                f"Info: Port used on localhost: {ports[2]}",
                f"Info: Also forwarding localhost:{ports[0]} -> srv:28787 (nothing answers there yet: you will be "
                "told when it does)",
                "Info: Also forwarding localhost:27006 -> srv:26006 (answers)",
            ]
            printed = json.loads(out)
            assert printed["forwards"] == [{"remote_port": 28787, "local_port": ports[0]},
                                           {"remote_port": 26006, "local_port": 27006}]
            assert (first.answered, second.answered) == (False, True)
            assert tunnel.probe_extras() == []  # still nothing on the first; the second is not asked again
    finally:
        for relay in (tunnel.relay, first.relay, second.relay):
            if relay is not None:
                relay.close()


def test_a_fixed_local_port_that_is_taken_is_an_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        extra = jt.ExtraForward(1, 8787, port)
        master = jt.StdioMaster("ssh", jt.Route(("srv",)), "/tmp/jt-x", {})
        master.socks_port = 40123
        with pytest.raises(jt.TunnelError, match=f"^local port {port} is already in use$") as caught:
            extra.connect(master)
        assert caught.value.code == jt.EXIT_PORT


STATE = {"pid": 4242, "state": "ready", "hosts": ["gw", "head"], "node": "node7", "local_port": 8888,
         "remote_host": "node7", "remote_port": 8888, "started": 1700000000.5}


@pytest.mark.parametrize("forwards, found", [
    ([{"remote_port": 8787, "local_port": 8787}, {"remote_port": 6006, "local_port": 7006}],
     ((8787, 8787), (6006, 7006))),
    ([], ()),
    (None, ()),
    ("8787", ()),
    ({"remote_port": 8787, "local_port": 8787}, ()),  # not a list
    # what a run never writes is left out, the rest stays
    ([{"remote_port": 0, "local_port": 8787}, {"remote_port": 8787, "local_port": 65536},
      {"remote_port": "8787", "local_port": 8787}, {"remote_port": 8787.0, "local_port": 8787},
      {"remote_port": True, "local_port": 8787}, {"remote_port": 8787}, [8787, 8787], None,
      {"remote_port": 6006, "local_port": 6006}], ((6006, 6006),)),
])
def test_the_registrys_forwards_are_checked(forwards, found):
    tunnel = sd.RunningTunnel.from_state(dict(STATE, forwards=forwards))
    assert tunnel.forwards == found
    assert tunnel.to_json()["forwards"] == [{"remote_port": remote, "local_port": local} for remote, local in found]
    assert sd.table_row(tunnel)[sd.TABLE_COLUMNS.index("FORWARDS")] == \
        (",".join(f"{local}->{remote}" for remote, local in found) or "-")


def test_a_new_entry_has_no_forwards_yet():
    state = sd.build_state(4242, ("gw", "head"), "", "head", "/tmp/jt-abcd1234", 1700000000.5)
    assert state["forwards"] == [] and state["shared_forward"] is None
    assert sd.RunningTunnel.from_state(state).to_json()["forwards"] == []

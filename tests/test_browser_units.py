"""Unit tests of the relay (the run's local port) and the browser's one-time address: the
pure parts by tables (the peer's uid read from the text of /proc/net/tcp and tcp6, the
answers), and the Relay itself in this process, in front of a unix socket of the test's own
(where ssh's forward would be; the tests with ssh, Jupyter and other users are in
test_browser.py)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading

import pytest

import helpers
import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd
from helpers import wait_for

TOKENED = "http://localhost:8888/?token=5d24abc"

# /proc/net/tcp as Linux writes it (addresses little-endian on x86): a listener on
# 127.0.0.1:40000 (9C40) has accepted a connection from 127.0.0.1:51000 (C738) whose socket
# uid 1001 owns; our accepted end is listed too, the other way round, with our uid 0; and a
# closed peer socket (inode 0) from port 51002 (C73A), which the kernel shows with uid 0.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:C738 01 00000000:00000000 00:00000000 00000000     0        0 51240 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C738 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001        0 51239 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C73A 0100007F:9C40 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 0500007F:C738 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1002        0 51250 1 0000000000000000 20 4 30 10 -1
"""
LISTENER = ("127.0.0.1", 40000)


@pytest.mark.parametrize("host, port, byteorder, text", [
    ("127.0.0.1", 8080, "little", "0100007F:1F90"),
    ("127.0.0.1", 8080, "big", "7F000001:1F90"),
    ("10.0.0.2", 22, "little", "0200000A:0016"),
    ("127.0.0.5", 51000, "little", "0500007F:C738"),
    ("::1", 8080, "little", "00000000000000000000000001000000:1F90"),
    ("::1", 8080, "big", "00000000000000000000000000000001:1F90"),
    ("::ffff:127.0.0.1", 80, "little", "0000000000000000FFFF00000100007F:0050"),
])
def test_proc_net_address(host, port, byteorder, text):
    assert jt.proc_net_address(host, port, byteorder) == text


@pytest.mark.parametrize("peer, listener, uid", [
    (("127.0.0.1", 51000), LISTENER, 1001),  # the peer's own entry, not our accepted end's uid 0
    (("127.0.0.5", 51000), LISTENER, 1002),  # same port, another loopback source address
    (("127.0.0.1", 51002), LISTENER, None),  # closed by its process: uid 0 would be a lie
    (("127.0.0.1", 51001), LISTENER, None),  # not listed: cannot be told
    (("127.0.0.1", 51000), ("127.0.0.1", 40001), None),  # a connection to another listener
])
def test_parse_peer_uid(peer, listener, uid):
    assert jt.parse_peer_uid(PROC_NET_TCP, peer, listener, "little") == uid


PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:9C40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 61234 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:C738 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000  1003        0 61239 1 0000000000000000 20 4 30 10 -1
   2: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:C738 01 00000000:00000000 00:00000000 00000000     0        0 61240 1 0000000000000000 20 4 30 10 -1
"""


@pytest.mark.parametrize("peer, uid", [(("::1", 51000), 1003), (("::1", 51001), None)])
def test_parse_peer_uid_ipv6(peer, uid):
    assert jt.parse_peer_uid(PROC_NET_TCP6, peer, ("::1", 40000), "little") == uid


def test_parse_peer_uid_on_a_big_endian_machine():
    text = PROC_NET_TCP.replace("0100007F", "7F000001").replace("0500007F", "7F000005")
    assert jt.parse_peer_uid(text, ("127.0.0.1", 51000), LISTENER, "big") == 1001


def test_build_diag_request_names_the_one_socket():
    request = jt.build_diag_request(socket.AF_INET, ("127.0.0.1", 51000), ("127.0.0.1", 40000))
    # nlmsghdr: length, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST (no dump), seq 1, pid 0
    assert struct.unpack_from("=IHHII", request) == (len(request), 20, 1, 1, 0) and len(request) == 72
    family, protocol = request[16], request[17]
    assert (family, protocol) == (socket.AF_INET, socket.IPPROTO_TCP)
    sockid = request[24:]
    assert sockid[:4] == bytes.fromhex("C738 9C40")  # the peer's port, then the listener's, big-endian
    assert sockid[4:20] == bytes([127, 0, 0, 1]) + bytes(12) and sockid[20:36] == bytes([127, 0, 0, 1]) + bytes(12)
    assert jt.build_diag_request(socket.AF_INET6, ("::1", 1), ("::1", 2))[28:44] == socket.inet_pton(socket.AF_INET6, "::1")


def diag_answer(uid: int, inode: int, kind: int = 20) -> bytes:
    """A sock_diag answer as the kernel writes it: nlmsghdr + inet_diag_msg (72 bytes)."""
    return struct.pack("=IHHII", 88, kind, 0, 1, 0) + bytes(64) + struct.pack("=II", uid, inode) + bytes(4)


@pytest.mark.parametrize("answer, uid", [
    (diag_answer(1001, 51239), 1001),
    (diag_answer(0, 0), None),  # no process holds it: uid 0 would be a lie
    (diag_answer(1001, 51239, kind=2), None),  # NLMSG_ERROR: no such socket
    (b"", None),
    (diag_answer(1001, 51239)[:60], None),  # cut short
])
def test_parse_diag_answer(answer, uid):
    assert jt.parse_diag_answer(answer) == uid


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_peer_uid_of_our_own_connection(family, host):
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, peer = listener.accept()
            with accepted:
                assert jt.peer_uid(family, peer[:2], listener.getsockname()[:2]) == os.getuid()


@pytest.mark.parametrize("text", ["", "header only\n", "  sl local\n   0: short line\n"])
def test_parse_peer_uid_of_nothing(text):
    assert jt.parse_peer_uid(text, ("127.0.0.1", 51000), LISTENER, "little") is None


def test_build_redirect_response():
    head, _, body = jt.build_redirect_response(TOKENED).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 303 See Other"
    assert {"Location: " + TOKENED, "Cache-Control: no-store", "Referrer-Policy: no-referrer",
            "Connection: close", f"Content-Length: {len(body)}"} <= set(lines)
    assert f'<a href="{TOKENED}">'.encode() in body


@pytest.mark.parametrize("location, header", [
    # a CR/LF from a remote base_url must not start a header of its own
    ("http://localhost:1/a\r\nSet-Cookie: x=1/?token=t", "Location: http://localhost:1/a%0D%0ASet-Cookie:%20x=1/?token=t"),
    ("http://localhost:1/é/?token=t", "Location: http://localhost:1/%C3%A9/?token=t"),
    ('http://localhost:1/"<b>/', 'Location: http://localhost:1/"<b>/'),
])
def test_build_redirect_response_keeps_the_header_whole(location, header):
    head, _, body = jt.build_redirect_response(location).partition(b"\r\n\r\n")
    assert header in head.decode("ascii").split("\r\n")
    assert b"<b>" not in body  # escaped in the link


# --- the Relay, in this process, in front of a unix socket of the test's own


class Upstream:
    """A unix-socket server where ssh's forward would be: it answers each connection with
    what it read, prefixed by ``answer:`` (and notes every request it got)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                try:
                    conn.sendall(b"answer:" + data)
                except OSError:  # a client that closed first: the relay's own can_tell_peers check
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def relay(tmp_path):
    """A Relay on a free local port in front of an Upstream; both closed after the test."""
    upstream = Upstream(str(tmp_path / "f"))
    relay = jt.Relay(jt.open_local_port(40000 + os.getpid() % 20000, fixed=False), upstream.path)
    yield relay, upstream
    relay.close()
    upstream.close()


def exchange(host: str, port: int, data: bytes) -> bytes:
    """Send ``data`` to host:port, half-close, and read the whole answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect((host, port))
        answer = b""
        try:
            conn.sendall(data)
            while b"\r\n\r\n" not in answer or answer.startswith(b"answer:") and not answer.endswith(b"\r\n\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:  # refused: closed with our request unread
            pass
        return answer


def test_the_relay_listens_on_both_loopbacks_and_splices_both_ways(relay):
    relay, upstream = relay
    request = b"GET /api/status HTTP/1.1\r\nHost: localhost\r\n\r\n"
    assert exchange("127.0.0.1", relay.port, request) == b"answer:" + request
    assert exchange("::1", relay.port, request) == b"answer:" + request
    big = b"POST / HTTP/1.1\r\nX: " + b"y" * 3_000_000 + b"\r\n\r\n"  # more than one read
    assert exchange("127.0.0.1", relay.port, big) == b"answer:" + big


def test_a_port_taken_on_one_loopback_only_is_not_used():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        listeners = jt.open_local_port(port, fixed=False)
        try:
            assert listeners[0].getsockname()[1] != port
            assert {sock.family for sock in listeners} == {socket.AF_INET, socket.AF_INET6}
        finally:
            for sock in listeners:
                sock.close()
        with pytest.raises(jt.TunnelError, match=f"local port {port} is already in use") as error:
            jt.open_local_port(port, fixed=True)
        assert error.value.code == jt.EXIT_PORT


def test_the_one_time_address_redirects_once_then_is_jupyters(relay, capsys):
    relay, upstream = relay
    address = relay.offer_redirect(TOKENED)
    assert address.startswith(f"http://127.0.0.1:{relay.port}/") and "5d24abc" not in address
    path = address.split(str(relay.port), 1)[1]
    # another request first (a favicon, a TLS hello typed by hand): relayed whole
    other = b"GET /favicon.ico HTTP/1.1\r\n\r\n"
    assert exchange("127.0.0.1", relay.port, other) == b"answer:" + other
    tls = b"\x16\x03\x01\x02\x00\r\n\r\n"
    assert exchange("127.0.0.1", relay.port, tls) == b"answer:" + tls
    longer = f"GET {path}x HTTP/1.1\r\n\r\n".encode()
    assert exchange("127.0.0.1", relay.port, longer) == b"answer:" + longer
    # the address itself: one redirect to the URL with the token, never cached...
    first = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    answer = exchange("127.0.0.1", relay.port, first)
    assert answer.startswith(b"HTTP/1.1 303 See Other\r\n") and f"Location: {TOKENED}".encode() in answer
    assert upstream.requests == [other, tls, longer]  # the server never saw it
    # ...and once only: the same request again goes to Jupyter like any other
    assert exchange("127.0.0.1", relay.port, first) == b"answer:" + first


def test_the_one_time_address_is_withdrawn_after_its_time(relay, capsys):
    relay, upstream = relay
    address = relay.offer_redirect(TOKENED, timeout=0.2)
    wait_for(lambda: relay.redirect is None, 10, what="the one-time address to be withdrawn")
    assert "Info: The browser did not come for its one-time address" in capsys.readouterr().err
    request = f"GET {address.split(str(relay.port), 1)[1]} HTTP/1.1\r\n\r\n".encode()
    assert exchange("127.0.0.1", relay.port, request) == b"answer:" + request


def test_a_request_while_the_forward_is_down_waits_then_gets_a_page_that_reloads(relay, monkeypatch):
    relay, upstream = relay
    monkeypatch.setattr(jt, "RELAY_WAIT", 0.3)
    upstream.close()
    os.unlink(upstream.path)
    answer = exchange("127.0.0.1", relay.port, b"GET /lab HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: 5" in answer
    assert b"reconnecting" in answer


def test_a_request_while_the_forward_is_down_goes_through_once_it_is_back(relay, monkeypatch):
    relay, upstream = relay
    upstream.close()
    os.unlink(upstream.path)
    answers: list[bytes] = []
    request = b"GET /api/kernels HTTP/1.1\r\n\r\n"
    tried: list[int] = []
    original = jt.Relay._connect_forward
    monkeypatch.setattr(jt.Relay, "_connect_forward", lambda self: tried.append(1) or original(self))
    thread = threading.Thread(target=lambda: answers.append(exchange("127.0.0.1", relay.port, request)))
    thread.start()
    wait_for(lambda: tried, 5, what="the relay to try the forward while it is down")
    back = Upstream(upstream.path)  # the reconnect forwards the same socket again
    try:
        thread.join(30)
        assert answers == [b"answer:" + request]
    finally:
        back.close()


def test_close_ends_the_connections_and_frees_the_port(relay):
    relay, upstream = relay
    port = relay.port
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    relay.close()
    with conn:
        try:
            ended = conn.recv(10)
        except ConnectionResetError:  # still in the listener's backlog when it closed
            ended = b""
        assert ended == b""  # ended by the relay
    wait_for(lambda: helpers.port_is_free(port, ("127.0.0.1", "::1")), 5, what="the port to be free")


def test_this_machine_tells_who_connects():
    """The test machines are Linux: the relay must be able to tell its peers (else it warns)."""
    listeners = jt.open_local_port(41000 + os.getpid() % 20000, fixed=False)
    try:
        assert jt.can_tell_peers(listeners[0], os.getuid())
        assert not jt.can_tell_peers(listeners[0], os.getuid() + 1)  # found, and not that uid
    finally:
        for sock in listeners:
            sock.close()


def test_where_peers_cannot_be_told_the_port_serves_everyone_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jt, "peer_uid", lambda family, peer, listener: None)  # as on macOS
    upstream = Upstream(str(tmp_path / "f"))
    relay = jt.Relay(jt.open_local_port(42000 + os.getpid() % 20000, fixed=False), upstream.path)
    try:
        assert not relay.check_peer
        request = b"GET /api/status HTTP/1.1\r\n\r\n"
        assert exchange("127.0.0.1", relay.port, request) == b"answer:" + request
        if sd.HAVE_PROC:
            assert "is open to every local user, as an ssh -L port is" in capsys.readouterr().err
    finally:
        relay.close()
        upstream.close()


def test_a_failure_while_accepting_never_frees_the_port(relay, monkeypatch):
    """A refused peer whose warning cannot be printed (stderr gone) must not end the
    accepting thread: that would close the listeners and free the port for anyone."""
    relay, upstream = relay
    foreign = [True]

    def lookup(family, peer, listener):
        if foreign:
            foreign.clear()
            return os.getuid() + 1
        return os.getuid()

    def broken_stderr(*args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(jt, "peer_uid", lookup)
    monkeypatch.setattr(jt, "say", broken_stderr)
    relay.check_peer = True
    request = b"GET /api/status HTTP/1.1\r\n\r\n"
    assert exchange("127.0.0.1", relay.port, request) == b""  # refused, its warning lost
    assert exchange("127.0.0.1", relay.port, request) == b"answer:" + request  # still ours
    assert not helpers.port_is_free(relay.port, ("127.0.0.1", "::1"))


def test_the_askpass_helper_runs_whatever_the_interpreters_path(tmp_path):
    """ssh execs SSH_ASKPASS: a sh wrapper runs the Python helper (a "#!" line would break at
    a space in the interpreter's path); the password prompt gets the password, from the
    environment only."""
    directory = tmp_path / "a dir"
    directory.mkdir()
    env = jt.write_askpass(str(directory), "s3cret")
    done = subprocess.run([env["SSH_ASKPASS"], "alice@srv's password: "], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=30)
    assert (done.returncode, done.stdout) == (0, "s3cret\n")
    assert "s3cret" not in (directory / jt.ASKPASS_FILE).read_text()

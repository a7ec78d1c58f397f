"""Unit tests of the pure parts behind the browser's one-time address, by tables: the
request line, the answers, and the peer's uid read from the text of /proc/net/tcp."""

from __future__ import annotations

import pytest

import jupyter_tunnel as jt

PATH = "/s3cr3t-path_xyz"
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


def test_parse_peer_uid_on_a_big_endian_machine():
    text = PROC_NET_TCP.replace("0100007F", "7F000001").replace("0500007F", "7F000005")
    assert jt.parse_peer_uid(text, ("127.0.0.1", 51000), LISTENER, "big") == 1001


@pytest.mark.parametrize("text", ["", "header only\n", "  sl local\n   0: short line\n"])
def test_parse_peer_uid_of_nothing(text):
    assert jt.parse_peer_uid(text, ("127.0.0.1", 51000), LISTENER, "little") is None


@pytest.mark.parametrize("head, parsed", [
    (b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/abc")),
    (b"HEAD /abc?x=1 HTTP/1.0\r\n\r\n", ("HEAD", "/abc?x=1")),
    (b"GET /abc HTTP/2\r\n\r\n", None),
    (b"GET http://evil/ HTTP/1.1\r\n\r\n", None),  # absolute form: never from a browser to us
    (b"GET /a b HTTP/1.1\r\n\r\n", None),
    (b"\x16\x03\x01\x02\x00", None),  # a TLS hello: https:// typed by hand
    (b"", None),
])
def test_parse_request_line(head, parsed):
    assert jt.parse_request_line(head) == parsed


@pytest.mark.parametrize("head, allowed, status, redirect", [
    (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), True, 303, True),
    (f"GET {PATH} HTTP/1.1\r\n\r\n".encode(), False, 403, False),  # another user: refused
    (b"GET /favicon.ico HTTP/1.1\r\n\r\n", True, 404, False),
    (f"GET {PATH}x HTTP/1.1\r\n\r\n".encode(), True, 404, False),
    (f"GET {PATH}?a=1 HTTP/1.1\r\n\r\n".encode(), True, 404, False),
    (f"HEAD {PATH} HTTP/1.1\r\n\r\n".encode(), True, 405, False),  # link previews do not use it up
    (f"POST {PATH} HTTP/1.1\r\n\r\n".encode(), True, 405, False),
    (b"garbage\r\n\r\n", True, 400, False),
    ("GET /é HTTP/1.1\r\n\r\n".encode("latin-1"), True, 404, False),
])
def test_build_one_shot_answer(head, allowed, status, redirect):
    answer, is_redirect = jt.build_one_shot_answer(head, PATH, TOKENED, allowed)
    assert (jt.parse_status_line(answer), is_redirect) == (status, redirect)
    if not redirect:
        assert b"5d24abc" not in answer  # nothing but the redirect holds the token


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

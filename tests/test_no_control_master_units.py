"""Unit tests of the mode without an ssh master (issue 23), by tables: the one ssh's argv,
the framing of the commands sent to its remote sh (run here through a local ``sh``: the same
dash that runs them on the remote), the SOCKS5 requests, and how the mode is chosen."""

from __future__ import annotations

import subprocess

import pytest

import jupyter_tunnel as jt

CONFIG = "/tmp/jt-x/ssh_config"


@pytest.mark.parametrize("route, expected", [
    (jt.Route(("srv",)), ["srv", "sh"]),
    (jt.Route(("gw", "head", "u@srv:2222")), ["-J", "gw,head", "ssh://u@srv:2222", "sh"]),
    (jt.Route(("gw", "head"), "node1"), ["-A", "-J", "gw", "head", "sh"]),  # the head logs into the node
    (jt.Route(("head",), scheduled=True), ["-A", "head", "sh"]),
])
def test_the_one_ssh_has_a_loopback_socks_port_and_a_shell(route, expected):
    assert jt.build_stdio_argv("ssh", CONFIG, 40123, route) == [
        "ssh", "-F", CONFIG, "-T", "-D", "127.0.0.1:40123", "-o", "ControlPath=none",
        "-o", "ExitOnForwardFailure=yes", *expected]


def shell(*commands: tuple[str, str, str]) -> bytes:
    """What one local sh prints on stdout for the framed ``(command, stdin, nonce)``s, in order."""
    script = b"".join(jt.build_framed_command(*command) for command in commands)
    return subprocess.run(["sh"], input=script, capture_output=True, timeout=30).stdout


@pytest.mark.parametrize("command, stdin, expected", [
    ("echo hello", "", (b"hello\n", 0)),
    ("printf 'no newline'", "", (b"no newline", 0)),
    ("true", "", (b"", 0)),
    ("exit 7", "", (b"", 7)),
    ("cat", "line 1\nline 2", (b"line 1\nline 2\n", 0)),  # a newline added to a stdin without one
    ("cat", "E0ther\n'x' \"$HOME\" `id`\n", (b"E0ther\n'x' \"$HOME\" `id`\n", 0)),  # taken as it is
    ("cat", "", (b"", 0)),  # no stdin: /dev/null, never the shell's own input
    ("no-such-program-jt", "", (b"", 127)),
    ("printf 'Rfake 0\\nBfake\\n'", "", (b"Rfake 0\nBfake\n", 0)),  # another nonce's marks are output
])
def test_a_framed_command_gives_its_own_output_and_status(command, stdin, expected):
    assert jt.parse_framed_output(shell((command, stdin, "n1")), "n1") == expected


@pytest.mark.parametrize("first", ["if", "exit 3", "exec true", "cat"])
def test_a_command_never_ends_the_shell_for_the_next(first):
    # a syntax error, exit and exec end the child sh only; cat reads its own (empty) stdin
    printed = shell((first, "", "n1"), ("echo next", "", "n2"))
    assert jt.parse_framed_output(printed, "n2") == (b"next\n", 0)


@pytest.mark.parametrize("printed", [b"", b"Bn1\nout", b"Bn1\nout\nRn1 ", b"Bn1\nout\nRn1 0", b"out\nRn1 0\n"])
def test_no_answer_until_the_end_line_has_come(printed):
    assert jt.parse_framed_output(printed, "n1") is None


def test_what_came_before_the_begin_line_is_not_the_commands():
    assert jt.parse_framed_output(b"Welcome!\nlate output\nBn1\nmine\n\nRn1 0\n", "n1") == (b"mine\n", 0)


@pytest.mark.parametrize("forward, expected", [
    ("socks5://127.0.0.1:40123/127.0.0.1:8888", (40123, "127.0.0.1", 8888)),
    ("socks5://127.0.0.1:40123/node07.cluster:8888", (40123, "node07.cluster", 8888)),
    ("socks5://127.0.0.1:40123/[::1]:8888", (40123, "::1", 8888)),
    ("/tmp/jt-x/f", None),  # ssh's unix socket
])
def test_socks_forwards_parse(forward, expected):
    assert jt.parse_socks_forward(forward) == expected


@pytest.mark.parametrize("host, port, expected", [
    ("node07", 8888, b"\x05\x01\x00\x03\x06node07\x22\xb8"),  # a name: resolved on the remote side
    ("127.0.0.1", 443, b"\x05\x01\x00\x03\x09127.0.0.1\x01\xbb"),
])
def test_socks_connect_requests(host, port, expected):
    assert jt.build_socks_request(host, port) == expected


@pytest.mark.parametrize("head, more", [
    (b"\x05\x00\x00\x01\x00", 5),  # IPv4 (ssh's 0.0.0.0): 3 more address bytes and the port
    (b"\x05\x00\x00\x04\x00", 17),
    (b"\x05\x00\x00\x03\x04", 6),  # a name of 4 bytes, then the port
])
def test_socks_reply_lengths(head, more):
    assert jt.socks_address_length(head) == more


@pytest.mark.parametrize("version, windows", [
    ("OpenSSH_for_Windows_9.5p1, LibreSSL 3.8.2", True),
    ("OpenSSH_for_Windows_8.1p1, LibreSSL 3.0.2", True),
    ("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024", False),
    ("OpenSSH_9.8p1, LibreSSL 3.3.6", False),  # macOS
    ("", False),
])
def test_windows_ssh_is_told_by_its_version(version, windows):
    assert jt.is_windows_ssh(version) is windows


def test_a_unix_socket_forward_needs_a_master():
    server = jt.Server(pid=1, port=0, host="", base_url="/", token="t", root_dir="/home/u", sock="/home/u/j.sock")
    master = jt.StdioMaster("ssh", jt.Route(("srv",)), "/tmp/jt-x", {})
    master.socks_port = 40123
    with pytest.raises(jt.TunnelError, match=r"listens on a unix socket \(/home/u/j\.sock\), which a connection "
                                              "without ControlMaster cannot reach") as caught:
        jt.add_forward(master, server)
    assert caught.value.code == jt.EXIT_NO_SERVER
    tcp = server._replace(sock="", port=8888, host="127.0.0.1")
    assert jt.add_forward(master, tcp) == "socks5://127.0.0.1:40123/127.0.0.1:8888"


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".cluster", "", "n" * 256])
def test_a_name_socks5_cannot_carry_is_no_connection_not_a_traceback(host):
    with pytest.raises(OSError, match="is no host name SOCKS5 can carry"):
        jt.build_socks_request(host, 8888)

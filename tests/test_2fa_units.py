"""Unit tables for two-factor logins (issue 20): which prompts -p answers, the generated config's
ConnectTimeout, ssh's reasons and the words of a refused login.  No network, no ssh."""

from __future__ import annotations

import sys

import pytest

import jupyter_tunnel as jt


@pytest.mark.parametrize("prompt, answered", [
    ("jtuser@127.0.0.1's password: ", True),  # password authentication
    ("alice@example.org@login.hpc.example's password: ", True),  # a user name with an @
    ("(jtuser@127.0.0.1) Password: ", True),  # PAM's over keyboard-interactive, OpenSSH >= 8.4
    ("Password: ", True),  # ...before 8.4
    ("(jtuser@127.0.0.1) Verification code: ", False),  # google-authenticator
    ("Verification code: ", False),
    ("(jtuser@gw) Password & verification code: ", False),  # google-authenticator's forward_pass
    ("One-time password (OATH) for `jtuser':", False),  # pam_oath
    ("(jtuser@gw) One-time password (OATH) for `jtuser': ", False),
    ("Enter passphrase for key '/home/u/.ssh/id_ed25519': ", False),
    ("Enter jtuser@gw's old password: ", False),  # an expired password's change
    ("Are you sure you want to continue connecting (yes/no/[fingerprint])? ", False),
    ("(u@h) Password for u@REALM: ", False),  # Kerberos: not ssh's prompt, the person's
    ("jtuser@127.0.0.1's password: extra", False),
])
def test_only_the_password_prompt_is_answered(prompt, answered):
    assert bool(jt.PASSWORD_PROMPT_RE.fullmatch(prompt)) == answered


def test_the_helper_is_python_with_the_same_pattern():
    script = jt.build_askpass_script(sys.executable)
    assert script.startswith(f"#!{sys.executable} -IS\n")
    assert repr(jt.PASSWORD_PROMPT_RE.pattern) in script and "@" + "PATTERN@" not in script
    compile(script, "askpass", "exec")


@pytest.mark.parametrize("first_hop, match", [
    ("gw", "gw"),
    ("alice@gw.example.org:2222", "gw.example.org"),
    ("ssh://alice@srv:22", "srv"),
    ("10.0.0.1", "10.0.0.1"),
    ("g*w", None),  # a pattern would match other hosts too: no timeout rather than a wrong one
    ("", None),
])
def test_connect_timeout_for_the_first_hop_only(first_hop, match):
    body = jt.build_ssh_config(None, [], first_hop=first_hop).splitlines()
    assert not any(line.startswith("ConnectTimeout") for line in body[:body.index("Include ~/.ssh/config")])
    if match is None:
        assert not any("ConnectTimeout" in line or line.startswith("Match") for line in body)
        return
    at = body.index(f"Match originalhost {match}")
    # the user's own ConnectTimeout (their config, included before) wins; "Match all" ends the block
    assert body[at + 1:at + 4] == ["ConnectTimeout 20", "Match all", "Include /etc/ssh/ssh_config"]


def test_no_terminal_means_batch_mode_from_the_first_login():
    body = jt.build_ssh_config(None, [], batch=True).splitlines()
    assert body[1] == "BatchMode yes"


@pytest.mark.parametrize("terminal, env, expect", [
    (True, {}, True),
    (False, {}, False),
    (False, {"DISPLAY": ":0"}, False),  # no askpass program named
    (False, {"DISPLAY": ":0", "SSH_ASKPASS": "/usr/bin/ssh-askpass"}, True),
    (False, {"WAYLAND_DISPLAY": "w-0", "SSH_ASKPASS": "/a"}, True),
    (False, {"SSH_ASKPASS": "/a"}, False),  # without a display ssh does not run it...
    (False, {"SSH_ASKPASS": "/a", "SSH_ASKPASS_REQUIRE": "force"}, True),  # ...unless forced
    (False, {"SSH_ASKPASS": "/a", "DISPLAY": ":0", "SSH_ASKPASS_REQUIRE": "never"}, False),
])
def test_can_prompt(terminal, env, expect):
    assert jt.can_prompt(terminal, env) == expect


@pytest.mark.parametrize("lines, reason", [
    # a gateway's refused login: the ssh behind it only saw its pipe close
    (["jtuser@127.0.0.1: Permission denied (keyboard-interactive).",
      "kex_exchange_identification: Connection closed by remote host",
      "Connection closed by UNKNOWN port 65535"],
     "jtuser@127.0.0.1: Permission denied (keyboard-interactive)."),
    (["jtuser@127.0.0.1: Permission denied (keyboard-interactive).",
      "banner exchange: Connection to UNKNOWN port 65535: Broken pipe"],
     "jtuser@127.0.0.1: Permission denied (keyboard-interactive)."),
    # alone, the banner exchange is the reason
    (["Connection timed out during banner exchange", "Connection to UNKNOWN port 65535 timed out"],
     "Connection timed out during banner exchange; Connection to UNKNOWN port 65535 timed out"),
    (["kex_exchange_identification: read: Connection reset by peer"],
     "kex_exchange_identification: read: Connection reset by peer"),
])
def test_parse_ssh_error_drops_consequences(lines, reason):
    assert jt.parse_ssh_error(lines) == reason


@pytest.mark.parametrize("reason, refused", [
    ("jtuser@127.0.0.1: Permission denied (keyboard-interactive).", True),
    ("Received disconnect from 127.0.0.1 port 22:2: Too many authentication failures", True),
    ("ssh: connect to host 127.0.0.4 port 1: Connection refused", False),
    ("ssh: connect to host gw port 22: Network is unreachable", False),
    ("Connection timed out during banner exchange", False),
])
def test_is_login_refused(reason, refused):
    assert jt.is_login_refused(reason) == refused


DENIED = "jtuser@127.0.0.1: Permission denied (keyboard-interactive)."


@pytest.mark.parametrize("reason, batch, reconnecting, expect", [
    ("ssh: connect to host 127.0.0.4 port 1: Connection refused", False, False,
     "cannot connect to srv via gw: ssh: connect to host 127.0.0.4 port 1: Connection refused"),
    (DENIED, False, False,
     f"cannot connect to srv via gw: {DENIED} (a wrong password, key passphrase or verification code, "
     "or a key the server does not accept)"),
    (DENIED, True, False,
     f"logging in to srv via gw needs a password, key passphrase or verification code, and there is no "
     f"terminal to ask it on ({DENIED}): use a key the server accepts (without a passphrase, or in your "
     "ssh-agent), your own open ssh connection (ControlMaster), or run it on a terminal (-p there gives "
     "the password)"),
    (DENIED, True, True,
     f"reconnecting to srv via gw needs a password, key passphrase or verification code, and there is no "
     f"terminal to ask it on ({DENIED}): use a key the server accepts (without a passphrase, or in your "
     "ssh-agent), your own open ssh connection (ControlMaster), or run it on a terminal (-p there gives "
     "the password)"),
])
def test_build_login_error(reason, batch, reconnecting, expect):
    assert jt.build_login_error("srv via gw", reason, batch, reconnecting) == expect


def test_max_retries_has_a_default():
    args = jt.build_parser().parse_args(["-s", "srv"])
    assert args.max_retries == jt.DEFAULT_MAX_RETRIES == 20
    assert jt.MAX_REFUSED_LOGINS == 3

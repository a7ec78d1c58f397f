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

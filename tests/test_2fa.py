"""Two-factor logins as HPC centres run them (issue 20), with real parts: a second sshd whose
PAM asks pam_unix's password and pam_google_authenticator's TOTP code (codes from oathtool),
a person at a terminal driven through a pty, and the server's log to count failed attempts.

Aliases of ``two_factor_sshd.config``: tgw/tsrv (password + code), kgw/ksrv (key + code), and the
session's key-only gw/head/srv (jtuser's Jupyter server); that config sets no ConnectTimeout, as a
person's mostly does not.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from conftest import TEST_PASSWORD
from helpers import wait_for
from realenv import CODE_PROMPT, FORWARD_PASS_PROMPT
from tunnelrun import Terminal, Tunnel, get_status

pytestmark = pytest.mark.integration

# A person who takes this long to find their code: longer than the 20 s ConnectTimeout the
# generated config used to give every hop.  Waiting is the point of that test.
PERSON_TAKES = 25.0
URL_RE = re.compile(rb"http://localhost:\d+/\?token=\w+")


@pytest.fixture
def twofa(two_factor_sshd):
    """The 2FA sshd with its PAM stack "code" (password + code), again after the test."""
    yield two_factor_sshd
    two_factor_sshd.use_pam("code")


def terminal(twofa, registry: Path, *args: str) -> Terminal:
    """jupyter-tunnel with the 2FA config on a terminal, no browser."""
    return Terminal("-F", str(twofa.config), "-b", "none", *args, env={"JUPYTER_TUNNEL_REGISTRY": str(registry)})


def url_on(term: Terminal) -> str:
    """The URL the tool printed on the terminal."""
    return URL_RE.search(term.screen).group().decode()


def test_gateway_code_prompt_waits_for_the_person(twofa, sshd, jtuser_server, tmp_path):
    """1. A person who takes 25 s at the gateway's code prompt still logs in: no ConnectTimeout
    cuts the banner exchange of the ssh behind the jump host (plain ``ssh -J`` waits too)."""
    offsets = (twofa.log_offset(), sshd.log_offset())
    term = terminal(twofa, tmp_path, "-s", "kgw", "srv")
    try:
        term.read_until(CODE_PROMPT.encode())
        time.sleep(PERSON_TAKES)  # the person looks for their phone
        term.type(twofa.code())
        term.read_until(f"?token={jtuser_server.token}".encode(), timeout=30)
        assert get_status(url_on(term))[0] == 200
        assert len(twofa.logins_since(offsets[0])) == 1 and len(sshd.logins_since(offsets[1])) == 1
        assert twofa.failures_since(offsets[0]) == []
        assert term.ctrl_c() == jt.EXIT_OK
    finally:
        term.close()

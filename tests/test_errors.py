"""Integration tests: what a newcomer reads when ssh fails (issue 22), with the real ssh and
sshd of the fixtures: the host that could not be resolved, reached or trusted, through which
hop, and the next step; never three lines of ssh's noise, never a login spent."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import jupyter_tunnel as jt
from tunnelrun import Terminal

pytestmark = pytest.mark.integration


def last_line(run) -> str:
    """The run's last stderr line: the one ``Error:`` line."""
    return run.stderr.strip().splitlines()[-1]


def test_a_mistyped_first_host(tunnel, sshd):
    offset = sshd.log_offset()
    run = tunnel("-s", "no-such-host.invalid", "srv")
    assert run.wait() == jt.EXIT_CONNECT
    assert last_line(run).startswith("Error: cannot connect to srv via no-such-host.invalid: the host name "
                                     "no-such-host.invalid cannot be resolved here (")
    assert last_line(run).endswith("): check its spelling")
    assert sshd.logins_since(offset) == []
    run.assert_clean()


def test_a_mistyped_host_behind_a_jump_names_the_jump(tunnel):
    run = tunnel("-s", "gw", "no-such-host.invalid")
    assert run.wait() == jt.EXIT_CONNECT
    assert last_line(run).startswith("Error: cannot connect to no-such-host.invalid via gw: gw cannot resolve the "
                                     "host name of no-such-host.invalid (")
    assert "stdio forwarding failed" not in run.stderr and "kex_exchange" not in run.stderr
    run.assert_clean()


def test_an_unknown_host_key_says_how_to_accept_it(tunnel, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    run = tunnel("-s", "gw", "srv", "-o", f"UserKnownHostsFile={empty}")
    assert run.wait() == jt.EXIT_CONNECT
    line = last_line(run)
    assert line.startswith("Error: cannot connect to srv via gw: the host key of ")
    assert "is not known here yet: connect once with ssh -J gw srv here, check its fingerprint" in line
    run.assert_clean()


def test_a_refused_port_is_named(tunnel):
    run = tunnel("-s", "dead")
    assert run.wait() == jt.EXIT_CONNECT
    assert last_line(run) == ("Error: cannot connect to dead: 127.0.0.4 refuses connections on port 1 "
                              "(Connection refused): no ssh server listens there")
    run.assert_clean()


def test_ctrl_c_at_a_passphrase_prompt_ends_its_line(sshd, tmp_path):
    """Ctrl+C at ssh's own passphrase prompt (a key with a passphrase, no agent), asked by the
    jump host's ssh: "Info: Interrupted." starts a line of its own, nothing is left behind."""
    key = tmp_path / "id_passphrase"
    shutil.copyfile(sshd.client_key, key)
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "a passphrase", "-f", str(key)], check=True,
                   capture_output=True, timeout=30)
    term = Terminal("-F", str(sshd.config), "-b", "none", "-s", "gw", "srv", "-o", f"IdentityFile={key}",
                    env={"JUPYTER_TUNNEL_REGISTRY": str(tmp_path)})
    try:
        term.read_until(b"Enter passphrase for key ")
        term.read_until(b": ")
        assert term.ctrl_c() == jt.EXIT_INTERRUPTED
        assert re.search(rb"(^|\n)Info: Interrupted\.", term.screen.replace(b"\r", b"")), term.screen
        assert term.processes() == []
    finally:
        term.close()

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
from helpers import wait_for
from realenv import CODE_PROMPT, FORWARD_PASS_PROMPT, TEST_PASSWORD
from tunnelrun import Terminal, TunnelRun, get_status

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


def reach_code_prompt(term: Terminal, prompt: str = CODE_PROMPT) -> None:
    """Type the password at -p's "SSH password: " and wait for the server's code ``prompt``."""
    term.read_until(b"SSH password: ")
    term.type(TEST_PASSWORD)
    term.read_until(prompt.encode())


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


def test_dash_p_leaves_a_code_prompt_to_the_person(twofa, jtuser_server, tmp_path):
    """2. -p answers only ssh's own password prompt: google-authenticator's "Password &
    verification code:" goes to the person, who logs in with no failed attempt."""
    twofa.use_pam("forward_pass")
    offset = twofa.log_offset()
    term = terminal(twofa, tmp_path, "-p", "-s", "tgw", "srv")
    try:
        reach_code_prompt(term, FORWARD_PASS_PROMPT)
        term.type(TEST_PASSWORD + twofa.code())
        term.read_until(f"?token={jtuser_server.token}".encode())
        assert twofa.failures_since(offset) == []
        assert len(twofa.logins_since(offset)) == 1
        assert TEST_PASSWORD.encode() not in term.screen  # typed unechoed, twice
        assert term.ctrl_c() == jt.EXIT_OK
    finally:
        term.close()


def test_dash_p_answers_the_pam_password_and_asks_the_code(twofa, jtuser_server, tmp_path):
    """2. -p with password + code: PAM's "(user@host) Password:" is answered with the password
    typed once, the code is asked on the terminal."""
    offset = twofa.log_offset()
    term = terminal(twofa, tmp_path, "-p", "-s", "tgw", "srv")
    try:
        reach_code_prompt(term)
        assert b"Password: " not in term.screen.replace(b"SSH password: ", b"")  # answered by -p
        term.type(twofa.code())
        term.read_until(f"?token={jtuser_server.token}".encode())
        assert twofa.failures_since(offset) == []
        assert term.ctrl_c() == jt.EXIT_OK
        assert term.processes() == []
    finally:
        term.close()


def test_ctrl_c_at_a_code_prompt_leaves_the_terminal_as_it_was(twofa, tmp_path):
    """3 and 6. Ctrl+C at -p's code prompt: the terminal echoes again, nothing of the run reads it
    any more, and "Info: Interrupted." starts a line of its own."""
    term = terminal(twofa, tmp_path, "-p", "-s", "tgw", "srv")
    try:
        reach_code_prompt(term)
        assert not term.echo()  # the code is typed unechoed
        assert term.ctrl_c() == jt.EXIT_INTERRUPTED
        assert term.echo()
        assert term.processes() == []
        assert re.search(rb"(^|\n)Info: Interrupted\.", term.screen.replace(b"\r", b"")), term.screen
    finally:
        term.close()


def test_a_helper_gives_up_when_its_ssh_dies(twofa, tmp_path):
    """3. The ssh that asked for a code dies (killed, timed out): its helper stops reading the
    keyboard at once and puts the terminal back; the run fails with one clear error."""
    term = terminal(twofa, tmp_path, "-p", "-s", "tgw", "srv")
    try:
        reach_code_prompt(term)
        [(helper, _)] = term.processes("askpass")
        ssh = int(Path(f"/proc/{helper}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(ssh, signal.SIGKILL)
        wait_for(lambda: not term.processes("askpass"), 3, what="the helper to give up")
        assert term.wait() == jt.EXIT_CONNECT
        assert term.echo()
        assert term.processes() == []
    finally:
        term.close()


def test_two_helpers_never_read_the_keyboard_at_once(tmp_path):
    """3. Two prompts at once on one terminal (a reconnection's login while an old one ends,
    two hops): the second is shown only once the first is answered, and each gets its own answer."""
    env = jt.write_askpass(str(tmp_path), TEST_PASSWORD)
    helper = env["SSH_ASKPASS"]
    script = (f"{helper} 'first code: ' >{tmp_path}/1 & sleep 0.5; {helper} 'second code: ' >{tmp_path}/2 & "
              "wait; echo done")
    term = Terminal.command(["/bin/sh", "-c", script])
    try:
        term.read_until(b"first code: ")
        term.drain(1.5)  # the second helper has started meanwhile: it must wait for the first
        assert b"second code: " not in term.screen
        term.type("111111")
        term.read_until(b"second code: ")
        term.type("222222")
        term.read_until(b"done")
        assert ((tmp_path / "1").read_text(), (tmp_path / "2").read_text()) == ("111111\n", "222222\n")
    finally:
        term.close()


def test_no_terminal_no_prompt_based_login(twofa, jtuser_server):
    """4 and 6. No terminal and no -p: no empty answers to the prompts (each a failed attempt),
    and the error says what to do instead."""
    offset = twofa.log_offset()
    run = TunnelRun(twofa.config, "-s", "tgw", "srv")
    try:
        assert run.wait() == jt.EXIT_CONNECT
        last = run.stderr.splitlines()[-1]
        assert last.startswith("Error: logging in to srv via tgw needs a password, key passphrase or "
                               "verification code, and there is no terminal to ask it on"), last
        assert "ssh-agent" in last and "ControlMaster" in last and "-p" in last
        # a failure would be logged before the connection's end: none may come
        wait_for(lambda: twofa.closed_since(offset), 10, what="sshd to log the connection's end")
        assert twofa.failures_since(offset) == []
        run.assert_clean()
    finally:
        run.kill()


def test_dash_p_without_a_terminal_spends_no_attempt_on_a_code(twofa):
    """4. -p without a terminal (the password on stdin): the code cannot be asked, and the login
    ends before ssh sends an empty answer, which would be a failed attempt."""
    offset = twofa.log_offset()
    run = TunnelRun(twofa.config, "-p", "-s", "tgw", "srv", stdin=TEST_PASSWORD + "\n")
    try:
        assert run.wait() == jt.EXIT_CONNECT
        last = run.stderr.splitlines()[-1]
        assert last.startswith("Error: cannot connect to srv via tgw: jupyter-tunnel: no terminal to ask "
                               "'(jtuser@127.0.0.1) Verification code:' on (-p answers the password only)"), last
        # a failure would be logged before the connection's end: none may come
        wait_for(lambda: twofa.closed_since(offset), 10, what="sshd to log the connection's end")
        assert twofa.failures_since(offset) == []
        run.assert_clean()
    finally:
        run.kill()


def test_a_wrong_code_is_one_failed_attempt_and_named(twofa, tmp_path):
    """6. A wrong code at the gateway: one failed attempt (-p sets NumberOfPasswordPrompts 1), and
    the error names the likely causes, with no stray banner-exchange words after ssh's reason."""
    offset = twofa.log_offset()
    term = terminal(twofa, tmp_path, "-p", "-s", "tgw", "srv")
    try:
        reach_code_prompt(term)
        term.type("000000" if twofa.code() != "000000" else "111111")
        assert term.wait() == jt.EXIT_CONNECT
        [error] = [line for line in term.screen.decode().splitlines() if line.startswith("Error:")]
        assert error.startswith("Error: cannot connect to srv via tgw: ") and "Permission denied" in error
        assert "a wrong password, key passphrase or verification code" in error
        assert "kex_exchange_identification" not in error
        assert len(wait_for(lambda: twofa.failures_since(offset), 5, what="the failure in the log")) == 1
    finally:
        term.close()


def test_reconnects_stop_when_logins_are_refused(twofa, jtuser_server, tmp_path):
    """5. After the first login the server refuses every login without asking anything (a rate
    limit, a revoked token): the run stops after MAX_REFUSED_LOGINS failed attempts, not never."""
    term = terminal(twofa, tmp_path, "-p", "-s", "tgw", "srv")
    try:
        reach_code_prompt(term)
        term.type(twofa.code())
        term.read_until(f"?token={jtuser_server.token}".encode())
        twofa.use_pam("refuse")
        offset = twofa.log_offset()
        [(master, _)] = term.processes(" -M ")
        os.kill(master, signal.SIGKILL)
        assert term.wait(30) == jt.EXIT_LOST
        [error] = [line for line in term.screen.decode().splitlines() if line.startswith("Error:")]
        assert error.startswith(f"Error: the login to srv via tgw was refused {jt.MAX_REFUSED_LOGINS} times "
                                "in this run"), error
        assert "Permission denied" in error and "may lock" in error
        assert len(twofa.failures_since(offset)) == jt.MAX_REFUSED_LOGINS
        assert term.echo() and term.processes() == []
    finally:
        term.close()

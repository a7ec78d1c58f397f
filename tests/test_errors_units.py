"""Unit tests: ssh's failures in the user's terms (issue 22: every failure names its cause and
the next step), by tables of ssh's own stderr lines (OpenSSH 9.x's words)."""

from __future__ import annotations

import pytest

import jupyter_tunnel as jt

JUMP_NOISE = ["stdio forwarding failed", "kex_exchange_identification: Connection closed by remote host",
              "Connection closed by UNKNOWN port 65535"]
CHANGED = ["@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
           "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
           "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
           "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!",
           "Offending ECDSA key in /home/u/.ssh/known_hosts:3",
           "Host key for srv.example.org has changed and you have requested strict checking.",
           "Host key verification failed."]


@pytest.mark.parametrize("lines, hosts, here, said", [
    # the first hop is resolved by this machine's ssh
    (["ssh: Could not resolve hostname gw.exmaple.org: Name or service not known"], ("gw.exmaple.org", "srv"), "",
     "the host name gw.exmaple.org cannot be resolved here (Name or service not known): check its spelling"),
    # the next one by the jump host's sshd, which says so through ssh -W's channel
    (["channel 0: open failed: connect failed: Name or service not known", *JUMP_NOISE], ("gw", "srvv"), "",
     "gw cannot resolve the host name of srvv (Name or service not known): check its spelling"),
    (["channel 0: open failed: connect failed: Temporary failure in name resolution", *JUMP_NOISE],
     ("gw", "head", "srvv"), "",
     "a jump host (gw, head) cannot resolve the host name of the host after it (head, srvv) "
     "(Temporary failure in name resolution): check its spelling"),
    (["channel 0: open failed: connect failed: Connection refused", *JUMP_NOISE], ("gw", "srv"), "",
     "gw cannot connect to srv (Connection refused)"),
    (["ssh: connect to host 10.0.0.9 port 22: Connection timed out"], ("srv",), "",
     "10.0.0.9 did not answer on port 22 (Connection timed out): it is down, or a firewall or VPN is in the way"),
    (["ssh: connect to host 10.0.0.9 port 22: No route to host"], ("srv",), "",
     "cannot reach 10.0.0.9 port 22 (No route to host)"),
    (["No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.",
      "Host key verification failed."], ("gw", "srv"), "",
     "the host key of [127.0.0.1]:2222 is not known here yet: connect once with ssh -J gw srv here, check its "
     "fingerprint and accept it, then run jupyter-tunnel again"),
    # the head's own ssh to a node: the head is where to act
    (["No ECDSA host key is known for node07 and you have requested strict checking.",
      "Host key verification failed."], ("node07",), "head.cluster",
     "the host key of node07 is not known on head.cluster yet: connect once with ssh node07 on head.cluster, "
     "check its fingerprint and accept it, then run jupyter-tunnel again"),
    (CHANGED, ("srv.example.org",), "",
     "the host key of srv.example.org is not the one saved here (~/.ssh/known_hosts): if its admins changed it, "
     "remove the old one with ssh-keygen -R srv.example.org here and accept the new one with ssh srv.example.org "
     "(compare its fingerprint with theirs); else someone may be in between: do not connect"),
    # anything else: ssh's own words
    (["kex_exchange_identification: read: Connection reset by peer"], ("srv",), "", ""),
    (["jtuser@127.0.0.1: Permission denied (password)."], ("srv",), "", ""),
])
def test_explain_ssh_failure(lines, hosts, here, said):
    assert jt.explain_ssh_failure(lines, hosts, here) == said
    if said:  # what parse_ssh_error gives every message of the run
        assert jt.parse_ssh_error(lines, None, hosts, here) == said


def test_a_changed_host_key_is_not_three_lines_of_at_signs():
    assert "@@@" not in jt.parse_ssh_error(CHANGED)


@pytest.mark.parametrize("reason, hint", [
    ("jt@srv: Permission denied (publickey).", "srv takes only keys, and none of yours was accepted: add your "
                                              "public key to its ~/.ssh/authorized_keys with ssh-copy-id"),
    ("jt@srv: Permission denied (publickey,password).", "a wrong password, key passphrase or verification code"),
])
def test_a_refused_key_says_what_to_do(reason, hint):
    assert hint in jt.build_login_error("srv", reason)


@pytest.mark.parametrize("seconds, could_prompt, line", [
    (0.62, True, "Connected in 0.62 s"),
    (12.37, True, "Connected in 12.37 s, your time at the prompts included"),
    (12.37, False, "Connected in 12.37 s"),  # BatchMode: nobody was asked anything
])
def test_the_login_time_says_what_it_includes(seconds, could_prompt, line):
    assert jt.build_connected_line(seconds, could_prompt) == line


def test_a_signal_that_escapes_the_run_is_an_interruption_not_a_traceback(monkeypatch, capsys):
    """SIGTERM then SIGHUP at once: the second may come while the first is handled; main() says
    'Interrupted' (exit 130), never a traceback with exit 1."""
    def run(self):
        raise jt.Interrupted("SIGHUP")

    monkeypatch.setattr(jt.Tunnel, "run", run)
    monkeypatch.setattr(jt, "prune_registry", lambda: [])
    assert jt.main(["-s", "srv", "-b", "none"]) == jt.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("Interrupted.")

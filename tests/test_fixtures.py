"""Quick real tests proving the fixtures in conftest.py: sshd, users, Jupyter servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest

from conftest import JupyterFactory
from helpers import free_port, http_get, port_is_free, wait_for
from realenv import MULTI_USER, NO_SERVER_USER, SERVER_USER, JupyterProc, SshServer, UserAccount


def test_jump_hosts_reach_srv_with_one_login_per_hop(sshd: SshServer) -> None:
    """ssh -J gw,head srv lands on srv as jtuser, and the log shows one publickey login per hop."""
    offset = sshd.log_offset()
    result = sshd.ssh("-J", "gw,head", "srv", "id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == SERVER_USER
    logins = sshd.logins_since(offset)
    assert len(logins) == 3, logins
    assert all(f"Accepted publickey for {SERVER_USER} from " in line for line in logins), logins


def test_other_users_log_in_with_the_same_key(sshd: SshServer) -> None:
    """jtnone and jtmulti share the key; `id -un` proves which account the session runs as."""
    for user in (NO_SERVER_USER, MULTI_USER):
        result = sshd.ssh(f"{user}@srv", "id -un")
        assert (result.returncode, result.stdout.strip()) == (0, user), result.stderr


def test_password_port_refuses_keys(sshd: SshServer) -> None:
    """The password-only port rejects the client key that the key port accepts."""
    result = sshd.ssh("-p", str(sshd.pw_port), "srv", "true")
    assert result.returncode == 255
    assert "Permission denied (password)" in result.stderr


def test_password_logins_through_a_jump_host_via_askpass(sshd: SshServer, tmp_path: Path) -> None:
    """SSH_ASKPASS with SSH_ASKPASS_REQUIRE=force answers the password prompt of every hop."""
    prompts = tmp_path / "prompts"
    offset = sshd.log_offset()
    result = sshd.ssh("-J", "pgw", "psrv", "id -un", env=sshd.askpass_env(prompt_log=prompts))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == SERVER_USER
    assert len(prompts.read_text().splitlines()) == 2  # one prompt per hop
    logins = sshd.logins_since(offset)
    assert len(logins) == 2, logins
    assert all(f"Accepted password for {SERVER_USER} from " in line for line in logins), logins


def test_wrong_password_is_refused(sshd: SshServer) -> None:
    """A wrong password fails (and logs no login), so the right one above really mattered."""
    offset = sshd.log_offset()
    # ssh asks 3 times; NumberOfPasswordPrompts 1 keeps it quick
    result = sshd.ssh("-o", "NumberOfPasswordPrompts=1", "psrv", "true", env=sshd.askpass_env("wrong-pw"))
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    assert sshd.logins_since(offset) == []


def test_dead_alias_is_refused(sshd: SshServer) -> None:
    """`dead` fails fast with "Connection refused" (for the tool's error paths)."""
    result = sshd.ssh("dead", "true", timeout=10)
    assert result.returncode == 255
    assert "Connection refused" in result.stderr


def test_jtuser_server_runtime_file_and_token(
    jtuser_server: JupyterProc, test_users: Dict[str, UserAccount]
) -> None:
    """jtuser's one server wrote its real runtime file, and its token opens /api/status."""
    assert test_users[SERVER_USER].runtime_files() == [jtuser_server.runtime_file]
    info = json.loads(jtuser_server.runtime_file.read_text())
    assert info["pid"] == jtuser_server.pid
    assert info["port"] == jtuser_server.port
    assert jtuser_server.token and info["token"] == jtuser_server.token
    assert jtuser_server.api("status", token=jtuser_server.token)[0] == 200
    assert jtuser_server.api("status")[0] == 403  # the token is really needed
    assert jtuser_server.root_dir.owner() == SERVER_USER


def test_jtnone_has_no_runtime_files(test_users: Dict[str, UserAccount]) -> None:
    """jtnone never runs a server, so there is nothing to discover."""
    assert test_users[NO_SERVER_USER].runtime_files() == []


def test_start_jupyter_for_jtmulti_and_stop(
    start_jupyter: JupyterFactory, test_users: Dict[str, UserAccount]
) -> None:
    """Servers started for jtmulti are discoverable; stop() removes the runtime file, kill() leaves it stale."""
    first, second = start_jupyter.many(2, args=["--ServerApp.base_url=/jt/"])
    assert first.port != second.port
    assert second.base_url == "/jt/" and second.url.endswith(":%d/jt/" % second.port)
    assert second.api("status", token=second.token)[0] == 200
    assert test_users[MULTI_USER].runtime_files() == sorted([first.runtime_file, second.runtime_file])
    first.stop()
    assert not first.alive and not first.runtime_file.exists()
    second.kill()
    assert not second.alive and second.runtime_file.exists()  # a crash leaves a stale file


def test_start_jupyter_lab(start_jupyter: JupyterFactory) -> None:
    """`jupyter lab` (which execs jupyter-lab) is found by its pid and serves /lab with the token."""
    lab = start_jupyter(app="lab")
    assert lab.runtime_file.name == f"jpserver-{lab.pid}.json"
    status, body = http_get(f"http://127.0.0.1:{lab.port}/lab?token={lab.token}")
    assert status == 200 and b"JupyterLab" in body


def test_start_jupyter_keeps_the_user_invariants(start_jupyter: JupyterFactory) -> None:
    """jtuser has exactly one server and jtnone none: the factory refuses both."""
    for user in (SERVER_USER, NO_SERVER_USER):
        with pytest.raises(ValueError):
            start_jupyter(user)


def test_wait_for_polls_and_times_out() -> None:
    """wait_for returns the first truthy value and names what it waited for on timeout."""
    calls = iter([None, 0, "done"])
    assert wait_for(lambda: next(calls), timeout=5, interval=0.01) == "done"
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, timeout=0.1, interval=0.01, what="the impossible")


def test_free_port_is_bindable() -> None:
    """free_port gives a port that a listener can bind on all three loopback hosts."""
    port = free_port(("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    assert port_is_free(port, ("127.0.0.1", "127.0.0.2", "127.0.0.3"))

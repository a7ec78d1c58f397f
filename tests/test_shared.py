"""Integration tests: riding the user's own ssh connection (issue 14).

The user's config has ``ControlMaster auto``, ``ControlPath`` and ``ControlPersist``, as
many cluster users keep it, and the test opens a master with it as the user would (a plain
``ssh HOST true`` that stays in the background).  A run to that host then logs in nowhere
(sshd counts no login), and leaves the user's master as it found it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

import jupyter_tunnel as jt
from helpers import free_port, port_is_free, wait_for
from tunnelrun import get_status, local_port_of

pytestmark = pytest.mark.integration

USING = "Info: Using your open connection to srv (no login)."


class UserSsh:
    """The user's own ssh: a config with ControlMaster auto/ControlPath/ControlPersist around
    the fixtures' config, and the masters opened with it."""

    def __init__(self, fixtures_config: Path, included: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jtu-", dir="/tmp"))  # short: socket paths
        self.config = self.dir / "config"
        masters = f"ControlMaster auto\nControlPath {self.dir}/%C\nControlPersist 600\n"
        if included:  # as many users keep it: in a file of a config.d, found by a glob
            (self.dir / "config.d").mkdir()
            (self.dir / "config.d" / "50-masters.conf").write_text(masters)
            masters = f"Include {self.dir}/config.d/*.conf\n"
        self.config.write_text(f"{masters}Include {fixtures_config}\n")

    def ssh(self, *args: str) -> "subprocess.CompletedProcess[str]":
        """``ssh -F CONFIG ARGS``, no stdin."""
        return subprocess.run(["ssh", "-F", str(self.config), *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)

    def open(self, *hosts: str) -> int:
        """Open a master to the last host, through the others, as ``ssh [-J ...] HOST true``
        does with this config; its pid."""
        *jumps, target = hosts
        done = self.ssh(*(["-J", ",".join(jumps)] if jumps else []), target, "true")
        assert done.returncode == 0, done.stderr
        pid = self.master_pid(target)
        assert pid, f"no master to {target} after ssh: {done.stderr}"
        return pid

    def master_pid(self, host: str) -> Optional[int]:
        """The pid ``ssh -O check`` tells for the user's master to ``host``, None when none answers."""
        done = self.ssh("-O", "check", host)
        found = re.search(r"Master running \(pid=(\d+)\)", done.stderr)
        return int(found.group(1)) if done.returncode == 0 and found else None

    def close(self) -> None:
        """Stop every master of the test's config and remove its files."""
        for host in ("gw", "head", "srv"):
            self.ssh("-O", "exit", host)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=[False], ids=["config"])
def user_ssh(sshd, request) -> Iterator[UserSsh]:
    user = UserSsh(sshd.config, included=request.param)
    try:
        yield user
    finally:
        user.close()


@pytest.mark.parametrize("user_ssh", [False, True], ids=["config", "included"], indirect=True)
@pytest.mark.parametrize("hosts", [["srv"], ["gw", "srv"]], ids=["direct", "1jump"])
def test_rides_the_users_open_master_without_a_login(tunnel, sshd, jtuser_server, user_ssh, hosts: List[str]):
    master = user_ssh.open(*hosts)
    offset = sshd.log_offset()
    run = tunnel("-F", str(user_ssh.config), "-s", *hosts)
    url = run.url()
    assert get_status(url)[0] == 200
    assert USING in run.stderr and "Connecting to" not in run.stderr
    assert sshd.logins_since(offset) == []
    # Ctrl+C: the user's master keeps running, without the forward of this run
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert user_ssh.master_pid("srv") == master
    wait_for(lambda: port_is_free(local_port_of(url)), 5, what="the local port to be free again")
    run.assert_clean()
    assert sshd.logins_since(offset) == []


def test_the_users_master_dying_means_a_login_on_the_same_port(tunnel, sshd, jtuser_server, user_ssh):
    master = user_ssh.open("srv")
    run = tunnel("-F", str(user_ssh.config), "-s", "srv")
    url = run.url()
    assert USING in run.stderr
    offset = sshd.log_offset()
    os.kill(master, signal.SIGKILL)  # its socket file stays behind, dead
    wait_for(lambda: "Reconnected." in run.stderr, 30, what=f"the reconnection:\n{run.stderr}")
    assert "your ssh master at" in run.stderr
    assert get_status(url)[0] == 200  # the same URL: the same local port
    assert len(sshd.logins_since(offset)) == 1
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    run.assert_clean()
    # the run's own login left no master of the user's kind behind it
    assert user_ssh.master_pid("srv") is None


def logs_in(tunnel, sshd, user_ssh: UserSsh, *args: str) -> List[str]:
    """Run the tool with the user's config until its URL answers, then Ctrl+C; it must have
    logged in itself, not ridden a master: sshd's login lines of the run."""
    offset = sshd.log_offset()
    run = tunnel("-F", str(user_ssh.config), *args)
    assert get_status(run.url())[0] == 200
    assert "Info: Connecting to srv" in run.stderr and USING not in run.stderr
    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    run.assert_clean()
    return sshd.logins_since(offset)


def test_no_open_master_logs_in_and_leaves_no_master_behind(tunnel, sshd, jtuser_server, user_ssh):
    assert len(logs_in(tunnel, sshd, user_ssh, "-s", "gw", "srv")) == 2
    # the user's "ControlMaster auto" + "ControlPersist" would have made the jump hop's ssh a
    # master that outlives the run: the run's config says "ControlMaster no" first
    assert user_ssh.master_pid("gw") is None and user_ssh.master_pid("srv") is None


def test_an_open_master_to_the_jump_host_saves_its_login(tunnel, sshd, jtuser_server, user_ssh):
    user_ssh.open("gw")
    logins = logs_in(tunnel, sshd, user_ssh, "-s", "gw", "srv")
    assert len(logins) == 1, logins  # srv's: gw is reached through the user's master
    assert user_ssh.master_pid("gw") is not None


def test_new_login_logs_in_despite_an_open_master(tunnel, sshd, jtuser_server, user_ssh):
    master = user_ssh.open("srv")
    assert len(logs_in(tunnel, sshd, user_ssh, "-s", "srv", "--new-login")) == 1
    assert user_ssh.master_pid("srv") == master


def unix_listeners() -> str:
    """Every bound unix socket's path on the machine (``/proc/net/unix``): a socket whose file
    was removed is still listed while a process listens on it."""
    return Path("/proc/net/unix").read_text()


def test_a_killed_run_leaves_no_forward_on_the_users_master(tunnel, sshd, jtuser_server, user_ssh, shutdown):
    master = user_ssh.open("srv")
    # a --forward too (nothing listens there): the user's master forwards it as well
    run = tunnel("-F", str(user_ssh.config), "-s", "srv", "--forward", f"{free_port()}:{free_port()}")
    port = local_port_of(run.url())
    forwards = [spec.split(":")[0] for spec in run.states()[0]["shared_forward"]["specs"]]
    assert [os.path.basename(path) for path in forwards] == ["f", "f1"]
    os.killpg(run.process.pid, signal.SIGKILL)
    run.process.wait()
    assert port_is_free(port)  # the port was the run's own: it went with it
    listening = unix_listeners()
    assert all(forward in listening for forward in forwards)  # the user's master still forwards the dead run's sockets
    # jupyter-tunnel-shutdown (as the next run would) cleans up after it: the forwards only
    done = shutdown(TMPDIR=run.tmp)
    assert "Traceback" not in done.stderr, done.stderr
    wait_for(lambda: not any(forward in unix_listeners() for forward in forwards), 5,
             what="the dead run's forwards to be cancelled")
    assert user_ssh.master_pid("srv") == master
    run.assert_clean()


def test_a_socket_at_the_controlpath_that_is_no_master_costs_no_login(tunnel, sshd, jtuser_server, user_ssh):
    """Something listens at the user's ControlPath but answers no mux hello (a master that
    hangs, another program): ssh's -O check would fall back to a login of its own and say
    yes.  The run must see that no master is there and log in once, as without one."""
    settings = jt.parse_ssh_settings(user_ssh.ssh("-G", "srv").stdout)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as impostor:
        impostor.bind(settings["controlpath"])
        impostor.listen(16)  # accepts (the kernel does), never speaks
        logins = logs_in(tunnel, sshd, user_ssh, "-s", "srv")
    assert len(logins) == 1, logins

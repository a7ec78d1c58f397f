"""Integration tests: the real jupyter_tunnel.py, a real sshd on loopback, real Jupyter servers.

Each test runs the script as a user would (a subprocess, ``-F`` the fixtures' ssh config)
and checks what a user would: the printed URL answers through the tunnel, sshd saw one
login per hop, and after Ctrl+C/SIGTERM/SIGHUP no process, socket or temp file is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from helpers import port_is_free, wait_for
from realenv import TEST_PASSWORD
from tunnelrun import SCRIPT, Terminal, get_once, get_status, local_port_of

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("hosts", [["srv"], ["gw", "srv"], ["gw", "head", "srv"]], ids=["direct", "1jump", "2jumps"])
def test_tunnel_serves_the_page_with_one_login_per_hop(tunnel, sshd, jtuser_server, hosts):
    offset = sshd.log_offset()
    run = tunnel("-s", *hosts)
    url = run.url()
    assert url == f"http://localhost:{local_port_of(url)}/?token={jtuser_server.token}"
    status, body = get_status(url)
    assert status == 200 and "started" in body
    assert f"Info: Port used on localhost: {local_port_of(url)}" in run.stderr
    # the remote port or the next free one (the original's rule); here the "remote" server
    # itself holds 127.0.0.1:port, so the tunnel gets the next one
    assert local_port_of(url) == jtuser_server.port + 1
    logins = sshd.logins_since(offset)
    assert len(logins) == len(hosts), logins
    assert all("Accepted publickey for jtuser" in line for line in logins)
    # the tunnel is registered (for jupyter-tunnel-shutdown), without its token
    [state] = run.states()
    assert (state["pid"], state["hosts"], state["local_port"], state["remote_port"]) == \
        (run.process.pid, hosts, local_port_of(url), jtuser_server.port)
    assert jtuser_server.token not in json.dumps(state)

    assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert "Traceback" not in run.stderr
    run.assert_clean()
    wait_for(lambda: port_is_free(local_port_of(url)), 5, what="the local port to be free again")
    assert len(sshd.logins_since(offset)) == len(hosts)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_close_cleanly(tunnel, jtuser_server, signum):
    run = tunnel("-s", "gw", "srv")
    url = run.url()
    assert get_status(url)[0] == 200
    # only the tool gets the signal here, not its process group: it must stop the master itself
    run.process.send_signal(signum)
    assert run.wait(10) == jt.EXIT_OK
    assert "Closing the tunnel" in run.stderr
    run.assert_clean()


def test_next_free_local_port_when_the_remote_one_is_taken(tunnel, jtuser_server):
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier tests' TIME_WAIT
        busy.bind(("127.0.0.1", jtuser_server.port + 1))
        busy.listen()
        run = tunnel("-s", "srv")
        url = run.url()
        assert local_port_of(url) == jtuser_server.port + 2
        assert get_status(url)[0] == 200
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_busy_local_port_given_is_an_error(tunnel, jtuser_server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = tunnel("-s", "srv", "--local-port", str(port))
        assert run.wait() == jt.EXIT_PORT
    assert f"Error: local port {port} is already in use" in run.stderr
    run.assert_clean()


def test_password_once_for_every_hop(tunnel, sshd, jtuser_server):
    offset = sshd.log_offset()
    run = tunnel("-p", "-s", "pgw", "psrv", stdin=TEST_PASSWORD + "\n")
    url = run.url()
    assert get_status(url)[0] == 200
    logins = sshd.logins_since(offset)
    assert len(logins) == 2 and all("Accepted password for jtuser" in line for line in logins), logins
    assert TEST_PASSWORD not in " ".join(run.argv)
    for line in run.leftovers():  # the password is never on a command line
        assert TEST_PASSWORD not in line
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_wrong_password_is_one_clear_error(tunnel, sshd):
    offset = sshd.log_offset()
    run = tunnel("-p", "-s", "pgw", "psrv", stdin="not-the-password\n")
    assert run.wait() == jt.EXIT_CONNECT
    assert run.stderr.splitlines()[-1].startswith("Error: cannot connect to psrv via pgw: ")
    assert "Permission denied" in run.stderr
    assert "Traceback" not in run.stderr
    assert sshd.logins_since(offset) == []
    run.assert_clean()
    # a wrong password is tried once, not sent again and again (which can lock the account);
    # sshd logs the failure when the connection closes
    failures = wait_for(lambda: [line for line in Path(sshd.log).read_bytes()[offset:].decode().splitlines()
                                 if "Failed password" in line], 5, what="sshd to log the failure")
    assert len(failures) == 1, failures


def test_no_server_running(tunnel):
    run = tunnel("-s", "gw", "jtnone@srv")
    assert run.wait() == jt.EXIT_NO_SERVER
    assert run.stderr.splitlines()[-1] == ("Error: no Jupyter server is running on jtnone@srv: add --start to "
                                           "start one (on a cluster's head node, --submit starts one as a "
                                           "scheduler job)")
    run.assert_clean()


def test_several_servers_listed_then_chosen_by_port(tunnel, start_jupyter):
    first = start_jupyter("jtmulti", app="lab")
    second = start_jupyter("jtmulti", app="server")
    run = tunnel("-s", "jtmulti@srv")
    assert run.wait() == jt.EXIT_NO_SERVER
    assert run.stderr.splitlines()[-1] == \
        "Error: 2 Jupyter servers are running on jtmulti@srv: choose one with --port PORT, --dir TEXT or --pick N"
    rows = [line.split() for line in run.stderr.splitlines() if line[:1].isdigit()]
    assert sorted((row[1], row[2]) for row in rows) == sorted([(str(first.port), "lab"), (str(second.port), "server")])
    run.assert_clean()

    run = tunnel("-s", "jtmulti@srv", "--port", str(second.port))
    url = run.url()
    assert url.endswith(f"?token={second.token}")
    assert get_status(url)[0] == 200
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_stale_and_foreign_runtime_files_are_ignored(tunnel, jtuser_server, test_users):
    # a SIGKILLed server leaves its file behind; a reused pid belongs to another program
    account = test_users["jtuser"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = account.write_runtime_file(f"jpserver-{dead.pid}.json",
                                       json.dumps(dict(pid=dead.pid, port=1, url="http://localhost:1/", token="x")))
    foreign = subprocess.Popen(["sleep", "300"], user=account.uid, group=account.gid, extra_groups=[])
    other = account.write_runtime_file(f"jpserver-{foreign.pid}.json",
                                       json.dumps(dict(pid=foreign.pid, port=2, url="http://localhost:2/", token="y")))
    try:
        run = tunnel("-s", "srv")
        url = run.url()
        assert url.endswith(f"?token={jtuser_server.token}")
        assert run.stop() == jt.EXIT_OK
        run.assert_clean()
    finally:
        foreign.kill()
        foreign.wait()
        stale.unlink()
        other.unlink()


def test_server_that_does_not_answer_times_out(tunnel, hung_server):
    run = tunnel("-s", "jtnone@srv", "--timeout", "2")
    assert run.wait() == jt.EXIT_TIMEOUT
    assert run.stderr.splitlines()[-1].startswith(
        "Error: the Jupyter server did not answer through the tunnel within 2 s")
    run.assert_clean()


def test_a_file_whose_token_the_server_refuses_is_never_ready(tunnel, jtuser_server, forged_file):
    # jtnone's forged runtime file names the port of jtuser's real server, with a token that
    # server does not know: its 403 to that token is no readiness (a password server's 403 is)
    forged_file(dict(port=jtuser_server.port, url=f"http://localhost:{jtuser_server.port}/",
                     hostname="127.0.0.1", token="not-the-servers-token"), user="jtnone")
    run = tunnel("-s", "jtnone@srv", "--timeout", "2")
    assert run.wait() == jt.EXIT_TIMEOUT
    assert run.lines.empty(), "a URL was printed"
    assert run.stderr.splitlines()[-1].startswith(
        f"Error: the Jupyter server at 127.0.0.1:{jtuser_server.port} on jtnone@srv refused the token of its "
        "own runtime file (HTTP 403) for 2 s"), run.stderr
    run.assert_clean()


def test_master_killed_is_reported_and_cleaned(tunnel, jtuser_server):
    run = tunnel("-s", "gw", "srv", "--no-reconnect")
    run.url()
    master = [line for line in run.leftovers() if " -M " in line]
    assert len(master) == 1, run.leftovers()
    os.kill(int(master[0].split(":")[0]), signal.SIGKILL)
    assert run.wait() == jt.EXIT_LOST
    assert "Error: the connection to srv was lost" in run.stderr
    run.assert_clean()


def test_unreachable_host(tunnel):
    run = tunnel("-s", "dead")
    assert run.wait() == jt.EXIT_CONNECT
    assert run.stderr.splitlines()[-1].startswith("Error: cannot connect to dead: ")
    assert "Connection refused" in run.stderr
    run.assert_clean()


def test_unreachable_host_behind_a_jump(tunnel):
    run = tunnel("-s", "gw", "dead")
    assert run.wait() == jt.EXIT_CONNECT
    assert run.stderr.splitlines()[-1].startswith("Error: cannot connect to dead via gw: ")
    run.assert_clean()


def test_ssh_missing(tunnel, sshd):
    offset = sshd.log_offset()
    run = tunnel("-s", "srv", env={"PATH": "/nonexistent"})
    assert run.wait() == jt.EXIT_MISSING
    assert run.stderr.strip() == "Error: ssh not found in PATH (the OpenSSH client)"
    assert sshd.logins_since(offset) == []


def test_browser_missing_fails_before_any_login(sshd):
    offset = sshd.log_offset()
    done = subprocess.run([sys.executable, str(SCRIPT), "-F", sshd.config, "-s", "srv", "-b", "no-such-browser"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == jt.EXIT_MISSING
    assert done.stderr.strip() == "Error: no-such-browser not found in PATH (given with -b/--browser)"
    assert sshd.logins_since(offset) == []


def test_browser_gets_the_url(tunnel, jtuser_server, tmp_path):
    record = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$@" > {record}.tmp && mv {record}.tmp {record}\n')
    browser.chmod(0o755)
    run = tunnel("-s", "srv", "-b", str(browser))
    url = run.url()
    wait_for(record.exists, 10, what="the browser to be started")
    opened = record.read_text().strip()
    # the browser gets a one-time address, never the token (tests/test_browser.py)
    assert opened.startswith("http://127.0.0.1:") and jtuser_server.token not in opened
    status, headers, _ = get_once(opened)
    assert (status, headers["Location"]) == (303, url)
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_unknown_option_exits_2(sshd):
    done = subprocess.run([sys.executable, str(SCRIPT), "-s", "srv", "--frobnicate"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == jt.EXIT_USAGE
    assert "unrecognized arguments: --frobnicate" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_shows_version_and_examples():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == jt.EXIT_OK
    assert "jupyter-tunnel 0." in done.stdout
    assert "through a gateway:" in done.stdout and "-s user@gateway.ext user@server.ext" in done.stdout


@pytest.fixture
def user_agent(tmp_path):
    """An ssh-agent of the user's own, as a desktop session has one."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    wait_for(sock.exists, 10, what="the user's agent")
    yield str(sock)
    agent.terminate()
    agent.wait()


def test_the_users_agent_is_used_and_left_alone(tunnel, jtuser_server, user_agent):
    run = tunnel("-s", "gw", "srv", env={"SSH_AUTH_SOCK": user_agent})
    run.url()
    assert not [line for line in run.leftovers() if "ssh-agent" in line]  # no agent of our own
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()
    assert Path(user_agent).exists()


def test_ssha_starts_a_fresh_agent_and_kills_it(tunnel, jtuser_server, user_agent):
    run = tunnel("-a", "-s", "gw", "srv", env={"SSH_AUTH_SOCK": user_agent})
    run.url()
    assert len([line for line in run.leftovers() if "ssh-agent" in line]) == 1
    # keys are added to the run's own agent on first use (AddKeysToAgent)
    [agent_sock] = [line.split(" -a ")[1].split()[0] for line in run.leftovers() if "ssh-agent" in line]
    listed = subprocess.run(["ssh-add", "-l"], env=dict(os.environ, SSH_AUTH_SOCK=agent_sock),
                            capture_output=True, text=True)
    assert listed.returncode == 0 and "ED25519" in listed.stdout, listed
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()  # the run's agent is gone with it
    assert Path(user_agent).exists()  # the user's own is untouched


def test_ssh_options_reach_every_hop(tunnel, sshd, start_jupyter):
    """-o goes to the jump hosts too (ssh itself passes -o only to the last one)."""
    server = start_jupyter("jtmulti")
    offset = sshd.log_offset()
    run = tunnel("-o", "User=jtmulti", "-s", "gw", "head", "srv")
    assert run.url().endswith(f"?token={server.token}")
    logins = sshd.logins_since(offset)
    assert len(logins) == 3 and all("Accepted publickey for jtmulti " in line for line in logins), logins
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_password_asked_once_on_the_terminal(sshd, jtuser_server, tmp_path):
    """A person at a terminal types the password once, unechoed, for both hops."""
    offset = sshd.log_offset()
    term = Terminal("-F", str(sshd.config), "-p", "-s", "pgw", "psrv", "-b", "none",
                    env={"JUPYTER_TUNNEL_REGISTRY": str(tmp_path)})
    try:
        term.read_until(b"SSH password: ")
        term.type(TEST_PASSWORD)
        term.read_until(f"?token={jtuser_server.token}".encode())
        assert TEST_PASSWORD.encode() not in term.screen  # not echoed
        assert term.screen.count(b"password:") == 1  # asked once, not once per hop
        logins = sshd.logins_since(offset)
        assert len(logins) == 2 and all("Accepted password" in line for line in logins), logins
        assert term.interrupt() == jt.EXIT_OK
    finally:
        term.close()


@pytest.mark.parametrize("user, said", [
    ("jtnologin", "This account is currently not available."),
    ("jtfalse", "nothing (exit code 1)"),
])
def test_an_account_that_runs_no_command_is_named(tunnel, user, said):
    """Its login shell is nologin or /bin/false: the login works (-N runs no shell), every
    command fails; the error says so, with what the remote said."""
    run = tunnel("-s", f"{user}@srv")
    assert run.wait() == jt.EXIT_CONNECT
    assert run.stderr.splitlines()[-1] == (
        f"Error: the account on {user}@srv does not run commands: its login shell refuses them "
        f"(e.g. /bin/false or nologin); it said {said}")
    run.assert_clean()


def test_a_config_path_with_spaces(tunnel, sshd, jtuser_server, tmp_path):
    """-F "my ssh/the config": ssh reads it through the generated Include, quoted."""
    spaced = tmp_path / "my ssh" / "the config"
    spaced.parent.mkdir()
    spaced.write_text(sshd.config.read_text())
    run = tunnel("-F", str(spaced), "-s", "gw", "srv")
    assert get_status(run.url())[0] == 200
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def debug_lines(stderr: str) -> list[str]:
    """The tool's own Debug: lines."""
    return [line[len("Debug: "):] for line in stderr.splitlines() if line.startswith("Debug: ")]


def test_verbose_shows_the_ssh_commands_and_the_config(tunnel, jtuser_server):
    run = tunnel("-v", "-s", "gw", "srv")
    run.url()
    assert run.stop() == jt.EXIT_OK
    lines = debug_lines(run.stderr)
    commands = [line for line in lines if line.split()[0].endswith("/ssh")]
    master = [line for line in commands if " -M -S " in line]
    assert len(master) == 1 and master[0].endswith(" -J gw srv") and " -N -T " in master[0]
    forward = [line for line in commands if " -O forward -L " in line]
    assert len(forward) == 1
    # ssh listens on a unix socket in the run's private directory; the tool on the local port
    assert re.search(rf" -L /tmp/jtt-\w+/jt-\w{{8}}/f:127\.0\.0\.1:{jtuser_server.port} srv$", forward[0])
    assert any(" -T -n -- srv 'sh -c '\"'\"'M=" in line for line in commands)  # the discovery
    config = lines.index(next(line for line in lines if line.startswith("ssh config file ")))
    assert "  ServerAliveInterval 10" in lines[config:] and "  Include /etc/ssh/ssh_config" in lines[config:]
    assert "debug1:" not in run.stderr  # -v is the tool's; ssh's own -v comes with -vv
    run.assert_clean()


def test_verbose_never_shows_the_password_or_the_token(tunnel, jtuser_server):
    run = tunnel("-v", "-p", "-s", "pgw", "psrv", stdin=TEST_PASSWORD + "\n")
    url = run.url()
    assert run.stop() == jt.EXIT_OK
    assert debug_lines(run.stderr)
    assert TEST_PASSWORD not in run.stderr and TEST_PASSWORD not in url
    assert jtuser_server.token not in run.stderr  # only the URL on stdout carries it
    run.assert_clean()


def test_very_verbose_shows_what_ssh_says(tunnel, jtuser_server):
    run = tunnel("-vv", "-s", "gw", "srv")
    url = run.url()
    assert get_status(url)[0] == 200
    assert run.stop() == jt.EXIT_OK
    assert all(" -v " in line for line in debug_lines(run.stderr) if line.split()[0].endswith("/ssh"))
    lines = run.stderr.splitlines()
    assert any(line.startswith("Authenticated to 127.0.0.3 (via proxy)") for line in lines)  # the master's
    assert any(re.fullmatch(r"debug1: Local forwarding listening on path /tmp/jtt-\w+/jt-\w{8}/f\.", line)
               for line in lines), lines
    run.assert_clean()

"""Integration tests: the browser never gets the Jupyter token on its command line.

Any local user can read every process's command line and connect to a loopback port, so a
token in the browser's argv is code execution as you on the remote, for everyone on your
machine.  The tool gives the browser a one-time loopback address instead, which redirects
once, and only for the user who runs the tool, to the URL with the token.  Checked with a
second real local user (jtnone) who reads every command line and tries the address first,
and with a real browser (Debian's Chromium, driven by Playwright) that must land on the
authenticated JupyterLab page.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from helpers import free_port, port_is_free, wait_for
from realenv import MULTI_USER, NO_SERVER_USER, user_env
from tunnelrun import get_once, get_status, local_port_of

pytestmark = pytest.mark.integration

PLAYWRIGHT_BROWSER = Path(__file__).resolve().parent / "playwright_browser.py"

# A "browser" that only sleeps, after noting its pid and the URL it was given.
SLEEPY_BROWSER = """import os, pathlib, sys, time
out = pathlib.Path({out!r}); tmp = out.with_suffix(".tmp")
tmp.write_text(f"{{os.getpid()}} {{sys.argv[1]}}"); tmp.replace(out)
time.sleep(60)
"""

# What another local user can do: read every command line (the token comes on stdin, never
# on a command line of its own), read the browser's one-time address from its argv, and ask
# for it before the browser does.
SPY = r"""import http.client, json, os, sys, urllib.parse
token, browser_pid = sys.stdin.read().strip().encode(), sys.argv[1]
read, holding, address = 0, [], None
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")[:-1]
    except OSError:
        continue
    read += 1
    if any(token in arg for arg in argv):
        holding.append(pid)
    if pid == browser_pid:
        address = argv[-1].decode()
answer = None
if address:
    parts = urllib.parse.urlsplit(address)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        reply = conn.getresponse()
        answer = {"status": reply.status, "headers": dict(reply.getheaders()),
                  "body": reply.read().decode(errors="replace")}
    except OSError as error:
        answer = {"error": repr(error)}
print(json.dumps({"read": read, "holding_token": holding, "address": address, "answer": answer}))
"""


def spy_as(account, token: str, browser_pid: int) -> dict:
    """Run SPY as another local user; what it found."""
    done = subprocess.run([sys.executable, "-c", SPY, str(browser_pid)], input=token,
                          user=account.uid, group=account.gid, extra_groups=[], cwd="/",
                          env=user_env(account, Path(sys.prefix)), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_another_user_finds_no_token_and_is_refused_the_browser_address(tunnel, jtuser_server, test_users, tmp_path):
    record = tmp_path / "browser"
    browser = shlex.join([sys.executable, "-c", SLEEPY_BROWSER.format(out=str(record))])
    run = tunnel("-s", "srv", "-b", browser)
    browser_pid = 0
    try:
        url = run.url()
        pid, address = wait_for(lambda: record.exists() and record.read_text(), 10,
                                what="the browser to be started").split(" ", 1)
        browser_pid = int(pid)
        assert address.startswith("http://127.0.0.1:") and jtuser_server.token not in address

        account = test_users[NO_SERVER_USER]
        seen = spy_as(account, jtuser_server.token, browser_pid)
        assert seen["read"] > 10 and seen["address"] == address  # it can read our command lines...
        assert seen["holding_token"] == []  # ...and none holds the token
        # refused before it could send a byte: the connection is closed (or reset, its request
        # unread), no answer at all
        assert list(seen["answer"]) == ["error"], seen["answer"]
        wait_for(lambda: f"Warning: another local user (uid {account.uid}) connected to the tunnel's port "
                         f"{local_port_of(url)}: refused." in run.stderr, 10, what="the warning")

        assert get_once(address + "x")[0] == 404  # a wrong path: Jupyter's answer, the address stays
        # the user who runs the tool: one redirect to the URL with the token, never cached
        status, headers, body = get_once(address)
        assert (status, headers["Location"]) == (303, url)
        assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
        assert f'href="{url}"' in body
        # one shot: the same address is Jupyter's now (a 404), and the tunnel goes on
        assert local_port_of(address) == local_port_of(url)
        assert get_once(address)[0] == 404
        assert get_status(url)[0] == 200
        assert run.stop() == jt.EXIT_OK
        run.assert_clean()
    finally:
        if browser_pid:
            os.kill(browser_pid, signal.SIGKILL)


def test_a_real_browser_lands_on_the_authenticated_lab(tunnel, start_jupyter, tmp_path):
    lab = start_jupyter(MULTI_USER, app="lab")
    result = tmp_path / "browser.json"
    run = tunnel("-s", f"{MULTI_USER}@srv", "-b", shlex.join([sys.executable, str(PLAYWRIGHT_BROWSER)]),
                 env={"JT_BROWSER_RESULT": str(result)})
    url = run.url()
    seen = json.loads(wait_for(lambda: result.exists() and result.read_text(), 120,
                               what="the browser to open the page"))
    assert "error" not in seen, seen
    assert seen["argv_url"].startswith("http://127.0.0.1:") and lab.token not in seen["argv_url"]
    assert seen["redirects"][:2] == [seen["argv_url"], url]  # the one-time address, then the tunnel
    port = local_port_of(url)
    assert seen["final_url"].startswith(f"http://localhost:{port}/lab"), seen
    assert seen["lab_ui"], f"JupyterLab's UI did not render: {seen}"
    assert seen["without_token"] == "login"  # the control: the lab UI is what the token opened
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


# --- the local port is the run's own (issue 19): another local user gets nothing, ever

# Another local user who listens on a port (``listen``: bound once; ``race``: tries again
# every 10 ms, as someone waiting for the port to be free would), records whatever comes,
# and reports it as JSON when its stdin closes.
OTHER_LISTENER = r"""import json, select, socket, sys
mode, port, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
listeners, bound, conns, got = {}, [], [], b""
def bind_all():
    for host in hosts:
        if host in listeners:
            continue
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port)); sock.listen(16)
        except OSError:
            sock.close(); continue
        listeners[host] = sock; bound.append(host)
bind_all()
print(json.dumps(sorted(listeners)), flush=True)
while True:
    ready, _, _ = select.select([sys.stdin, *listeners.values(), *conns], [], [], 0.01)
    if sys.stdin in ready:
        break
    for sock in ready:
        if sock in conns:
            data = sock.recv(65536)
            got += data
            if not data:
                conns.remove(sock); sock.close()
        else:
            conns.append(sock.accept()[0])
    if mode == "race":
        bind_all()
print(json.dumps({"bound": bound, "received": got.decode(errors="replace")}), flush=True)
"""

# Another local user who connects to the tunnel's port on both loopbacks and asks for the
# server's API: what each connection got.
OTHER_CLIENT = r"""import json, socket, sys
port, answers = int(sys.argv[1]), {}
for host in ("127.0.0.1", "::1"):
    try:
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.sendall(b"GET /api/kernels HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answers[host] = conn.recv(65536).decode(errors="replace") or "closed"
    except OSError as error:  # ConnectionResetError: closed with the request unread
        answers[host] = "closed" if isinstance(error, ConnectionResetError) else type(error).__name__
print(json.dumps(answers))
"""


class OtherUser:
    """OTHER_LISTENER run as another local user (jtnone)."""

    def __init__(self, account, mode: str, port: int, hosts) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", OTHER_LISTENER, mode, str(port), *hosts], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, user=account.uid, group=account.gid, extra_groups=[], cwd="/",
            env=user_env(account, Path(sys.prefix)))
        self.bound = json.loads(self.process.stdout.readline())

    def finish(self) -> dict:
        """Stop listening; what it bound and received."""
        self.process.stdin.close()
        report = json.loads(self.process.stdout.readline())
        self.process.wait(timeout=10)
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def connect_as(account, port: int) -> dict:
    """What OTHER_CLIENT, run as ``account``, got from the tunnel's port on each loopback."""
    done = subprocess.run([sys.executable, "-c", OTHER_CLIENT, str(port)], user=account.uid, group=account.gid,
                          extra_groups=[], cwd="/", env=user_env(account, Path(sys.prefix)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def chromium(tmp_path: Path, **more: str) -> tuple[str, dict]:
    """The -b value and environment that open the URL in a real Chromium (playwright_browser.py)."""
    return (shlex.join([sys.executable, str(PLAYWRIGHT_BROWSER)]),
            {"JT_BROWSER_RESULT": str(tmp_path / "browser.json"), **more})


def browser_result(tmp_path: Path, done=lambda seen: True, timeout: float = 120) -> dict:
    """What the browser wrote, once ``done(result)`` holds."""
    path = tmp_path / "browser.json"
    return wait_for(lambda: path.exists() and done(json.loads(path.read_text())) and json.loads(path.read_text()),
                    timeout, what="the browser's result")


def end_browser(go: Path, pid: "int | None") -> None:
    """Let a browser waiting for ``go`` go on, and stop it (a session of its own) however it is."""
    go.touch()
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # done and gone


def test_another_users_listener_on_ipv6_loopback_gets_nothing_from_a_real_browser(
        tunnel, start_jupyter, test_users, tmp_path):
    """localhost is two addresses: Chromium tries [::1] first.  A port that another user holds
    on either loopback is not used, and the run's own port refuses that user on both."""
    lab = start_jupyter(MULTI_USER, app="lab")
    account = test_users[NO_SERVER_USER]
    # the port the tunnel would pick if it looked at 127.0.0.1 alone (here the server itself
    # holds its own port on 127.0.0.1: the "remote" is this machine)
    wanted = next(port for port in range(lab.port, lab.port + 100) if port_is_free(port))
    other = OtherUser(account, "listen", wanted, ["::1"])
    try:
        assert other.bound == ["::1"]
        browser, env = chromium(tmp_path)
        run = tunnel("-s", f"{MULTI_USER}@srv", "-b", browser, env=env)
        url = run.url()
        port = local_port_of(url)
        assert port != wanted  # taken on one loopback: not free
        seen = browser_result(tmp_path)
        assert "error" not in seen and seen["lab_ui"], seen
        assert seen["final_url"].startswith(f"http://localhost:{port}/lab")
        # the run's port answers nobody else, on either loopback, not even with an error page
        assert connect_as(account, port) == {"127.0.0.1": "closed", "::1": "closed"}
        wait_for(lambda: f"Warning: another local user (uid {account.uid}) connected to the tunnel's port "
                         f"{port}: refused." in run.stderr, 10, what="the warning")
        assert run.stop() == jt.EXIT_OK
        report = other.finish()
        assert report["received"] == "" and lab.token not in json.dumps(report)
        run.assert_clean()
    finally:
        other.kill()


def test_the_port_stays_the_runs_through_a_reconnect_and_the_open_tab_works_again(
        tunnel, start_jupyter, test_users, tmp_path):
    """Between the master's death and the new forward, another user racing for the port
    never gets it, and the open JupyterLab tab works again once the run has reconnected."""
    start_jupyter(MULTI_USER, app="lab")
    go = tmp_path / "go"
    browser, env = chromium(tmp_path, JT_BROWSER_GO=str(go))
    run = tunnel("-s", f"{MULTI_USER}@srv", "-b", browser, env=env)
    url = run.url()
    port = local_port_of(url)
    seen = browser_result(tmp_path, lambda seen: seen.get("waiting") or "error" in seen)
    browser_pid = seen.get("pid")
    other = None
    try:
        assert seen["lab_ui"], seen
        other = OtherUser(test_users[NO_SERVER_USER], "race", port, ["127.0.0.1", "::1"])
        assert other.bound == []
        master = run.states()[0]["master_pid"]
        os.kill(master, signal.SIGKILL)
        go.touch()  # the tab asks for api/kernels from now on, until it gets a 200
        wait_for(lambda: "Info: Reconnected." in run.stderr, 60, what="the run to reconnect")
        seen = browser_result(tmp_path, lambda seen: "after_drop" in seen, timeout=120)
        assert seen["after_drop"][-1:] == [200], seen
        assert run.states()[0]["master_pid"] != master and run.states()[0]["local_port"] == port
        report = other.finish()
        assert report == {"bound": [], "received": ""}
        assert run.stop() == jt.EXIT_OK
        run.assert_clean()
    finally:
        end_browser(go, browser_pid)
        if other is not None:
            other.kill()


def test_stop_server_sends_the_token_nowhere_when_the_local_port_is_taken(tunnel, start_jupyter, test_users):
    """--local-port P taken by another user: exit 6, and neither the shutdown request with
    its token nor anything else reaches P; the server, never reached, keeps running."""
    server = start_jupyter(MULTI_USER)
    port = free_port(("127.0.0.1", "::1"))
    other = OtherUser(test_users[NO_SERVER_USER], "listen", port, ["127.0.0.1"])
    try:
        assert other.bound == ["127.0.0.1"]
        run = tunnel("-s", f"{MULTI_USER}@srv", "--local-port", str(port), "--stop-server")
        assert run.wait(60) == jt.EXIT_PORT
        assert f"Error: local port {port} is already in use" in run.stderr
        report = other.finish()
        assert report["received"] == "", report
        assert server.alive and server.api("status", server.token)[0] == 200
        run.assert_clean()
    finally:
        other.kill()


# Another local user who opens many connections to a port and holds them, until its stdin closes.
CROWD = r"""import socket, sys
port, held = int(sys.argv[1]), []
for _ in range(200):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.read()
"""


def test_a_crowd_of_refused_connections_cannot_starve_the_one_time_address(tunnel, jtuser_server, test_users,
                                                                           tmp_path):
    record = tmp_path / "browser"
    browser = shlex.join([sys.executable, "-c", SLEEPY_BROWSER.format(out=str(record))])
    run = tunnel("-s", "srv", "-b", browser)
    url = run.url()
    pid, address = wait_for(lambda: record.exists() and record.read_text(), 10,
                            what="the browser to be started").split(" ", 1)
    account = test_users[NO_SERVER_USER]
    crowd = subprocess.Popen([sys.executable, "-c", CROWD, str(local_port_of(address))], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, user=account.uid, group=account.gid,
                             extra_groups=[], cwd="/", env=user_env(account, Path(sys.prefix)))
    try:
        assert int(crowd.stdout.readline()) > 100  # the kernel accepted them: the tool dropped them
        status, headers, _ = get_once(address)
        assert (status, headers["Location"]) == (303, url)
        assert get_status(url)[0] == 200
        assert run.stop() == jt.EXIT_OK
        run.assert_clean()
    finally:
        os.kill(int(pid), signal.SIGKILL)
        crowd.kill()
        crowd.wait()

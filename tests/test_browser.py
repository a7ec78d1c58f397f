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
from conftest import MULTI_USER, NO_SERVER_USER
from helpers import tcp_open, wait_for
from realenv import user_env
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
        answer = seen["answer"]
        assert answer["status"] == 403 and "Location" not in answer["headers"]
        assert jtuser_server.token not in json.dumps(answer)
        wait_for(lambda: f"Warning: another local user (uid {account.uid}) asked for the browser's "
                         "one-time address: refused." in run.stderr, 10, what="the warning")

        assert get_once(address + "x")[0] == 404  # a wrong path: the address stays for the browser
        # the user who runs the tool: one redirect to the URL with the token, never cached
        status, headers, body = get_once(address)
        assert (status, headers["Location"]) == (303, url)
        assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
        assert f'href="{url}"' in body
        # one shot: the address is gone at once, and the tunnel goes on
        port = local_port_of(address)
        wait_for(lambda: not tcp_open("127.0.0.1", port), 5, what="the one-time address to close")
        assert get_status(url)[0] == 200
        assert run.stop() == jt.EXIT_OK
        run.assert_clean()
    finally:
        if browser_pid:
            os.kill(browser_pid, signal.SIGKILL)


def test_the_browser_address_closes_after_its_time(capsys):
    redirect = jt.OneShotRedirect("http://localhost:9/?token=abc", timeout=0.2)
    redirect.start()
    port = redirect.address[1]
    wait_for(lambda: not tcp_open("127.0.0.1", port), 10, what="the one-time address to close")
    assert "Info: The browser did not come for its one-time address within 0.2 s" in capsys.readouterr().err
    redirect.close()


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

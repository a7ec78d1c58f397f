"""Integration tests: every kind of Jupyter server, and choosing among several.

Each server is real (jupyter_server/jupyterlab from the test venv, notebook < 7 from its
own venv), started as the test user jtmulti with the command line a user would type; the
tool reaches it through the real sshd, and the page must answer through the tunnel.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from helpers import free_port, wait_for
from realenv import MULTI_USER
from tunnelrun import SCRIPT, Terminal, get_status, local_port_of

pytestmark = pytest.mark.integration
# notebook < 7 lives in its own venv (tests/run.sh makes it): it cannot share one with
# jupyter_server 2 and notebook 7
NB6_VENV = Path(os.environ.get("JT_TEST_NB6_VENV", "/opt/jupyter-tunnel-test-nb6"))


def list_servers(config, *args: str) -> subprocess.CompletedProcess:
    """Run ``jupyter_tunnel.py --list`` against jtmulti@srv."""
    return subprocess.run([sys.executable, str(SCRIPT), "-F", str(config), "-s", f"{MULTI_USER}@srv", "--list", *args],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, NO_COLOR="1"))


@pytest.fixture
def two_servers(start_jupyter):
    """A JupyterLab in an 'alpha' dir and a plain jupyter_server in a 'beta' dir."""
    lab = start_jupyter.typed("lab", "--ip=127.0.0.1", f"--port={free_port()}", root="alpha")
    plain = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}", root="beta")
    return sorted([lab, plain], key=lambda s: s.info["port"])


def test_list_shows_a_numbered_table(sshd, two_servers):
    done = list_servers(sshd.config)
    assert done.returncode == jt.EXIT_OK, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["#", "PORT", "KIND", "AUTH", "ROOT", "DIRECTORY"]
    for number, server in enumerate(two_servers, 1):
        row = lines[number].split()
        assert row[:2] == [str(number), str(server.info["port"])]
        assert row[-1] == str(server.root_dir)
        assert "token" in row
    assert {lines[1].split()[2], lines[2].split()[2]} == {"lab", "server"}
    assert len(lines) == 3


def test_list_json(sshd, two_servers):
    done = list_servers(sshd.config, "--json")
    assert done.returncode == jt.EXIT_OK, done.stderr
    listed = json.loads(done.stdout)
    assert [(s["number"], s["port"], s["root_dir"]) for s in listed] == \
        [(n, s.info["port"], str(s.root_dir)) for n, s in enumerate(two_servers, 1)]
    assert all(s["auth"] == "token" and s["kind"] == "jupyter_server" for s in listed)
    assert not any(s.info["token"] in done.stdout for s in two_servers)  # a secret stays out


def test_list_with_no_server(sshd):
    done = subprocess.run([sys.executable, str(SCRIPT), "-F", str(sshd.config), "-s", "jtnone@srv", "--list"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == jt.EXIT_OK and done.stdout == ""
    assert "Info: No Jupyter server is running on jtnone@srv." in done.stderr


@pytest.mark.parametrize("how", ["port", "dir", "pick"])
def test_choose_by_port_dir_or_pick(tunnel, sshd, two_servers, how):
    wanted = two_servers[1]
    option = {"port": ["--port", str(wanted.info["port"])], "dir": ["--dir", wanted.root_dir.name],
              "pick": ["--pick", "2"]}[how]
    offset = sshd.log_offset()
    run = tunnel("-s", f"{MULTI_USER}@srv", *option)
    url = run.url()
    assert url.endswith(f"?token={wanted.info['token']}")
    assert get_status(url)[0] == 200
    assert len(sshd.logins_since(offset)) == 1
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_several_servers_without_a_terminal_is_an_error(tunnel, two_servers):
    run = tunnel("-s", f"{MULTI_USER}@srv")
    assert run.wait() == jt.EXIT_NO_SERVER
    assert run.stderr.splitlines()[-1] == (
        f"Error: 2 Jupyter servers are running on {MULTI_USER}@srv: "
        "choose one with --port PORT, --dir TEXT or --pick N")
    run.assert_clean()


@pytest.mark.parametrize("option", [["--pick", "3"], ["--port", "1"], ["--dir", "no-such-dir"]])
def test_a_choice_that_matches_nothing(tunnel, two_servers, option):
    run = tunnel("-s", f"{MULTI_USER}@srv", *option)
    assert run.wait() == jt.EXIT_NO_SERVER
    assert run.stderr.splitlines()[-1] == f"Error: no Jupyter server on {MULTI_USER}@srv matches --port/--dir/--pick"


def test_a_choice_that_matches_several(tunnel, two_servers):
    run = tunnel("-s", f"{MULTI_USER}@srv", "--dir", "/home/")
    assert run.wait() == jt.EXIT_NO_SERVER
    assert "Error: 2 Jupyter servers match on" in run.stderr


def test_prompt_on_a_terminal(sshd, two_servers, tmp_path):
    """A person at a terminal is asked which server, by number."""
    wanted = two_servers[1]
    registry = tmp_path / "registry"
    term = Terminal("-F", str(sshd.config), "-s", f"{MULTI_USER}@srv", "-b", "none",
                    env={"JUPYTER_TUNNEL_REGISTRY": str(registry)})
    try:
        term.read_until(b"Which server? [1-2] ")
        term.type("2")
        term.read_until(f"?token={wanted.info['token']}".encode())
        url = next(line for line in term.screen.decode().splitlines() if "?token=" in line).strip()
        assert get_status(url)[0] == 200
        assert term.interrupt() == jt.EXIT_OK
        assert os.listdir(registry) == []  # the tunnel removed its entry
    finally:
        term.close()


def expect_page(tunnel, sshd, *args: str, token: str = "", status: int = 200) -> str:
    """Open a tunnel to jtmulti's one server, check the page answers, close it; returns stderr."""
    offset = sshd.log_offset()
    run = tunnel("-s", "gw", f"{MULTI_USER}@srv", *args)
    url = run.url()
    assert local_port_of(url)
    if token:
        assert url.endswith(f"?token={token}")
    assert get_status(url)[0] == status
    assert len(sshd.logins_since(offset)) == 2  # one login per hop, whatever the server kind
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()
    return run.stderr


def test_notebook_before_7(tunnel, sshd, start_jupyter):
    server = start_jupyter.typed("notebook", "--ip=127.0.0.1", f"--port={free_port()}", venv=NB6_VENV)
    assert server.runtime_file.name.startswith("nbserver-")
    stderr = expect_page(tunnel, sshd, token=server.info["token"])
    assert "notebook (notebook < 7)" in stderr


def test_notebook_before_7_on_port_zero(tunnel, sshd, start_jupyter):
    server = start_jupyter.typed("notebook", "--ip=127.0.0.1", "--port=0", venv=NB6_VENV)
    assert server.info["port"] == 0  # the file does not say where it listens: the tool finds out
    expect_page(tunnel, sshd, token=server.info["token"])


def test_server_on_all_interfaces(tunnel, sshd, start_jupyter):
    server = start_jupyter.typed("server", "--ip=0.0.0.0", f"--port={free_port()}")
    expect_page(tunnel, sshd, token=server.info["token"])


def test_server_on_its_host_name(tunnel, sshd, start_jupyter):
    """--ip=$(hostname --fqdn): the forward goes to that name, resolved on the remote side."""
    fqdn = subprocess.run(["hostname", "--fqdn"], capture_output=True, text=True, check=True).stdout.strip()
    server = start_jupyter.typed("lab", f"--ip={fqdn}", f"--port={free_port()}")
    assert server.info["hostname"] == fqdn
    expect_page(tunnel, sshd, token=server.info["token"])


def test_unix_socket_server(tunnel, sshd, start_jupyter, test_users):
    sock = Path(tempfile.mkdtemp(prefix="jts-", dir=test_users[MULTI_USER].home)) / "j.sock"
    os.chown(sock.parent, test_users[MULTI_USER].uid, test_users[MULTI_USER].gid)
    server = start_jupyter.typed("server", f"--sock={sock}")
    assert server.info["sock"] == str(sock)
    wait_for(sock.exists, 30, what="the socket")
    stderr = expect_page(tunnel, sshd, token=server.info["token"])
    assert f"socket {sock}" in stderr


def test_password_server(tunnel, sshd, start_jupyter):
    from jupyter_server.auth import passwd

    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}", "--IdentityProvider.token=",
                    f"--PasswordIdentityProvider.hashed_password={passwd('jt-nb-pw')}")
    assert server.info["token"] == ""
    stderr = expect_page(tunnel, sshd, status=403)  # no token in the URL: the page asks
    assert "Info: The server asks for its password: the page will prompt for it." in stderr


def test_server_with_a_base_url(tunnel, sshd, start_jupyter):
    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}", "--ServerApp.base_url=/jt/base/")
    run = tunnel("-s", f"{MULTI_USER}@srv")
    url = run.url()
    assert url == f"http://localhost:{local_port_of(url)}/jt/base/?token={server.info['token']}"
    assert get_status(url)[0] == 200
    assert run.stop() == jt.EXIT_OK


def test_https_server_with_a_self_signed_certificate(tunnel, sshd, start_jupyter, test_users):
    account = test_users[MULTI_USER]
    certs = Path(tempfile.mkdtemp(prefix="jtc-", dir=account.home))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem")],
                   check=True, capture_output=True)
    for path in (certs, certs / "key.pem", certs / "cert.pem"):
        os.chown(path, account.uid, account.gid)
    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}",
                    f"--ServerApp.certfile={certs / 'cert.pem'}", f"--ServerApp.keyfile={certs / 'key.pem'}")
    assert server.info["secure"] is True
    run = tunnel("-s", f"{MULTI_USER}@srv")
    url = run.url()
    assert url.startswith("https://localhost:")
    assert "the browser will warn about it" in run.stderr
    import ssl
    import urllib.request

    context = ssl._create_unverified_context()
    request = urllib.request.Request(url.split("?")[0] + "api/status",
                                     headers={"Authorization": f"token {server.info['token']}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(request, timeout=10) as response:
        assert response.status == 200
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_json_output_for_scripts(tunnel, start_jupyter):
    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}")
    run = tunnel("-s", f"{MULTI_USER}@srv", "--json")
    info = json.loads(run.url())
    assert info == {"url": info["url"], "local_port": local_port_of(info["url"]), "remote_host": f"{MULTI_USER}@srv",
                    "remote_port": server.info["port"], "forwards": [], "pid": run.process.pid}
    assert get_status(info["url"])[0] == 200
    assert run.stop() == jt.EXIT_OK


def test_a_truncated_runtime_file_is_skipped_with_a_warning(tunnel, start_jupyter, forged_file):
    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}")
    # a live jupyter pid whose file was cut short (a full disk, a crash mid-write)
    broken = forged_file('{"port": 88')
    run = tunnel("-s", f"{MULTI_USER}@srv")
    assert run.url().endswith(f"?token={server.info['token']}")
    assert f"Warning: skipping unreadable Jupyter runtime file {broken}" in run.stderr
    assert run.stop() == jt.EXIT_OK


def test_a_server_that_refuses_connections_fails_fast(tunnel, forged_file):
    """A live 'jupyter' pid whose port refuses: an error in seconds, not after --timeout."""
    # Bound but not listening: connections to it are refused.  (Here the "remote" host is
    # this machine: a free port would become the tunnel's own local port, forwarding to itself.)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    forged_file(dict(port=port, url=f"http://localhost:{port}/", token="t"), user="jtnone")
    try:
        started = time.monotonic()
        run = tunnel("-s", "jtnone@srv")
        assert run.wait() == jt.EXIT_TIMEOUT
        assert time.monotonic() - started < 20
        assert run.stderr.splitlines()[-1].startswith(
            f"Error: the Jupyter server at localhost:{port} on jtnone@srv does not accept connections")
        run.assert_clean()
    finally:
        closed.close()


@pytest.mark.parametrize("shell", ["/usr/bin/tcsh", "/usr/bin/fish", "/bin/bash"])
def test_discovery_works_whatever_the_login_shell(tunnel, sshd, start_jupyter, shell):
    """sshd hands the discovery command to the user's login shell: csh, fish and bash alike."""
    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}")
    subprocess.run(["usermod", "--shell", shell, MULTI_USER], check=True)
    try:
        done = list_servers(sshd.config, "--json")
        assert done.returncode == jt.EXIT_OK, done.stderr
        assert [s["port"] for s in json.loads(done.stdout)] == [server.info["port"]]
        run = tunnel("-s", f"{MULTI_USER}@srv")
        assert get_status(run.url())[0] == 200
        assert run.stop() == jt.EXIT_OK
    finally:
        subprocess.run(["usermod", "--shell", "/bin/sh", MULTI_USER], check=True)


def test_control_characters_from_the_remote_are_shown_escaped(tunnel, sshd, start_jupyter, forged_file):
    """A runtime file's root_dir and version with ANSI escapes and newlines: no raw ESC and
    no forged line reach the terminal, in the Info lines or in --list's table."""
    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}")
    forged_file(dict(server.info, root_dir="/home/jtmulti/forged\nInfo: Open http://evil.example/\x1b[2J",
                     version="2.0\r\x1b]0;pwned\x07\x9b31m"))
    run = tunnel("-s", f"{MULTI_USER}@srv", "--dir", "forged")
    url = run.url()
    assert get_status(url)[0] == 200  # the page itself works: only the text is odd
    assert run.stop() == jt.EXIT_OK
    listed = list_servers(sshd.config)
    assert listed.returncode == jt.EXIT_OK and len(listed.stdout.splitlines()) == 3  # heading and two servers
    for text in (run.stderr, listed.stdout):
        assert not {"\x1b", "\x07", "\x9b", "\r"} & set(text)
        assert not any(line.startswith("Info: Open") for line in text.splitlines())
        assert "/home/jtmulti/forged\\nInfo: Open http://evil.example/\\x1b[2J" in text
        assert "2.0\\r\\x1b]0;pwned\\x07\\x9b31m" in text


def test_runtime_files_that_could_mislead_are_skipped_with_a_warning(tunnel, start_jupyter, forged_file):
    """A base_url that would send the browser (and the token) to another host, and numbers
    that are not numbers (JSON 1e999 is a float, infinite): each file is skipped, the real
    server is used, and the printed URL points at localhost."""
    server = start_jupyter.typed("server", "--ip=127.0.0.1", f"--port={free_port()}")
    redirect = forged_file(dict(server.info, base_url="@otherhost:9/"))
    huge_port = forged_file('{"pid": @PID@, "port": 1e999, "url": "http://localhost:1/", "token": "t"}')
    huge_pid = forged_file(f'{{"pid": 1e999, "port": {server.info["port"]}, "token": "t"}}')
    run = tunnel("-s", f"{MULTI_USER}@srv")
    url = run.url()
    assert url == f"http://localhost:{local_port_of(url)}/?token={server.info['token']}"
    assert get_status(url)[0] == 200
    warnings = [line for line in run.stderr.splitlines() if line.startswith("Warning:")]
    assert sorted(warnings) == sorted([
        f"Warning: skipping Jupyter runtime file {redirect}: its base_url '@otherhost:9/' is not a path "
        "starting with /",
        f"Warning: skipping Jupyter runtime file {huge_port}: its port inf is not a whole number from 0 to 65535",
        f"Warning: skipping Jupyter runtime file {huge_pid}: its pid inf is not a whole number from 1 to 2147483647",
    ])
    assert "Traceback" not in run.stderr
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


@pytest.fixture
def web_server():
    """Another program's HTTP server on a free port: a plain page for every request; yields
    the server and the paths it was asked for."""
    import http.server
    import threading

    asked: list[str] = []

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            body = b"<html><body>It works!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, asked
    server.shutdown()
    server.server_close()


def test_a_port_answered_by_another_program_is_not_ready(tunnel, forged_file, web_server):
    """The runtime file names a port where a plain web server answers 200: not Jupyter, so
    no URL, and after --timeout an error that says what answered."""
    server, asked = web_server
    port = server.server_address[1]
    path = forged_file(dict(port=port, url=f"http://localhost:{port}/", token="t"))
    run = tunnel("-s", f"{MULTI_USER}@srv", "--timeout", "3")
    assert run.wait() == jt.EXIT_TIMEOUT
    assert run.lines.empty()  # no URL: the tunnel was never ready
    pid = path.stem.split("-")[1]
    assert run.stderr.splitlines()[-1] == (
        f"Error: localhost:{port} on {MULTI_USER}@srv answered (HTTP 200), but not as a Jupyter server: another "
        f"program listens there, maybe on the port of a Jupyter server that has stopped (its runtime file "
        f"says pid {pid})")
    assert "/api/status" in asked  # it was asked, and its answer was read
    run.assert_clean()

"""Integration tests of the tunnel's lifetime: reconnecting, the server going away.

The network drop is real: the tunnel reaches the sshd through a TCP proxy that the test
cuts (every connection closed, new ones refused) and restores.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

import jupyter_tunnel as jt
from helpers import free_port, wait_for
from tunnelrun import get_status

pytestmark = pytest.mark.integration
PROXY_ADDRESS = "127.0.0.5"


class CuttableProxy:
    """A TCP proxy in front of sshd whose 'network' can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port(hosts=(PROXY_ADDRESS,))
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Accept connections again."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((PROXY_ADDRESS, self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones, like a network gone away."""
        assert self.listener is not None
        # shutdown() first: close() alone would not wake the accept() blocked in the other
        # thread, and the kernel would keep the socket listening
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.listener = None
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def flaky(sshd, tmp_path):
    """An ssh config whose alias ``flaky`` reaches srv's sshd through a CuttableProxy."""
    proxy = CuttableProxy(("127.0.0.3", sshd.port))
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host flaky\n"
        f"    HostName {PROXY_ADDRESS}\n    Port {proxy.port}\n    User jtuser\n"
        f"    IdentityFile {sshd.client_key}\n    IdentitiesOnly yes\n"
        # the host key is the one known for srv's address and port
        f"    HostKeyAlias [127.0.0.3]:{sshd.port}\n"
        f"Include {sshd.config}\n"
    )
    yield proxy, str(config)
    if proxy.listener is not None:
        proxy.cut()


def test_reconnects_on_the_same_port_after_the_master_is_killed(tunnel, sshd, jtuser_server):
    run = tunnel("-s", "gw", "srv")
    url = run.url()
    [master] = [line for line in run.leftovers() if " -M " in line]
    offset = sshd.log_offset()
    os.kill(int(master.split(":")[0]), signal.SIGKILL)
    wait_for(lambda: "Info: Reconnected." in run.stderr, 15, what="the tunnel to reconnect")
    assert "Warning: connection to srv lost" in run.stderr
    assert get_status(url)[0] == 200  # the same URL, the same local port: open tabs keep working
    assert len(sshd.logins_since(offset)) == 2  # one new login per hop
    [state] = run.states()
    assert state["master_pid"] != int(master.split(":")[0])  # the registry follows the new master
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_reconnects_after_a_network_outage(tunnel, flaky, jtuser_server):
    proxy, config = flaky
    run = tunnel("-F", config, "-s", "flaky")
    url = run.url()
    proxy.cut()
    wait_for(lambda: "Warning: connection to flaky lost" in run.stderr, 15, what="the drop to be noticed")
    try:
        wait_for(lambda: "Retrying in" in run.stderr, 15, what="a failed attempt while the network is down")
    except AssertionError:
        raise AssertionError(run.stderr)
    assert run.process.poll() is None
    proxy.restore()
    wait_for(lambda: "Info: Reconnected." in run.stderr, 30, what="the tunnel to reconnect")
    assert get_status(url)[0] == 200
    assert run.stop() == jt.EXIT_OK
    run.assert_clean()


def test_no_reconnect_exits_when_the_network_drops(tunnel, flaky, jtuser_server):
    proxy, config = flaky
    run = tunnel("-F", config, "-s", "flaky", "--no-reconnect")
    run.url()
    proxy.cut()
    assert run.wait(30) == jt.EXIT_LOST
    assert run.stderr.splitlines()[-1].startswith("Error: the connection to flaky was lost")
    run.assert_clean()


def test_max_retries_bounds_the_reconnection(tunnel, flaky, jtuser_server):
    proxy, config = flaky
    run = tunnel("-F", config, "-s", "flaky", "--max-retries", "2")
    run.url()
    proxy.cut()
    assert run.wait(30) == jt.EXIT_LOST
    assert run.stderr.splitlines()[-1] == "Error: could not reconnect to flaky after 2 attempts"
    run.assert_clean()


def test_ctrl_c_while_waiting_to_reconnect_exits_at_once(tunnel, flaky, jtuser_server):
    proxy, config = flaky
    run = tunnel("-F", config, "-s", "flaky")
    run.url()
    proxy.cut()
    wait_for(lambda: "Retrying in" in run.stderr, 15, what="the tunnel to wait before retrying")
    assert run.stop(signal.SIGINT, timeout=5) == jt.EXIT_OK
    run.assert_clean()


def test_tunnel_closes_when_the_server_stops(tunnel, start_jupyter):
    server = start_jupyter("jtmulti", app="lab")
    run = tunnel("-s", "jtmulti@srv", "--check-interval", "1")
    url = run.url()
    assert get_status(url)[0] == 200
    server.stop()
    assert run.wait(20) == jt.EXIT_OK
    assert "Info: The Jupyter server on jtmulti@srv has stopped; closing the tunnel." in run.stderr
    run.assert_clean()

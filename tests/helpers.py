"""Small helpers shared by the tests and tests/conftest.py (import as `from helpers import ...`)."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple, TypeVar

T = TypeVar("T")

# Ports for test listeners are drawn from below Linux's ephemeral range
# (32768-60999): a port picked there could meanwhile become the source port of
# one of the many outgoing ssh connections, and the listener would fail to bind.
PORT_RANGE = (20000, 32000)

# urllib honours http_proxy & co.; requests to loopback must never go to a proxy
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pids_of(uid: int) -> Iterator[int]:
    """The pids of ``uid``'s processes (those still there when looked at)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                yield int(entry)
        except OSError:
            continue  # gone meanwhile


def user_processes(uid: int, word: str = "jupyter") -> Dict[int, str]:
    """The processes of ``uid`` whose command line mentions ``word``, pid -> command line."""
    found = {}
    for pid in pids_of(uid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if word in cmdline:
            found[pid] = cmdline
    return found


def jupyter_processes(user: str) -> Dict[int, str]:
    """The processes of the account ``user`` whose command line mentions jupyter, pid -> command line."""
    return user_processes(pwd.getpwnam(user).pw_uid)


def kill_all(pids: Iterable[int], group: bool = False) -> None:
    """SIGKILL each of ``pids`` (with ``group``, each one's process group); one gone meanwhile is no error."""
    kill = os.killpg if group else os.kill
    # a group also answers EPERM on macOS once only zombies are left in it
    gone = (ProcessLookupError, PermissionError) if group else (ProcessLookupError,)
    for pid in pids:
        with contextlib.suppress(*gone):
            kill(pid, signal.SIGKILL)


def wait_for(
    predicate: Callable[[], Optional[T]],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy and return that; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def port_is_free(port: int, hosts: Iterable[str] = ("127.0.0.1",)) -> bool:
    """Tell whether a listener could bind `port` on every one of `hosts` right now."""
    for host in hosts:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            # like sshd/jupyter/ssh -L do, so a port in TIME_WAIT counts as free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(hosts: Iterable[str] = ("127.0.0.1",), exclude: Iterable[int] = ()) -> int:
    """Return a random port in PORT_RANGE that is free on all `hosts` and not in `exclude`."""
    hosts = tuple(hosts)
    taken = set(exclude)
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if port not in taken and port_is_free(port, hosts):
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE} on {hosts}")


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(
    url: str, headers: Optional[Mapping[str, str]] = None, timeout: float = 5.0
) -> Tuple[int, bytes]:
    """GET `url` bypassing any proxy; return (status, body), also for 4xx/5xx answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def process_state(pid: "int | str") -> Optional[str]:
    """The state letter of process `pid` from /proc/PID/stat ("R", "S", "Z"...); None when it is gone."""
    try:
        # the name in parentheses may hold spaces and ")": the state follows the last ")"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: "int | str") -> bool:
    """Whether process ``pid`` runs (a zombie does not: its cleanup is over)."""
    return process_state(pid) not in ("Z", None)


def tail(path: "str | os.PathLike[str]", lines: int = 40) -> str:
    """Return the last `lines` lines of a text file, or a note that it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as err:
        return f"<cannot read {path}: {err}>"

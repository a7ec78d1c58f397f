#!/usr/bin/env python3
"""Stop this user's running jupyter-tunnel processes, as Ctrl+C in their terminals would.

The companion of jupyter_tunnel.py, for sleep hooks, cron jobs and tidy desktops.  The flow:

1. find: read the registry, where every running tunnel keeps a ``<pid>.json`` entry from
   the moment it starts (its state, connecting or ready, hosts, local and remote ports;
   never the token).  An entry whose pid is no longer one of our tunnels is stale: what
   that tunnel left (the ssh master and agent outlive a SIGKILLed tunnel, its private
   directory, the entry) is cleaned up now, each only once proven to be that tunnel's own
   (``clean_leftovers``); ``--list`` only reads.  Then this user's processes are scanned
   for tunnels without an entry (started by a version without the registry).
2. choose: ``--port`` and ``--host`` keep only the matching tunnels.
3. ``--list`` prints them (a table, or JSON) and stops there.  Otherwise:
4. interrupt: SIGINT to each, as Ctrl+C would, so that the tunnel's own cleanup runs (it
   stops its master, kills its agent, removes its directory and its entry).
5. wait until each is really gone (``--timeout``); with ``--force``, SIGKILL those that are
   not and clean up after them as in step 1.

Only processes of the user running this script are signalled, and only after their command
line was checked right before: a pid reused by an unrelated process is left alone.  Nothing
is ever asked, so it runs without a terminal.

On Windows (docs/windows.md) no signal lets a run clean up (SIGTERM is TerminateProcess) and
no command line can be read: a run is found by its registry entry and its lock, ended, then
its ssh, and its files are removed here (``end_windows_tunnels``).

The registry itself lives here (the section "the registry and process identity"): a run's
private directory, its entry, its lock, and what tells a live run from a dead one's
leftovers.  jupyter_tunnel.py writes its entry with this code and cleans up after dead runs
with it, so the writer and the reader cannot drift apart.  The imports go one way only,
jupyter_tunnel -> jupyter_tunnel_shutdown -> jupyter_node: this file imports nothing of
jupyter_tunnel.py, and ``__all__`` names what jupyter_tunnel.py takes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

# messages, option types, tables and the time left are shared by the three tools
import jupyter_node
from jupyter_node import (CANCEL_COMMANDS, JOB_ID_RE, describe_os_error, format_table, format_time_left, has_control,
                          int_option, number_option, say, split_host, split_host_list)

# This tool's API, and the registry that jupyter_tunnel.py uses (tests/test_api.py checks
# that it imports nothing else from here).
__all__ = [
    "AGENT_SOCKET", "CONFIG_FILE", "CONNECTING", "CONTROL_SOCKET", "FORWARD_SOCKET", "HAVE_PROC",
    "MAX_TIMEOUT", "READY", "STDIO_SHELL", "Registration", "RunningTunnel", "build_cancel_argv", "build_state", "cancel_forward",
    "find_tunnels", "main", "make_private_dir", "prune_registry", "select_tunnels", "socket_answers",
    "stop_tunnels", "take_run_lock",
]

# Exit codes (documented in --help and README.md).
EXIT_OK = 0  # every chosen tunnel stopped, or none was running
EXIT_NOT_STOPPED = 1  # some tunnel still runs (without --force), or an error
EXIT_USAGE = 2  # bad option (argparse)
EXIT_INTERRUPTED = 130

DEFAULT_TIMEOUT = 10.0  # seconds a tunnel gets to close (its cleanup takes well under one)
# --timeout, of this tool and of jupyter-tunnel: at most a day (threading's join() raises
# OverflowError for 1e300 seconds)
MAX_TIMEOUT = 86400.0
KILL_TIMEOUT = 5.0  # after SIGKILL: instant, unless the process is stuck in the kernel
POLL_INTERVAL = 0.05
# SERVER: "started" when the run started its Jupyter server (--start, --submit), "found" when it
# attached; JOB and TIME LEFT: the scheduler job the server runs in (--submit, -n auto, --job)
# FORWARDS: the run's --forward ports, LOCAL->REMOTE (last: the columns before keep their places)
TABLE_COLUMNS = ("PID", "LOCAL PORT", "HOSTS", "NODE", "REMOTE", "SERVER", "JOB", "TIME LEFT", "STATE",
                 "STARTED", "FORWARDS")

# The registry's, which jupyter_tunnel.py shares.
# Running tunnels register in $XDG_RUNTIME_DIR/jupyter-tunnel (or ~/.cache/jupyter-tunnel);
# this variable overrides the directory (the tests use it).
REGISTRY_ENV = "JUPYTER_TUNNEL_REGISTRY"
MAX_STATE_BYTES = 65536  # a registry entry is ~500 bytes: a larger file is not one of ours
MISSING = "it does not exist"  # check_private_dir's answer for a path that is not there
# A registry entry's "state": written as soon as the run has something to clean up after
# it (its private directory), so that a run killed while it logs in leaves nothing behind.
CONNECTING = "connecting"  # logging in, choosing the server, waiting for it (again after a drop)
READY = "ready"  # the URL was printed
# The run's private directory (make_private_dir): "jt-" and mkdtemp's 8 random characters,
# holding the ssh config, the master's control socket, the agent's socket and the forward's.
PRIVATE_PREFIX = "jt-"
MKDTEMP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # tempfile's alphabet
CONFIG_FILE, CONTROL_SOCKET, AGENT_SOCKET, FORWARD_SOCKET = "ssh_config", "c", "a", "f"
# ...and FORWARD_SOCKET followed by a number (f1, f2...) for each --forward of the run
# ...and the run's lock: held (flock) for the run's whole life, it tells a live run whatever
# process hosts it (see take_run_lock)
RUN_LOCK = "lock"
# The master's command line holds only these ssh options (see build_master_argv); -v may
# come from the user asking for ssh's own debug output.
MASTER_FLAGS = ("-M", "-N", "-T", "-A")
MASTER_OPTIONS_WITH_VALUE = ("-F", "-S", "-o", "-J", "-D")
STDIO_SHELL = "sh"  # the remote command of a run's one ssh without a master (the tunnel's StdioMaster)
# What tells a jupyter-tunnel process from a reused pid (see is_tunnel_argv).
TUNNEL_SCRIPTS = ("jupyter_tunnel.py", "jupyter-tunnel", "jupyter-tunnel.sh")
TUNNEL_MODULE = "jupyter_tunnel"  # python -m jupyter_tunnel
SHELLS = ("sh", "bash", "dash", "zsh", "ksh")
OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs", "-o")  # -o: the shells' option
HAVE_PROC = os.path.isdir("/proc/self")  # Linux; elsewhere ps(1) tells (Windows: tasklist, see windows_image)
# Windows (docs/windows.md): no uid, no /proc, no ps, no fcntl, no signal but TerminateProcess.
# Its per-user %LOCALAPPDATA% is the boundary there: the registry and the private directories
# live under it (see windows_data_dir), and a pid is identified by the run's lock (msvcrt).
WINDOWS = sys.platform == "win32"
WINDOWS_APP_DIR = "jupyter-tunnel"  # under %LOCALAPPDATA%: "registry" and "runs" in it
# tasklist's CSV row for one process: "Image Name","PID","Session Name","Session#","Mem Usage"
TASKLIST_IMAGE, TASKLIST_PID = 0, 1
# The run's lock on Windows (msvcrt.locking: LockFile, a mandatory byte-range lock that the
# system drops when the process dies): one byte past the pid written at the file's start, so
# that a reader can still read the pid (a locked range cannot be read through another handle).
WINDOWS_LOCK_OFFSET = 64
# ssh appends ".<16 random chars>" to a ControlPath while binding it, and a unix socket path
# is limited to 104-108 bytes: keep the private directory's path short.
MAX_TMP_PREFIX = 60


class RunningTunnel(NamedTuple):
    """A tunnel of this user: from its registry entry, or found by the process scan.

    A NamedTuple, not a dataclass: jupyter-tunnel imports this module at every start, and
    dataclasses (with inspect) would add about 7 ms to that start (measured on Python 3.11).
    """

    pid: int
    hosts: tuple[str, ...] = ()
    node: str = ""
    local_port: int | None = None
    remote_host: str = ""
    remote_port: int | None = None
    sock: str = ""
    root_dir: str = ""
    started: float | None = None
    phase: str = ""  # the entry's "state": connecting or ready ("" when unregistered)
    started_server: bool | None = None  # whether the run started its server (None: unknown)
    command: str = ""  # only for an unregistered tunnel: its command line
    job: str = ""  # the scheduler job the server runs in ("" when none)
    scheduler: str = ""
    job_end: float | None = None  # epoch seconds at the job's time limit (None: no limit, or unknown)
    forwards: tuple[tuple[int, int], ...] = ()  # --forward: (remote port, local port) each
    state: dict | None = None  # the registry entry (None: found by the process scan)

    @classmethod
    def from_state(cls, state: Mapping) -> RunningTunnel:
        """From a registry entry (written by build_state); odd fields are dropped."""
        hosts, job, scheduler = state.get("hosts"), state.get("job"), state.get("scheduler")
        return cls(
            pid=int(state["pid"]),
            hosts=tuple(str(h) for h in hosts) if isinstance(hosts, list) else (),
            node=str(state.get("node") or ""),
            local_port=_int_or_none(state.get("local_port")),
            remote_host=str(state.get("remote_host") or ""),
            remote_port=_int_or_none(state.get("remote_port")) or None,  # 0: a unix socket
            sock=str(state.get("sock") or ""),
            root_dir=str(state.get("root_dir") or ""),
            started=_finite_or_none(state.get("started")),
            phase=str(state.get("state") or "?"),
            # not known before the run has chosen its server
            started_server=(True if state.get("started_server") is True
                            else False if state.get("server_pid") else None),
            # shown, and put in a qdel/scancel command by the reader: only a job id passes
            job=job if isinstance(job, str) and JOB_ID_RE.fullmatch(job) else "",
            scheduler=scheduler if isinstance(scheduler, str) and scheduler in CANCEL_COMMANDS else "",
            job_end=_finite_or_none(state.get("job_end")),
            forwards=parse_forwards(state.get("forwards")),
            state=dict(state),
        )

    @classmethod
    def from_argv(cls, pid: int, argv: Sequence[str]) -> RunningTunnel:
        """From the command line of a tunnel that did not register: only its hosts are known."""
        hosts, node = hosts_from_argv(argv)
        return cls(pid=pid, hosts=hosts, node=node, remote_host=node or (hosts[-1] if hosts else ""),
                   command=" ".join(argv))

    def alive(self) -> bool:
        """Whether it still runs: a jupyter-tunnel of ours by its argv, or (registered) a run
        hosted by another program that holds its directory's lock (is_live_run)."""
        return is_live_run(self.state) if self.state is not None else is_own_tunnel(self.pid)

    @property
    def registered(self) -> bool:
        """Whether it has a registry entry (else it was found by the process scan)."""
        return self.state is not None

    def describe(self) -> str:
        """``tunnel localhost:8889 -> srv:8888 via gw``, for messages (``the tunnel ...``)."""
        # as in jupyter_tunnel.Route: all -s hosts but the last are jumps, and with a node
        # the last one (the head) is a jump too
        hops = self.hosts if self.node else self.hosts[:-1]
        via = f" via {', '.join(hops)}" if hops else ""
        if not self.registered:
            # its local and remote ports are nowhere to be read
            return f"unregistered tunnel to {self.remote_host}{via}" if self.remote_host else \
                "unregistered tunnel"
        if self.phase == CONNECTING and self.local_port is None:
            return f"connecting tunnel to {self.remote_host or '?'}{via}"
        remote = self.sock or (str(self.remote_port) if self.remote_port else "?")
        return f"tunnel localhost:{self.local_port or '?'} -> {self.remote_host or '?'}:{remote}{via}"

    def name(self, first: bool = False) -> str:
        """``the tunnel localhost:8889 -> srv:8888 (pid 4242)`` for messages (``The ...``
        ``first`` in a sentence)."""
        return f"{'The' if first else 'the'} {self.describe()} (pid {self.pid})"

    def to_json(self) -> dict:
        """The ``--json`` form: the same keys for every tunnel, null when unknown."""
        return {
            "pid": self.pid, "registered": self.registered, "state": self.phase or None,
            "local_port": self.local_port,
            "hosts": list(self.hosts), "node": self.node, "remote_host": self.remote_host,
            "remote_port": self.remote_port, "sock": self.sock, "root_dir": self.root_dir,
            "started": self.started, "started_server": self.started_server, "command": self.command,
            "job": self.job or None, "scheduler": self.scheduler or None,
            "time_left": time_left(self.job_end, time.time()) if self.job else None,
            "forwards": [{"remote_port": remote, "local_port": local} for remote, local in self.forwards],
        }


# ----------------------------------------- the registry and process identity (jupyter_tunnel.py's too)


def windows_data_dir(environ: Mapping[str, str]) -> str:
    """Windows: ``%LOCALAPPDATA%\\jupyter-tunnel``, the user's own local app-data (``~\\AppData\\Local``
    without the variable).  Only its user (and SYSTEM, administrators) may enter the profile
    there: it is what the uid and the 0700 mode are on POSIX."""
    base = environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
    return os.path.join(base, WINDOWS_APP_DIR)


def make_private_dir() -> str:
    """A fresh 0700 directory with a short path, for the control socket and friends."""
    if WINDOWS:
        # no unix socket there, so no path limit.  mkdtemp's mkdir(0o700) gives the directory an
        # owner-only ACL on Python >= 3.9.20, 3.10.15, 3.11.10, 3.12.4 and 3.13 (cpython#118486);
        # before, it inherits %LOCALAPPDATA%'s, which is the user's alone too (see check_private_dir)
        base = os.path.join(windows_data_dir(os.environ), "runs")
        os.makedirs(base, mode=0o700, exist_ok=True)
        return tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=base)
    base = tempfile.gettempdir()
    if len(base) > MAX_TMP_PREFIX and os.access("/tmp", os.W_OK):
        base = "/tmp"  # macOS's $TMPDIR alone is ~49 bytes: too long for a socket path
    return tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=base)  # mkdtemp makes it 0700


def private_dir_parents() -> tuple[str, ...]:
    """Where make_private_dir may have made a run's directory."""
    if WINDOWS:
        return (os.path.join(windows_data_dir(os.environ), "runs"),)
    return (tempfile.gettempdir(), "/tmp")


def own_uid() -> int | None:
    """The uid files and processes of ours have; None on Windows, which has no uid (its boundary
    is the per-user %LOCALAPPDATA%: see windows_data_dir and check_private_dir)."""
    return os.getuid() if hasattr(os, "getuid") else None


def check_private_dir(path: str) -> str:
    """Why ``path`` is not a real directory of ours with mode 0700 ("" when it is).

    ``lstat``: a symbolic link is refused, never followed to wherever it points.  On Windows
    only that much is checked (a directory, no link or junction): st_uid is always 0 there and
    the mode tells only the read-only flag, so owner and mode would refuse every directory; the
    ACLs of %LOCALAPPDATA% and of mkdtemp's directories keep other users out (docs/windows.md).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return MISSING
    except OSError as error:
        return error.strerror or str(error)
    return private_dir_problem(info.st_mode, info.st_uid, own_uid(), getattr(info, "st_file_attributes", 0))


def as_pid(value: object) -> int | None:
    """``value`` if it can be a pid worth looking at (an int above 1: never init), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 < value < 2**31:
        return value
    return None


def is_private_dir_path(path: object, parents: Iterable[str]) -> bool:
    """Whether ``path`` is named as make_private_dir names its directories, in one of ``parents``."""
    if not isinstance(path, str) or not os.path.isabs(path) or os.path.normpath(path) != path:
        return False  # "/tmp/../home/u/jt-abcdefgh" is not in /tmp
    parent, name = os.path.split(path)
    suffix = name[len(PRIVATE_PREFIX):]
    return (name.startswith(PRIVATE_PREFIX) and len(suffix) == 8 and set(suffix) <= MKDTEMP_CHARS
            and parent in {os.path.normpath(p) for p in parents})


def private_dir_problem(mode: int, owner: int, uid: int | None, attributes: int = 0) -> str:
    """Why a directory with this ``lstat`` mode and owner is not a private one of ``uid``; "" if it is.
    ``uid`` None (Windows): neither owner nor mode is checked, but a reparse point (a junction,
    which is no symbolic link to S_ISLNK) is refused too (its ``st_file_attributes``)."""
    if stat.S_ISLNK(mode) or attributes & stat.FILE_ATTRIBUTE_REPARSE_POINT:
        return "it is a symbolic link"
    if not stat.S_ISDIR(mode):
        return "it is not a directory"
    if uid is None:
        return ""
    if owner != uid:
        return f"it belongs to uid {owner}"
    if stat.S_IMODE(mode) != 0o700:
        return f"its mode is {stat.S_IMODE(mode):04o}, not 0700"
    return ""


def is_master_argv(argv: Sequence[str], control_dir: str) -> bool:
    """Whether ``argv`` is exactly the shape of the ssh master build_master_argv makes for
    ``control_dir``: ``ssh``, its options only, ``-M``, ``-S DIR/c``, ``-F DIR/ssh_config``,
    ``-N``, ``-o ControlPersist=no``, then one destination; or of the one ssh without a master
    (build_stdio_argv): ``-T``, one ``-D 127.0.0.1:PORT``, ``-o ControlPath=none``, ``-F
    DIR/ssh_config``, no ``-M``/``-N``/``-S``, then one destination and STDIO_SHELL."""
    stdio = len(argv) > 3 and argv[-1] == STDIO_SHELL
    argv = argv[:-1] if stdio else argv
    if len(argv) < 3 or os.path.basename(argv[0]) != "ssh" or argv[-1].startswith("-"):
        return False
    values: dict[str, list[str]] = {}
    flags: set[str] = set()
    i = 1
    while i < len(argv) - 1:
        arg = argv[i]
        if arg in MASTER_OPTIONS_WITH_VALUE and i + 2 < len(argv):
            values.setdefault(arg, []).append(argv[i + 1])
            i += 2
        elif arg in MASTER_FLAGS or (arg.startswith("-") and set(arg[1:]) == {"v"}):  # -v, -vv
            flags.add(arg)
            i += 1
        else:
            return False
    if values.get("-F") != [os.path.join(control_dir, CONFIG_FILE)]:
        return False
    if stdio:
        socks = values.get("-D", [])
        return ("-T" in flags and not flags & {"-M", "-N"} and "-S" not in values and len(socks) == 1
                and socks[0].startswith("127.0.0.1:") and socks[0][10:].isdigit()
                and "ControlPath=none" in values.get("-o", []))
    return (flags >= {"-M", "-N"} and "-D" not in values and "ControlPersist=no" in values.get("-o", [])
            and values.get("-S") == [os.path.join(control_dir, CONTROL_SOCKET)])


def is_agent_argv(argv: Sequence[str], control_dir: str) -> bool:
    """Whether ``argv`` is exactly that of the ssh-agent start_agent starts for ``control_dir``."""
    return (len(argv) == 4 and os.path.basename(argv[0]) == "ssh-agent"
            and list(argv[1:]) == ["-D", "-a", os.path.join(control_dir, AGENT_SOCKET)])


def _is_interpreter(program: str) -> bool:
    """Whether ``program`` (a basename) runs a script given as an argument."""
    name = program.lower()  # macOS framework builds run ".../Python"
    return "python" in name or "pypy" in name or name in SHELLS


def script_index(argv: Sequence[str]) -> int | None:
    """Index in ``argv`` of what the process runs (the program, or an interpreter's script)."""
    if not argv:
        return None
    if not _is_interpreter(os.path.basename(argv[0])):
        return 0
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
            return i  # python -m MODULE (or -mMODULE)
        if arg.startswith("-c") and not arg.startswith("--"):
            return None  # python -c CODE, sh -c CODE: no script
        if arg in OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-") and arg != "-":
            i += 1
            continue
        return i
    return None


def is_tunnel_argv(argv: Sequence[str]) -> bool:
    """Whether a command line runs jupyter-tunnel: the program or the interpreter's script.

    Deliberately strict: a mere mention (``vim jupyter_tunnel.py``, a venv or checkout
    called ``jupyter-tunnel``) is not a tunnel, and neither is this shutdown script.
    """
    i = script_index(argv)
    if i is None:
        return False
    arg = argv[i]
    if arg.startswith("-m"):
        module = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
        return module == TUNNEL_MODULE
    return os.path.basename(arg) in TUNNEL_SCRIPTS


def parse_status_field(text: str, name: str) -> int | None:
    """The first number of field ``name`` in the text of ``/proc/PID/status`` (``Uid:``, ``PPid:``)."""
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def parse_status_uid(text: str) -> int | None:
    """The real uid from the text of ``/proc/PID/status`` (``Uid: real effective saved fs``)."""
    return parse_status_field(text, "Uid")


def split_cmdline(raw: bytes) -> list[str]:
    """argv from the bytes of ``/proc/PID/cmdline`` (NUL-separated; empty for a zombie)."""
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]] if raw else []


def parse_ps(text: str) -> list[tuple[int, int, list[str]]]:
    """``(pid, uid, argv)`` from ``ps -o pid=,uid=,command=`` (argv split at spaces: ps joins it)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit() and fields[1].isdigit():
            found.append((int(fields[0]), int(fields[1]), fields[2:]))
    return found


def registry_dir() -> str:
    """The private per-user directory where running tunnels register themselves."""
    if os.environ.get(REGISTRY_ENV):
        return os.environ[REGISTRY_ENV]
    if WINDOWS:
        return os.path.join(windows_data_dir(os.environ), "registry")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "jupyter-tunnel")
    # cron jobs, runuser and some ssh sessions lack XDG_RUNTIME_DIR: use the same place
    # a desktop session would when it is there and ours
    runtime = f"/run/user/{os.getuid()}"
    if os.path.isdir(runtime) and os.stat(runtime).st_uid == os.getuid():
        return os.path.join(runtime, "jupyter-tunnel")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "jupyter-tunnel")


def registry_dirs() -> list[str]:
    """Every directory where a tunnel of this user may have registered, the usual one first."""
    if os.environ.get(REGISTRY_ENV) or WINDOWS:  # Windows: one place, whatever the session
        return [registry_dir()]
    # A tunnel started in a desktop session registers under $XDG_RUNTIME_DIR, which cron
    # jobs, sleep hooks (runuser) and plain ssh sessions lack: they would look in the cache
    # directory instead.  So look in both, whatever this environment says.
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [registry_dir(), os.path.join(f"/run/user/{os.getuid()}", "jupyter-tunnel"),
                  os.path.join(cache, "jupyter-tunnel")]
    dirs: list[str] = []
    for directory in candidates:
        if os.path.realpath(directory) not in map(os.path.realpath, dirs):
            dirs.append(directory)
    return dirs


def prepare_registry(directory: str) -> str:
    """Create the registry directory if needed; why it cannot be used ("" when it can)."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as error:
        return error.strerror or str(error)
    return check_private_dir(directory)


def registry_refused(directory: str, problem: str) -> str:
    """The warning for a registry directory that is not a private one of ours."""
    return (f"not using the registry directory {directory!r}: {problem} (it must be a directory "
            "of yours with mode 0700, not a link)")


def write_state(state: dict, directory: str) -> str:
    """Write ``<pid>.json`` atomically (0600) into a registry directory prepare_registry passed."""
    path = os.path.join(directory, f"{state['pid']}.json")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        replace_file(tmp, path)  # a reader sees the old file or the new one, never half of one
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def replace_file(source: str, target: str) -> None:
    """os.replace; on Windows tried again for a moment while ``target`` is open elsewhere (a
    shutdown reading the entry): a file open without FILE_SHARE_DELETE, as Python opens them
    there, cannot be replaced, and the first failure would end the run's registration."""
    for delay in (0.01, 0.02, 0.05, 0.1, 0.2) if WINDOWS else ():
        try:
            os.replace(source, target)
            return
        except PermissionError:
            time.sleep(delay)
    os.replace(source, target)


def parse_state(data: bytes) -> dict | None:
    """A registry entry from the bytes of its file; None when they are not one (not UTF-8, not
    JSON, not an object, no pid worth looking at).  Its other fields are checked by each reader."""
    try:
        state = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; [[[[...]]]] too deep
        return None
    if not isinstance(state, dict) or as_pid(state.get("pid")) is None:
        return None
    return state


def open_own_file(path: str) -> int | None:
    """A read-only descriptor of ``path`` if it is a regular file of ours, else None (closed).

    Never a wait and never a link followed, whatever a registry or private directory holds:
    a FIFO would block a plain open() for ever (O_NONBLOCK opens it at once, and fstat tells
    it is no file), and O_NOFOLLOW refuses a symbolic link (ELOOP).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)  # Windows: no newline translation
    try:
        fd = os.open(path, flags)
    except OSError:  # gone, a symbolic link, unreadable
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        info = None
    uid = own_uid()  # None on Windows: the registry's and the runs' directories are the user's alone
    if info is None or not stat.S_ISREG(info.st_mode) or (uid is not None and info.st_uid != uid):
        os.close(fd)
        return None
    return fd


def read_state(path: str) -> dict | None:
    """One registry entry, or None when it is gone or not one: only a regular file of ours
    (open_own_file), and at most MAX_STATE_BYTES of it (a huge file is not read whole)."""
    fd = open_own_file(path)
    if fd is None:
        return None
    try:
        data = os.read(fd, MAX_STATE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    state = parse_state(data) if len(data) <= MAX_STATE_BYTES else None
    if state is not None:
        state["file"] = path
    return state


def read_states(directory: str | None = None) -> list[dict]:
    """Every entry of a registry directory (oldest first); none, with a warning, from a
    directory that is not a private one of ours: anyone may have written there."""
    directory = directory or registry_dir()
    problem = check_private_dir(directory)
    if problem:
        if problem != MISSING:
            say("Warning", registry_refused(directory, problem))
        return []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    states = []
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            state = read_state(os.path.join(directory, name))
            if state is not None:
                states.append(state)
    return sorted(states, key=lambda state: _number(state.get("started")))


def _number(value: object) -> float:
    """A float for sorting, 0 for anything that is not a finite number (NaN would make the
    sort's order arbitrary; an integer too large for a float overflows)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return 0.0
    try:
        number = float(value)
    except OverflowError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def build_state(pid: int, hosts: Sequence[str], node: str, remote_host: str, directory: str,
                started: float) -> dict:
    """A connecting run's registry entry: what a user needs to pick it, and to clean up after it (no token)."""
    return {
        "pid": pid, "state": CONNECTING, "hosts": list(hosts), "node": node,
        "local_port": None, "remote_host": remote_host, "remote_port": None, "sock": "",
        "server_pid": None, "root_dir": "", "started": started, "started_server": False,
        # to clean up after a SIGKILLed run: its ssh master and agent outlive it, its directory stays
        "control_dir": directory, "master_pid": None, "agent_pid": None,
        # a server in a scheduler job: its id, scheduler and end (epoch seconds; None: no limit)
        "job": "", "scheduler": "", "job_end": None,
        # riding the user's master: {"control": its socket, "specs": this run's -L's}, to cancel after a SIGKILL
        "shared_forward": None,
        # --forward: [{"remote_port": P, "local_port": L}] once forwarded
        "forwards": [],
    }


class Registration:
    """This run's registry entry: written as soon as there is something to clean up after
    the run, rewritten as it goes (state, master pid), removed when it exits."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.directory = registry_dir()
        self.path = ""
        problem = prepare_registry(self.directory)
        if problem:
            say("Warning", registry_refused(self.directory, problem)
                + ": this tunnel is not registered; jupyter-tunnel-shutdown finds it by its command line")
            self.directory = ""
        self.update()

    def update(self, **changes: object) -> None:
        """Change fields of the entry and write it again."""
        self.state.update(changes)
        if not self.directory:
            return
        try:
            self.path = write_state(self.state, self.directory)
        except OSError as error:
            say("Warning", f"cannot register this tunnel in {self.directory!r}: {error}")
            self.directory = ""

    def remove(self) -> None:
        """Remove the entry (at exit)."""
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = ""


def process_info(pid: int) -> tuple[int, list[str]] | None:
    """The real uid and argv of process ``pid``; None when it is gone or a zombie, and always
    on Windows: no uid, and no command line without ctypes or WMI (see windows_image)."""
    if WINDOWS:
        return None
    if HAVE_PROC:
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = parse_status_uid(f.read())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = split_cmdline(f.read())
        except OSError:
            return None
        return (uid, argv) if uid is not None and argv else None
    done = subprocess.run(["ps", "-o", "pid=,uid=,command=", "-p", str(pid)],
                          capture_output=True, text=True)
    found = [(uid, argv) for p, uid, argv in parse_ps(done.stdout) if p == pid]
    return found[0] if found else None


def is_own_tunnel(pid: int) -> bool:
    """Whether ``pid`` is, right now, a live jupyter-tunnel of the user running this script.

    The uid is checked, not a PermissionError awaited: root may signal anyone, and must
    still touch only its own tunnels.
    """
    info = process_info(pid)  # Windows: None, so never (a run is told by its lock there)
    return info is not None and info[0] == own_uid() and is_tunnel_argv(info[1])


def build_tasklist_argv(pid: int, environ: Mapping[str, str]) -> list[str] | None:
    """argv of ``tasklist`` (Windows) for process ``pid`` if it belongs to the user of ``environ``
    (USERDOMAIN\\USERNAME: its filters go together); None when that user is not known."""
    domain, user = environ.get("USERDOMAIN"), environ.get("USERNAME")
    if not (domain and user):
        return None
    return ["tasklist", "/FI", f"PID eq {pid}", "/FI", f"USERNAME eq {domain}\\{user}", "/FO", "CSV", "/NH"]


def parse_tasklist(text: str, pid: int) -> str | None:
    """The image name (``ssh.exe``) in the output of ``tasklist /FO CSV /NH`` for process ``pid``;
    None when no row is that process (tasklist's "INFO: No tasks..." line is in the user's language)."""
    import csv  # only here: Windows' shutdown and clean-up need it, nothing else does

    for row in csv.reader(text.splitlines()):
        if len(row) > TASKLIST_PID and row[TASKLIST_PID].strip() == str(pid) and row[TASKLIST_IMAGE]:
            return row[TASKLIST_IMAGE]
    return None


def windows_image(pid: int) -> str | None:
    """Windows: the image name of ``pid`` if it is a live process of this user, else None.

    tasklist, not ctypes (OpenProcess, QueryFullProcessImageNameW, GetExitCodeProcess): it is on
    every Windows since XP, filters by owner itself (what os.getuid would be), its output is
    parsed by a pure function tested here, and a ctypes call could not run at all in the
    simulated Windows of tests/winsim.py.  Neither gives a command line: the run is told by its
    lock (holds_run_lock), and nothing else is ever signalled on this word alone."""
    argv = build_tasklist_argv(pid, os.environ)
    if argv is None:
        return None
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_tasklist(done.stdout.decode(errors="replace"), pid) if done.returncode == 0 else None


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid``; None when it is gone."""
    if HAVE_PROC:
        try:
            with open(f"/proc/{pid}/status") as f:
                return parse_status_field(f.read(), "PPid")
        except OSError:
            return None
    done = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True)
    return int(done.stdout) if done.stdout.strip().isdigit() else None


def is_leftover(pid: int, control_dir: str, shape: Callable[[Sequence[str], str], bool]) -> bool:
    """Whether ``pid`` is, right now, a dead run's own master or agent: ours, with exactly the
    command line the run gave it (``shape``), and orphaned (its parent is no live tunnel:
    a live run's master is its child; a run inside another program holds its lock)."""
    info = process_info(pid)  # Windows: None, so never (no command line tells an ssh.exe is the run's)
    if info is None or info[0] != own_uid() or not shape(info[1], control_dir):
        return False
    parent = parent_pid(pid)
    return parent is not None and not is_own_tunnel(parent) and not holds_run_lock(parent, control_dir)


def take_run_lock(directory: str) -> int | None:
    """Create the run's lock file in its fresh private directory, holding its pid, and lock it
    (``flock``, exclusive; Windows: lock_file's msvcrt lock) for the run's whole life; its
    descriptor (None when this system cannot lock).

    A run's argv tells a live jupyter-tunnel (is_own_tunnel) only when it runs as the script;
    ``jupyter_tunnel.main([...])`` called by another program (the README allows it) runs
    under that program's argv.  The lock tells it whatever the argv: the kernel drops it when
    the process dies, so a lock that is held is a live run.  The descriptor is not inherited
    (O_CLOEXEC: the master and the agent, which outlive a killed run, must not hold it;
    Python's descriptors are not inherited on Windows either).  On Windows, with no command
    line to read, the lock is the only thing that tells a run.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.path.join(directory, RUN_LOCK), flags | getattr(os, "O_BINARY", 0), 0o600)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        lock_file(fd, shared=False)
    except (OSError, ImportError):
        # a file system without flock (ENOLCK): the run goes on, told live by its argv alone
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_file(fd: int, shared: bool) -> None:
    """Lock the run's lock file ``fd`` without waiting; BlockingIOError when another holds it.

    POSIX: flock (``shared`` for a reader).  Windows: msvcrt.locking (LockFile), exclusive only,
    on one byte at WINDOWS_LOCK_OFFSET (a reader still reads the pid before it); the system
    drops it when its process dies, as the kernel drops a flock."""
    if not WINDOWS:
        import fcntl  # imported here: Windows has none

        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return
    import msvcrt  # Windows' own

    os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as error:  # msvcrt says EACCES (or EDEADLOCK) for a range another holds
        if error.errno in (errno.EACCES, errno.EDEADLK):
            raise BlockingIOError(error.errno, "locked by another process") from None
        raise


def unlock_file(fd: int) -> None:
    """Let go of a lock that lock_file took for a reader (POSIX: closing the file does it)."""
    if WINDOWS:
        import msvcrt

        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # at once: the system may take a while at close


def has_file_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` holds ``path`` open (Linux: its /proc/PID/fd links); True where
    that cannot be told (no /proc)."""
    if not HAVE_PROC:
        return True
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") in (path, os.path.realpath(path)):
                return True
        except OSError:
            continue
    return False


def holds_run_lock(pid: int, control_dir: object) -> bool:
    """Whether ``pid`` is a live run whose private directory is ``control_dir``: a process of
    ours that holds that directory's lock (take_run_lock), whose file names ``pid``.

    The registry's word alone proves nothing: the directory must be one make_private_dir
    makes, ours and 0700, before anything in it is opened; the lock file must be a regular
    file of ours (O_NONBLOCK, O_NOFOLLOW: never a FIFO's wait, never a link followed) naming
    that pid, and locked by someone; and the pid must be ours and, where /proc tells, hold
    the file open (a child that inherited the lock through a bare fork is not the run).
    Windows: the lock names the pid and is held, and tasklist shows that pid as a live
    process of this user's (windows_image).
    """
    if not (is_private_dir_path(control_dir, private_dir_parents()) and check_private_dir(control_dir) == ""):
        return False
    path = os.path.join(control_dir, RUN_LOCK)  # type: ignore[arg-type]
    fd = open_own_file(path)
    if fd is None:
        return False
    try:
        if os.read(fd, 32).strip() != str(pid).encode():
            return False
        try:
            lock_file(fd, shared=True)
        except BlockingIOError:
            pass  # held: a live run
        else:
            unlock_file(fd)
            return False  # nobody holds it: the run is gone (closing fd lets it go again)
    except (OSError, ImportError):  # ImportError: no lock at all here (take_run_lock took none)
        return False
    finally:
        os.close(fd)
    if WINDOWS:
        # held, with its pid in it: Windows drops a process's locks when it dies, and only the run
        # writes its pid there and locks it.  tasklist cannot add to that (and may not answer:
        # no USERNAME, a timeout), so a live run is never taken for a dead one's leftovers
        return True
    owner = process_info(pid)
    return owner is not None and owner[0] == own_uid() and has_file_open(pid, path)


def is_live_run(state: Mapping) -> bool:
    """Whether the run of a registry entry still runs: its pid is a jupyter-tunnel of ours by
    its argv, or a run hosted by another program that holds its directory's lock."""
    pid = as_pid(state.get("pid"))
    return pid is not None and (is_own_tunnel(pid) or holds_run_lock(pid, state.get("control_dir")))


def signal_if(pid: int, check: Callable[[], bool], signum: int) -> bool:
    """Send ``signum`` to ``pid`` only if ``check()`` holds right then; whether it was sent.

    A pidfd (Linux >= 5.3) pins the process while it is checked: a pid reused between the
    check and the signal gets nothing.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or gone already (check() tells)
        pidfd = None
    try:
        if not check():
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return True


def socket_answers(path: str) -> bool:
    """Whether a process listens on the unix socket ``path`` (a live master or agent); never on
    Windows, where Python has no AF_UNIX (and ssh listens on none: facts of docs/windows.md)."""
    if not hasattr(socket, "AF_UNIX"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def build_cancel_argv(ssh: str, control: str, spec: str) -> list[str]:
    """argv of ``ssh -O cancel``: take the forward ``-L spec`` off the master at ``control``.

    ``-F none``: no config is needed to talk to a master (and a dead run's may be gone);
    with ``-S`` the host is a mere word.
    """
    return [ssh, "-F", "none", "-S", control, "-o", "ControlMaster=no", "-o", "ProxyCommand=false",
            "-o", "BatchMode=yes", "-O", "cancel", "-L", spec, "x"]  # never a login: see build_mux_argv


def cancel_forward(argv: list[str]) -> bytes:
    """Run an ``ssh -O cancel`` (build_cancel_argv); its stderr ("" when the master hangs:
    the forward then goes when the master does)."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10).stderr
    except subprocess.TimeoutExpired:
        return b""


def parse_shared_forward(value: object, control_dir: str) -> tuple[str, tuple[str, ...]] | None:
    """(socket, ``-L`` specs) of an entry's "shared_forward" if it is what a run writes there,
    else None: the user's master's socket (an absolute path) and forwards that each listen on
    one of the run's own sockets in its private directory ``control_dir`` (names nobody else's
    forward can have: that proves the run added them, see build_forward_spec).  "specs" is a
    list (Jupyter's forward and each --forward's); "spec", one, is an older run's."""
    if not isinstance(value, dict):
        return None
    control, specs = value.get("control"), value.get("specs", [value.get("spec")])
    if not (isinstance(control, str) and isinstance(specs, list) and specs and os.path.isabs(control)):
        return None
    own = os.path.join(control_dir, FORWARD_SOCKET)
    for spec in specs:
        if not isinstance(spec, str) or has_control(control + spec) or not spec.startswith(own):
            return None
        number, colon, _ = spec[len(own):].partition(":")  # "" (Jupyter's) or a --forward's number
        if not colon or len(number) > 4 or not (number.isascii() and number.isdigit() or not number):
            return None
    return control, tuple(specs)


def cancel_shared_forward(value: object, control_dir: str) -> None:
    """After a run that died while riding the user's master: take its forwards off that
    master (``-O cancel``), which would keep them until it exits; only through a socket of
    this user's, and nothing else of the master is touched."""
    found = parse_shared_forward(value, control_dir)
    if found is None:  # none: the run rode no master of the user's (never on Windows)
        return
    ssh = shutil.which("ssh")
    if ssh is None:
        return
    control, specs = found
    try:
        info = os.lstat(control)
    except OSError:
        return  # the master is gone, and its forward with it
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != own_uid():
        return
    for spec in specs:
        cancel_forward(build_cancel_argv(ssh, control, spec))


def clean_leftovers(state: Mapping) -> str:
    """After a run that died (SIGKILL): stop its master and agent, remove its directory and
    its entry, each only once proven to be that run's own; returns why something the entry
    names was left alone ("" when nothing was; the entry then stays, for the user to check).

    The entry's word alone proves nothing: the directory must be named as make_private_dir
    names them, where it makes them, and be ours with mode 0700; a process must have exactly
    the command line the run gave it (is_master_argv, is_agent_argv) and be orphaned.
    """
    control = state.get("control_dir")
    problem = ""
    if isinstance(control, str) and control:
        parents = private_dir_parents()
        if not is_private_dir_path(control, parents):
            problem = (f"it is not a directory jupyter-tunnel makes ({PRIVATE_PREFIX}XXXXXXXX in "
                       f"{' or '.join(sorted(set(parents)))})")
        else:
            problem = check_private_dir(control)
        if problem in ("", MISSING):
            cancel_shared_forward(state.get("shared_forward"), control)
            stopped = []
            for key, shape in (("master_pid", is_master_argv), ("agent_pid", is_agent_argv)):
                pid = as_pid(state.get(key))
                if pid and signal_if(pid, lambda: is_leftover(pid, control, shape), signal.SIGTERM):
                    stopped.append((pid, shape))
            deadline = time.monotonic() + 5
            while any(is_leftover(p, control, shape) for p, shape in stopped) and time.monotonic() < deadline:
                time.sleep(0.02)
        if not problem:
            # a socket that still answers: some live process uses the directory
            if any(socket_answers(os.path.join(control, name)) for name in (CONTROL_SOCKET, AGENT_SOCKET)):
                problem = "a process still listens on its sockets"
            else:
                shutil.rmtree(control, ignore_errors=True)
    if problem not in ("", MISSING):
        return f"left {control!r} alone: {problem}"
    try:
        os.unlink(state["file"])
    except (KeyError, OSError):
        pass
    return ""


def warn_left_alone(state: Mapping, why: str) -> None:
    """Tell the user what clean_leftovers refused to touch, and the entry that named it."""
    if why:
        say("Warning", f"registry entry {state.get('file')!r}: {why}; remove the entry once you "
                       "have checked")


def scan_registry(clean: bool = True, on_cleaned: Callable[[dict], None] = lambda state: None) -> list[dict]:
    """The entries of every live run (one per pid); with ``clean``, clean up after the runs
    that are gone (``on_cleaned`` hears of each), else leave them: ``--list`` only reads."""
    live: list[dict] = []
    for directory in registry_dirs():
        for state in read_states(directory):
            if is_live_run(state):
                if all(other["pid"] != state["pid"] for other in live):
                    live.append(state)
            elif clean:
                # SIGKILLed (or its pid reused): its ssh master and agent may still run
                why = clean_leftovers(state)
                if why:
                    warn_left_alone(state, why)
                else:
                    on_cleaned(state)
    return live


def prune_registry() -> list[dict]:
    """Clean up after every registered run that is gone; returns the live entries."""
    return scan_registry(clean=True)


# --------------------------------------------------------------------------- pure parts


def _int_or_none(value: object) -> int | None:
    """``int(value)``, or None for a missing or malformed field (a JSON 1e400 is an infinite
    float: int() raises OverflowError for it)."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def parse_forwards(value: object) -> tuple[tuple[int, int], ...]:
    """(remote port, local port) of each of an entry's "forwards" (--forward) that is what a run
    writes there: two ports from 1 to 65535; anything else is left out."""
    found = []
    for forward in value if isinstance(value, list) else []:
        if isinstance(forward, dict):
            ports = [forward.get(key) for key in ("remote_port", "local_port")]
            if all(type(port) is int and 1 <= port <= 65535 for port in ports):
                found.append((ports[0], ports[1]))
    return tuple(found)


def format_forwards(forwards: Sequence[tuple[int, int]]) -> str:
    """The FORWARDS cell: ``8787->8787,6007->6006`` (local->remote), ``-`` for none."""
    return ",".join(f"{local}->{remote}" for remote, local in forwards) or "-"


def _float_or_none(value: object) -> float | None:
    """``float(value)``, or None for a missing or malformed field (an integer of 400 digits
    overflows a float)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _finite_or_none(value: object) -> float | None:
    """``float(value)`` if it is a finite number (a time to compute with), else None."""
    number = _float_or_none(value)
    return number if number is not None and abs(number) < float("inf") else None  # False for nan too


def hosts_from_argv(argv: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The ``-s`` hosts and the ``-n`` node of a jupyter-tunnel command line, as far as it tells."""
    i = script_index(argv)
    args = list(argv[(i or 0) + 1:])
    if args[:1] == [TUNNEL_MODULE]:  # python -m jupyter_tunnel
        args = args[1:]
    hosts: list[str] = []
    node = ""
    j = 0
    while j < len(args):
        arg = args[j]
        j += 1
        if arg in ("-s", "--host"):
            while j < len(args) and not args[j].startswith("-"):  # nargs="+"
                hosts.extend(split_host_list(args[j]))
                j += 1
        elif arg.startswith("--host="):
            hosts.extend(split_host_list(arg[len("--host="):]))
        elif arg.startswith("-s") and not arg.startswith("--"):
            hosts.extend(split_host_list(arg[2:]))  # -sgw
        elif arg in ("-n", "--node") and j < len(args):
            node, j = args[j], j + 1
        elif arg.startswith("--node="):
            node = arg[len("--node="):]
    return tuple(hosts), node


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``--host pattern`` names ``host``; a user or port the pattern leaves out matches any."""
    if not pattern or not host:
        return False
    want_user, want_name, want_port = split_host(pattern)
    user, name, port = split_host(host)
    return (want_name == name and want_user in ("", user) and want_port in ("", port))


def select_tunnels(tunnels: Iterable[RunningTunnel], ports: Sequence[int],
                   hosts: Sequence[str]) -> list[RunningTunnel]:
    """The tunnels on one of ``ports`` and through one of ``hosts`` (all when neither is given).

    ``--host`` matches any host of the route: jump hosts, the target, the node.  An
    unregistered tunnel's local port is unknown, so ``--port`` never selects it.
    """
    chosen = []
    for tunnel in tunnels:
        if ports and tunnel.local_port not in ports:
            continue
        route = [*tunnel.hosts, tunnel.node]
        if hosts and not any(host_matches(p, h) for p in hosts for h in route):
            continue
        chosen.append(tunnel)
    return chosen


def in_registry_scope(ours: str, environ: Mapping[str, str] | None) -> bool:
    """Whether a tunnel found by the scan is one this run looks after.

    ``JUPYTER_TUNNEL_REGISTRY`` names a separate set of tunnels (the tests run sets side by
    side, as root, on a shared machine): with it set, only tunnels started with the same
    value are ours, and one whose environment cannot be read is not.  Without it, all are.
    """
    if not ours:
        return True
    return environ is not None and environ.get(REGISTRY_ENV) == ours


def time_left(job_end: float | None, now: float) -> int | None:
    """Whole seconds from ``now`` to a job's end (0 once past it); None when it has no end."""
    return None if job_end is None else max(0, int(job_end - now))


def time_left_cell(job: str, job_end: float | None, now: float) -> str:
    """The TIME LEFT cell: ``1 h 29 min`` as the other tools say it, ``no time limit`` for a
    job without a known end; ``-`` without a job."""
    return format_time_left(time_left(job_end, now)) if job else "-"


def format_started(started: float | None) -> str:
    """Local time of a tunnel's start for the table, ``?`` when unknown."""
    try:
        return "?" if started is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    except (OverflowError, OSError, ValueError):  # a registry's 1e20: no such local time
        return "?"


def table_row(tunnel: RunningTunnel) -> tuple[str, ...]:
    """One ``--list`` row, in TABLE_COLUMNS order; no cell holds a space, but TIME LEFT and
    STARTED."""
    if tunnel.registered:
        remote = tunnel.sock or (str(tunnel.remote_port) if tunnel.remote_port else "?")
    else:
        remote = "?"
    return (
        str(tunnel.pid),
        str(tunnel.local_port) if tunnel.local_port else "?",
        ",".join(tunnel.hosts) or "?",  # the form -s accepts, and one word for awk
        tunnel.node or "-",
        remote,
        {True: "started", False: "found", None: "?"}[tunnel.started_server],
        tunnel.job or "-",
        time_left_cell(tunnel.job, tunnel.job_end, time.time()),
        tunnel.phase or "?",
        format_started(tunnel.started),
        format_forwards(tunnel.forwards),
    )


def parse_environ(raw: bytes) -> dict[str, str]:
    """The environment from the bytes of ``/proc/PID/environ``."""
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[name] = value
    return env


# --------------------------------------------------------------------------- I/O parts


def process_environ(pid: int) -> dict[str, str] | None:
    """The environment of process ``pid``, or None when it cannot be read (no /proc)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return parse_environ(f.read())
    except OSError:
        return None


def scan_processes(uid: int | None) -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of every process of user ``uid``; none on Windows (no uid, no command
    lines): only registered tunnels are found there."""
    if uid is None:
        return []
    if not HAVE_PROC:
        done = subprocess.run(["ps", "-U", str(uid), "-o", "pid=,uid=,command="],
                              capture_output=True, text=True)
        return [(pid, argv) for pid, owner, argv in parse_ps(done.stdout) if owner == uid]
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = process_info(int(name))
            if info is not None and info[0] == uid:
                found.append((int(name), info[1]))
    return found


def find_tunnels(clean: bool = True) -> list[RunningTunnel]:
    """This user's running tunnels, registered ones first; with ``clean``, stale entries are
    cleaned up on the way (else they are left as they are: ``--list`` only reads)."""
    def cleaned(state: dict) -> None:
        try:
            what = RunningTunnel.from_state(state).name()
        except (TypeError, ValueError, OverflowError):
            what = f"process {state['pid']} (its registry entry is damaged)"
        say("Info", f"Cleaned up after {what}, which had died.")

    found: list[RunningTunnel] = []
    for state in scan_registry(clean, cleaned):
        try:
            found.append(RunningTunnel.from_state(state))
        except (TypeError, ValueError, OverflowError):
            continue  # read_states checked pid; keep going whatever else is odd
    ours = os.environ.get(REGISTRY_ENV, "")
    known = {t.pid for t in found}
    for pid, argv in scan_processes(own_uid()):
        if pid not in known and pid != os.getpid() and is_tunnel_argv(argv) \
                and in_registry_scope(ours, process_environ(pid)):
            found.append(RunningTunnel.from_argv(pid, argv))
    return found


def wait_until_gone(tunnels: Sequence[RunningTunnel], timeout: float,
                    on_gone: Callable[[RunningTunnel], None]) -> list[RunningTunnel]:
    """Poll until every tunnel has exited or ``timeout`` passed; returns those still running."""
    deadline = time.monotonic() + timeout
    remaining = list(tunnels)
    while True:
        for tunnel in list(remaining):
            if not tunnel.alive():  # exited (a zombie counts: its cleanup is done)
                remaining.remove(tunnel)
                on_gone(tunnel)
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(POLL_INTERVAL)


def send(tunnel: RunningTunnel, signum: int) -> bool:
    """Signal ``tunnel`` if its pid is still one of our tunnels; whether it was signalled.

    A run hosted by another program (``jupyter_tunnel.main([...])``) is signalled too, as the
    script is: its lock proves, right before the signal (a pidfd pins the pid meanwhile), that
    the pid is a live run, and a run holds its lock only inside Tunnel.run, where SIGINT
    raises KeyboardInterrupt into it (its Ctrl+C: it cleans up, main() returns 0) and SIGTERM
    and SIGHUP end it the same way; the host's own handlers come back only once the lock is
    released, with the run's signals ignored in between.  So the signal ends the run, not
    the program around it (that one then goes on after main() as after a Ctrl+C).
    """
    return signal_if(tunnel.pid, tunnel.alive, signum)


def clean_after(tunnel: RunningTunnel) -> None:
    """Remove a gone tunnel's leftovers, if its own cleanup could not (entry still there).

    The entry is read again: since it was listed, the tunnel may have started its master
    (or a new one, reconnecting).
    """
    state = read_state(tunnel.state["file"]) if tunnel.state and "file" in tunnel.state else None
    if state is not None:
        warn_left_alone(state, clean_leftovers(state))


def stop_tunnels(tunnels: Sequence[RunningTunnel], timeout: float, force: bool) -> int:
    """Interrupt the tunnels, wait for them, SIGKILL the rest with ``force``; the exit code.

    The words say what happened: a tunnel that honoured the SIGINT "Closed" (it closed its
    connection and cleaned up itself), "Killed" only for SIGKILL.
    """
    if WINDOWS:
        return end_windows_tunnels(tunnels, timeout)
    signalled = []
    for tunnel in tunnels:
        if send(tunnel, signal.SIGINT):  # what Ctrl+C sends: the tunnel cleans up itself
            signalled.append(tunnel)
        else:
            say("Info", f"{tunnel.name(first=True)} had already exited.")

    def gone(tunnel: RunningTunnel) -> None:
        clean_after(tunnel)
        say("Info", f"Closed {tunnel.name()}.")

    remaining = wait_until_gone(signalled, timeout, gone)
    if not remaining:
        return EXIT_OK
    if not force:
        for tunnel in remaining:
            say("Warning", f"{tunnel.name()} did not close within {timeout:g} s; "
                           "jupyter-tunnel-shutdown --force kills it")
        return EXIT_NOT_STOPPED

    def killed(tunnel: RunningTunnel) -> None:
        clean_after(tunnel)
        say("Info", f"Killed {tunnel.name()}.")

    for tunnel in remaining:
        say("Warning", f"{tunnel.name()} did not close within {timeout:g} s: killing it (SIGKILL)")
        send(tunnel, signal.SIGKILL)
    survivors = wait_until_gone(remaining, KILL_TIMEOUT, killed)
    for tunnel in survivors:
        say("Error", f"{tunnel.name()} survived SIGKILL")
    return EXIT_NOT_STOPPED if survivors else EXIT_OK


def registered_ssh(tunnel: RunningTunnel) -> int | None:
    """Windows: the ssh.exe the registry names as ``tunnel``'s connection, if tasklist shows it
    as a live process of this user's while the run itself still proves live (its lock) afterwards:
    so the pid is the run's own ssh right now, not one reused since."""
    state = read_state(tunnel.state["file"]) if tunnel.state and "file" in tunnel.state else None
    pid = as_pid(state.get("master_pid")) if state is not None else None
    if pid is None or not is_ssh_image(pid):
        return None
    return pid if tunnel.alive() else None


def is_ssh_image(pid: int) -> bool:
    """Windows: whether ``pid`` is, right now, a live ssh.exe of this user (tasklist)."""
    return (windows_image(pid) or "").lower() == "ssh.exe"


def end_windows_tunnels(tunnels: Sequence[RunningTunnel], timeout: float) -> int:
    """Windows: end each tunnel's process, then its ssh, then remove its private directory and
    entry here; the exit code.

    No signal lets a run clean up there: os.kill(pid, SIGTERM) is TerminateProcess (no handler
    runs), and a console's Ctrl+C reaches only the processes that share that console.  So the
    run's ssh (found before, while the run proved live: registered_ssh) is ended right after
    it, and what the run would have removed goes as after a run that died (clean_leftovers).
    A run inside another program (jupyter_tunnel.main) ends that program too: say so in the docs.
    """
    ended = []
    for tunnel in tunnels:
        ssh = registered_ssh(tunnel)
        if not send(tunnel, signal.SIGTERM):
            say("Info", f"{tunnel.name(first=True)} had already exited.")
            continue
        ended.append(tunnel)
        if ssh is not None:  # asked again right before: it ends by itself as its stdin (the run's) closes,
            # and a pid that ended may be another's already
            with contextlib.suppress(OSError):
                signal_if(ssh, lambda: is_ssh_image(ssh), signal.SIGTERM)

    def gone(tunnel: RunningTunnel) -> None:
        clean_after(tunnel)
        say("Info", f"Ended {tunnel.name()}, and removed its files.")

    remaining = wait_until_gone(ended, timeout, gone)
    for tunnel in remaining:
        say("Error", f"{tunnel.name()} did not end within {timeout:g} s")
    return EXIT_NOT_STOPPED if remaining else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The command line: no argument stops every tunnel, as the original script did."""
    parser = argparse.ArgumentParser(
        prog="jupyter-tunnel-shutdown",
        description=(
            "Stop your running jupyter-tunnel processes as Ctrl+C would (each closes its SSH\n"
            "connection and cleans up), and wait until they are gone. Without options: all of\n"
            "them. Never asks anything, so it fits sleep hooks and cron jobs."
        ),
        epilog=(
            "examples:\n"
            "  stop every tunnel:           jupyter-tunnel-shutdown\n"
            "  see what runs:               jupyter-tunnel-shutdown --list\n"
            "  stop the one on port 8888:   jupyter-tunnel-shutdown --port 8888\n"
            "  stop those through a host:   jupyter-tunnel-shutdown --host gateway.ext\n"
            "  from a sleep hook:           jupyter-tunnel-shutdown --timeout 5 --force\n"
            "\nexit codes: 0 all stopped (or none was running), 1 some did not stop\n"
            "  (without --force) or an error, 2 bad option, 130 interrupted"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-l", "--list", action="store_true",
                        help="list the running tunnels (a table on stdout) instead of stopping them")
    parser.add_argument("--json", action="store_true", help="list them as a JSON array (implies --list)")
    parser.add_argument("--port", type=int_option(1, 65535), action="append", default=[], metavar="LPORT",
                        help="only the tunnel on this local port; repeatable")
    parser.add_argument("--host", action="append", default=[], metavar="HOST",
                        help="only tunnels through HOST (any -s host or the -n node; user@ and "
                             ":port may be left out); repeatable")
    parser.add_argument("--timeout", type=number_option("seconds", MAX_TIMEOUT), default=DEFAULT_TIMEOUT,
                        metavar="SECONDS",
                        help="how long each tunnel gets to close [default: %(default)g]")
    parser.add_argument("-f", "--force", action="store_true",
                        help="SIGKILL the tunnels still running after --timeout, and remove "
                             "what they leave (ssh master, agent, private directory)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {jupyter_node.__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.list = args.list or args.json
    if args.list and args.force:
        parser.error("--force stops tunnels: it cannot go with --list/--json")
    try:
        tunnels = find_tunnels(clean=not args.list)
        chosen = select_tunnels(tunnels, args.port, args.host)
        if args.port:
            for tunnel in tunnels:
                if not tunnel.registered and tunnel not in chosen:
                    say("Warning", f"process {tunnel.pid} is a tunnel that did not register (an older "
                                   "version): its local port is unknown, so --port leaves it alone")
        if args.json:
            print(json.dumps([t.to_json() for t in chosen], indent=2))
            return EXIT_OK
        if not chosen:
            if tunnels:
                say("Info", f"No tunnel matches --port/--host ({len(tunnels)} running: "
                            "jupyter-tunnel-shutdown --list shows them).")
            else:
                say("Info", "No tunnel is running.")
            return EXIT_OK
        if args.list:
            print(format_table([TABLE_COLUMNS, *map(table_row, chosen)]), flush=True)
            return EXIT_OK
        return stop_tunnels(chosen, args.timeout, args.force)
    except OSError as error:  # a registry file or /proc entry that cannot be read or removed
        say("Error", describe_os_error(error))
        return EXIT_NOT_STOPPED
    except KeyboardInterrupt:
        say("Info", "Interrupted.")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Put the local browser on a Jupyter server that already runs on a remote machine.

One SSH login per hop for the whole run.  ``main()`` parses the command line and calls
``Tunnel(...).run()``, which takes these steps, each in its section below, in this order
(docs/how-it-works.md numbers them the same):

1. connect once (``Connection``, ``Master``): register the run, then start ONE OpenSSH master
   (``ssh -M``) to the last ``-s`` host through the others (``-J``); every later step is
   multiplexed over it, so a password or 2FA prompt comes once.  The user's own open master
   to that host, if their config names one, is ridden instead (``SharedMaster``).
2. the cluster job (``find_job``; ``--submit``, ``-n auto``, ``--job``): jupyter_node.py runs
   on the head through the master; the route gains the job's node, a ``JobWatch`` follows it.
3. discover (``discover``): a POSIX ``sh`` script prints the runtime files of the live Jupyter
   servers (with a node: on the node, from the head), checked here: the remote needs neither
   ``python`` nor ``jupyter`` on PATH.  ``--list`` stops here.
4. start (``start_server``; ``--start`` and no matching server): a detached Jupyter on 127.0.0.1.
5. choose (``choose_or_start``, ``choose_server``): the only server, the one ``--port``/
   ``--dir``/``--pick`` name, or ask on a terminal.  ``--stop`` stops it here.
6. forward (``add_forward``, ``Relay``): the master forwards a unix socket in the run's 0700
   directory to the server; the tool listens on the local port itself for the whole run and
   splices each connection of the user's own into that socket.
7. wait (``wait_for_tunnel``): until Jupyter itself answers ``/api/status`` through it.
8. browser (``Tunnel.announce``, ``open_browser``): the URL; the browser gets a one-time
   address of the relay's that redirects to it (never the token on a command line).
9. stay (``Tunnel.stay``, ``JobWatch``): until Ctrl+C, SIGTERM or SIGHUP; log in again when the
   master dies, behind a local port that never closed; exit when the server or its job ends.
10. clean up (``Tunnel.close``, ``close_server``): the local port, the server if asked, the
   master and agent, the private directory and, last, the registry entry.

The registry lives in jupyter_tunnel_shutdown.py, the scheduler knowledge in jupyter_node.py.
Only the standard library and the system ``ssh`` are used: it is what honours ``~/.ssh/config``,
ProxyJump, agents, ControlMaster and 2FA prompts.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import math
import os
import selectors  # subprocess imports it anyway: free
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

T = TypeVar("T")

# What other programs may use: main() (the README calls jupyter_tunnel.main([...])) and the
# version; the rest is this tool's own (the tests reach it by name).  The registry is
# jupyter_tunnel_shutdown.py's: its __all__ is the API between the two (tests/test_api.py).
__all__ = ["__version__", "main"]

# --start's options and activation commands are jupyter-node's own, as are the helpers all
# three tools share (messages, option types, tables, the time left).  The imports go one way:
# jupyter_tunnel -> jupyter_tunnel_shutdown -> jupyter_node (which must run alone on a head node).
import jupyter_node  # --submit sends its source to the head
from jupyter_node import (CANCEL_COMMANDS, JOB_ID_RE, NO_TIME_LIMIT, SCHEDULERS, add_server_options,
                          build_activation_steps, describe_os_error, escape_text, format_table, format_time_left,
                          has_control, int_option, job_option, last_lines, number_option, say, split_host,
                          split_host_list, which_or_fail)
from jupyter_node import ProfileError, expand_profile, profile_keys, show_profiles  # the profiles: one implementation
from jupyter_node import resource_option as node_resource_option
# the registry, a run's private directory and its lock
from jupyter_tunnel_shutdown import (AGENT_SOCKET, CONFIG_FILE, CONNECTING, CONTROL_SOCKET, FORWARD_SOCKET,
                                     HAVE_PROC, MAX_TIMEOUT, READY, STDIO_SHELL, Registration, build_cancel_argv,
                                     build_state, cancel_forward, make_private_dir, prune_registry, socket_answers,
                                     take_run_lock)

__version__ = "0.1.0"

# Exit codes (documented in README.md).
EXIT_OK = 0
EXIT_ERROR = 1  # anything not listed below
EXIT_USAGE = 2  # bad option (argparse)
EXIT_MISSING = 3  # a program we need (ssh, the browser, ssh-agent) is missing
EXIT_CONNECT = 4  # the login failed: unreachable host, wrong password, refused key
EXIT_NO_SERVER = 5  # no Jupyter server, or no single one to choose
EXIT_PORT = 6  # no local port could be forwarded
EXIT_TIMEOUT = 7  # the tunnel did not answer within --timeout
EXIT_LOST = 8  # the connection dropped while the tunnel was up
EXIT_START = 9  # --start: the Jupyter server could not be started
EXIT_INTERRUPTED = 130  # Ctrl+C (or SIGTERM/SIGHUP) before the tunnel was ready

DEFAULT_TIMEOUT = 60.0
# Ranges of the numeric options: finite, positive, and small enough for every timer that
# takes them (threading's join() raises OverflowError for 1e300 seconds).
MAX_CHECK_INTERVAL = 3600.0  # --check-interval: an hour
MAX_KEEPALIVE = 3600  # --keepalive: ssh's ServerAliveInterval, in seconds
MAX_RETRIES = 1_000_000  # --max-retries
MAX_PICK = 10_000  # --pick: a number of --list
DEFAULT_SOCKET_PORT = 8888  # first local port tried for a unix-socket server
NO_BROWSER = ("n", "none")
# Windows (docs/windows.md): no SIGHUP there, but SIGBREAK (Ctrl+Break); signal.signal() takes
# no other (a closed console window is CTRL_CLOSE_EVENT, which Python turns into no signal).
WINDOWS = sys.platform == "win32"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGBREAK if WINDOWS else signal.SIGHUP)  # each ends the run
# What ssh asks its prompts on (readpassphrase): the terminal; Win32-OpenSSH's _PATH_TTY is "conin$", the console
TERMINAL = "CONIN$" if WINDOWS else "/dev/tty"
# The master is polled every 2 ms while it logs in (a login takes 0.3 s or more: a few percent
# at most); after FAST_POLL_SECONDS a person is typing a password or 2FA code, and the poll backs
# off to SLOW_POLL_INTERVAL (a 20 s login: 0.28 s of CPU, start-up included, instead of 0.84 s).
POLL_INTERVAL = 0.002
FAST_POLL_SECONDS = 1.0
SLOW_POLL_INTERVAL = 0.1
SHARED_POLL_INTERVAL = 1.0  # s between looks at the user's own master: a connect(), which costs it nothing
# PROTOCOL.mux: a live master's hello, a packet (4-byte length) of this type, comes in milliseconds
MUX_MSG_HELLO = 0x00000001
MUX_HELLO_TIMEOUT = 3.0
FIRST_HOP_CONNECT_TIMEOUT = 20  # seconds, not minutes, for an unreachable first hop (see build_ssh_config)
# Without ControlMaster (StdioMaster): Windows' own OpenSSH, whose ``ssh -V`` says NO_MUX_VERSION, cannot
# be a master (its AF_UNIX is a named-pipe client only: PowerShell/Win32-OpenSSH#405, #1328).  NO_MUX_WORDS:
# what an ssh says that failed to become one (Win32-OpenSSH's "getsockname failed: Not a socket" or "Bad
# file descriptor", "Failed to connect to new control master"; w32fd.c; unix_listener on this machine).
NO_MUX_VERSION = "OpenSSH_for_Windows"
NO_MUX_WORDS = ("getsockname failed", "Failed to connect to new control master",
                "Unix domain server sockets are not supported", "unix_listener:")
STDIO_ERROR_WAIT = 5.0  # s for a command's stderr end line once its stdout ended (both come at once)
STDIO_SHELL_TIMEOUT = 60.0  # s for the remote shell's first answer once ssh has logged in
# ssh's own lines on the connection's stderr, never a remote command's (a SOCKS connection that failed)
SSH_OWN_RE = re.compile(r"channel \d+: |Warning: Permanently added|Connection to \S+ closed")
# A host name ssh's Match takes as it is (no pattern characters: * ? ! , nor quotes or spaces).
MATCH_HOST_RE = re.compile(r"[A-Za-z0-9_.:%\[\]-]+")
DEFAULT_KEEPALIVE = 10  # seconds: a dropped network is noticed within ~30 s
DEFAULT_CHECK_INTERVAL = 10.0  # seconds between checks that the Jupyter server still runs
MAX_BACKOFF = 30.0  # seconds: the longest wait between two reconnection attempts
# --max-retries: failed attempts after one drop (any failure: an unreachable network too),
# with the waits of backoff_delays about 7 minutes; a successful reconnection starts anew.
DEFAULT_MAX_RETRIES = 20
# Refused logins ("Permission denied") after which a run stops trying: each counts against the
# account (centres lock it after a few: pam_faillock, a 2FA module's rate limit), and a refusal
# without any prompt (a rate limit) would come again at every attempt.
MAX_REFUSED_LOGINS = 3
# A login that takes this long has likely waited for a person (a passphrase, a 2FA code): the
# time it reports says so (build_connected_line).  Without one it takes well under a second.
PROMPT_SECONDS = 3.0
CONNECT_FAILURE_GRACE = 3.0  # seconds of "connection refused" at the remote end before giving up
# What ssh -v (our -vv) adds to its stderr: debug lines, and a few of its VERBOSE level (seen
# with OpenSSH 9.2).  They never explain a failure.
SSH_DEBUG = ("debug1:", "debug2:", "debug3:", "OpenSSH_", "Authenticated to ", "Transferred: ",
             "Bytes per second: ")
# Lines of ssh's stderr shown only when nothing else explains: a jump host's failed login closes
# its "ssh -W" pipe, and the ssh behind it reports its banner exchange failing too.
SSH_CONSEQUENCES = ("kex_exchange_identification:", "banner exchange:")
SSH_REFUSED = ("Permission denied", "Too many authentication failures")  # sshconnect2.c; sshd's MaxAuthTries
# ssh's words (ssh.c, sshconnect.c, channels.c) for the failures a user meets most, and the host each names
SSH_UNRESOLVED_RE = re.compile(r"Could not resolve hostname (\S+?): (.+?)\.?$", re.MULTILINE)
SSH_CONNECT_RE = re.compile(r"connect to host (\S+) port (\d+): (.+?)\.?$", re.MULTILINE)
# a jump host's sshd could not open the connection to the next host (ssh -W's channel)
SSH_JUMP_FAILED_RE = re.compile(r"channel \d+: open failed: [a-z ]+: (.+?)\.?$", re.MULTILINE)
SSH_UNKNOWN_KEY_RE = re.compile(r"No \S+ host key is known for (\S+?) and", re.MULTILINE)
SSH_CHANGED_KEY_RE = re.compile(r"Host key for (\S+?) has changed", re.MULTILINE)
SSH_NO_KEY_RE = re.compile(r"^(?:\S+@)?(\S+?): Permission denied \(publickey\)", re.MULTILINE)
# getaddrinfo's words (glibc, macOS) for a name that does not resolve
NAME_NOT_FOUND = ("not known", "name resolution", "No address associated", "nodename nor servname")
SSH_NOISE = (*SSH_DEBUG, "Warning: Permanently added", "Connection closed by UNKNOWN port 65535",
             "Pseudo-terminal will not be allocated", "Killed by signal")  # never explain a failure
MARK = "::jupyter-tunnel::"  # begins the lines our remote scripts print for us (build_discovery_script)
# How long the browser's one-time address (Relay.offer_redirect) waits: a browser's cold start (a
# snap-packaged one can take half a minute) must not find it gone; then the URL printed on stdout
# is there to open by hand.  A connection to it sends its request within ONE_SHOT_REQUEST_TIMEOUT.
ONE_SHOT_TIMEOUT = 120.0
ONE_SHOT_REQUEST_TIMEOUT = 10.0
MAX_REQUEST_HEAD = 8192  # bytes; a browser's GET head is well under 2 KiB
# The relay (see Relay): the run's local port, listened on by the tool itself.
LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))
NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)  # the machine has no IPv6 loopback
RELAY_BACKLOG = 128
# At most this many connections at once (two threads each): a browser opens ~6 per host
# and JupyterLab a websocket per kernel; more is a runaway client, not a person.
RELAY_MAX_CONNECTIONS = 256
RELAY_BUFFER = 65536  # bytes per read and direction: 128 KiB a connection, and >1 GB/s through it
# A connection that comes while the run reconnects waits this long for the new forward
# (JupyterLab's requests then go through unharmed), then gets a page that reloads itself.
RELAY_WAIT = 10.0
RELAY_RETRY = 0.1
SOCKS_VERSION = 5  # the forward without a master: ssh -D's SOCKS5 (channels.c; auth "none" only)
# --forward's probe (forward_answers): how long a connect through a forward may take to tell whether
# anything listens at its other end.  ssh refuses within a round trip to the remote side (its sshd's
# connect() refused), so 1 s covers a slow link; it bounds the stay loop's pause at each check.
FORWARD_PROBE_TIMEOUT = 1.0
# a line of ssh's for one forwarded connection that failed (channels.c): a port where nothing listens,
# never why an established connection ended (Master.why, lost=True)
CHANNEL_FAILED_RE = re.compile(r"channel \d+: open failed: ")
PROC_NET_TCP, PROC_NET_TCP6 = "/proc/net/tcp", "/proc/net/tcp6"  # Linux: every TCP socket and its owner's uid
# Linux's netlink sock_diag (linux/sock_diag.h, inet_diag.h): the owner of one TCP socket.
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST = 4, 20, 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
# A runtime file's "hostname" (it goes into ssh's -L spec): letters, digits, "-", "_" (seen in /etc/hosts), dots
HOST_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
ANY_ADDRESS = ("", "0.0.0.0", "*", "::", "[::]")  # a runtime file's "hostname" for every interface
MAX_PID = 2**31 - 1  # pid_t
TOKEN_RE = re.compile(r"token=[^&\s]+")  # a token in a URL that Jupyter logged
START_LOG_TAIL = 15  # lines of a remote log shown with an error
MAX_ANSWER = 65536  # the probe reads /api/status's answer whole (HTTP/1.0 closes after it): ~700 bytes
# What a remote command may send back (issue 19: a hostile or broken remote must not bloat the
# run).  Its stdout: a runtime file is ~1 KB, the start script's answer adds 15 log lines,
# jupyter_node.py's JSON a few KB; 4 MiB is thousands of servers, far less than would hurt.
# A line of its stderr (ssh's, the shell's, jupyter_node.py's Info: lines) is a few hundred
# bytes: 64 KiB is no message.  Only the last lines are kept: the reason for a failure comes last.
MAX_REMOTE_OUTPUT = 4 * 1024 * 1024
MAX_REMOTE_LINE = 64 * 1024
REMOTE_STDERR_LINES = 200

# -p answers only ssh's own password prompts: "user@host's password: " (password
# authentication: sshconnect2.c, userauth_passwd) and PAM's "Password: " (pam_unix) over
# keyboard-interactive, "(user@host) Password: " since OpenSSH 8.4 (input_userauth_info_req).
# Every other prompt goes to the person (a verification code, "Password & verification code:",
# pam_oath's "One-time password (OATH) for 'user':", a key passphrase, a host key question).
PASSWORD_PROMPT_RE = re.compile(r"\S+@[^\s@]+'s password: |(?:\(\S+@[^\s@]+\) )?Password: ")
ASKPASS_FILE, ASKPASS_LOCK = "askpass", "askpass.lock"
ASKPASS_PROGRAM = "askpass.py"  # the helper itself, run by ASKPASS_FILE (see write_askpass)
PASSWORD_ENV = "JUPYTER_TUNNEL_PASSWORD"
# The -p helper (write_askpass): a Python script, as only a program of its own can restore the
# terminal when it is interrupted and notice that its ssh has gone (a shell's "read" cannot).
ASKPASS_SCRIPT = r'''#!@PYTHON@ -IS
"""jupyter-tunnel's SSH_ASKPASS helper, written by one run into its private directory.

ssh runs it for every prompt of every hop (SSH_ASKPASS_REQUIRE=force), the prompt as its
argument, and sends what it prints.  The prompt ssh itself uses for a password gets the
password typed once, from the environment (never a command line or a file); any other
prompt is asked of the person on the terminal, by one helper at a time (a lock in the
run's directory), with the terminal's settings put back however it ends, and given up when
its ssh has gone.
"""
import fcntl, os, re, select, signal, sys, termios

PASSWORD_PROMPT = re.compile(@PATTERN@)
LOCK = os.path.join(os.path.dirname(os.path.abspath(__file__)), @LOCK@)
POLL = 0.2  # seconds: how soon a helper notices that its ssh has gone


def stop(signum, frame):
    raise SystemExit(1)


def ask(prompt, parent):
    """The person's answer, or None when the terminal is gone or ssh is."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        sys.stderr.write("jupyter-tunnel: no terminal to ask %r on (-p answers the password only)\n"
                         % prompt.strip())
        # a helper that fails makes ssh send an empty answer (readpass.c), one more failed
        # attempt at the server: end the login before that
        os.kill(parent, signal.SIGTERM)
        return None
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    while True:  # one helper reads the keyboard at a time (a reconnection's, another hop's)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if os.getppid() != parent:
                return None
            select.select([], [], [], POLL)
    saved = termios.tcgetattr(tty)
    quiet = "(yes/no" not in prompt  # a host key question is answered in the open
    answer, done = b"", False
    try:
        if quiet:
            settings = termios.tcgetattr(tty)
            settings[3] &= ~termios.ECHO
            termios.tcsetattr(tty, termios.TCSADRAIN, settings)
        os.write(tty, prompt.encode())
        while not answer.endswith(b"\n"):
            if os.getppid() != parent:  # ssh has gone (killed, timed out): stop reading
                return None
            if select.select([tty], [], [], POLL)[0]:
                chunk = os.read(tty, 4096)
                if not chunk:  # Ctrl+D
                    return None
                answer += chunk
        done = True
        return answer[:-1].decode(errors="replace")
    finally:
        termios.tcsetattr(tty, termios.TCSADRAIN, saved)
        if quiet or not done:
            os.write(tty, b"\n")  # the prompt's line ends here, whatever comes next
        os.close(tty)
        os.close(lock)


def main():
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    prompt = sys.argv[1] if len(sys.argv) > 1 else ""
    password = os.environ.get(@ENV@)
    if password is not None and PASSWORD_PROMPT.fullmatch(prompt):
        answer = password
    else:
        try:
            answer = ask(prompt, os.getppid())
        except KeyboardInterrupt:
            answer = None
    if answer is None:
        return 1
    sys.stdout.write(answer + "\n")
    return 0


sys.exit(main())
'''


# ---------------------------------------------------------------- errors and messages


class TunnelError(Exception):
    """A failure to report as one ``Error:`` line, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """Raised by the SIGTERM/SIGHUP handlers so that cleanup runs in ``finally``."""


class ServerStopped(Exception):
    """The Jupyter server stopped while the tunnel was up: a normal end."""


def fill_script(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``@NAME@`` replaced by ``values[NAME]`` in one pass: never inside a value (--pre's)."""
    return re.sub(r"@([A-Z]+)@", lambda match: values[match.group(1)], template)


def ask_server(servers: Sequence[T], what: str = "server") -> T:
    """Ask on the terminal which of several servers (or jobs: ``what``) to use."""
    while True:
        print(f"Which {what}? [1-{len(servers)}] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
        if not answer:
            raise KeyboardInterrupt  # end of input: the user gave up
        if answer.strip().isdigit() and 1 <= int(answer) <= len(servers):
            return servers[int(answer) - 1]


def format_log_tail(lines: Iterable[str]) -> str:
    """``; its log ends with: a | b`` (its last START_LOG_TAIL lines) for an error, "" if empty;
    tokens masked: the log may hold the server's URL, printed before it failed."""
    tail = [TOKEN_RE.sub("token=…", line.strip()) for line in last_lines(lines, START_LOG_TAIL)]
    return "; its log ends with: " + " | ".join(tail) if tail else ""


# ---------------------------------------------------------- the route and the servers


class Route(NamedTuple):
    """The hosts to contact, in order: all but the last are jump hosts."""

    hosts: tuple[str, ...]
    node: str = ""  # a cluster node reached from the last host, which is then the head node
    scheduled: bool = False  # --submit, -n auto, --job: node is "" until the scheduler names it

    @property
    def target(self) -> str:
        """The host the master logs into."""
        return self.hosts[-1]

    @property
    def server_host(self) -> str:
        """Where the Jupyter server runs: the node, or else the target."""
        return self.node or self.target

    @property
    def jumps(self) -> tuple[str, ...]:
        """The jump hosts, first contacted first."""
        return self.hosts[:-1]

    def describe(self) -> str:
        """``srv`` or ``srv via gw, head`` for messages."""
        return f"{self.target} via {', '.join(self.jumps)}" if self.jumps else self.target

    def describe_server_host(self) -> str:
        """``node1 (from head)`` when a node is involved, else the target."""
        return f"{self.node} (from {self.target})" if self.node else self.target


def parse_hosts(values: Iterable[str], node: str | None = None) -> Route:
    """Turn the ``-s`` values (and ``-n``) into a Route; ``"gw host"`` and ``gw,host`` work."""
    hosts = [host for value in values for host in split_host_list(value)]
    if not hosts:
        raise TunnelError("no host given to -s/--host", EXIT_USAGE)
    node = (node or "").strip()
    for host in [*hosts, node]:
        if host.startswith("-") or any(c.isspace() for c in host):  # ssh would take it for an option
            raise TunnelError(f"invalid host name {host!r}", EXIT_USAGE)
    return Route(tuple(hosts), node)


def build_destination(host: str) -> list[str]:
    """ssh arguments naming ``host``; ``[user@]host:port`` becomes an ``ssh://`` URI."""
    return [f"ssh://{host}"] if split_host(host)[2] and not host.startswith("ssh://") else [host]


class Server(NamedTuple):
    """A running Jupyter server, as its runtime file describes it."""

    pid: int
    port: int  # 0 when it listens on a unix socket only
    host: str  # the address it listens on, as the remote side resolves it
    base_url: str
    token: str
    root_dir: str
    sock: str = ""
    secure: bool = False
    version: str = ""  # jupyter_server's version; notebook < 7 writes none
    app: str = "server"  # lab, notebook or server, from its command line
    source: str = ""  # the runtime file it came from

    @property
    def key(self) -> tuple[int, int, str]:
        """What tells this server from the others on the host (and from its restarted self)."""
        return (self.pid, self.port, self.sock)

    @property
    def legacy(self) -> bool:
        """Whether it is notebook < 7: its runtime files (nbserver-*) carry no version."""
        return not self.version and (self.app == "notebook" or "nbserver-" in self.source)

    @property
    def kind(self) -> str:
        """``lab (jupyter_server 2.21.1)``, ``notebook (notebook < 7)``, or the app alone."""
        if self.version:
            return f"{self.app} (jupyter_server {self.version})"
        return f"{self.app} (notebook < 7)" if self.legacy else self.app

    def describe(self) -> str:
        """One line for lists: where it listens, what it is, where it serves from."""
        where = f"socket {self.sock}" if self.sock else f"port {self.port or '?'}"
        return f"{where}  {self.kind}  {self.root_dir or '?'}  pid {self.pid}"


def is_host_address(text: str) -> bool:
    """Whether ``text`` is a host name or an IP literal, fit for the host part of ``-L``."""
    if text in ANY_ADDRESS or HOST_NAME_RE.fullmatch(text):
        return True  # host names and IPv4 addresses
    import ipaddress  # only now: a few ms that a server on a host name never costs

    try:
        ipaddress.IPv6Address(text[1:-1] if text[:1] == "[" and text[-1:] == "]" else text)
    except ValueError:
        return False
    return True


def _short(value: object) -> str:
    """``repr(value)`` cut to a length fit for a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole_number(info: dict, key: str, low: int, high: int, default: int | None = None) -> int:
    """``info[key]`` if it is an int from ``low`` to ``high``, else a ValueError that says so."""
    value = info.get(key, default)
    # type(), not isinstance(): JSON true is a bool (an int subclass); JSON 1e999 a float (inf)
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"its {key} {_short(value)} is not a whole number from {low} to {high}")
    return value


def parse_app(cmdline: str) -> str:
    """``lab``, ``notebook`` or ``server`` from a Jupyter process's command line."""
    if any(name in cmdline for name in ("jupyter-lab", "jupyterlab", "jupyter lab")):
        return "lab"
    return "notebook" if "notebook" in cmdline else "server"


def parse_server(info: dict, source: str = "", cmdline: str = "") -> Server:
    """A Server from the JSON of one runtime file (jpserver or nbserver).

    The file is the remote's word, and parts of it go into the browser's URL, ssh's ``-L`` and
    the probe's request: a field that could make any of them point elsewhere is a ValueError
    (its message says which field), never a guess."""
    from urllib.parse import urlsplit

    if not isinstance(info, dict):
        raise ValueError("it is not a JSON object")
    url = urlsplit(str(info.get("url") or ""))
    port = _whole_number(info, "port", 0, 65535, default=0)
    if not port:
        with contextlib.suppress(ValueError):  # "http://localhost:99999/" leaves it 0
            port = url.port or 0
    host = str(info.get("hostname") or url.hostname or "localhost")
    if not is_host_address(host):
        raise ValueError(f"its hostname {_short(host)} is not a host name or an IP address")
    base_url = str(info.get("base_url") or "/")
    # The URL is http://localhost:PORT + base_url: without a leading "/" it could change the host
    # ("@otherhost:9/"), a space or newline would cut it, "?" and "#" push the token out of the path.
    if not base_url.startswith("/") or any(char.isspace() or char in "?#" for char in base_url) \
            or has_control(base_url):
        raise ValueError(f"its base_url {_short(base_url)} is not a path starting with /")
    if not base_url.endswith("/"):
        base_url += "/"
    token, sock = str(info.get("token") or ""), str(info.get("sock") or "")
    for key, value in (("token", token), ("sock", sock)):
        if has_control(value):  # the token goes into the probe's header, sock into -L
            raise ValueError(f"its {key} holds control characters")
    return Server(
        pid=_whole_number(info, "pid", 1, MAX_PID), port=port, host=host, base_url=base_url, token=token,
        # notebook < 7 says notebook_dir, jupyter_server says root_dir
        root_dir=str(info.get("root_dir") or info.get("notebook_dir") or ""), sock=sock,
        secure=bool(info.get("secure")), version=str(info.get("version") or ""),
        app=parse_app(cmdline) if cmdline else ("notebook" if "nbserver-" in source else "server"),
        source=source)


def server_auth(server: Server) -> str:
    """How the server authenticates, as far as its runtime file tells ("password": false does not:
    a server protected by `jupyter server password` writes it just as one with no authentication)."""
    return "token" if server.token else "password or none"


def build_forward_state(server: Server, local_port: int) -> dict:
    """The fields of a registry entry known once the local port is forwarded to the server."""
    return {"local_port": local_port, "remote_port": server.port, "sock": server.sock,
            "server_pid": server.pid, "root_dir": server.root_dir}


def server_info(number: int, server: Server) -> dict:
    """A server as a JSON object for ``--list --json`` (no token: it is a secret)."""
    return {
        "number": number, "port": server.port, "sock": server.sock, "host": server.host,
        "root_dir": server.root_dir, "app": server.app, "version": server.version,
        "kind": "notebook<7" if server.legacy else "jupyter_server",
        "auth": server_auth(server), "secure": server.secure, "base_url": server.base_url, "pid": server.pid,
    }


# -------------------------------------------------------------------- 1. connect once


def build_include_path(path: str) -> str:
    r"""``path`` as ssh reads it back from an ``Include`` line: quoted, and not a pattern.

    ssh splits the line into words (a space ends a word unless it is in double quotes; since
    OpenSSH 8.7 a backslash escapes ``"`` and ``\`` there), then hands each word to glob(3),
    where ``*``, ``?`` and ``[`` are wildcards and a backslash escapes the next character.
    Seen with OpenSSH 9.2: ``Include "/tmp/a b/c\\\\q"`` reads ``/tmp/a b/c\q``."""
    for char in "\\*?[":
        path = path.replace(char, "\\" + char)  # for glob (the backslash first)
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'  # for ssh's words


def build_ssh_config(user_config: str | None, options: Sequence[str], add_keys_to_agent: bool = False,
                     password: bool = False, keepalive: int = DEFAULT_KEEPALIVE, batch: bool = False,
                     first_hop: str = "") -> str:
    """Text of the config file every ssh of the run reads with ``-F``: the one way to reach every
    hop, as ssh passes only -l -p -J -F -v to the ssh it starts for a jump host.

    ssh keeps the first value it reads for an option, so the order is: the user's ``-o`` options,
    the user's own config, our defaults, and the system config (as ssh itself reads the user's
    file before the system one).  ``first_hop``: the first ``-s`` host, given a ConnectTimeout."""
    lines = ["# Written by jupyter-tunnel for one run; removed when it exits."]
    if batch:
        # no terminal (and no -p): a prompt could never be answered, and ssh would send
        # empty answers instead, each a failed attempt at the server: fail at once
        lines.append("BatchMode yes")
    if password:
        # -p's password is the only answer: asking again would only send it (or, once askpass
        # gives up, an empty one) again, one more failure against the account
        lines.append("NumberOfPasswordPrompts 1")
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            key, _, value = option.strip().partition(" ")
        lines.append(f"{key.strip()} {value.strip()}")
    # an absolute path: a relative Include is taken relative to ~/.ssh
    include = build_include_path(os.path.abspath(user_config)) if user_config else "~/.ssh/config"
    # ControlMaster no, before the user's config: a jump hop's ssh reads this file too, and with their
    # "ControlMaster auto" and "ControlPersist" would become a master outliving the run (OpenSSH 9.2);
    # "no" still rides a master the user has open.  Our master is -M (the command line wins).
    # LogLevel INFO: a jump host's "channel 0: open failed: ..." is logged at INFO (channels.c), and
    # a user's ERROR hides it; ssh's stderr is the run's to read (explain_ssh_failure), never shown.
    # ServerAliveCountMax 3: a dead network is noticed after 3 --keepalive intervals
    lines += ["ControlMaster no", "LogLevel INFO", f"Include {include}", f"ServerAliveInterval {keepalive}",
              "ServerAliveCountMax 3"]
    if add_keys_to_agent:  # only for an agent this run started: never the user's own behind their back
        lines.append("AddKeysToAgent yes")
    name = split_host(first_hop)[1]
    if MATCH_HOST_RE.fullmatch(name):
        # ConnectTimeout bounds the TCP connect AND the banner's wait (sshconnect.c), also over a jump
        # host's "ssh -W" pipe, where the banner waits for the person at the jump host's prompts: a
        # slow 2FA code would be cut short.  So only the first hop, reached over TCP by ssh itself, gets
        # one (a logged-in hop's keepalive notices a dead network); "originalhost": the name ssh -J passes.
        lines += [f"Match originalhost {name}", f"ConnectTimeout {FIRST_HOP_CONNECT_TIMEOUT}", "Match all"]
    lines.append("Include /etc/ssh/ssh_config")
    return "\n".join(lines) + "\n"


def build_master_argv(ssh: str, config: str, control: str, route: Route) -> list[str]:
    """argv of the one ssh that logs in and holds the connection for the run."""
    # ControlPersist=no: the master stays our child (we notice it die); a failed forward is an error
    argv = [ssh, "-F", config, "-M", "-S", control, "-N", "-T", "-o", "ControlPersist=no",
            "-o", "ExitOnForwardFailure=yes"]
    if route.node or route.scheduled:
        # The head needs the agent to log into the node.  ForwardAgent=yes on a master forwards
        # it to no session by itself (-N opens none): only the discovery session's -A gets it.
        # "-o" reaches the head only, never a jump host.
        argv += ["-o", "ForwardAgent=yes"]
    if route.jumps:
        argv += ["-J", ",".join(route.jumps)]
    return argv + build_destination(route.target)


def build_stdio_argv(ssh: str, config: str, socks_port: int, route: Route) -> list[str]:
    """argv of the run's one ssh without ControlMaster (StdioMaster): a remote sh on its stdin and
    stdout for the run's commands, a SOCKS port on 127.0.0.1 for its forwards."""
    # ControlPath=none: no master to ride nor to become (Win32-OpenSSH fails at any unix socket);
    # a SOCKS port that cannot be had fails the login (ExitOnForwardFailure), as a forward does
    argv = [ssh, "-F", config, "-T", "-D", f"127.0.0.1:{socks_port}", "-o", "ControlPath=none",
            "-o", "ExitOnForwardFailure=yes"]
    if route.node or route.scheduled:
        argv.append("-A")  # the head logs into the node with the agent (see build_master_argv)
    if route.jumps:
        argv += ["-J", ",".join(route.jumps)]
    return argv + build_destination(route.target) + [STDIO_SHELL]


def build_framed_command(command: str, stdin: str, nonce: str) -> bytes:
    """What StdioMaster's remote sh reads to run ``command`` once: a begin line; the command in a child
    sh (its syntax error, exit or exec ends only that child), its stdin a here-document of ``stdin`` (a
    newline added if it lacks one) or /dev/null, never the shell's own; then its exit status and an end
    line, on stdout and on stderr.  Every mark holds ``nonce``: no output is taken for another command's."""
    redirect, body = "</dev/null", ""
    if stdin:
        redirect, body = f"<<'E{nonce}'", f"{stdin}{'' if stdin.endswith(chr(10)) else chr(10)}E{nonce}\n"
    return (f"printf '%s\\n' B{nonce}\nsh -c {shlex.quote(command)} {redirect}\n{body}"
            f"printf '\\n%s %s\\n' R{nonce} \"$?\"; printf '\\n%s\\n' R{nonce} >&2\n").encode()


def parse_framed_output(data: bytes, nonce: str) -> tuple[bytes, int] | None:
    """The stdout and exit status of the command framed with ``nonce`` (build_framed_command) in what
    the remote sh printed; None until its end line has come.  What came before its begin line (a
    login banner, a late write of an earlier command's child) is not its."""
    begin = data.find(f"B{nonce}\n".encode())
    if begin < 0:
        return None
    start = begin + len(nonce) + 2
    end = data.find(f"\nR{nonce} ".encode(), start)  # its output, then the newline printf adds
    if end < 0:
        return None
    status, newline, _ = data[end + len(nonce) + 3:].partition(b"\n")
    if not newline:
        return None
    return bytes(data[start:end]), int(status) if status.isdigit() else 255


def build_mux_argv(ssh: str, config: str, control: str, route: Route, *args: str) -> list[str]:
    """argv of an ssh that only talks to the running master (never a login of its own)."""
    # ControlMaster=no: never become a master ourselves if the socket vanished.  A socket gone or
    # answering no mux hello makes ssh log in itself (mux.c's muxclient returns, ssh.c connects):
    # ProxyCommand=false fails that at once, with no connection, prompt or failed attempt on any
    # server (on the command line it wins over the config's ProxyJump: the first value wins).
    return [ssh, "-F", config, "-S", control, "-o", "ControlMaster=no", "-o", "ProxyCommand=false",
            "-o", "BatchMode=yes", *args, *build_destination(route.target)]


def build_settings_argv(ssh: str, config: str, route: Route) -> list[str]:
    """argv of ``ssh -G``: the configuration in force for the target (it connects nowhere)."""
    jumps = ["-J", ",".join(route.jumps)] if route.jumps else []
    return [ssh, "-F", config, "-G", *jumps, *build_destination(route.target)]


def parse_ssh_settings(text: str) -> dict[str, str]:
    """``ssh -G``'s lines (``keyword value``) as a dict; the first value of a keyword wins."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        settings.setdefault(key.lower(), value.strip())
    return settings


def shared_control_path(settings: Mapping[str, str], node: bool = False) -> str:
    """The ControlPath where the user's own master to the target would listen ("" for none).

    With ``-n`` the head logs into the node with the agent, which a master forwards to a session
    only when started with ForwardAgent (OpenSSH 9.2: a client's ``-A`` alone gets nothing):
    without it in the config, the run logs in itself."""
    path = settings.get("controlpath", "")  # "none" too is no absolute path
    if not os.path.isabs(path) or (node and settings.get("forwardagent", "no") == "no"):
        return ""
    return path


def explain_ssh_failure(lines: Sequence[str], hosts: Sequence[str] = (), here: str = "") -> str:
    """ssh's failure in the user's terms: which host could not be resolved, reached or
    trusted, and the next step; "" when its words are none of those.  ``hosts``: the chain
    that ssh went through, in order; ``here``: the host that ssh ran on ("": this machine)."""
    text, on = "\n".join(lines), f"on {here}" if here else "here"
    # the command that checks every host key on the way: the user's own chain from here
    check = shlex.join(["ssh", *(["-J", ",".join(hosts[:-1])] if len(hosts) > 1 else []), *hosts[-1:]])
    found = SSH_CHANGED_KEY_RE.search(text) or SSH_UNKNOWN_KEY_RE.search(text)
    if found:
        host = found[1]
        check = check if hosts else f"ssh {shlex.quote(host)}"
        if found.re is SSH_CHANGED_KEY_RE:
            return (f"the host key of {host} is not the one saved {on} (~/.ssh/known_hosts): if its admins "
                    f"changed it, remove the old one with ssh-keygen -R {host} {on} and accept the new one with "
                    f"{check} (compare its fingerprint with theirs); else someone may be in between: do not connect")
        return (f"the host key of {host} is not known {on} yet: connect once with {check} {on}, check its "
                "fingerprint and accept it, then run jupyter-tunnel again")
    found = SSH_UNRESOLVED_RE.search(text)
    if found:
        return f"the host name {found[1]} cannot be resolved {on} ({found[2]}): check its spelling"
    found = SSH_JUMP_FAILED_RE.search(text)
    if found and len(hosts) > 1:
        jump, after = (hosts[0], hosts[1]) if len(hosts) == 2 else \
            (f"a jump host ({', '.join(hosts[:-1])})", f"the host after it ({', '.join(hosts[1:])})")
        if any(words in found[1] for words in NAME_NOT_FOUND):
            return f"{jump} cannot resolve the host name of {after} ({found[1]}): check its spelling"
        return f"{jump} cannot connect to {after} ({found[1]})"
    found = SSH_CONNECT_RE.search(text)
    if found:
        host, port, why = found.groups()
        if "refused" in why:
            return f"{host} refuses connections on port {port} ({why}): no ssh server listens there"
        if "timed out" in why:
            return f"{host} did not answer on port {port} ({why}): it is down, or a firewall or VPN is in the way"
        return f"cannot reach {host} port {port} ({why})"
    return ""


def parse_ssh_error(lines: Iterable[str], returncode: int | None = None, hosts: Sequence[str] = (),
                    here: str = "") -> str:
    """ssh's own reason for a failure, from its stderr without SSH_NOISE (nor SSH_CONSEQUENCES
    when more is said); in the user's terms when explain_ssh_failure knows it."""
    lines = list(lines)
    explained = explain_ssh_failure(lines, hosts, here)
    if explained:
        return explained
    useful = [line.strip() for line in lines if line.strip() and not line.startswith(SSH_NOISE)]
    useful = [line for line in useful if not line.startswith(SSH_CONSEQUENCES)] or useful
    if useful:  # the last ones: a login node's banner comes first, the reason last
        return "; ".join(useful[-3:])
    if returncode is not None and returncode < 0:
        return f"ssh was killed by {signal.Signals(-returncode).name}"
    return "ssh gave no reason"


def is_login_refused(reason: str) -> bool:
    """Whether ssh's ``reason`` says that the server refused the login (a failed attempt on the account)."""
    return any(words in reason for words in SSH_REFUSED)


def build_login_error(where: str, reason: str, batch: bool = False, reconnecting: bool = False) -> str:
    """The words for a login that failed: ssh's ``reason``, and for a refusal its likely causes,
    or (``batch``: no terminal, no -p) what to do instead of a prompt."""
    if not is_login_refused(reason):
        return f"cannot connect to {where}: {reason}"
    if batch:
        what = "reconnecting to" if reconnecting else "logging in to"
        return (f"{what} {where} needs a password, key passphrase or verification code, and there is no "
                f"terminal to ask it on ({reason}): use a key the server accepts (without a passphrase, or "
                "in your ssh-agent), your own open ssh connection (ControlMaster), or run it on a terminal "
                "(-p there gives the password)")
    found = SSH_NO_KEY_RE.search(reason)
    if found:  # the server takes keys only
        return (f"cannot connect to {where}: {reason} ({found[1]} takes only keys, and none of yours was "
                "accepted: add your public key to its ~/.ssh/authorized_keys with ssh-copy-id, or name your "
                "key with IdentityFile in ~/.ssh/config)")
    return (f"cannot connect to {where}: {reason} (a wrong password, key passphrase or verification code, "
            "or a key the server does not accept)")


def can_prompt(terminal: bool, env: Mapping[str, str]) -> bool:
    """Whether ssh could ask a person anything: on the ``terminal``, or through an SSH_ASKPASS
    program, which it runs with a display, or always with SSH_ASKPASS_REQUIRE=force (readpass.c)."""
    require = env.get("SSH_ASKPASS_REQUIRE", "")
    if not env.get("SSH_ASKPASS") or require == "never":
        return terminal
    return terminal or require == "force" or bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def build_askpass_script(python: str) -> str:
    """The -p helper's source (ASKPASS_SCRIPT), run by ``python``."""
    return fill_script(ASKPASS_SCRIPT, {"PYTHON": python, "PATTERN": repr(PASSWORD_PROMPT_RE.pattern),
                                        "LOCK": repr(ASKPASS_LOCK), "ENV": repr(PASSWORD_ENV)})


def run_bounded(argv: list[str], env: Mapping[str, str], stdin: bytes, timeout: float,
                keep: Callable[[str], bool], what: str) -> tuple[int, bytes, list[str]]:
    """Run ``argv`` (a multiplexed ssh) with ``stdin``; its exit code, stdout and last stderr lines.

    One deadline for the writes, the reads and the exit, then subprocess.TimeoutExpired (the
    client killed, its pipes closed on our side): the mux client hands its pipes to the master,
    so a remote command that never ends keeps them open after the client is killed, and a read
    until EOF would wait for ever.  More than MAX_REMOTE_OUTPUT bytes on stdout, or a stderr
    line longer than MAX_REMOTE_LINE, is a TunnelError naming ``what``.  Each stderr line goes
    to ``keep`` as it comes; the last REMOTE_STDERR_LINES it returns True for are kept."""
    deadline = time.monotonic() + timeout
    process = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout, partial = bytearray(), bytearray()  # partial: stderr since its last newline
    kept: deque[str] = deque(maxlen=REMOTE_STDERR_LINES)
    pending = memoryview(stdin)

    def line_done(raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if keep(line):
            kept.append(line)

    try:
        with selectors.DefaultSelector() as selector:
            if stdin:
                assert process.stdin is not None
                os.set_blocking(process.stdin.fileno(), False)  # a full pipe must not block us
                selector.register(process.stdin, selectors.EVENT_WRITE)
            selector.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
            selector.register(process.stderr, selectors.EVENT_READ)  # type: ignore[arg-type]
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(argv, timeout)
                for key, _ in selector.select(left):
                    if key.fileobj is process.stdin:
                        try:
                            pending = pending[os.write(key.fd, pending[:65536]):]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:  # ssh exited: its exit code tells why
                            pending = pending[:0]
                        if not pending:
                            selector.unregister(key.fileobj)
                            key.fileobj.close()  # type: ignore[union-attr]
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is process.stdout:
                        stdout += chunk
                        if len(stdout) > MAX_REMOTE_OUTPUT:
                            raise TunnelError(f"{what} sent more than {MAX_REMOTE_OUTPUT // 1048576} MiB of "
                                              "output, which no answer of ours is: stopped reading it")
                    else:
                        # split only when the chunk ends a line: a line sent a byte at a time
                        # costs no more than one sent at once
                        lines: list[bytes] = []
                        if b"\n" in chunk:
                            lines = (bytes(partial) + chunk).split(b"\n")
                            partial = bytearray(lines.pop())
                        else:
                            partial += chunk
                        if len(partial) > MAX_REMOTE_LINE or any(len(raw) > MAX_REMOTE_LINE for raw in lines):
                            raise TunnelError(f"{what} wrote a line longer than {MAX_REMOTE_LINE // 1024} KiB "
                                              "on its standard error, which no message is: stopped reading it")
                        for raw in lines:
                            line_done(raw)
        if partial:
            line_done(bytes(partial))
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(argv, timeout) from None
    finally:
        if process.poll() is None:
            process.kill()  # the mux client only: what it started on the remote ends with the master
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    return process.returncode, bytes(stdout), list(kept)


class Master:
    """The one ssh connection of the run, and the multiplexed commands sent through it."""

    def __init__(self, ssh: str, route: Route, directory: str, env: dict[str, str], verbose: int = 0,
                 outlive_interrupt: bool = False, batch: bool = False) -> None:
        self.ssh, self.route, self.env = ssh, route, env
        self.batch = batch  # BatchMode: no prompt (no terminal, no -p); said when a login is refused
        self.outlive_interrupt = outlive_interrupt  # --stop-server: it stops the server after a Ctrl+C or SIGHUP
        self.config = os.path.join(directory, CONFIG_FILE)
        self.control = os.path.join(directory, CONTROL_SOCKET)
        self.verbose = verbose  # -v: show every ssh command; -vv: ssh -v too, its words shown
        self.process: subprocess.Popen | None = None
        self.stderr: deque[str] = deque(maxlen=40)
        self._reader: threading.Thread | None = None

    def shown(self, argv: list[str]) -> list[str]:
        """``argv`` as run: ``-v`` added at -vv, shown from -v on (never the environment, where -p's password is)."""
        if self.verbose >= 2:
            argv = [argv[0], "-v", *argv[1:]]
        if self.verbose:
            say("Debug", shlex.join(argv))
        return argv

    def reach(self, node: str) -> None:
        """From now on the remote commands and forwards go on to ``node`` (a job's)."""
        self.route = self.route._replace(node=node)

    def echo(self, stderr: bytes) -> None:
        """At -vv, show what a multiplexed ssh said (its ``debug1:`` lines)."""
        for line in stderr.decode(errors="replace").splitlines():
            self.relay(line)

    def relay(self, line: str) -> bool:
        """Show a line of ssh's stderr at -vv, as it comes; False for a debug line (it would push the reason out)."""
        if self.verbose >= 2:
            print(escape_text(line), file=sys.stderr, flush=True)
        return not line.startswith(SSH_DEBUG)

    def open(self, on_start: Callable[[int], None] = lambda pid: None) -> None:
        """Start the master and wait until it has logged in (its control socket exists);
        ``on_start`` gets its pid at once, before the login (which may wait for a person)."""
        if os.path.exists(self.control):
            os.unlink(self.control)  # left by a master that was killed: not a sign of login
        self.spawn(build_master_argv(self.ssh, self.config, self.control, self.route), on_start)
        started, delay = time.monotonic(), POLL_INTERVAL
        while not os.path.exists(self.control):
            if not self.alive():
                self.login_failed()
            time.sleep(delay)
            if time.monotonic() - started > FAST_POLL_SECONDS:
                delay = min(delay * 2, SLOW_POLL_INTERVAL)

    def login_failed(self) -> None:
        """Raise the error for a master that exited before it had logged in, in ssh's words."""
        assert self._reader is not None
        self._reader.join(timeout=1)
        raise TunnelError(build_login_error(self.route.describe(), self.why(), self.batch), EXIT_CONNECT)

    def spawn(self, argv: list[str], on_start: Callable[[int], None], stdin: int = subprocess.DEVNULL,
              stdout: int = subprocess.DEVNULL) -> None:
        """Start the connection's ssh (``argv``), its stderr read by a thread of ours."""
        argv = self.shown(argv)
        # In the terminal's foreground group (ssh asks for passwords only from there), the master gets
        # the user's Ctrl+C too.  ssh keeps SIGINT and SIGHUP ignored when started so (clientloop.c
        # sets handlers only over a disposition not SIG_IGN), and exec keeps that: set around the fork.
        ignored = (signal.SIGINT, signal.SIGHUP) if self.outlive_interrupt and not WINDOWS else ()
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in ignored}
        # Windows: a group of its own, where the console's Ctrl+C never reaches it (the run stops it
        # itself); it still asks on the console, which it shares (not tested: docs/windows.md)
        group = popen_group_options() if WINDOWS else {}
        # Only the reader thread holds the read end of ssh's stderr: a file object on Popen could
        # be closed by another thread under the reader's read, freeing its buffer (CI saw
        # "PyMemoryView_FromBuffer(): info->buf must not be NULL" in the reader at exit).
        read_end, write_end = os.pipe()
        try:
            self.process = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=write_end, env=self.env, **group)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the master (and its jump-host children) hold it now
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        on_start(self.process.pid)
        # Drain stderr all the time: a full pipe would block ssh.
        self._reader = threading.Thread(target=self._read_stderr, args=(read_end,), daemon=True)
        self._reader.start()

    def _read_stderr(self, fd: int) -> None:
        """Keep the last lines ssh wrote, to explain a failure with ssh's own words."""
        with open(fd, "rb") as stream:  # closed here at EOF, and nowhere else
            # a line cut at MAX_REMOTE_LINE bytes: ssh passes on a server's banner, a jump host's words
            for raw in iter(lambda: stream.readline(MAX_REMOTE_LINE), b""):
                self.stderr_line(raw.decode(errors="replace").rstrip())

    def stderr_line(self, line: str) -> None:
        """Take a line of the connection's stderr: kept (a reason) unless a debug line."""
        if self.relay(line):
            self.stderr.append(line)

    @property
    def pid(self) -> int:
        """The master's process id (it is registered, to be found if this run is killed)."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """Whether the master process still runs."""
        return self.process is not None and self.process.poll() is None

    def why(self, last: int = 0, lost: bool = False) -> str:
        """ssh's own words for what went wrong (its last ``last`` lines only, if given); ``lost``: for an
        established connection that ended, without the lines of forwarded connections that failed (a
        --forward port nothing listens on yet), which would read as a jump host's failure."""
        lines = list(self.stderr)[-last:] if last else list(self.stderr)
        if lost:
            lines = [line for line in lines if not CHANNEL_FAILED_RE.match(line)]
        return parse_ssh_error(lines, self.process.poll() if self.process is not None else None, self.route.hosts)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the master to exit; True when it has."""
        # ssh's stderr closes when it exits: joining the reader wakes up at once then.
        # Not Popen.wait(): on Ctrl+C it waits another 0.25 s for the child to die too.
        assert self._reader is not None
        self._reader.join(timeout)
        return not self.alive()

    def run(self, command: str, stdin: str = "", timeout: float = 60.0, forward_agent: bool = False,
            what: str = "", keep: Callable[[str], bool] | None = None) -> subprocess.CompletedProcess:
        """Run ``command`` on the target through the master (no new login), bounded as run_bounded
        says; ``what`` is the stage its errors name ("looking for Jupyter servers on srv"), ``keep``
        sees each stderr line (run_bounded)."""
        options = ["-T", "-A"] if forward_agent else ["-T"]
        if not stdin:
            options.append("-n")  # no stdin: ssh sends none, and the command needs none
        argv = self.shown(build_mux_argv(self.ssh, self.config, self.control, self.route, *options, "--")
                             + [command])
        code, stdout, stderr = run_bounded(argv, self.env, stdin.encode(), timeout, keep or self.relay,
                                           what or f"a command on {self.route.target}")
        return subprocess.CompletedProcess(argv, code, stdout, "\n".join(stderr).encode())

    def request(self, *args: str) -> subprocess.CompletedProcess:
        """Send the master a control request (``-O ...``): its answer is on stderr."""
        done = subprocess.run(self.shown(build_mux_argv(self.ssh, self.config, self.control, self.route, *args)),
                              stdin=subprocess.DEVNULL, capture_output=True, env=self.env, timeout=30)
        self.echo(done.stderr)
        return done

    def forward(self, spec: str) -> tuple[bool, str]:
        """Ask the master to add ``-L spec``; returns (ok, ssh's message)."""
        done = self.request("-O", "forward", "-L", spec)
        return done.returncode == 0, done.stderr.decode(errors="replace").strip()

    def close(self) -> None:
        """Stop the master: SIGTERM makes ssh kill its jump-host children and exit."""
        if self.process is None:
            return
        stop_process(self.process, timeout=5.0)
        # The jump host's ssh (the master's -J child) holds the stderr pipe too, and may outlive it
        # a little (ssh stops it with SIGHUP, ignored by both under --stop-server): the reader ends then.
        if self._reader is not None:
            self._reader.join(timeout=1)


class SharedMaster(Master):
    """The user's own master to the target (their ControlMaster/ControlPath), ridden instead of
    logging in.  It is not our child: it is watched through its socket."""

    def __init__(self, ssh: str, route: Route, directory: str, env: dict[str, str], verbose: int,
                 control: str) -> None:
        super().__init__(ssh, route, directory, env, verbose)
        self.control = control  # the user's socket: never removed, nothing written next to it
        self.forwards: list[str] = []

    def alive(self) -> bool:
        """Whether the master still answers on its socket (it removes it when it exits)."""
        return socket_answers(self.control)

    def why(self, last: int = 0, lost: bool = False) -> str:
        """Why the connection is gone: the user's master stopped (its words are not ours to read)."""
        return f"your ssh master at {self.control} stopped answering"

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the master to go, looking every SHARED_POLL_INTERVAL."""
        deadline = time.monotonic() + timeout
        while self.alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(SHARED_POLL_INTERVAL, left))
        return True

    def forward(self, spec: str) -> tuple[bool, str]:
        """Add ``-L spec`` to the user's master, remembered to be cancelled at close."""
        ok, message = super().forward(spec)
        if ok:
            self.forwards.append(spec)
        return ok, message

    def close(self) -> None:
        """Cancel this run's forwards (``-O cancel``); the master itself is the user's: it stays."""
        for spec in self.forwards:
            self.echo(cancel_forward(self.shown(build_cancel_argv(self.ssh, self.control, spec))))
        self.forwards = []


class StdioMaster(Master):
    """The run's one connection where ssh cannot be a master (Windows' own OpenSSH, --no-control-master):
    one ssh whose remote sh runs the run's commands one at a time, framed on its stdin and stdout
    (build_framed_command), and whose SOCKS port (``-D``) carries the forwards (add_forward).  A command
    that outlives its timeout would hold that shell for ever: the connection is closed, and the run logs
    in again, as after a drop."""

    def __init__(self, ssh: str, route: Route, directory: str, env: dict[str, str], verbose: int = 0,
                 outlive_interrupt: bool = False, batch: bool = False) -> None:
        super().__init__(ssh, route, directory, env, verbose, outlive_interrupt, batch)
        self.socks_port = 0
        self.shell_timeout = STDIO_SHELL_TIMEOUT
        self._stdin = -1  # the write end of ssh's stdin: the remote shell's input
        self._one = threading.Lock()  # one command at a time: there is one shell
        self._changed = threading.Condition()  # stdout came, or ended
        self._out = bytearray()  # the stdout of the command being run (up to MAX_REMOTE_OUTPUT)
        self._nonce = ""  # the command being run's ("" none)
        self._eof = self._overflow = False
        self._keep: Callable[[str], bool] | None = None  # sees the command's stderr lines
        self._kept: deque[str] = deque(maxlen=REMOTE_STDERR_LINES)
        self._err_done = threading.Event()

    def open(self, on_start: Callable[[int], None] = lambda pid: None) -> None:
        """Start the ssh and wait until its remote shell answers (it has logged in)."""
        self.socks_port = free_loopback_port()
        stdin, self._stdin = os.pipe()
        stdout, write_end = os.pipe()
        try:
            self.spawn(build_stdio_argv(self.ssh, self.config, self.socks_port, self.route), on_start,
                       stdin=stdin, stdout=write_end)
        except BaseException:
            os.close(stdout)
            raise
        finally:
            os.close(stdin)
            os.close(write_end)
        # only this thread holds the read end (see spawn)
        threading.Thread(target=self._read_stdout, args=(stdout,), daemon=True).start()
        # ssh listens on its SOCKS port once it has logged in (ssh.c: ssh_init_forwarding): until then a
        # person may be at the prompts, after it the shell must answer in time (a ForceCommand that runs
        # no shell would hold the run for ever)
        started, delay = time.monotonic(), POLL_INTERVAL
        while not tcp_answers(("127.0.0.1", self.socks_port)):
            if not self.alive():
                self.login_failed()
            time.sleep(delay)
            if time.monotonic() - started > FAST_POLL_SECONDS:
                delay = min(delay * 2, SLOW_POLL_INTERVAL)
        try:
            done = self.run("exit 0", timeout=self.shell_timeout, what=f"the shell on {self.route.target}")
        except subprocess.TimeoutExpired:
            raise TunnelError(f"logged in to {self.route.describe()}, but no shell answered within "
                              f"{self.shell_timeout:g} s: does the account run a fixed command? Check that "
                              f"{self.check_command()} prints ok", EXIT_CONNECT) from None
        if done.returncode and self.wait(5.0):  # ssh ended (its stdout may close a moment before it exits)
            self.login_failed()
        if done.returncode:  # logged in, but the account runs no "sh"
            raise TunnelError(f"logged in to {self.route.describe()}, but it runs no shell for us: "
                              f"{parse_ssh_error(done.stderr.decode(errors='replace').splitlines())} "
                              f"(check that {self.check_command()} prints ok)", EXIT_CONNECT)

    def check_command(self) -> str:
        """The user's own command that runs a shell command where the run's shell runs."""
        jumps = ["-J", ",".join(self.route.jumps)] if self.route.jumps else []
        return shlex.join(["ssh", *jumps, self.route.target, "sh -c 'echo ok'"])

    def _read_stdout(self, fd: int) -> None:
        """Keep what the remote shell prints while a command runs (at most MAX_REMOTE_OUTPUT bytes)."""
        with open(fd, "rb", buffering=0) as stream:
            while True:
                chunk = stream.read(65536)
                with self._changed:
                    if not chunk:
                        self._eof = True
                        self._changed.notify_all()
                        return
                    if self._nonce and not self._overflow:  # between commands: nobody's output
                        self._out += chunk
                        self._overflow = len(self._out) > MAX_REMOTE_OUTPUT + 256  # 256: the marks
                    self._changed.notify_all()

    def stderr_line(self, line: str) -> None:
        """A line of stderr: the running command's (until its end line), else the connection's."""
        keep, nonce = self._keep, self._nonce
        if keep is not None and line == f"R{nonce}":
            self._keep = None
            self._err_done.set()
        elif keep is not None and not SSH_OWN_RE.match(line):
            if line and keep(line):
                self._kept.append(line)
                self.stderr.append(line)  # the connection's reason too, if ssh dies now
        else:
            super().stderr_line(line)

    def _write(self, data: bytes) -> None:
        """Send ``data`` to the remote shell (a thread: a shell that stops reading must not hold us)."""
        view = memoryview(data)
        with contextlib.suppress(OSError):  # ssh has gone: run() finds it dead
            while view:
                view = view[os.write(self._stdin, view[:65536]):]

    def run(self, command: str, stdin: str = "", timeout: float | None = 60.0, forward_agent: bool = False,
            what: str = "", keep: Callable[[str], bool] | None = None) -> subprocess.CompletedProcess:
        """Run ``command`` in the connection's remote shell, as Master.run says (the agent, if the route
        needs it, is the connection's: ``forward_agent`` asks nothing more); ``timeout`` None: no limit."""
        what = what or f"a command on {self.route.target}"
        argv = [STDIO_SHELL, "-c", command]  # what the CompletedProcess says ran
        if self.verbose:
            say("Debug", f"on {self.route.target}: {command}" + (" (a script on stdin)" if stdin else ""))
        with self._one:
            nonce = os.urandom(16).hex()
            self._kept.clear()
            self._err_done.clear()
            with self._changed:
                self._out.clear()
                self._overflow = False
                self._nonce, self._keep = nonce, keep or self.relay
            threading.Thread(target=self._write, args=(build_framed_command(command, stdin, nonce),),
                             daemon=True).start()
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                with self._changed:
                    while True:
                        found = parse_framed_output(self._out, nonce)
                        left = None if deadline is None else deadline - time.monotonic()
                        if found or self._overflow or self._eof or not self.alive() or (left is not None and left <= 0):
                            break
                        self._changed.wait(1.0 if left is None else min(left, 1.0))
                if self._overflow:
                    self.close()  # its shell is busy sending more: the connection is spent
                    raise TunnelError(f"{what} sent more than {MAX_REMOTE_OUTPUT // 1048576} MiB of output, "
                                      "which no answer of ours is: stopped reading it")
                if found is None and not self._eof and self.alive():  # the shell is held: spent
                    self.close()
                    raise subprocess.TimeoutExpired(argv, timeout or 0)
                if found is not None:
                    self._err_done.wait(STDIO_ERROR_WAIT if left is None else max(0.0, min(left, STDIO_ERROR_WAIT)))
            finally:
                with self._changed:
                    self._nonce, self._keep = "", None
        stdout, code = found if found is not None else (b"", 255)  # 255: ssh's own failure, as a mux client's
        return subprocess.CompletedProcess(argv, code, stdout, "\n".join(self._kept).encode())

    def close(self) -> None:
        """End the remote shell's input (it exits), then stop ssh as Master.close does."""
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1
        super().close()


def tcp_answers(address: tuple[str, int], timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection at ``address`` now (nothing is sent)."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now, for ssh's ``-D`` (the kernel's pick; a program that takes it
    before ssh does fails that login: ExitOnForwardFailure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_windows_ssh(version: str) -> bool:
    """Whether ``ssh -V``'s words are those of Windows' own OpenSSH (no ControlMaster)."""
    return version.startswith(NO_MUX_VERSION)


def find_shared_master(ssh: str, route: Route, directory: str, env: dict[str, str],
                       verbose: int = 0) -> SharedMaster | None:
    """The user's own live master to the target, as the config in force names it; None when
    there is none.  ``ssh -G`` (one exec, ~8 ms next to a login of 0.2 s to seconds) is the
    truth about the config; ``-O check`` runs only when something listens at the ControlPath."""
    shared = SharedMaster(ssh, route, directory, env, verbose, control="")  # control: once found
    done = subprocess.run(shared.shown(build_settings_argv(ssh, shared.config, route)), stdin=subprocess.DEVNULL,
                          capture_output=True, env=env, timeout=30)
    control = shared_control_path(parse_ssh_settings(done.stdout.decode(errors="replace")),
                                  bool(route.node or route.scheduled))
    if done.returncode != 0 or not control or not mux_hello(control):
        return None
    # -O check: whether it takes requests.  A socket that is no working master makes ssh fall back
    # to a login and exit 0 (OpenSSH 9.2): build_mux_argv's options fail that; only "Master running" counts.
    shared.control = control
    check = shared.request("-O", "check")
    return shared if check.returncode == 0 and b"Master running" in check.stderr else None


def mux_hello(path: str, timeout: float = MUX_HELLO_TIMEOUT) -> bool:
    """Whether an ssh master listens at ``path``: it greets every client first (mux.c sends
    MUX_MSG_HELLO as it accepts).  A socket that accepts and stays silent would hang ssh's
    own ``-O check`` (it waits for that hello without a time limit)."""
    greeting = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
            while len(greeting) < 8:
                chunk = probe.recv(8 - len(greeting))
                if not chunk:
                    return False
                greeting += chunk
        except OSError:  # refused, gone, or silent (socket.timeout)
            return False
    length, kind = int.from_bytes(greeting[:4], "big"), int.from_bytes(greeting[4:], "big")
    return kind == MUX_MSG_HELLO and length >= 8


def start_agent(directory: str, registration: Registration) -> tuple[subprocess.Popen, str]:
    """Start a private ssh-agent as our child (``-D``: killed at exit), registered at once (found if we are killed)."""
    agent = which_or_fail("ssh-agent", "needed to start an agent", TunnelError)
    sock = os.path.join(directory, AGENT_SOCKET)
    process = subprocess.Popen([agent, "-D", "-a", sock], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    registration.update(agent_pid=process.pid)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise TunnelError("ssh-agent did not start", EXIT_ERROR)
        time.sleep(POLL_INTERVAL / 5)
    return process, sock


def popen_group_options() -> dict:
    """Popen's options for a child of its own group, so that the console's Ctrl+C is ours to
    handle (and our exit is not its): a new session on POSIX; on Windows, where Popen ignores
    start_new_session, a new process group (a CTRL_BREAK_EVENT reaches it alone, a Ctrl+C never)."""
    if WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def stop_process(process: subprocess.Popen, timeout: float = 3.0) -> None:
    """Terminate a child and reap it, killing it if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_password() -> str:
    """The SSH password, asked once without echo (or one line of stdin when not a TTY)."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("SSH password: ")
    return sys.stdin.readline().rstrip("\n")


def has_terminal() -> bool:
    """Whether ssh could ask for a password or 2FA code on a terminal: the one it opens itself,
    whatever stdin is (Windows: the console, which it reads with _getwch even from a pipe)."""
    try:
        os.close(os.open(TERMINAL, os.O_RDWR))
    except OSError:
        return False
    return True


def save_terminal() -> tuple[int, list] | None:
    """The terminal's settings now (an open /dev/tty and its termios), to put back at exit;
    None without a terminal.  termios is imported here: Windows has none."""
    try:
        import termios

        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except (ImportError, OSError):
        return None
    try:
        return fd, termios.tcgetattr(fd)
    except termios.error:
        os.close(fd)
        return None


def prompt_left_open() -> bool:
    """Whether the terminal's echo is off: a password prompt (readpassphrase) left its line open."""
    saved = save_terminal()
    if saved is None:
        return False
    import termios  # here: Windows has none (save_terminal found a terminal, so it imports)

    os.close(saved[0])
    return not saved[1][3] & termios.ECHO


def restore_terminal(saved: tuple[int, list] | None) -> None:
    """Put the terminal's settings back as save_terminal found them, if anything changed them
    (a prompt's helper killed with echo off); closes the terminal."""
    if saved is None:
        return
    import termios

    fd, settings = saved
    try:
        if termios.tcgetattr(fd) != settings:
            # a run in the background would be stopped (SIGTTOU) for this; ignored, it is done (POSIX)
            previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                termios.tcsetattr(fd, termios.TCSADRAIN, settings)
            finally:
                signal.signal(signal.SIGTTOU, previous)
    except termios.error:
        pass  # the terminal has gone (closed window): nothing to put back
    finally:
        os.close(fd)


def wait_for_prompts(directory: str, timeout: float = 2.0) -> bool:
    """Wait up to ``timeout`` s until no -p helper of the run reads the terminal (each holds the
    lock ASKPASS_LOCK while it asks, and gives up within 0.2 s of its ssh's end); True when none does."""
    path = os.path.join(directory, ASKPASS_LOCK)
    if not os.path.exists(path):
        return True
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
    finally:
        os.close(fd)


def write_askpass(directory: str, password: str) -> dict[str, str]:
    """Write the SSH_ASKPASS helper into the run's 0700 ``directory``; the environment that makes ssh use it."""
    askpass, program = os.path.join(directory, ASKPASS_FILE), os.path.join(directory, ASKPASS_PROGRAM)
    with open(os.open(program, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(build_askpass_script(sys.executable))
    # ssh execs SSH_ASKPASS: a "#!PYTHON" line would end at a space in the path (a venv in "My Project")
    # and exceed older kernels' 127 bytes; sh quotes it, and exec keeps ssh the helper's parent (it watches it)
    with open(os.open(askpass, os.O_WRONLY | os.O_CREAT, 0o700), "w") as f:
        f.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -IS {shlex.quote(program)} "$@"\n')
    # OpenSSH >= 8.4 sends every prompt of every hop to SSH_ASKPASS with "force"; sshpass
    # would answer only the first hop's prompt.  The password stays in the environment.
    return {"SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force", PASSWORD_ENV: password}


def backoff_delays(first: float = 1.0, cap: float = MAX_BACKOFF) -> Iterator[float]:
    """Waits before reconnection attempts: 0 (at once), then 1, 2, 4 ... capped at ``cap``."""
    yield 0.0
    yield from jupyter_node.doubling_delays(first, cap)


class Connection:
    """The run's one login per hop: its ssh config file, the agent and askpass helper it may need, the
    master of the moment (the user's own, or the run's: opened again after a drop), the logins refused."""

    def __init__(self, settings: Settings, ssh: str, route: Route, password: str | None = None) -> None:
        self.settings, self.ssh, self.route, self.password = settings, ssh, route, password
        self.env = dict(os.environ)
        self.directory = ""  # the run's private directory (set_up)
        self.registration: Registration | None = None
        self.agent: subprocess.Popen | None = None
        self.master: Master | None = None
        # ride the user's own master at the first login only (never with -p or -a: they ask for the run's own)
        self.may_share = not (settings.new_login or settings.new_agent or password is not None)
        # no terminal, no -p: ssh would send empty answers (failed attempts at the server): BatchMode
        self.batch = password is None and not can_prompt(has_terminal(), self.env)
        self.refused_logins = 0  # logins of this run the server refused (MAX_REFUSED_LOGINS)
        self.last_refusal = ""  # ssh's words for the last one
        # Windows: an unset SSH_AUTH_SOCK means the ssh-agent service's pipe (\\.\pipe\openssh-ssh-agent),
        # which ssh uses by itself; an agent of the run's own cannot listen there (-a is refused)
        self.own_agent = settings.new_agent or not (self.env.get("SSH_AUTH_SOCK") or WINDOWS)
        # one ssh with a shell and a SOCKS port instead of a master (StdioMaster): asked for, or on
        # Windows, whose own ssh cannot be a master; else chosen at the first login (choose_mode)
        self.stdio = settings.no_control_master or WINDOWS
        self.version_probe: subprocess.Popen | None = None  # ssh -V, while the run sets up (choose_mode)

    def set_up(self, directory: str, registration: Registration) -> None:
        """Write what the logins need into the run's private ``directory``: askpass, the config."""
        self.directory, self.registration = directory, registration
        if not self.stdio:  # started now, read at the first login: its ~5-30 ms overlap the set-up
            self.version_probe = subprocess.Popen([self.ssh, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, env=self.env)
        if self.password is not None:
            self.env.update(write_askpass(directory, self.password))
        self.write_config()

    def write_config(self) -> None:
        """(Re)write the run's ssh config file (AddKeysToAgent only for an agent of the run's own,
        written before it is started: until then no ssh of the run authenticates)."""
        text = build_ssh_config(self.settings.ssh_config, self.settings.ssh_options, add_keys_to_agent=self.own_agent,
                                password=self.password is not None, keepalive=self.settings.keepalive,
                                batch=self.batch, first_hop=self.route.hosts[0])
        path = os.path.join(self.directory, CONFIG_FILE)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        if self.settings.verbose:  # it holds no secret: the password travels in the environment
            for line in [f"ssh config file {path}:", *(f"  {line}" for line in text.splitlines())]:
                say("Debug", line)

    def choose_mode(self) -> None:
        """At the first login: without a master when ``ssh -V`` says this ssh cannot be one."""
        probe, self.version_probe = self.version_probe, None
        if probe is None:
            return
        version = probe.communicate(timeout=30)[0].decode(errors="replace").strip()
        if is_windows_ssh(version):
            self.no_master(f"{escape_text(version.split(',')[0])} cannot share a connection (no ControlMaster)")

    def no_master(self, why: str) -> None:
        """From now on, log in without a master (StdioMaster), saying ``why``."""
        self.stdio = True
        say("Info", f"{why}: one ssh carries this run's commands and forwards instead (--no-control-master).")

    def open(self) -> float | None:
        """Ride the user's open master, or log in (the run's one login): its seconds, None when riding."""
        self.choose_mode()
        if self.may_share and not self.stdio:
            self.may_share = False
            self.master = find_shared_master(self.ssh, self.route, self.directory, self.env, self.settings.verbose)
            if self.master is not None:
                say("Info", f"Using your open connection to {self.route.target} (no login).")
                return None
        assert self.registration is not None
        if self.agent is None and self.own_agent:  # riding the user's master needs none
            self.agent, self.env["SSH_AUTH_SOCK"] = start_agent(self.directory, self.registration)
            self.env.pop("SSH_AGENT_PID", None)
        kind = StdioMaster if self.stdio else Master
        self.master = master = kind(self.ssh, self.route, self.directory, self.env, self.settings.verbose,
                                    outlive_interrupt=self.settings.stop_server, batch=self.batch)
        say("Info", f"Connecting to {self.route.describe()}...")
        started = time.monotonic()
        # registered before the login: a run killed while ssh waits (a slow host, a 2FA prompt)
        # leaves a master that the next run or jupyter-tunnel-shutdown must find
        try:
            master.open(on_start=lambda pid: self.registration.update(state=CONNECTING, master_pid=pid))
        except TunnelError as error:
            if error.code == EXIT_CONNECT and is_login_refused(master.why()):
                self.refused_logins += 1
                self.last_refusal = master.why()
            failure = "\n".join(master.stderr)
            if self.stdio or not any(words in failure for words in NO_MUX_WORDS):
                raise
            self.close_master()  # this ssh cannot be a master after all: the login once more, without
            self.no_master(f"ssh could not become a master ({master.why()})")
            return self.open()
        return time.monotonic() - started

    def reach(self, node: str) -> None:
        """From now on the remote commands and forwards go on to ``node`` (a job's)."""
        self.route = self.route._replace(node=node)
        if self.master is not None:
            self.master.reach(node)

    def refusal_error(self, refused_before: int) -> TunnelError | None:
        """After a failed reconnection: the error that ends the run when the server refused the login
        again (``refused_before``: the count before), else None.  Each refusal is a failed attempt at the
        server (a rate limit refuses again): it ends the run at once in batch mode, else after MAX_REFUSED_LOGINS."""
        if self.refused_logins <= refused_before:
            return None
        if self.batch:
            return TunnelError(build_login_error(self.route.describe(), self.last_refusal, batch=True,
                                                 reconnecting=True), EXIT_LOST)
        if self.refused_logins >= MAX_REFUSED_LOGINS:
            return TunnelError(f"the login to {self.route.describe()} was refused {self.refused_logins} times in "
                               f"this run ({self.last_refusal}): not trying again, as each refusal counts against "
                               "your account, which may lock. Check your password, key or verification code, and "
                               "run jupyter-tunnel again", EXIT_LOST)
        return None

    def retries(self) -> Iterator[int]:
        """Attempts at logging in again, with backoff: the refused logins so far, for each.  Every
        failed attempt counts against --max-retries, a refused login also against the run's
        MAX_REFUSED_LOGINS (refusal_error); an unreachable network costs the account nothing."""
        for attempt, delay in enumerate(backoff_delays()):
            if attempt >= self.settings.max_retries:
                raise TunnelError(f"could not reconnect to {self.route.target} after "
                                  f"{self.settings.max_retries} attempts", EXIT_LOST)
            if delay:
                say("Info", f"Retrying in {delay:g} s...")
                time.sleep(delay)
            yield self.refused_logins

    def reset(self) -> None:
        """Before logging in again: the dead master gone, its prompts ended, the config anew."""
        self.close_master()
        wait_for_prompts(self.directory)  # a helper of the dead login must not ask beside the new one
        self.batch = self.password is None and not can_prompt(has_terminal(), self.env)
        self.write_config()

    def end_prompts(self) -> None:
        """Interrupted while logging in: let the login's ssh and the -p helper end their prompt's
        line (each ends it when interrupted at a prompt) before the run writes its own."""
        if self.master is not None and self.master.process is not None:
            self.master.wait(1.0)
        if self.directory:
            wait_for_prompts(self.directory, 1.0)
        if prompt_left_open():  # an ssh still at its prompt (it missed the Ctrl+C), or killed there
            print(file=sys.stderr, flush=True)

    def close_master(self) -> None:
        """Stop the master of the moment (its forward goes with it)."""
        if self.master is not None:
            self.master.close()
            self.master = None

    def close(self) -> None:
        """Stop the master, what reads the terminal, and the agent."""
        if self.version_probe is not None:  # never read: the run ended before its login
            stop_process(self.version_probe)
            self.version_probe.stdout.close()  # type: ignore[union-attr]
        self.close_master()
        if self.directory:
            wait_for_prompts(self.directory)  # what the run started to read the terminal ends with it
        if self.agent is not None:
            stop_process(self.agent)


def build_connected_line(seconds: float, could_prompt: bool) -> str:
    """``Connected in 0.62 s``; a login long enough to have waited for a person says that
    their time at the prompts is in it (ssh asks on the terminal itself: the run cannot tell)."""
    if could_prompt and seconds >= PROMPT_SECONDS:
        return f"Connected in {seconds:.2f} s, your time at the prompts included"
    return f"Connected in {seconds:.2f} s"


# -------------------------------------- 2. the cluster job (--submit, -n auto, --job)


# The node is not known before the login: jupyter_node.py, which holds the scheduler knowledge,
# runs on the head through the master (no login, nothing installed) and answers in JSON (--json).
AUTO_NODE = "auto"  # -n auto: the node of a running Jupyter job of the user
DEFAULT_PYTHON = "python3"  # --python: the head's interpreter that runs jupyter_node.py
JOB_STATES = ("ready", "running", "pending", "failed")  # jupyter_node.py --json's words
DEFAULT_WARN_BEFORE = 10.0  # minutes: the first warning before the job's time limit
LAST_WARNING = 2.0  # minutes: the last one
MAX_WARN_BEFORE = 1440.0  # --warn-before: a day
NODE_GRACE = 60.0  # s beyond jupyter_node.py's own -w (it then says what it knows): a hung scheduler
# The program for the head's "PY -" on stdin: no argument on the remote command line, which the
# login shell (csh, fish...) parses again; the arguments (a --pre may hold anything) are Python
# literals.  It parses on every Python, 2.7 too (ascii(), no f-string): a python3 too old gets a
# clear answer.  The source compiles as a module of its own: it may start with __future__ imports.
NODE_BOOTSTRAP = """import sys
if sys.version_info < (3, 6):
    sys.stderr.write("@MARK@ python %d.%d\\n" % tuple(sys.version_info[:2]))
    sys.exit(3)
sys.argv[1:] = @ARGS@
exec(compile(@SOURCE@, "jupyter_node.py", "exec"))
"""
SUBMITTING = "submitting the job"  # describe_node_args's words for --submit
SHELL_NOT_FOUND = (126, 127)  # the remote shell's exit codes for a program it cannot run
JSON_START_RE = re.compile(r"^\{", re.MULTILINE)  # where jupyter_node.py's JSON answer may start
JSON_SPACE = " \t\n\r"  # what JSON allows around a value (str.strip's default takes more)
# Line starts that parse_node_json tries, the last ones: its answer is one line, printed
# last; a bound, so that 20,000 lines of "{" cost 20,000 x nothing, not 20,000 decodes.
MAX_JSON_STARTS = 16


class ClusterOptions(NamedTuple):
    """What --submit, -n auto and --job ask for (jupyter-node's options where they overlap)."""

    submit: bool = False
    node: str = ""  # --submit -n NODE: the node to ask for
    job: str = ""  # --job ID
    new: bool = False  # --new: submit even when a Jupyter job of the user runs
    app: str = "lab"
    pre: tuple[str, ...] = ()
    conda_env: str = ""
    queue: str = ""
    resources: tuple[str, ...] = ()
    scheduler: str = ""  # "": jupyter-node finds it on the head's PATH
    python: str = DEFAULT_PYTHON


class ClusterJob(NamedTuple):
    """A Jupyter job, as jupyter_node.py --json describes it (checked by parse_job)."""

    scheduler: str
    job: str
    name: str = ""
    state: str = "running"
    node: str = ""
    port: int | None = None
    reason: str = ""
    time_left: int | None = None  # seconds when it was asked; None: no limit, or unknown
    existing: bool = False  # --submit found a job running already
    error: str = ""  # why the job failed, in the scheduler's words

    def describe(self, first: bool = False) -> str:
        """``job 4711 (jp-lab)`` for messages (``Job ...`` ``first`` in a sentence)."""
        word = "Job" if first else "job"
        return f"{word} {self.job} ({self.name})" if self.name else f"{word} {self.job}"

    @property
    def cancel_command(self) -> str:
        """What stops the job, run on the head: ``qdel 4711``, ``scancel 81234``."""
        return f"{CANCEL_COMMANDS[self.scheduler]} {self.job}"


def build_node_program(args: Sequence[str], source: str) -> str:
    """The program for ``PY -`` on the head: jupyter_node.py's ``source`` run with ``args``."""
    return fill_script(NODE_BOOTSTRAP, {"MARK": MARK, "ARGS": ascii(list(args)), "SOURCE": ascii(source)})


def build_node_command(python: str) -> str:
    """The remote command that runs the head's ``python`` on its program, sent on stdin."""
    return f"{shlex.quote(python)} -"


def build_submit_args(options: ClusterOptions, timeout: float) -> list[str]:
    """jupyter_node.py's arguments for --submit: its own options, --json, and -w from --timeout."""
    args = ["--json", "-t", options.app, "-w", f"{math.ceil(timeout)}s"]
    if not options.new:
        args.append("--reuse")  # attach to a running job rather than submit a second one
    # "--option=value": a value starting with "-" stays a value
    for flag, value in (("--queue", options.queue), ("--node", options.node), ("--conda-env", options.conda_env),
                        ("--scheduler", options.scheduler)):
        if value:
            args.append(f"{flag}={value}")
    args += [f"--pre={value}" for value in options.pre]
    return args + [f"--resource={value}" for value in options.resources]


def build_jobs_args(options: ClusterOptions, job: str = "") -> list[str]:
    """jupyter_node.py's arguments that list the user's Jupyter jobs (or just ``job``)."""
    args = ["--json", *(["--job", job] if job else ["--jobs"])]
    return args + (["--scheduler", options.scheduler] if options.scheduler else [])


def build_cancel_args(job: ClusterJob) -> list[str]:
    """jupyter_node.py's arguments that cancel ``job`` (--stop-server)."""
    return ["--json", "--cancel", job.job, "--scheduler", job.scheduler]


def parse_node_json(stdout: str) -> dict | None:
    """The one JSON object jupyter_node.py --json printed, or None.

    The last object that starts a line and ends the output: a chatty login shell may print
    before it.  Linear: the text is decoded from at most MAX_JSON_STARTS line starts, the
    last ones (jupyter_node.py prints its object on one line, last), each decode stopping
    at its first error, never from every "{" line to the end.
    """
    text = "\n".join(stdout.splitlines())
    decoder = json.JSONDecoder()
    starts = [match.start() for match in JSON_START_RE.finditer(text)][-MAX_JSON_STARTS:]
    for start in reversed(starts):
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if text[end:].strip(JSON_SPACE):
            continue  # something follows it: not the last object (one that holds it may be)
        return value if isinstance(value, dict) else None
    return None


def _text(info: Mapping, key: str) -> str:
    """``info[key]`` as text ("" for null or missing); a ValueError for anything else."""
    value = info.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"its {key} {_short(value)} is not text")
    return value or ""


def parse_job(info: Mapping, scheduler: str = "") -> ClusterJob:
    """A ClusterJob from one object of jupyter_node.py's JSON; a ValueError that says which
    field is wrong.  The job id and node end up in ssh's ``-L``, in messages and in the
    qdel/scancel command suggested: each is checked, never used as it comes."""
    if not isinstance(info, Mapping):
        raise ValueError("a job is not a JSON object")
    scheduler = scheduler or _text(info, "scheduler")
    if scheduler not in CANCEL_COMMANDS:
        raise ValueError(f"its scheduler {_short(scheduler)} is neither sge nor slurm")
    job, node, state = _text(info, "job"), _text(info, "node"), _text(info, "state")
    if job and not JOB_ID_RE.fullmatch(job):
        raise ValueError(f"its job id {_short(job)} is not one")
    if node and not HOST_NAME_RE.fullmatch(node):
        raise ValueError(f"its node {_short(node)} is not a host name")
    if state not in JOB_STATES:
        raise ValueError(f"its state {_short(state)} is none of {', '.join(JOB_STATES)}")
    port = None if info.get("port") is None else _whole_number(dict(info), "port", 1, 65535)
    time_left = None if info.get("time_left") is None else _whole_number(dict(info), "time_left", 0, 2**40)
    return ClusterJob(scheduler, job, _text(info, "name"), state, node, port, _text(info, "reason"), time_left,
                      info.get("existing") is True, _text(info, "error"))


def parse_jobs(info: Mapping) -> list[ClusterJob]:
    """The jobs of jupyter_node.py ``--json --jobs``; a ValueError when the answer is not one."""
    jobs = info.get("jobs")
    if not isinstance(jobs, list):
        raise ValueError("it holds no list of jobs")
    scheduler = _text(info, "scheduler")
    return [parse_job(job, scheduler) for job in jobs]


def parse_python_version(stderr_lines: Iterable[str]) -> str:
    """The version the bootstrap reports for a python too old to run jupyter_node.py ("" if none)."""
    prefix = f"{MARK} python "
    return next((line[len(prefix):].strip() for line in stderr_lines if line.startswith(prefix)), "")


def node_tool_failure(python: str, head: str, returncode: int, stderr_lines: Sequence[str],
                      info: dict | None, action: str = SUBMITTING) -> TunnelError | None:
    """Why running jupyter_node.py on the head failed (None when it answered); from its exit
    code, its stderr and its JSON answer, if any; ``action`` is what it was asked to do
    (describe_node_args), for the message."""
    old = parse_python_version(stderr_lines)
    said = [line.strip() for line in stderr_lines if line.strip() and not line.startswith((MARK, *SSH_NOISE))]
    words = "; ".join(said[-3:]) or f"exit code {returncode}"
    if old:
        return TunnelError(f"{python} on {head} is Python {old}, and jupyter_node.py needs 3.6 or newer: "
                           "name another interpreter with --python PROG", EXIT_MISSING)
    if info is None and returncode in SHELL_NOT_FOUND:
        return TunnelError(f"{python} not found on {head}, where it runs jupyter_node.py (nothing needs to be "
                           f"installed there but Python >= 3.6): name it with --python PROG ({words})",
                           EXIT_MISSING)
    if info is None and returncode == 255:
        return TunnelError(f"cannot run jupyter_node.py on {head}: {parse_ssh_error(stderr_lines)}", EXIT_ERROR)
    if info is None:
        return TunnelError(f"jupyter_node.py on {head} gave no answer ({words})", EXIT_ERROR)
    if info.get("error") or returncode != 0:
        error = info.get("error") if isinstance(info.get("error"), str) else ""
        tail = format_log_tail(str(info.get("log_tail") or "").splitlines())
        log = f" (log on {head}: {info['log']})" if isinstance(info.get("log"), str) and info.get("log") else ""
        # only a submission starts anything: listing, finding or cancelling fails as itself
        failed = f"the Jupyter job could not start on {head}" if action == SUBMITTING else f"{action} on {head} failed"
        code = EXIT_MISSING if returncode == EXIT_MISSING else EXIT_START if action == SUBMITTING else EXIT_ERROR
        return TunnelError(f"{failed}: {error or words}{log}{tail}", code)
    return None


def build_warning_times(time_left: float | None, warn_before: float) -> list[tuple[float, float]]:
    """When to warn that the job ends: ``(seconds from now, seconds left then)``, soonest first.

    At ``warn_before`` minutes and at LAST_WARNING minutes before the end; a mark already
    passed gives one warning at once, with the time really left.
    """
    if time_left is None or time_left <= 0:
        return []
    marks = sorted({warn_before * 60, LAST_WARNING * 60}, reverse=True)
    times = [(0.0, float(time_left))] if any(mark >= time_left for mark in marks) else []
    return times + [(time_left - mark, mark) for mark in marks if mark < time_left]


def build_job_warning(job: ClusterJob, seconds_left: float) -> str:
    """The line a user cannot miss, before the job's time limit."""
    # rounded up: a warning given on time at its mark (59.98 s left) says the mark (1 min)
    return f"job {job.job} ends in {format_time_left(math.ceil(seconds_left))} (time limit): save your notebooks."


def format_job_table(jobs: Sequence[ClusterJob], servers: Mapping[str, Sequence[Server] | None]) -> str:
    """The numbered table of ``--list -n auto`` (the numbers are what ``--pick`` takes):
    each job, and the servers found on its node (None: the node could not be asked)."""
    rows = [("#", "JOB", "NAME", "STATE", "NODE", "TIME LEFT", "SERVERS")]
    for number, job in enumerate(jobs, 1):
        found = servers.get(job.node, ())
        ports = "?" if found is None else \
            ", ".join(f"{s.sock or s.port} {s.app}" for s in found) or ("-" if job.node else job.reason or "-")
        rows.append((str(number), job.job, job.name or "?", job.state, job.node or "-",
                     format_time_left(job.time_left), ports))
    return format_table(rows)


def job_info(number: int, job: ClusterJob, servers: Sequence[Server] | None) -> dict:
    """A job as a JSON object for ``--list -n auto --json``, with its node's servers (None: not asked)."""
    return {"number": number, "job": job.job, "scheduler": job.scheduler, "name": job.name, "state": job.state,
            "node": job.node, "time_left": job.time_left, "reason": job.reason,
            "servers": None if servers is None else [server_info(n, s) for n, s in enumerate(servers, 1)]}


def choose_job(jobs: Sequence[ClusterJob], head: str, pick: int | None = None) -> ClusterJob:
    """The one running job to attach to: the only one, ``--pick N``, or asked on a terminal."""
    running = [job for job in jobs if job.state in ("running", "ready") and job.node]
    if not running:
        if jobs:
            job = jobs[0]
            why = f" ({job.reason})" if job.reason else ""
            raise TunnelError(f"your Jupyter {job.describe()} is still {job.state}{why} on {head}'s cluster: "
                              "attach once it runs, or cancel it with " + job.cancel_command, EXIT_NO_SERVER)
        raise TunnelError(f"no Jupyter job of yours runs on {head}'s cluster: start one with --submit",
                          EXIT_NO_SERVER)
    if pick is not None:
        # numbered as --list -n auto numbers them: every job listed, pending ones too
        if not 1 <= pick <= len(jobs):
            raise TunnelError(f"there is no job number {pick}: {len(jobs)} Jupyter jobs of yours are on "
                              f"{head}'s cluster (see --list -n auto)", EXIT_NO_SERVER)
        job = jobs[pick - 1]
        if job not in running:
            raise TunnelError(f"job number {pick}, {job.describe()}, is {job.state}, not running yet "
                              "(see --list -n auto)", EXIT_NO_SERVER)
        return job
    if len(running) == 1:
        return running[0]
    say("Info", f"Jupyter jobs of yours running on {head}'s cluster:")
    print(format_job_table(running, {}), file=sys.stderr)
    if sys.stdin.isatty() and sys.stderr.isatty():
        return ask_server(running, "job")
    raise TunnelError(f"{len(running)} Jupyter jobs of yours run on {head}'s cluster: choose one with "
                      "--job ID or --pick N", EXIT_NO_SERVER)


@functools.lru_cache(maxsize=None)
def node_source() -> str:
    """jupyter_node.py's own source, sent to the head's python (read once: a job past its
    limit is asked about at every --check-interval)."""
    with open(jupyter_node.__file__, encoding="utf-8") as f:
        return f.read()


def describe_node_args(args: Sequence[str]) -> str:
    """What jupyter_node.py is asked to do, for messages: ``submitting the job``."""
    for flag, words in (("--cancel", "cancelling job"), ("--job", "looking for job")):
        if flag in args[:-1]:
            return f"{words} {args[list(args).index(flag) + 1]}"
    return "listing your jobs" if "--jobs" in args else SUBMITTING


def run_node_tool(master: Master, python: str, args: Sequence[str], timeout: float,
                  relay: bool = True) -> tuple[dict | None, int, list[str]]:
    """Run jupyter_node.py with ``args`` on the head through the master; its JSON answer (None
    when it gave none), exit code and last stderr lines.  Its ``Info:``/``Warning:`` lines are
    shown as they come (escaped: they quote the scheduler) when ``relay``.  Bounded in time
    and size as every remote command (run_bounded): a TunnelError that names the stage."""
    head = master.route.target
    what = f"jupyter_node.py on {head} ({describe_node_args(args)})"
    if master.verbose:
        say("Debug", f"on {head}: {shlex.join([python, '-', *args])} (jupyter_node.py on stdin)")

    def keep(line: str) -> bool:
        kind, sep, text = line.partition(": ")
        if relay and sep and kind in ("Info", "Warning"):
            say(kind, text)
            return False
        if line.startswith(SSH_DEBUG):
            master.echo(line.encode())
            return False
        return True

    try:
        done = master.run(build_node_command(python), build_node_program(args, node_source()), timeout,
                          what=what, keep=keep)
    except subprocess.TimeoutExpired:  # a scheduler command that hangs, a python that never answers
        raise TunnelError(f"{what} did not answer within {timeout:g} s", EXIT_ERROR) from None
    lines = done.stderr.decode(errors="replace").splitlines()
    return parse_node_json(done.stdout.decode(errors="replace")), done.returncode, lines


def ask_node_tool(master: Master, python: str, args: Sequence[str], timeout: float, relay: bool = True) -> dict:
    """jupyter_node.py's JSON answer; a TunnelError when it failed or gave none."""
    info, code, lines = run_node_tool(master, python, args, timeout, relay)
    error = node_tool_failure(python, master.route.target, code, lines, info, describe_node_args(args))
    if error is not None:
        raise error
    assert info is not None
    return info


def _checked(head: str, parse: Callable[[dict], T], info: dict) -> T:
    """``parse(info)``, a ValueError becoming a TunnelError that names the head."""
    try:
        return parse(info)
    except ValueError as error:
        raise TunnelError(f"jupyter_node.py on {head} gave an answer that is not valid: {error}", EXIT_ERROR)


def submit_job(master: Master, options: ClusterOptions, timeout: float) -> ClusterJob:
    """--submit: submit the server (or find the user's running one), wait until it is ready."""
    head = master.route.target
    what = f"jupyter {options.app}" + (f" on node {options.node}" if options.node else "")
    say("Info", f"Submitting {what} on {head}" + ("..." if options.new else
                                                     " (unless a Jupyter job of yours runs already)..."))
    try:
        info = ask_node_tool(master, options.python, build_submit_args(options, timeout), timeout + NODE_GRACE)
    except KeyboardInterrupt:
        say("Info", "Stopped waiting. A job already submitted stays in the queue: --list -n auto shows it, "
                    "-n auto attaches to it once it runs.")
        raise
    return _checked(head, parse_job, info)


def find_jobs(master: Master, options: ClusterOptions, timeout: float = 120.0,
              relay: bool = True) -> list[ClusterJob]:
    """-n auto (and --job ID): the user's Jupyter jobs, pending or running (or just that job)."""
    info = ask_node_tool(master, options.python, build_jobs_args(options, options.job), timeout, relay)
    return _checked(master.route.target, parse_jobs, info)


def check_ready(job: ClusterJob, route: Route, timeout: float) -> None:
    """A TunnelError unless the submitted job's server is up, with what is known otherwise."""
    if job.state == "ready" and job.node and job.port:
        return
    if not job.job:
        raise TunnelError(f"the Jupyter job did not start within {timeout:g} s, and the scheduler gave "
                          "no job id yet", EXIT_TIMEOUT)
    hosts = " ".join(shlex.quote(host) for host in route.hosts)
    hint = (f"attach to it later with jupyter-tunnel -s {hosts} --job {job.job}, "
            f"or cancel it with {job.cancel_command} on {route.target}")
    if job.state == "failed":
        raise TunnelError(f"{job.describe()} failed on {route.target}: {job.error or 'no reason given'}", EXIT_START)
    if job.state == "pending":
        why = f" ({job.reason})" if job.reason else ""
        raise TunnelError(f"{job.describe()} is still pending{why} after {timeout:g} s; it stays in the queue: "
                          + hint, EXIT_TIMEOUT)
    where = f" on {job.node}" if job.node else ""
    raise TunnelError(f"{job.describe()} runs{where}, but its Jupyter did not start within {timeout:g} s; {hint}",
                      EXIT_TIMEOUT)


def find_job(master: Master, options: ClusterOptions, timeout: float, pick: int | None = None) -> ClusterJob:
    """Step 2: the job whose node the server runs on: submitted and waited for (--submit), or
    found (-n auto, --job ID, --pick N)."""
    head = master.route.target
    if options.submit:
        job = submit_job(master, options, timeout)  # a job found running: jupyter_node.py says so
        check_ready(job, master.route, timeout)
        return job
    jobs = find_jobs(master, options)
    if options.job and not jobs:
        raise TunnelError(f"no job {options.job} of yours is pending or running on {head}'s cluster",
                          EXIT_NO_SERVER)
    return choose_job(jobs, head, pick)


# ------------------------------------------------------------------------ 3. discover


# The discovery script needs neither python nor jupyter on PATH (over a non-interactive ssh a
# venv's or conda's jupyter usually is not).  It looks where jupyter_core would (macOS hosts use
# ~/Library/Jupyter), and reports, not prints, a file whose pid is dead (a SIGKILLed server
# leaves its file) or no Jupyter (a reused pid).  To a file that says port 0 (notebook < 7 and
# jupyter_server < 2.20 write that for --port=0) it adds the TCP ports its pid listens on (from
# socket inodes and /proc/net/tcp* on Linux, from lsof elsewhere).  It survives being one line in
# single quotes for ANY login shell (sshd hands it the command): every line ends its statement,
# with no ' ! or newline (csh and tcsh reject a newline in quotes and expand ! even there) and no
# double backslash (fish's single quotes).  As the command, not on stdin, it saves a round trip
# through the whole chain (ssh sends stdin only once the command runs).  Its first line, "MARK
# start", tells that it ran: a login shell such as /bin/false or nologin runs no command, and
# says so at best in words of its own.
RUNTIME_DIRS = ('"${JUPYTER_RUNTIME_DIR:-}" "${JUPYTER_DATA_DIR:+$JUPYTER_DATA_DIR/runtime}" '
                '"${XDG_DATA_HOME:-$HOME/.local/share}/jupyter/runtime" "$HOME/Library/Jupyter/runtime" '
                '"$HOME/Library/Application Support/Jupyter/runtime"')
DISCOVERY_SCRIPT = r"""M=@MARK@; echo "$M start"; found=0;
ports_of() { ports=;
  if [ -d /proc/$1/fd ]; then
    for inode in $(ls -l /proc/$1/fd 2>/dev/null | sed -n "s/.*socket:\[\([0-9]*\)\].*/\1/p"); do
      for hex in $(awk -v i=$inode "\$4 == \"0A\" && \$10 == i { split(\$2, a, \":\"); print a[2] }" /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
        ports="$ports $(printf %d 0x$hex)";
      done;
    done;
  elif command -v lsof >/dev/null 2>&1; then
    ports=$(lsof -a -p $1 -iTCP -sTCP:LISTEN -P -n -Fn 2>/dev/null | sed -n "s/^n.*:\([0-9]*\)$/\1/p");
  fi;
  echo "$M ports $1" $ports;
};
for d in @DIRS@; do
  [ -n "$d" ] && [ -d "$d" ] || continue;
  for f in "$d"/jpserver-*.json "$d"/nbserver-*.json; do
    [ -f "$f" ] || continue;
    found=1;
    pid=${f##*/}; pid=${pid#*server-}; pid=${pid%.json};
    [ "$pid" -gt 0 ] 2>/dev/null || continue;
    if kill -0 $pid 2>/dev/null; then :; else echo "$M stale $f"; continue; fi;
    if [ -r /proc/$pid/cmdline ]; then cmd=$(tr "\000" " " </proc/$pid/cmdline); else cmd=$(ps -o command= -p $pid 2>/dev/null); fi;
    case $cmd in *jupyter*|*notebook*) ;; *) echo "$M foreign $f"; continue;; esac;
    content=$(cat "$f");
    echo "$M file $f"; echo "$M cmd $cmd"; printf "%s\n" "$content"; echo "$M end";
    case $content in *\"port\":\ 0,*|*\"port\":0,*) ports_of $pid;; esac;
  done;
done;
if [ $found = 0 ] && command -v jupyter >/dev/null 2>&1; then
  echo "$M list"; jupyter server list --json 2>/dev/null; jupyter notebook list --json 2>/dev/null; echo "$M end";
fi
""".replace("@MARK@", MARK).replace("@DIRS@", RUNTIME_DIRS)


def build_discovery_script(one_line: bool = False) -> str:
    """The POSIX sh script that prints the live Jupyter servers' runtime files."""
    return " ".join(line.strip() for line in DISCOVERY_SCRIPT.splitlines()) if one_line else DISCOVERY_SCRIPT


def build_discovery_command(route: Route) -> tuple[str, str]:
    """The remote command that discovers the servers, and what to send on its stdin."""
    if not route.node:
        return f"sh -c '{build_discovery_script(one_line=True)}'", ""
    # With -n the head runs ssh to the node, the script on stdin: no second level of quoting,
    # for one more round trip on the cluster's own network.  BatchMode: a prompt on the head
    # could never be answered.  "MARK head" first: without it, the head's login shell refused.
    return (f"echo {MARK} head; ssh -o BatchMode=yes -T {shlex.quote(route.node)} sh -s",
            build_discovery_script())


def parse_discovery(output: str) -> tuple[list[Server], list[str]]:
    """Servers and warnings from the discovery script's output.  Anything outside the markers (a
    chatty ``.bashrc``) is ignored; a runtime file that is not valid JSON (a truncated write) is
    skipped with a warning, never a crash."""
    servers: dict[tuple[int, int, str], Server] = {}  # by key: one file, two runtime dir rules
    warnings: list[str] = []
    block: list[str] | None = None
    source = cmdline = ""

    def add(text: str, src: str, cmd: str) -> None:
        try:
            info = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: [[[[...]]]] nested too deep
            warnings.append(f"skipping unreadable Jupyter runtime file {src}")
            return
        try:
            server = parse_server(info, src, cmd)
        except ValueError as error:
            warnings.append(f"skipping Jupyter runtime file {src}: {error}")
            return
        servers.setdefault(server.key, server)

    listening: dict[int, list[int]] = {}
    for line in output.splitlines():
        if line.startswith(MARK):
            word, _, arg = line[len(MARK):].strip().partition(" ")
            if word == "ports":
                numbers = [int(n) for n in arg.split() if n.isascii() and n.isdigit()]
                if numbers and len(numbers) == len(arg.split()):  # else not our script's line
                    listening[numbers[0]] = sorted({port for port in numbers[1:] if 0 < port < 65536})
            elif word in ("file", "list"):
                block, source, cmdline = [], arg, ""
            elif word == "cmd" and block is not None:
                cmdline = arg
            elif word == "end" and block is not None:
                if source:
                    add("\n".join(block), source, cmdline)
                else:  # "jupyter server list --json": one object per line
                    for item in block:
                        if item.strip():
                            add(item, "jupyter server list", "")
                block = None
        elif block is not None:
            block.append(line)
    for key, server in servers.items():
        if server.port == 0 and not server.sock and listening.get(server.pid):
            # the file said port 0: the pid's one listening port is the server's
            servers[key] = server._replace(port=listening[server.pid][0])
    # a stable order, so that the numbers of --list mean the same to --pick
    return sorted(servers.values(), key=lambda s: (s.sock != "", s.port, s.sock, s.pid)), warnings


def parse_discovery_failure(route: Route, returncode: int, stdout: str, stderr: str,
                            master_alive: bool = True) -> TunnelError | None:
    """Why the discovery command failed (None when it did not), from its output and exit code.

    ssh exits 255 for its own failures (a lost connection, a node it cannot log into); a login
    shell that runs no command (/bin/false, nologin) exits 1, and the script's first line ("MARK
    start", after "MARK head" on the head) never comes."""
    lines = stdout.splitlines()
    ran = f"{MARK} start" in lines
    if ran and returncode == 0:
        return None
    if returncode == 255 and not ran and route.node and master_alive and f"{MARK} head" in lines:
        # the head's own ssh to the node failed: its words are about the head's view
        reason = parse_ssh_error(stderr.splitlines(), hosts=(route.node,), here=route.target)
        return TunnelError(f"cannot reach node {route.node} from {route.target}: {reason}", EXIT_CONNECT)
    if returncode != 255 and not ran:
        refusing = route.node if f"{MARK} head" in lines else route.target
        said = [line.strip() for line in [*lines, *stderr.splitlines()]
                if line.strip() and not line.startswith((MARK, *SSH_NOISE))]
        words = "; ".join(said[:3]) if said else f"nothing (exit code {returncode})"
        return TunnelError(f"the account on {refusing} does not run commands: its login shell refuses them "
                           f"(e.g. /bin/false or nologin); it said {words}", EXIT_CONNECT)
    reason = parse_ssh_error(stderr.splitlines(), hosts=route.hosts)
    return TunnelError(f"cannot look for Jupyter servers on {route.describe_server_host()}: {reason}")


def discover(master: Master, node: str | None = None, timeout: float = 60.0) -> list[Server]:
    """The live Jupyter servers on the target (or its node, or ``node``), found through the master."""
    route = master.route if node is None else master.route._replace(node=node)
    where = route.describe_server_host()
    try:
        # -A: with -n, the head logs into the node with the user's agent (this session only)
        command, script = build_discovery_command(route)
        done = master.run(command, stdin=script, forward_agent=bool(route.node), timeout=timeout,
                          what=f"looking for Jupyter servers on {where}")
    except subprocess.TimeoutExpired:
        raise TunnelError(f"looking for Jupyter servers on {where} did not answer within {timeout:g} s")
    stdout = done.stdout.decode(errors="replace")
    error = parse_discovery_failure(route, done.returncode, stdout, done.stderr.decode(errors="replace"),
                                    master.alive())
    if error is not None:
        raise error
    servers, warnings = parse_discovery(stdout)
    for warning in warnings:
        say("Warning", warning)
    return servers


# -------------------------------------------------------- 4. start a server (--start)


# The start script goes on stdin to "sh -s", which any login shell runs, with no second level of
# quoting (its round trip is nothing next to a server's start-up).  Its output goes to a new
# private log (umask 077: 0600 in a 0700 directory), its markers to fd 3.  The server is detached
# (setsid, else nohup; stdin from /dev/null, none of the session's descriptors) to outlive ssh
# and the tunnel.  Neither setsid (not a group leader here: no fork) nor jupyter (it execs
# jupyter-APP) changes the pid, so $! is the server's pid, process group and runtime file's name.
# Without setsid(1) (some BSDs, busybox) nohup keeps SIGHUP off, but the server stays in the
# session's process group ("set -m" needs job control, which dash lacks without a terminal): a
# failure then kills the pid alone (nothing else runs in it before its runtime file exists).  It
# listens on 127.0.0.1 only (login nodes are shared), on the port Jupyter picks (8888 or the next
# free: port_retries; "--port=0" makes notebook < 7 write port 0).  The script waits for the
# runtime file itself (no round trip per look); a server that dies right after writing it (a
# crash in an extension, a port taken) is no start.  On failure it kills the server's process
# group (SIGTERM, then SIGKILL 2 s later: a SIGTERM right after the runtime file is written lands
# before the event loop runs, and the shutdown races the extensions' start), removes the runtime
# files a SIGKILL leaves, and prints the log's end.  When the run is interrupted, sshd closes the
# script's output: with SIGPIPE ignored (after the server's fork: Python ignores it anyway) the
# next write fails, and the script stops the server (nobody was told of it).
#
# One start at a time per account: runs started together each found no server, and each would
# start one.  The lock is a directory (mkdir is atomic everywhere, POSIX; flock(1) is missing on
# macOS and some BSDs), held until the runtime file is written or the start failed.  Under it the
# script looks again for servers the run's discovery did not see (@KNOWN@): if another run
# started one, it says "changed" and starts nothing; the run discovers again and attaches.  A
# lock is stale, and taken over (a SIGKILLed run leaves it), when its holder is dead (same host:
# kill -0), is older than @STALE@ s (another host sharing the home: its pid means nothing here)
# or still ownerless after 5 s.  Two waiters taking over one stale lock at once could both start
# (milliseconds after a killed run: at worst two servers, as without a lock).  A waiter writes a
# marker each second: once the run is gone, the write kills it.
START_SCRIPT = r"""M=@MARK@
exec 3>&1
fail() { printf '%s fail %s\n' "$M" "$1" >&3; if [ -n "${log:-}" ]; then echo "$M tail" >&3; tail -n @TAIL@ "$log" >&3; fi; exit 0; }
umask 077
state="${XDG_STATE_HOME:-$HOME/.local/state}/jupyter-tunnel"
mkdir -p "$state" && chmod 700 "$state" || fail "cannot create the directory $state"
lock="$state/start.lock"
host=$(uname -n 2>/dev/null)
me="$$ $host $(date +%s 2>/dev/null)"
stale() {
  set -- $1
  [ $# -ge 2 ] || { empty=$((empty + 1)); [ $empty -gt 50 ]; return; }
  if [ "$2" = "$host" ]; then kill -0 "$1" 2>/dev/null && return 1; return 0; fi
  now=$(date +%s 2>/dev/null)
  case "$now:${3:-x}" in *[!0-9:]*) return 1;; esac
  [ $((now - $3)) -gt @STALE@ ]
}
release() { [ "$(cat "$lock/owner" 2>/dev/null)" = "$me" ] && rm -rf "$lock"; }
waited=0 empty=0
until mkdir "$lock" 2>/dev/null; do
  owner=$(cat "$lock/owner" 2>/dev/null)
  if stale "$owner"; then
    mv "$lock" "$lock.stale.$$" 2>/dev/null && rm -rf "$lock.stale.$$"
    empty=0
    continue
  fi
  waited=$((waited + 1))
  [ $waited -le @LOCKTRIES@ ] || fail "another jupyter-tunnel --start of this account has held $lock for @LOCKWAIT@ s (${owner:-its owner unknown}); remove it if none runs"
  [ $((waited % 10)) != 0 ] || echo "$M wait" >&3
  sleep 0.1 2>/dev/null || sleep 1
done
trap release EXIT
trap 'exit 1' HUP INT TERM
echo "$me" >"$lock/owner"
new=
for d in @DIRS@; do
  [ -n "$d" ] && [ -d "$d" ] || continue
  for f in "$d"/jpserver-*.json "$d"/nbserver-*.json; do
    [ -f "$f" ] || continue
    p=${f##*/}; p=${p#*server-}; p=${p%.json}
    [ "$p" -gt 0 ] 2>/dev/null && kill -0 "$p" 2>/dev/null || continue
    case " @KNOWN@ " in *" $p "*) ;; *) new="$new $p";; esac
  done
done
[ -z "$new" ] || { echo "$M changed$new" >&3; exit 0; }
log=$(mktemp "$state/server-XXXXXXXX") || fail "cannot create a log in $state"
echo "$M log $log"
exec >>"$log" 2>&1
J=@JUPYTER@
@CD@
@ACTIVATE@
command -v "$J" >/dev/null 2>&1 || fail "$J not found: activate its environment with --pre or --conda-env, or give --jupyter PROG"
if command -v setsid >/dev/null 2>&1; then
  setsid "$J" @APP@ --no-browser --ip=127.0.0.1 </dev/null 3>&- &
else
  nohup "$J" @APP@ --no-browser --ip=127.0.0.1 </dev/null 3>&- &
fi
pid=$!
stop() { if kill -TERM -$pid 2>/dev/null || kill -TERM $pid 2>/dev/null; then sleep 2
  kill -KILL -$pid 2>/dev/null || kill -KILL $pid 2>/dev/null; fi
  for d in @DIRS@; do [ -n "$d" ] && rm -f "$d/jpserver-$pid.json" "$d/jpserver-$pid-open.html" \
    "$d/nbserver-$pid.json" "$d/nbserver-$pid-open.html"; done; fail "$1"; }
trap '' PIPE
gone="jupyter-tunnel went away (interrupted) while the server started"
echo "$M pid $pid" >&3 || stop "$gone"
tries=0
while :; do
  for d in @DIRS@; do
    for f in "$d/jpserver-$pid.json" "$d/nbserver-$pid.json"; do
      [ -n "$d" ] && [ -f "$f" ] || continue
      content=$(cat "$f")
      case $content in *"}") ;; *) continue;; esac
      kill -0 $pid 2>/dev/null || stop "the server exited right after writing its runtime file"
      { echo "$M file $f"; echo "$M cmd $(tr "\000" " " </proc/$pid/cmdline 2>/dev/null)"
        printf "%s\n" "$content"; echo "$M end"; } >&3 || stop "$gone"
      exit 0
    done
  done
  kill -0 $pid 2>/dev/null || stop "the server exited"
  tries=$((tries + 1))
  [ $tries -le @TRIES@ ] || stop "the server wrote no runtime file within @TIMEOUT@ s"
  sleep 0.1 2>/dev/null || sleep 1
done
"""
# The start script waits up to --timeout + START_LOCK_GRACE for another run's start on the same
# account (whose holder gives up at --timeout, and kills its server 2 s later), then gives up on
# its own start at --timeout; the run waits START_GRACE more for its answer.
START_GRACE = 30.0
START_LOCK_GRACE = 15.0
# A lock of another host (a home shared by login nodes) is stale this long after --timeout.
START_LOCK_STALE = 120.0
# How many times a run looks again when other runs keep starting servers under it: each
# look adds the new servers' pids to the known ones, so two are all a sane account needs.
START_ATTEMPTS = 5
STARTED_CHECK_INTERVAL = 1.0  # s between the looks at a started server that does not answer yet
START_APPS = ("lab", "notebook", "server")  # -t: jupyter lab, jupyter notebook, jupyter server


class StartOptions(NamedTuple):
    """How ``--start`` starts a server (``-t``, ``--pre``, ``--conda-env``, ``--jupyter``, ``--root-dir``)."""

    app: str = "lab"
    pre: tuple[str, ...] = ()
    conda_env: str = ""
    jupyter: str = "jupyter"
    root_dir: str = ""  # "": the remote home


class Started(NamedTuple):
    """What the start script said: its log, the server's pid, and the server or why not."""

    log: str = ""
    pid: int | None = None
    server: Server | None = None
    failure: str = ""
    tail: tuple[str, ...] = ()
    changed: tuple[int, ...] = ()  # pids of servers other runs started meanwhile: none was started


def build_start_script(options: StartOptions, timeout: float, known: Iterable[int] = ()) -> str:
    """The ``sh`` script (for ``sh -s``) that starts a detached server and waits for its runtime
    file, unless a server whose pid is not in ``known`` appeared meanwhile."""
    if options.root_dir:
        # "./-L", not "-L": cd would take it for its option (and go home); "./" works in
        # every sh, where "cd --" is one more thing an old shell may not know
        path = f"./{options.root_dir}" if options.root_dir.startswith("-") else options.root_dir
        cd = f"cd {shlex.quote(path)} || fail {shlex.quote('no directory ' + options.root_dir)}"
    else:
        cd = 'cd || fail "cannot change to the home directory"'
    activate = "\n".join(build_activation_steps(options.pre, options.conda_env or ""))
    return fill_script(START_SCRIPT, {
        "MARK": MARK, "TAIL": str(START_LOG_TAIL), "CD": cd, "ACTIVATE": activate,
        "JUPYTER": shlex.quote(options.jupyter), "APP": shlex.quote(options.app),
        "DIRS": RUNTIME_DIRS, "TRIES": str(int(timeout * 10)), "TIMEOUT": f"{timeout:g}",
        "KNOWN": " ".join(str(pid) for pid in sorted(set(known))),
        "LOCKTRIES": str(int((timeout + START_LOCK_GRACE) * 10)), "LOCKWAIT": f"{timeout + START_LOCK_GRACE:g}",
        "STALE": str(int(timeout + START_LOCK_STALE)),
    })


def parse_marks(output: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """The ``MARK word arg`` lines of a remote script's answer (word -> its last arg), and the
    lines after ``MARK tail`` (a log's end, taken as it comes)."""
    marks: dict[str, str] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(MARK):
            word, _, arg = line[len(MARK):].strip().partition(" ")
            if word == "tail":
                return marks, tuple(lines[i + 1:])
            marks[word] = arg
    return marks, ()


def parse_start_output(output: str) -> Started:
    """The start script's answer: the log, the pid, and the server's runtime file or the failure."""
    marks, tail = parse_marks(output)
    pid_text = marks.get("pid", "")
    pid = int(pid_text) if pid_text.isascii() and pid_text.isdigit() and 1 < int(pid_text) <= MAX_PID else None
    changed = tuple(int(n) for n in marks.get("changed", "").split()
                    if n.isascii() and n.isdigit() and 0 < int(n) <= MAX_PID)
    failure = marks.get("fail", "")
    servers, refusals = parse_discovery(output) if not failure else ([], [])
    server = next((s for s in servers if s.pid == pid), None)
    if server is None and refusals and not failure:  # which field of its runtime file, and why
        failure = f"its runtime file was refused ({refusals[-1]})"
    return Started(marks.get("log", ""), pid, server, failure, tail, changed)


def start_server(master: Master, options: StartOptions, timeout: float, known: Iterable[int] = ()) -> Started:
    """Start a server on the target through the master: the Started with its Server, or with the
    pids of servers that appeared meanwhile (another run started one; ``known``: the run's pids)."""
    host = master.route.server_host
    where = options.root_dir or "the home directory"
    say("Info", f"No Jupyter server runs on {host}: starting jupyter {options.app} in {where}...")
    started = time.monotonic()
    limit = 2 * timeout + START_LOCK_GRACE + START_GRACE
    try:
        done = master.run("sh -s", stdin=build_start_script(options, timeout, known), timeout=limit,
                          what=f"starting Jupyter on {host}")
    except subprocess.TimeoutExpired:
        raise TunnelError(f"starting Jupyter on {host} did not answer within {limit:g} s", EXIT_START)
    result = parse_start_output(done.stdout.decode(errors="replace"))
    if result.changed and not result.failure:
        return result
    if result.server is None:
        why = result.failure or parse_ssh_error(done.stderr.decode(errors="replace").splitlines(), done.returncode)
        log = f" (log: {result.log})" if result.log else ""
        raise TunnelError(f"could not start jupyter {options.app} on {host}: {why}{log}"
                          f"{format_log_tail(result.tail)}", EXIT_START)
    say("Info", f"Started jupyter {options.app} (pid {result.pid}) in {time.monotonic() - started:.1f} s; "
                f"its log: {result.log}")
    if not result.server.token:  # Jupyter's default is a token: the user's own configuration says otherwise
        say("Warning", "the started server has no token: its Jupyter configuration sets a password "
                       "or turns authentication off")
    return result


# A dead started server's runtime file is removed (a SIGKILL leaves it), its log's end printed.
STARTED_CHECK_SCRIPT = r"""M=@MARK@; pid=@PID@; f=@FILE@
if kill -0 $pid 2>/dev/null && [ -f "$f" ]; then echo "$M alive"; exit 0; fi
kill -0 $pid 2>/dev/null && echo "$M gone runs, but its runtime file $f is gone" || {
  echo "$M gone exited right after writing its runtime file"; rm -f "$f" "${f%.json}-open.html"; }
echo "$M tail"; tail -n @TAIL@ @LOG@ 2>/dev/null
"""


def build_started_check(server: Server, log: str) -> str:
    """The ``sh`` script (for ``sh -s``) that tells whether the server this run started still runs."""
    return fill_script(STARTED_CHECK_SCRIPT, {
        "MARK": MARK, "PID": str(server.pid), "FILE": shlex.quote(server.source), "LOG": shlex.quote(log or "/dev/null"),
        "TAIL": str(START_LOG_TAIL)})


def parse_started_check(output: str) -> tuple[str, tuple[str, ...]] | None:
    """None when the started server still runs, else why not and the log's last lines;
    None too for an answer that is not the script's (a lost connection: the master's watch)."""
    marks, tail = parse_marks(output)
    return None if "gone" not in marks else (marks["gone"], tail)


def check_started(master: Master, server: Server, log: str, app: str) -> None:
    """A TunnelError (EXIT_START, with the log's end) when the server this run started has died
    or lost its runtime file since the start script saw it."""
    try:
        done = master.run("sh -s", stdin=build_started_check(server, log), timeout=30)
    except subprocess.TimeoutExpired:
        return  # a stuck connection: wait_for_tunnel's own checks tell
    found = parse_started_check(done.stdout.decode(errors="replace"))
    if found is not None:
        why, tail = found
        raise TunnelError(f"could not start jupyter {app} on {master.route.server_host}: the server (pid "
                          f"{server.pid}) {why} (log: {log}){format_log_tail(tail)}", EXIT_START)


# -------------------------------------------------------------------------- 5. choose


def select_servers(servers: Sequence[Server], port: int | None = None, directory: str | None = None,
                   pick: int | None = None) -> list[Server]:
    """The servers that match ``--port``, ``--dir`` and ``--pick`` (all when none is given)."""
    chosen = list(servers)
    if pick is not None:
        chosen = chosen[pick - 1:pick] if pick >= 1 else []
    if port is not None:
        chosen = [s for s in chosen if s.port == port]
    if directory:
        chosen = [s for s in chosen if directory in s.root_dir]
    return chosen


def format_server_table(servers: Sequence[Server]) -> str:
    """The numbered table of ``--list`` (the numbers are what ``--pick`` takes)."""
    rows = [("#", "PORT", "KIND", "AUTH", "ROOT DIRECTORY")]
    for number, server in enumerate(servers, 1):
        where = server.sock or str(server.port or "?")
        auth = server_auth(server) + (", https" if server.secure else "")
        rows.append((str(number), where, server.kind, auth, server.root_dir or "?"))
    return format_table(rows)


def choose_server(servers: Sequence[Server], host: str, port: int | None = None,
                  directory: str | None = None, pick: int | None = None, on_node: bool = False) -> Server:
    """The one server to tunnel to: the only one, the one chosen, or asked on a terminal."""
    if not servers:
        how = ("start one with --submit (without -n NODE) or jupyter-node on the head" if on_node else
               "add --start to start one (on a cluster's head node, --submit starts one as a scheduler job)")
        raise TunnelError(f"no Jupyter server is running on {host}: {how}", EXIT_NO_SERVER)
    chosen = select_servers(servers, port, directory, pick)
    if len(chosen) == 1:
        return chosen[0]
    given = port is not None or bool(directory) or pick is not None
    say("Info", f"Jupyter servers running on {host}:")
    print(format_server_table(servers), file=sys.stderr)
    if not chosen:
        raise TunnelError(f"no Jupyter server on {host} matches --port/--dir/--pick", EXIT_NO_SERVER)
    if not given and sys.stdin.isatty() and sys.stderr.isatty():
        return ask_server(chosen)
    raise TunnelError(f"{len(chosen)} Jupyter servers {'match' if given else 'are running'} on {host}: "
                      "choose one with --port PORT, --dir TEXT or --pick N", EXIT_NO_SERVER)


def choose_or_start(master: Master, servers: list[Server], start: StartOptions | None, timeout: float,
                    port: int | None, directory: str | None, pick: int | None) -> tuple[Server, Started | None]:
    """The server to tunnel to, and how it was started (None: it ran already); with ``start``
    (--start), one started now when none matches."""
    host, known = master.route.server_host, {server.pid for server in servers}
    for _ in range(START_ATTEMPTS):
        if start is None or select_servers(servers, port, directory, pick):
            if start is not None:
                say("Info", f"A Jupyter server already runs on {host}: attaching to it (--start was not needed).")
            return choose_server(servers, host, port, directory, pick, on_node=bool(master.route.node)), None
        started = start_server(master, start, timeout, known)
        if started.server is not None:
            return started.server, started
        # another run took the start lock (START_SCRIPT) first: attach to its server if it matches
        say("Info", f"Another jupyter-tunnel started a Jupyter server on {host} meanwhile: looking again...")
        servers = discover(master)
        known |= {server.pid for server in servers} | set(started.changed)
    raise TunnelError(f"Jupyter servers kept appearing on {host} while this run tried to start one; "
                      "run it again", EXIT_START)


# ------------------------------------------------------------------------- 6. forward


def candidate_ports(first: int, count: int = 100) -> range:
    """Local ports to try: ``first`` and the ones above it (the original tool's rule)."""
    first = max(1, min(first, 65535))
    return range(first, min(first + count, 65536))


def forward_target(server: Server, node: str = "") -> str:
    """The ``host:port`` (or socket path) the forward connects to: the remote sshd resolves the
    host name, so a name only the remote side knows works."""
    if node and (server.sock or server.host in ("localhost", "127.0.0.1", "::1", "[::1]")):
        where = "on a unix socket" if server.sock else "on the node's loopback only"
        raise TunnelError(f"the server on {node} listens {where}, which the head node cannot reach: "
                          "start it with --ip=$(hostname --fqdn)", EXIT_NO_SERVER)
    if server.sock:
        return server.sock
    host = server.host
    if node and host in ANY_ADDRESS:
        host = node  # listening on every interface: the node's name reaches it
    elif host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"  # a server on every interface listens on loopback too
    elif host in ("::", "[::]"):
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{server.port}"


def build_forward_spec(path: str, target: str) -> str:
    """The ``-L`` argument to ``target`` (forward_target, extra_target): ssh listens on the unix socket
    ``path`` in the run's 0700 directory (and makes it 0600: StreamLocalBindMask), which only the relay
    connects to."""
    return f"{path}:{target}"


def build_socks_forward(socks_port: int, target: str) -> str:
    """The forward without a master: a CONNECT to ``target`` (``host:port``) through ssh's SOCKS port."""
    return f"socks5://127.0.0.1:{socks_port}/{target}"


def parse_socks_forward(forward: str) -> tuple[int, str, int] | None:
    """(SOCKS port, host, port) of a build_socks_forward; None for ssh's unix socket (a path)."""
    if not forward.startswith("socks5://127.0.0.1:"):
        return None
    socks, _, target = forward[len("socks5://127.0.0.1:"):].partition("/")
    host, _, port = target.rpartition(":")
    return int(socks), host.strip("[]"), int(port)


def build_socks_request(host: str, port: int) -> bytes:
    """SOCKS5's CONNECT (RFC 1928) to ``host`` as a domain name (ATYP 3): ssh passes the name on,
    and the remote side resolves it (channels.c), so a name only the cluster knows works."""
    try:
        name = host.encode("idna")  # ASCII names as they are
    except UnicodeError:
        name = b""
    if not 0 < len(name) <= 255:  # a name no resolver takes ("a..b", a label over 63 bytes)
        raise ConnectionRefusedError(f"{host!r} is no host name SOCKS5 can carry")
    return bytes([SOCKS_VERSION, 1, 0, 3, len(name)]) + name + port.to_bytes(2, "big")


def socks_address_length(head: bytes) -> int:
    """The bytes still to come of a SOCKS5 reply after its first 5 (``head``): the rest of
    BND.ADDR (IPv4, IPv6, or a name whose length byte is the 5th), then BND.PORT."""
    if head[3] == 3:
        return head[4] + 2
    return {1: 4, 4: 16}.get(head[3], 1) - 1 + 2


def receive(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes of ``conn``; ConnectionResetError when it ends before."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the connection ended")
        data += chunk
    return data


def open_forward(forward: str, timeout: float | None = None) -> socket.socket:
    """A connection to the server through the run's forward: ssh's unix socket, or a CONNECT through
    its SOCKS port; OSError when none is had.  ssh answers a CONNECT only once the server's side took
    it, and closes without an answer when it could not (channels.c): that is a ConnectionResetError."""
    socks = parse_socks_forward(forward)
    conn = socket.socket(socket.AF_UNIX if socks is None else socket.AF_INET, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        if socks is None:
            conn.connect(forward)
            return conn
        conn.connect(("127.0.0.1", socks[0]))
        conn.sendall(bytes([SOCKS_VERSION, 1, 0]))  # one method: none (ssh offers no other)
        if receive(conn, 2) != bytes([SOCKS_VERSION, 0]):
            raise ConnectionRefusedError("the SOCKS port refused")
        conn.sendall(build_socks_request(socks[1], socks[2]))
        head = receive(conn, 5)
        if head[1] != 0:
            raise ConnectionRefusedError(f"the SOCKS port answered {head[1]}")
        receive(conn, socks_address_length(head))
        return conn
    except BaseException:
        conn.close()
        raise


def add_forward(master: Master, server: Server) -> str:
    """Have the master forward the run's unix socket to the server; returns the forward (forward_to)."""
    if server.sock and isinstance(master, StdioMaster):  # SOCKS speaks TCP only: a socket needs ssh -L
        raise TunnelError(f"the Jupyter server on {master.route.server_host} listens on a unix socket "
                          f"({escape_text(server.sock)}), which a connection without ControlMaster cannot "
                          "reach: start it on a port instead (jupyter lab --port=8888, without --sock), or run "
                          "jupyter-tunnel where ssh can be a master (not Windows' own ssh)", EXIT_NO_SERVER)
    return forward_to(master, forward_target(server, master.route.node), FORWARD_SOCKET, "the server")


def forward_to(master: Master, target: str, name: str, what: str) -> str:
    """The run's forward to ``target`` (``host:port`` or a socket path, as the remote side names it):
    the master's ``-L`` from the run's socket ``name``, whose path it returns; without a master, the
    SOCKS forward, which needs nothing added.  ``what``: the target, for an error."""
    if isinstance(master, StdioMaster):
        return build_socks_forward(master.socks_port, target)
    path = fresh_socket_path(master, name)
    request_forward(master, build_forward_spec(path, target), what)
    return path


def extra_target(port: int, node: str = "") -> str:
    """The ``host:port`` a ``--forward PORT`` reaches, resolved by the remote side as Jupyter's is: with a
    node, ``NODE:PORT`` from the head (a service on the node's loopback only is out of its reach, as a
    Jupyter server there is); else ``localhost:PORT`` on the target, whose sshd resolves the name."""
    host = node or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def extra_socket_name(number: int) -> str:
    """The unix socket of the run's ``number``-th --forward (1, 2...) in its private directory, next to
    Jupyter's FORWARD_SOCKET (jupyter_tunnel_shutdown.parse_shared_forward knows the shape)."""
    return f"{FORWARD_SOCKET}{number}"


def add_extra_forward(master: Master, number: int, port: int) -> str:
    """Have the master forward the ``number``-th --forward, to ``port`` where Jupyter runs (extra_target);
    returns the forward: a unix socket of the run's, or, without a master, a SOCKS forward."""
    return forward_to(master, extra_target(port, master.route.node), extra_socket_name(number),
                      f"port {port} on {master.route.server_host}")


def fresh_socket_path(master: Master, name: str) -> str:
    """The path of the forward's socket ``name`` in the run's 0700 directory, nothing there: ssh never
    unlinks a forward's socket, and will not bind over a dead one."""
    path = os.path.join(os.path.dirname(master.config), name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return path


def request_forward(master: Master, spec: str, what: str) -> None:
    """Ask the master for ``-L spec`` (a forward to ``what``, for the error)."""
    ok, message = master.forward(spec)
    if not ok and not master.alive():  # gone meanwhile: a reconnection's business
        raise TunnelError(f"the connection to {master.route.target} was lost: {master.why()}", EXIT_LOST)
    if not ok:
        raise TunnelError(f"cannot forward to {what}: {parse_ssh_error(message.splitlines())}", EXIT_PORT)


def forward_answers(forward: str, timeout: float = FORWARD_PROBE_TIMEOUT) -> bool:
    """Whether something listens where ``forward`` leads, told within about ``timeout`` s, nothing sent.
    Through SOCKS ssh answers the CONNECT only once the remote side has connected (open_forward).
    Through ssh's unix socket the local connect always succeeds: ssh then closes it as soon as the remote
    connect is refused, so an end of file within ``timeout`` says no; a connection still open (a server
    waiting for a request), or a byte from it (a banner), says yes.  A remote connect that hangs (a
    firewall that drops) reads as yes there, as no through SOCKS: nothing ssh says tells it sooner."""
    try:
        conn = open_forward(forward, timeout)
    except OSError:  # refused, reset, or no answer within timeout
        return False
    with conn:
        if parse_socks_forward(forward) is not None:
            return True
        try:
            return conn.recv(1) != b""
        except socket.timeout:
            return True
        except OSError:
            return False


def probe_forwards(forwards: Sequence[str], timeout: float = FORWARD_PROBE_TIMEOUT) -> list[bool]:
    """forward_answers for each of ``forwards`` at once (a thread each): the stay loop pauses about
    ``timeout`` s in all, however many wait; a probe not done by then counts as no."""
    answers = [False] * len(forwards)

    def probe(number: int) -> None:
        answers[number] = forward_answers(forwards[number], timeout)

    threads = [threading.Thread(target=probe, args=(number,), daemon=True) for number in range(len(forwards))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2 * timeout + 0.5  # SOCKS: its greeting, then the CONNECT's answer
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [answer and not thread.is_alive() for answer, thread in zip(answers, threads)]


class ExtraForward:
    """One ``--forward PORT[:LOCAL]``: a port of the host where Jupyter runs, with the same guarantees as
    Jupyter's (a Relay of its own, the master's forward added again at each login), told once it answers."""

    def __init__(self, number: int, remote_port: int, local_port: int | None = None) -> None:
        self.number = number  # 1, 2...: its socket's name (extra_socket_name)
        self.remote_port = remote_port
        self.fixed = local_port  # LOCAL: that port or an error; None: PORT or the next free one
        self.forward = ""  # the master's forward of the moment
        self.relay: Relay | None = None
        self.answered = False  # something answered there once: said, and never probed again

    def connect(self, master: Master) -> None:
        """Add its forward to ``master`` (at each login); the first time, listen on its local port."""
        self.forward = add_extra_forward(master, self.number, self.remote_port)
        if self.relay is None:
            # secure: no plain-HTTP page of ours (a dashboard's protocol is not known)
            self.relay = Relay(open_local_port(self.fixed or self.remote_port, self.fixed is not None),
                               self.forward, secure=True)
        self.relay.forward = self.forward

    def describe(self, host: str) -> str:
        """``localhost:8787 -> node1:8787``."""
        assert self.relay is not None
        return f"localhost:{self.relay.port} -> {host}:{self.remote_port}"

    def info(self) -> dict:
        """Its --json and registry form."""
        return {"remote_port": self.remote_port, "local_port": self.relay.port if self.relay else None}


def build_extra_line(description: str, answers: bool) -> str:
    """The Info line that announces a --forward (``description``: ExtraForward.describe)."""
    said = "answers" if answers else "nothing answers there yet: you will be told when it does"
    return f"Also forwarding {description} ({said})"


def proc_net_address(host: str, port: int, byteorder: str = sys.byteorder) -> str:
    """``host:port`` as ``/proc/net/tcp`` (or ``tcp6``) writes it: the address in 32-bit words, each in
    the machine's byte order, the port in hex (on a little-endian machine ``0100007F:1F90`` for
    127.0.0.1:8080, ``00000000000000000000000001000000:1F90`` for [::1]:8080)."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    words = "".join(f"{int.from_bytes(packed[i:i + 4], byteorder):08X}"  # type: ignore[arg-type]
                    for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}"


def parse_peer_uid(text: str, peer: tuple[str, int], listener: tuple[str, int],
                   byteorder: str = sys.byteorder) -> int | None:
    """The uid that owns the socket connected from ``peer`` to ``listener``, from the text of
    ``/proc/net/tcp`` (or ``tcp6``); None when it is not listed or no process holds it any more.
    Its local address is ``peer`` (our accepted socket is listed too, reversed, with OUR uid)."""
    local, remote = proc_net_address(*peer, byteorder), proc_net_address(*listener, byteorder)
    for line in text.splitlines()[1:]:
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        fields = line.split()
        if len(fields) >= 10 and fields[1].upper() == local and fields[2].upper() == remote:
            # inode 0: closed by its process (orphaned, TIME_WAIT; it reads nothing), listed as uid 0 whoever owned it
            if fields[9] == "0" or not fields[7].isdigit():
                return None
            return int(fields[7])
    return None


def build_diag_request(family: int, peer: tuple[str, int], listener: tuple[str, int]) -> bytes:
    """A netlink sock_diag request for the one TCP socket whose local end is ``peer`` and whose
    remote end is ``listener`` (linux/inet_diag.h: nlmsghdr + inet_diag_req_v2, no dump flag:
    the kernel looks it up by its addresses, as ``ss`` does for one socket)."""
    def address(host: str) -> bytes:
        return socket.inet_pton(family, host).ljust(16, b"\0")

    sockid = (struct.pack("!HH", peer[1], listener[1]) + address(peer[0]) + address(listener[0])
              + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))  # any interface, any cookie
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid  # every state
    return struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + request


def parse_diag_answer(data: bytes) -> int | None:
    """The socket's uid from the kernel's sock_diag answer (nlmsghdr + inet_diag_msg, whose
    uid and inode are at 64 and 68); None for an error (no such socket) or a socket that no
    process holds (inode 0: orphaned, which the kernel shows as uid 0 whoever owned it)."""
    if len(data) < 16 + 72 or struct.unpack_from("=H", data, 4)[0] != SOCK_DIAG_BY_FAMILY:
        return None
    uid, inode = struct.unpack_from("=II", data, 16 + 64)
    return uid if inode else None


def peer_uid(family: int, peer: tuple[str, int], listener: tuple[str, int]) -> int | None:
    """The uid of the local process that connected from ``peer`` (Linux); None when unknown.
    Netlink sock_diag asks for that one socket (~10 us); /proc/net/tcp, the fallback, lists every
    socket (29 ms with the 10,000 in TIME_WAIT a busy browser leaves): too slow for each connection."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:  # type: ignore[attr-defined]
            diag.settimeout(1.0)
            diag.sendto(build_diag_request(family, peer, listener), (0, 0))
            uid = parse_diag_answer(diag.recv(8192))
        if uid is not None:
            return uid
        # an error: no such socket (gone), or no tcp_diag in the kernel (the same ENOENT): the table tells which
    except (AttributeError, OSError):
        pass  # no netlink (not Linux), or refused: read the table
    try:
        with open(PROC_NET_TCP6 if family == socket.AF_INET6 else PROC_NET_TCP) as f:
            return parse_peer_uid(f.read(), peer, listener)
    except OSError:
        return None


def bind_loopback(port: int) -> list[socket.socket]:
    """Listening sockets on 127.0.0.1:``port`` and [::1]:``port`` (unless there is no IPv6 loopback: nobody can
    listen there); OSError (EADDRINUSE) when the port is taken in either.  Both: a browser may try [::1] first for
    ``localhost`` (Chromium does), and another user's listener on the loopback left free would receive the token."""
    sockets: list[socket.socket] = []
    try:
        for family, host in LOOPBACKS:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as error:
                if family == socket.AF_INET6 and error.errno in NO_IPV6:
                    continue
                raise
            sockets.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if os.name != "nt":  # as ssh: a port in TIME_WAIT is free (on Windows, one that listens too)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as error:
                if family == socket.AF_INET6 and error.errno in NO_IPV6:
                    sockets.pop().close()
                    continue
                raise
            sock.listen(RELAY_BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def open_local_port(first: int, fixed: bool) -> list[socket.socket]:
    """The listeners of the run's local port: ``first`` (``--local-port``: that one or an
    error), else ``first`` or the next port above it free on every loopback."""
    for port in [first] if fixed else candidate_ports(first):
        try:
            return bind_loopback(port)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise TunnelError(f"cannot listen on local port {port}: {error.strerror or error}", EXIT_PORT)
    if fixed:
        raise TunnelError(f"local port {first} is already in use", EXIT_PORT)
    raise TunnelError(f"no free local port from {first} to {candidate_ports(first)[-1]}", EXIT_PORT)


def can_tell_peers(listener: socket.socket, uid: int) -> bool:
    """Whether a connection of our own to ``listener`` is found ours (peer_uid).  Where it is not (macOS,
    BSD; a kernel without tcp_diag whose /proc is hidden) every connection would be refused, the
    user's too: the port is then open to every local user, as any ``ssh -L`` port is (docs: Security)."""
    address = listener.getsockname()[:2]
    listener.settimeout(2.0)
    try:
        with socket.socket(listener.family, socket.SOCK_STREAM) as client:
            client.settimeout(2.0)
            client.connect(address)  # queued by the kernel: listen() was called
            mine = client.getsockname()[:2]
            while True:
                conn, peer = listener.accept()
                with conn:
                    # another process's connection, before the port serves anyone: dropped,
                    # and never the one that decides (it could make the check fail on purpose)
                    if peer[:2] == mine:
                        return peer_uid(listener.family, peer[:2], address) == uid
    except OSError:  # socket.timeout included
        return False
    finally:
        listener.settimeout(None)


class Relay:
    """The run's local port, its own for the whole run (reconnects included): it listens on 127.0.0.1
    and [::1], splices each connection into ssh's forward (a unix socket in the private directory),
    and answers the browser's one-time address.  A peer whose socket another uid owns (where the
    system tells: can_tell_peers) is dropped before it sends a byte: the token reaches no one else."""

    def __init__(self, listeners: list[socket.socket], forward: str = "", secure: bool = False) -> None:
        self.listeners = listeners
        self.port: int = listeners[0].getsockname()[1]
        self.forward = forward  # ssh's unix socket, set once the master forwards it
        self.secure = secure  # the server speaks TLS: no plain-HTTP answer of ours
        self.uid = os.getuid() if hasattr(os, "getuid") else None
        self.check_peer = self.uid is not None and can_tell_peers(listeners[0], self.uid)
        if not self.check_peer and HAVE_PROC:  # Linux, where it should: say so (macOS: see the docs)
            say("Warning", "this machine does not tell who connects to a local port (no netlink sock_diag, "
                           f"no /proc/net/tcp): port {self.port} is open to every local user, as an ssh -L port is")
        self.redirect: tuple[bytes, str, float] | None = None  # (request prefix, location, deadline)
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # every socket of every relayed connection
        self._clients = 0  # connections being relayed
        self._refused: set[int | None] = set()  # uids warned about, once each
        # close() wakes the accepting thread through this pair: on Linux, closing its sockets would not
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def offer_redirect(self, location: str, timeout: float = ONE_SHOT_TIMEOUT) -> str:
        """``http://127.0.0.1:PORT/<random>``, answered ONCE with a redirect to ``location``: any local
        user reads a command line (``ps``), so the browser never gets the token.  Jupyter's own
        ``file://…-open.html`` fails for snap browsers, WSL and Chromebooks; a loopback address works."""
        import secrets  # only here: it costs ~6 ms (hashlib) at every start

        path = "/" + secrets.token_urlsafe(32)
        self.redirect = (f"GET {path} ".encode(), location, time.monotonic() + timeout)
        timer = threading.Timer(timeout, self._redirect_expired, args=(self.redirect,))
        timer.daemon = True
        timer.start()
        return f"http://127.0.0.1:{self.port}{path}"

    def _redirect_expired(self, offered: tuple[bytes, str, float]) -> None:
        """Withdraw the one-time address that the browser did not come for in time."""
        with self._lock:
            if self.redirect is not offered or self.closed.is_set():
                return
            self.redirect = None
        say("Info", f"The browser did not come for its one-time address within {ONE_SHOT_TIMEOUT:g} s; "
                    "it is withdrawn: open the URL printed above instead.")

    def close(self) -> None:
        """Stop listening and end every connection (at the tool's exit)."""
        self.closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=2)
        with self._lock:
            for conn in self._open:
                _shutdown(conn)
        if not self._thread.is_alive():  # else the thread closes them at its end, not under its select()
            for sock in self.listeners:
                sock.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _serve(self) -> None:
        """Accept until close() (nothing else ends it: the port would be free for anyone to take),
        each allowed connection relayed by a thread of its own."""
        for sock in self.listeners:
            # BSD stacks drop a peer that resets before accept(): a blocking accept() would hang
            sock.setblocking(False)
        with selectors.DefaultSelector() as selector:
            for sock in [*self.listeners, self._wake_r]:
                selector.register(sock, selectors.EVENT_READ)
            try:
                while not self.closed.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is self._wake_r:
                            return
                        with contextlib.suppress(Exception):  # out of threads, stderr gone...: that connection only
                            self._accept(key.fileobj)  # type: ignore[arg-type]
            finally:
                for sock in self.listeners:
                    sock.close()

    def _accept(self, listener: socket.socket) -> None:
        """Take a connection: drop it at once unless it is the user's own, else relay it."""
        try:
            conn, peer = listener.accept()
        except OSError:  # taken by nobody after all (reset), or out of file descriptors
            return
        conn.setblocking(True)  # whatever the platform made of the listener's non-blocking mode
        if not self._allowed(listener, peer):
            conn.close()  # at once: a crowd of refused peers holds nothing of ours
            return
        with self._lock:
            if self._clients >= RELAY_MAX_CONNECTIONS:
                conn.close()
                return
            self._clients += 1
            self._open.add(conn)
        try:
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()
        except BaseException:  # RuntimeError: can't start new thread
            with self._lock:
                self._clients -= 1
                self._open.discard(conn)
            conn.close()
            raise

    def _allowed(self, listener: socket.socket, peer: tuple) -> bool:
        """Whether the socket that connected from ``peer`` is one of the user's own."""
        if not self.check_peer or self.uid is None:
            return True  # nothing tells who connected (docs: Security)
        uid = peer_uid(listener.family, peer[:2], listener.getsockname()[:2])
        if uid == self.uid:
            return True
        # None: the peer's socket is gone or orphaned already (a connection closed at once,
        # a cancelled pre-connect): nobody to warn about (can_tell_peers proved the lookup)
        if uid is not None and uid not in self._refused:
            self._refused.add(uid)
            with contextlib.suppress(Exception):  # stderr gone (a closed pipe): the refusal stands, unsaid
                say("Warning", f"another local user (uid {uid}) connected to the tunnel's port {self.port}: refused.")
        return False

    def _relay(self, conn: socket.socket) -> None:
        """Serve one accepted connection: the redirect, or a splice into ssh's forward."""
        upstream = None
        try:
            first = self._take_redirect(conn)
            if first is None:
                return  # the redirect went out, or the peer went away
            upstream = self._connect_forward()
            if upstream is None:
                self._unavailable(conn)
                return
            with self._lock:
                self._open.add(upstream)
            if self.closed.is_set():
                return
            upstream.sendall(first)
            other = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
            other.start()
            _pump(conn, upstream)
            other.join()
        except OSError:
            pass  # either side went away
        finally:
            with self._lock:
                self._clients -= 1
                for sock in (conn, upstream):
                    if sock is not None:
                        self._open.discard(sock)
                        sock.close()

    def _take_redirect(self, conn: socket.socket) -> bytes | None:
        """While the one-time address is open: answer a request for it (None), or return the
        bytes read to tell that this is another request, to be relayed (b"" when none)."""
        offered = self.redirect
        if offered is None:
            return b""
        prefix, location, deadline = offered
        import secrets

        conn.settimeout(ONE_SHOT_REQUEST_TIMEOUT)
        data = b""
        try:
            # the first bytes tell: a TLS hello or another request differs at once
            while len(data) < len(prefix) and prefix.startswith(data):
                chunk = conn.recv(4096)
                if not chunk:
                    return None
                data += chunk
            # in constant time: the path is the secret of the address
            if not secrets.compare_digest(data[:len(prefix)], prefix) or time.monotonic() > deadline:
                return data
            while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST_HEAD:
                chunk = conn.recv(4096)  # the whole head: a close with unread data is a reset
                if not chunk:
                    return None
                data += chunk
            with self._lock:
                if self.redirect is not offered:
                    return data  # served already: nobody gets it twice
                self.redirect = None
            conn.sendall(build_redirect_response(location))
            return None
        except OSError:  # socket.timeout included: a peer that never sends
            return None
        finally:
            conn.settimeout(None)

    def _connect_forward(self) -> socket.socket | None:
        """A connection to ssh's forward; while the run reconnects, wait for it a while."""
        deadline = time.monotonic() + RELAY_WAIT
        while not self.closed.is_set():
            if self.forward:
                try:
                    upstream = open_forward(self.forward, max(RELAY_RETRY, deadline - time.monotonic()))
                    upstream.settimeout(None)
                    return upstream
                except OSError:
                    pass
            if time.monotonic() >= deadline:
                return None
            self.closed.wait(RELAY_RETRY)
        return None

    def _unavailable(self, conn: socket.socket) -> None:
        """Tell a browser that the tunnel is reconnecting (a page that reloads itself)."""
        if self.secure or self.closed.is_set():
            return  # a TLS client could not read a plain answer
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.recv(MAX_REQUEST_HEAD)  # its request: a close with unread data is a reset
            conn.sendall(build_http_response(
                503, "Service Unavailable", '<!DOCTYPE html>\n<meta http-equiv="refresh" content="5">\n'
                "<p>jupyter-tunnel is reconnecting to the Jupyter server; this page reloads itself.</p>\n",
                ["Retry-After: 5"]))


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until end of file, then pass the end on (half-close)."""
    buffer = bytearray(RELAY_BUFFER)
    view = memoryview(buffer)
    try:
        while True:
            count = source.recv_into(buffer)
            if not count:
                break
            sink.sendall(view[:count])
    except OSError:
        # a reset on either side ends both directions: the other pump wakes up too
        _shutdown(source)
        _shutdown(sink)
        return
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _shutdown(sock: socket.socket) -> None:
    """End both directions of ``sock`` now (a thread blocked on it wakes up)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def build_http_response(status: int, reason: str, body: str, headers: Sequence[str] = ()) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, is never cached, and sends no Referer."""
    data = body.encode()
    lines = [f"HTTP/1.1 {status} {reason}", *headers, "Content-Type: text/html; charset=utf-8",
             f"Content-Length: {len(data)}", "Cache-Control: no-store", "Referrer-Policy: no-referrer",
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def build_redirect_response(location: str) -> bytes:
    """The one answer of the browser's one-time address: a 303 to ``location``, and a link."""
    from html import escape
    from urllib.parse import quote

    # Percent-encode all but printable ASCII: a CR or LF from the remote's base_url must not
    # become a header line of its own, and a header must be ASCII anyway.
    location = quote(location, safe="".join(map(chr, range(0x21, 0x7F))))
    body = f'<!DOCTYPE html>\n<title>Jupyter</title>\n<p><a href="{escape(location)}">Open Jupyter</a></p>\n'
    return build_http_response(303, "See Other", body, [f"Location: {location}"])


# ----------------------------------------------------------- 7. wait until it answers


def build_probe_request(server: Server, method: str = "GET", path: str = "api/status") -> bytes:
    """The readiness probe's HTTP/1.0 request (the server closes after it); ``POST api/shutdown`` too."""
    auth = f"Authorization: token {server.token}\r\n" if server.token else ""
    body = "Content-Length: 0\r\n" if method == "POST" else ""
    # "localhost": a name Jupyter takes as local whatever its allow_remote_access says
    return f"{method} {server.base_url}{path} HTTP/1.0\r\nHost: localhost\r\n{auth}{body}\r\n".encode()


def parse_status_line(answer: bytes) -> int:
    """The status code of an HTTP answer, or 0 when there is none."""
    parts = answer.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return 0


class Answer(NamedTuple):
    """What the readiness probe got back through the tunnel."""

    status: int  # the HTTP status; 0 when the connection closed without an answer
    jupyter: bool = False  # whether the answer is a Jupyter server's (see parse_probe_answer)


def parse_probe_answer(answer: bytes) -> Answer:
    """The status of the probe's answer, and whether a Jupyter server gave it (any program may listen
    on the port: a dead server's, taken again).  jupyter_server and notebook >= 5 answer /api/status
    with a JSON object holding "started", and a request without a valid token (a password server) with
    a 403 whose body is {"message": "Forbidden", "reason": null} (jupyter_server 2.21, notebook 6.5)."""
    status = parse_status_line(answer)
    _, sep, body = answer.partition(b"\r\n\r\n")
    try:
        data = json.loads(body) if sep else None
    except (ValueError, RecursionError):  # not JSON (an HTML page), or nested too deep
        data = None
    key = {200: "started", 403: "message"}.get(status)
    return Answer(status, isinstance(data, dict) and key in data)


# What an answer to the readiness probe means (probe_verdict).
READY_ANSWER = "ready"  # Jupyter accepted the request: the tunnel works
REFUSED_TOKEN = "refused"  # Jupyter refused the token of the server's own runtime file
NOT_JUPYTER = "foreign"  # something answered, but not as Jupyter does
NO_ANSWER = "none"  # nothing yet (a timeout, or the connection closed without a word)


def probe_verdict(answer: Answer | None, token_sent: bool) -> str:
    """What the probe's answer means: READY_ANSWER, REFUSED_TOKEN, NOT_JUPYTER or NO_ANSWER.
    Jupyter's 403 without a token (the runtime file has none: a password server, or no auth) is
    what a password server says to anyone: ready, the page asks for the password.  With a token,
    the server refuses the one its own runtime file holds: the file is not that server's (forged,
    or stale and naming another's port) or the token changed; never ready (wait_for_tunnel asks
    until --timeout: a server may still be setting its token up)."""
    if answer is None or not answer.status:
        return NO_ANSWER
    if not answer.jupyter:
        return NOT_JUPYTER
    if answer.status == 403 and token_sent:
        return REFUSED_TOKEN
    return READY_ANSWER


def probe_server(forward: str, server: Server, timeout: float = 5.0, method: str = "GET",
                 path: str = "api/status") -> Answer | None:
    """The answer to ``/api/status`` through ssh's forward (the unix socket ``forward``); status 0
    when the connection closed without a status line (ssh accepted it, then could not connect to
    the server on the remote side), None when nothing came in time.  Through the run's own socket,
    never the local TCP port: the token must reach nobody but the server.  ``Authorization: token``
    works on notebook >= 5 and every jupyter_server (``Bearer`` only on >= 2), and the request is no
    activity: probing never defeats idle culling.  A raw socket, not urllib: it costs nothing to
    import, and HTTP/1.0 makes the server close once it has answered."""
    answer = b""
    try:
        with open_forward(forward, timeout) as conn:
            if server.secure:
                import ssl  # only now: it costs ~15 ms and ~5 MB for every other server

                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # the server's own self-signed certificate
                conn = context.wrap_socket(conn)
            conn.sendall(build_probe_request(server, method, path))
            while len(answer) < MAX_ANSWER:
                chunk = conn.recv(16384)
                if not chunk:
                    break
                answer += chunk
    except socket.timeout:
        if not answer:
            return None  # a busy server (or network): it may still answer
    except OSError:
        if not answer:
            return Answer(0)  # reset, or refused: nothing will answer there
    return parse_probe_answer(answer)


def wait_for_tunnel(master: Master, forward: str, server: Server, timeout: float,
                    still_there: Callable[[], None] | None = None) -> int:
    """Poll the server through the tunnel until Jupyter answers; returns the HTTP status.  ``still_there``
    (for a server this run started), called every STARTED_CHECK_INTERVAL until then, raises when the server
    has gone: one that died right after writing its runtime file fails the start instead of a silent timeout."""
    started = last_check = time.monotonic()
    deadline = started + timeout
    delay = POLL_INTERVAL
    foreign = 0  # the status of the last answer that was not Jupyter's
    refused = False  # whether Jupyter refused the runtime file's token (see probe_verdict)
    where = f"{forward_target(server, master.route.node)} on {master.route.server_host}"
    while True:
        answer = probe_server(forward, server, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        verdict = probe_verdict(answer, bool(server.token))
        if verdict == READY_ANSWER:
            assert answer is not None
            return answer.status
        if verdict == REFUSED_TOKEN:
            refused = True
        elif verdict == NOT_JUPYTER:
            assert answer is not None
            foreign = answer.status  # maybe a server still starting: keep asking until --timeout
        if not master.alive():
            raise TunnelError(f"the connection to {master.route.target} was lost: {master.why()}", EXIT_LOST)
        if still_there is not None and time.monotonic() - last_check >= STARTED_CHECK_INTERVAL:
            still_there()
            last_check = time.monotonic()
        if answer == Answer(0) and time.monotonic() - started > CONNECT_FAILURE_GRACE:
            # Jupyter writes its runtime file once it listens: a server that refuses
            # connections now (a dead server's unix socket, say) will not answer later
            failures = [line for line in master.stderr if "open failed" in line]
            raise TunnelError(f"the Jupyter server at {where} does not accept connections"
                              + (f" (ssh: {failures[-1]})" if failures else ""), EXIT_TIMEOUT)
        if time.monotonic() + delay > deadline:
            if refused:
                raise TunnelError(f"the Jupyter server at {where} refused the token of its own runtime file "
                                  f"(HTTP 403) for {timeout:g} s: the file (pid {server.pid}) does not describe "
                                  "the server that listens there, or its token changed", EXIT_TIMEOUT)
            if foreign:
                raise TunnelError(f"{where} answered (HTTP {foreign}), but not as a Jupyter server: another "
                                  f"program listens there, maybe on the port of a Jupyter server that has "
                                  f"stopped (its runtime file says pid {server.pid})", EXIT_TIMEOUT)
            reason = master.why(last=2) if master.stderr else "no answer"
            raise TunnelError(f"the Jupyter server did not answer through the tunnel within {timeout:g} s "
                              f"({reason})", EXIT_TIMEOUT)
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


# ------------------------------------------ 8. browser: the URL, the one-time address


def build_url(local_port: int, server: Server, host: str = "localhost") -> str:
    """The URL the browser opens: the server's base_url on the local port, with its token."""
    from urllib.parse import quote, urlunsplit

    scheme = "https" if server.secure else "http"
    query = f"token={quote(server.token, safe='')}" if server.token else ""
    # urlunsplit writes the authority first and starts the path with "/": whatever a base_url
    # holds (parse_server refuses the odd ones anyway), the URL points at host:local_port
    return urlunsplit((scheme, f"{host}:{local_port}", server.base_url, query, ""))


def open_browser(browser: str | None, url: str, relay: Relay) -> None:
    """Open the browser, detached (neither Ctrl+C nor our exit ends it), on the relay's one-time
    address that redirects to ``url``: never ``url`` itself, as every local user reads its command line."""
    if browser is not None:
        command = shlex.split(browser)
    elif sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # without a display, Python's webbrowser would run a text browser in this terminal
        say("Info", "No graphical display: open the URL above in your browser.")
        return
    else:
        import webbrowser

        try:
            webbrowser.get()
        except webbrowser.Error:
            say("Warning", "No web browser found: open the URL above yourself.")
            return
        command = [sys.executable, "-m", "webbrowser", "-t"]
    # Windows: webbrowser's "windows-default" (os.startfile): the user's default browser, no xdg-open
    subprocess.Popen([*command, relay.offer_redirect(url)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, **popen_group_options())


# --------------------------------------- 9. stay: reconnect, the server or job ending


def follow_server(servers: Sequence[Server], previous: Server) -> Server | None:
    """After a reconnection: the same server, or the one that replaced it if unambiguous."""
    for server in servers:
        if server.key == previous.key:
            return server
    if len(servers) == 1:
        return servers[0]  # restarted (new pid, maybe new port and token): follow it
    return None


def find_again(servers: Sequence[Server], previous: Server, host: str) -> Server:
    """After a reconnection: the server to forward to again (see follow_server); ServerStopped
    when none runs, a TunnelError when others run and none is it."""
    server = follow_server(servers, previous)
    if server is None and not servers:
        raise ServerStopped()
    if server is None:
        raise TunnelError(f"the Jupyter server on {host} is gone and {len(servers)} others run there: "
                          "not following any", EXIT_NO_SERVER)
    if (server.pid, server.port) != (previous.pid, previous.port):
        say("Info", f"The Jupyter server was restarted: now {server.describe()}")
    return server


def server_stopped(master: Master, forward: str, server: Server) -> bool:
    """Whether the Jupyter server has stopped (the connection itself still up): a failed probe
    proves nothing (a busy server, a slow network), a runtime file gone or a dead pid does, as
    discovery tells.  Neither request counts as activity, so idle culling still works."""
    answer = probe_server(forward, server, timeout=10.0)
    if answer is None or answer.jupyter:
        return False  # it answered, or is too busy to: not stopped
    try:
        servers = discover(master, timeout=15.0)
    except TunnelError:
        return False  # the connection is in trouble: that is the master's watch
    return all(s.key != server.key for s in servers)


class JobWatch:
    """The scheduler job a server runs in: the warnings before its time limit, its end (asked of the
    scheduler on the head: a node may refuse logins once its job is gone), at close its cancelling."""

    def __init__(self, job: ClusterJob, options: ClusterOptions, warn_before: float) -> None:
        now = time.monotonic()
        self.job, self.options = job, options
        self.end = None if job.time_left is None else now + job.time_left  # time.monotonic() at the limit
        # (monotonic time, seconds left then), soonest first
        self.warnings = [(now + after, left) for after, left in build_warning_times(job.time_left, warn_before)]

    def wanted(self, port: int | None, pick: int | None) -> tuple[int | None, int | None]:
        """--port and --pick on the job's node: its own server (with -n auto, --pick chose the job)."""
        return port or self.job.port, pick if self.options.submit else None

    def time_left(self) -> float | None:
        """Seconds until the job's time limit (None: no limit, or unknown)."""
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def describe_left(self) -> str:
        """``1 h 30 min left``, or ``no time limit``."""
        left = self.time_left()
        return NO_TIME_LIMIT if left is None else f"{format_time_left(left)} left"

    def info(self) -> dict:
        """The job's fields of the run's --json line."""
        left = self.time_left()
        return {"job": self.job.job, "scheduler": self.job.scheduler, "time_left": None if left is None else int(left)}

    def wait_time(self, interval: float) -> float:
        """Seconds until the next look: ``interval`` (--check-interval), or the next warning."""
        return max(0.0, min(interval, self.warnings[0][0] - time.monotonic())) if self.warnings else interval

    def warn(self) -> None:
        """Print the warnings that are due (at --warn-before and 2 minutes before the end)."""
        now = time.monotonic()
        due = [warning for warning in self.warnings if warning[0] <= now]
        if due:
            self.warnings = self.warnings[len(due):]
            # after a long sleep (a laptop's suspend) only the last one that is due
            say("Warning", build_job_warning(self.job, min(due[-1][1], self.time_left() or 0.0)))

    def check(self, master: Master, forward: str, server: Server) -> bool:
        """Give the warnings that are due; whether the job has ended: asked of the scheduler
        once its server stops answering, or its time limit has passed."""
        self.warn()
        overdue = self.end is not None and time.monotonic() >= self.end
        if not overdue:
            answer = probe_server(forward, server, timeout=10.0)
            if answer is None or answer.jupyter:
                return False
        try:
            jobs = find_jobs(master, self.options._replace(job=self.job.job, scheduler=self.job.scheduler),
                             30.0, relay=False)
        except TunnelError:
            return False  # the connection is in trouble: that is the master's watch
        # its time left is not taken again: the warnings already given would come again
        return all(job.job != self.job.job or job.state not in ("running", "ready") for job in jobs)

    def stop(self, master: Master | None, head: str, cancel: bool) -> None:
        """At close: with ``cancel`` (--stop-server) cancel the job, else say how to stop it."""
        job = self.job
        if not cancel:
            say("Info", f"{job.describe(first=True)} keeps running on {job.node} ({self.describe_left()}): "
                        f"{job.cancel_command} on {head} stops it; jupyter-tunnel -n auto attaches to it again.")
            return
        if master is None or not master.alive():
            say("Warning", f"the connection to {head} is gone: cannot cancel {job.describe()} "
                           f"({job.cancel_command} on {head} does)")
            return
        try:
            self.cancel(master, head)
        except (TunnelError, OSError) as error:
            say("Warning", f"{job.describe()} may still run: {error}")

    def cancel(self, master: Master, head: str) -> None:
        """Cancel the job through jupyter_node.py on the ``head``; a TunnelError when it could not."""
        say("Info", f"Cancelling {self.job.describe()} on {head}...")
        ask_node_tool(master, self.options.python, build_cancel_args(self.job), 60.0, relay=False)
        say("Info", f"Cancelled {self.job.describe()}.")


# ----------------------------------------------------------------------- 10. clean up


def close_server(master: Master | None, host: str, forward: str, server: Server, stop: bool, reached: bool,
                 started: bool, start: bool) -> None:
    """At close: with ``stop`` (--stop-server) shut the server down, unless never ``reached`` (through the
    tunnel, or started by the run) or found running with ``start`` (--start); else say it keeps running."""
    if not stop or not reached:
        if started:
            say("Info", f"The Jupyter server started on {host} keeps running (pid {server.pid}): "
                        "a later jupyter-tunnel attaches to it; --stop-server stops it when the tunnel closes.")
        return
    if start and not started:
        # "--start --stop-server" reads "a server for this session": one that ran before (someone
        # else's work in it, maybe) is not the run's to stop; plain --stop-server stops the attached one
        say("Info", f"The Jupyter server on {host} was already running: left running (--stop-server "
                    "stops only a server this run started when used with --start)")
        return
    if master is None or not master.alive():
        say("Warning", f"the connection to {host} is gone: cannot stop its Jupyter server (pid {server.pid})")
    elif not (forward and stop_jupyter(master, host, forward, server)):
        say("Warning", f"the Jupyter server on {host} (pid {server.pid}) may still run: "
                       "it did not shut down when asked")


# Waits until a runtime file is gone: jupyter removes it last when it shuts down.
GONE_SCRIPT = r"""f=@FILE@
tries=0
while [ -e "$f" ]; do tries=$((tries + 1)); [ $tries -le @TRIES@ ] || exit 1; sleep 0.1 2>/dev/null || sleep 1; done
"""


def stop_jupyter(master: Master, host: str, forward: str, server: Server, timeout: float = 30.0) -> bool:
    """Shut the server down through ``forward``, saying so: ``POST /api/shutdown`` with its token
    (every jupyter_server and notebook >= 5.1 take it), then wait until its runtime file is gone;
    whether it has stopped."""
    say("Info", f"Stopping the Jupyter server on {host} (pid {server.pid})...")
    answer = probe_server(forward, server, timeout=10.0, method="POST", path="api/shutdown")
    stopped = answer is not None and answer.status in (200, 204)
    if stopped and server.source.startswith("/"):  # else found by "jupyter server list": no file to watch
        script = fill_script(GONE_SCRIPT, {"FILE": shlex.quote(server.source), "TRIES": str(int(timeout * 10))})
        try:
            stopped = master.run("sh -s", stdin=script, timeout=timeout + 10,
                                 what=f"waiting for the Jupyter server (pid {server.pid}) to stop").returncode == 0
        except (subprocess.TimeoutExpired, TunnelError):  # a TunnelError: too much output
            stopped = False
    if stopped:
        say("Info", "The Jupyter server has stopped.")
    return stopped


# ------------------------------------- the run: one Tunnel, taken down by one close()


def _raise_interrupted(signum: int, _frame) -> None:
    """Turn SIGTERM/SIGHUP (Windows: SIGBREAK) into an exception: cleanup runs in ``finally``."""
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_raised() -> Iterator[None]:
    """Inside, SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP Interrupted; then the caller's
    handlers are back (main() may run in-process).  SIGINT too: a shell starts a background job
    with it ignored, and jupyter-tunnel-shutdown interrupts tunnels with it, as Ctrl+C would."""
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in HANDLED_SIGNALS[1:]:  # SIGTERM, SIGHUP (Windows: SIGBREAK)
        signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler not installed from Python, which cannot be put back as such
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def ignore_signals() -> None:
    """No signal may cut the cleanup short: it leaves nothing behind (signals_raised restores them)."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class Settings(NamedTuple):
    """What a run needs of the command line (settings_from builds it from argparse's answer)."""

    ssh_config: str | None = None  # -F
    ssh_options: tuple[str, ...] = ()  # -o
    keepalive: int = DEFAULT_KEEPALIVE
    verbose: int = 0
    new_agent: bool = False  # -a
    new_login: bool = False  # --new-login: never ride the user's own master
    no_control_master: bool = False  # one ssh with a shell and a SOCKS port (StdioMaster), never a master
    port: int | None = None  # the server's remote port (--port)
    dir: str | None = None
    pick: int | None = None
    local_port: int | None = None
    forwards: tuple[tuple[int, int | None], ...] = ()  # --forward: (PORT, LOCAL or None), each once
    timeout: float = DEFAULT_TIMEOUT
    check_interval: float = DEFAULT_CHECK_INTERVAL
    no_reconnect: bool = False
    max_retries: int = DEFAULT_MAX_RETRIES
    json: bool = False
    listing: bool = False  # --list: print what runs, and stop
    stop: bool = False  # --stop: stop the chosen server (or cancel its job) now, open no tunnel
    browser: str | None = None  # -b: None the default browser, "" none
    start: StartOptions | None = None  # --start: how to start a server when none runs
    stop_server: bool = False
    cluster: ClusterOptions | None = None  # --submit, -n auto, --job: the node comes from a job
    warn_before: float = DEFAULT_WARN_BEFORE  # minutes before a job's end: the first warning


def settings_from(args: argparse.Namespace) -> Settings:
    """The Settings named in ``args`` (argparse's answer)."""
    start = StartOptions(args.type or "lab", tuple(args.pre), args.conda_env or "", args.jupyter or "jupyter",
                         args.root_dir or "") if args.start else None
    browser = "" if args.browser is not None and args.browser.lower() in NO_BROWSER else args.browser
    built = ("ssh_options", "listing", "browser", "start", "cluster", "warn_before", "forwards")
    return Settings(**{name: getattr(args, name) for name in Settings._fields if name not in built},
                    ssh_options=tuple(args.ssh_option), listing=args.list, browser=browser, start=start,
                    forwards=tuple(dict.fromkeys(args.forward)),  # a profile's and the same given again: one
                    cluster=cluster_options(args),
                    warn_before=DEFAULT_WARN_BEFORE if args.warn_before is None else args.warn_before)


def cluster_options(args: argparse.Namespace) -> ClusterOptions | None:
    """What ``args`` ask of a scheduler job; None unless --submit, -n auto or --job."""
    if not (args.submit or args.node == AUTO_NODE or args.job):
        return None
    return ClusterOptions(
        submit=args.submit, node=args.node if args.submit and args.node else "", job=args.job or "",
        new=args.new, app=args.type or "lab", pre=tuple(args.pre), conda_env=args.conda_env or "",
        queue=args.queue or "", resources=tuple(args.resource), scheduler=args.scheduler or "",
        python=args.python or DEFAULT_PYTHON)


def list_jobs(master: Master, jobs: list[ClusterJob], as_json: bool) -> int:
    """``--list -n auto``: the user's Jupyter jobs, and the servers on each running job's node."""
    servers: dict[str, list[Server] | None] = {}
    for node in dict.fromkeys(job.node for job in jobs if job.node):  # one login per node
        try:
            servers[node] = discover(master, node)
        except TunnelError as error:
            # one node refusing (down, no logins) must not hide the other jobs: its servers show as unknown
            say("Warning", f"cannot list the servers on {node}: {error}")
            servers[node] = None
    if as_json:
        print(json.dumps([job_info(n, job, servers.get(job.node, [])) for n, job in enumerate(jobs, 1)], indent=2))
    elif jobs:
        print(format_job_table(jobs, servers))
    else:
        say("Info", f"No Jupyter job of yours is pending or running on {master.route.target}'s cluster: "
                    "start one with --submit.")
    return EXIT_OK


def list_servers(servers: list[Server], host: str, as_json: bool) -> int:
    """``--list``: the servers found, as a table or JSON."""
    if as_json:
        print(json.dumps([server_info(n, s) for n, s in enumerate(servers, 1)], indent=2))
    elif servers:
        print(format_server_table(servers))
    else:
        say("Info", f"No Jupyter server is running on {host}.")
    return EXIT_OK


class Tunnel:
    """One run and all it owns: the private directory and its lock, the registry entry, the
    connection, the server, its forward and local port (the relay), a job's watch.  ``run()``
    takes the steps; ``close()`` takes down whatever was reached."""

    def __init__(self, settings: Settings, ssh: str, route: Route, password: str | None = None) -> None:
        self.settings = settings
        self.connection = Connection(settings, ssh, route, password)
        self.directory = ""
        self.lock: int | None = None  # the descriptor of the run's lock (take_run_lock)
        self.registration: Registration | None = None
        self.server: Server | None = None
        self.relay: Relay | None = None  # the local port, listened on by the run itself
        self.forward = ""  # ssh's forward to the server: a unix socket in the private directory
        self.status = 0  # HTTP status of the last successful probe
        self.ready = False  # whether the tunnel has answered once (the URL was printed)
        self.started = False  # whether this run started its server (--start, --submit)
        self.start_log = ""  # --start: the started server's log on the remote
        self.watch: JobWatch | None = None  # the scheduler job the server runs in
        self.extras = [ExtraForward(number, port, local)  # --forward: the session's other ports
                       for number, (port, local) in enumerate(settings.forwards, 1)]

    @property
    def route(self) -> Route:
        """The hops, and the node once a job named it."""
        return self.connection.route

    @property
    def url(self) -> str:
        """The URL of the server through the tunnel, with its token."""
        assert self.server is not None and self.relay is not None
        return build_url(self.relay.port, self.server)

    def run(self) -> int:
        """Every step, until interrupted or the server ends; returns the exit code."""
        with signals_raised():
            try:
                self.prepare()
                if self.settings.listing:
                    return self.list()
                if self.settings.stop:
                    return self.stop_now()
                self.connect()
                self.announce()
                if self.settings.browser != "" and self.relay is not None:
                    open_browser(self.settings.browser, self.url, self.relay)
                self.announce_extras()
                say("Info", "Press Ctrl+C to close the tunnel.")
                return self.stay()
            except ServerStopped as stopped:
                say("Info", str(stopped) or f"The Jupyter server on {self.route.server_host} has stopped; "
                                            "closing the tunnel.")
                self.server = self.watch = None  # nothing left for --stop-server to stop
                return EXIT_OK
            except (KeyboardInterrupt, Interrupted):
                ignore_signals()  # a second signal (SIGTERM then SIGHUP) must not cut end_prompts short
                if self.ready:
                    say("Info", "Closing the tunnel.")
                    return EXIT_OK
                self.connection.end_prompts()
                say("Info", "Interrupted.")
                return EXIT_INTERRUPTED
            finally:
                ignore_signals()
                self.close()

    def prepare(self) -> None:
        """Step 1's start: the private directory, its lock, the registry entry, the ssh config."""
        self.directory = make_private_dir()
        # locked before the entry names the directory: a run is never seen registered and unlocked
        self.lock = take_run_lock(self.directory)
        route = self.route
        self.registration = Registration(build_state(os.getpid(), route.hosts, route.node, route.server_host,
                                                     self.directory, time.time()))
        self.connection.set_up(self.directory, self.registration)

    def login(self) -> Master:
        """Step 1: ride the user's master or log in, and say what comes next."""
        seconds = self.connection.open()
        if seconds is not None:  # on a cluster, the job's node comes first
            then = "." if self.settings.cluster and not self.watch else \
                f"; looking for Jupyter servers on {self.route.describe_server_host()}..."
            say("Info", build_connected_line(seconds, not self.connection.batch) + then)
        assert self.connection.master is not None
        return self.connection.master

    def list(self) -> int:
        """``--list``: log in, print the servers found (or, -n auto, the jobs) and stop."""
        master = self.login()
        if self.settings.cluster is not None:
            return list_jobs(master, find_jobs(master, self.settings.cluster), self.settings.json)
        return list_servers(discover(master), self.route.server_host, self.settings.json)

    def stop_now(self) -> int:
        """``--stop``: choose the server (or job) as a run would, stop it now, and exit."""
        master, cluster, host = self.login(), self.settings.cluster, self.route.server_host
        if cluster is not None:  # the job is what stops: its node is not asked (nor logged into)
            job = find_job(master, cluster, self.settings.timeout, self.settings.pick)
            JobWatch(job, cluster, self.settings.warn_before).cancel(master, self.route.target)
            return EXIT_OK
        server = self.choose_or_start(master, discover(master))
        if not stop_jupyter(master, host, add_forward(master, server), server):
            raise TunnelError(f"the Jupyter server on {host} (pid {server.pid}) did not stop when asked: "
                              f"it may be busy; kill {server.pid} on {host} stops it", EXIT_ERROR)
        return EXIT_OK

    def discover(self, master: Master) -> list[Server]:
        """Steps 2 and 3: on a cluster the job first (its node is where to look), then the servers."""
        cluster = self.settings.cluster
        if cluster is not None and self.watch is None:
            assert self.registration is not None
            job = find_job(master, cluster, self.settings.timeout, self.settings.pick)
            self.watch = JobWatch(job, cluster, self.settings.warn_before)
            self.connection.reach(job.node)
            self.started = cluster.submit and not job.existing
            self.registration.update(node=job.node, remote_host=job.node, job=job.job, scheduler=job.scheduler,
                                     started_server=self.started,
                                     job_end=None if job.time_left is None else time.time() + job.time_left)
            say("Info", f"Looking for Jupyter servers on {self.route.describe_server_host()}...")
        return discover(master)

    def connect(self) -> None:
        """Steps 1 to 7: log in, find or start the server, forward the local port, wait for it."""
        master = self.login()
        servers = self.discover(master)
        if self.server is None:
            self.server = self.choose_or_start(master, servers)
        else:
            self.server = find_again(servers, self.server, self.route.server_host)
        # the forward first: --stop-server can reach the server even when no local port can be had
        self.forward = add_forward(master, self.server)
        if self.relay is None:
            fixed = self.settings.local_port is not None
            first = self.settings.local_port or self.server.port or DEFAULT_SOCKET_PORT
            self.relay = Relay(open_local_port(first, fixed), self.forward, self.server.secure)
        self.relay.forward, self.relay.secure = self.forward, self.server.secure
        for extra in self.extras:  # their local ports after Jupyter's, which keeps its own rule
            extra.connect(master)
        assert self.registration is not None
        # every forward this run added to the user's master, to be cancelled if the run is killed
        shared = {"control": master.control, "specs": list(master.forwards)} if isinstance(master, SharedMaster) else None
        self.registration.update(**build_forward_state(self.server, self.relay.port), shared_forward=shared,
                                 forwards=[extra.info() for extra in self.extras])
        still_there = None
        if self.started and self.settings.start is not None and not self.status:
            # the first wait for a server this run started: it may die right after its start
            still_there = functools.partial(check_started, master, self.server, self.start_log, self.settings.start.app)
        try:
            self.status = wait_for_tunnel(master, self.forward, self.server, self.settings.timeout, still_there)
        except TunnelError as error:
            if error.code == EXIT_START:
                self.server = None  # it is gone: nothing keeps running, nothing to stop at close
            raise
        self.registration.update(state=READY)
        self.ready = True

    def choose_or_start(self, master: Master, servers: list[Server]) -> Server:
        """Steps 4 and 5: the server to tunnel to; with --start, one started now when none matches."""
        assert self.registration is not None
        port, pick = self.settings.port, self.settings.pick
        if self.watch is not None:
            port, pick = self.watch.wanted(port, pick)
        server, started = choose_or_start(master, servers, self.settings.start, self.settings.timeout,
                                          port, self.settings.dir, pick)
        if started is not None:
            self.started, self.start_log = True, started.log
            self.registration.update(started_server=True)
        return server

    def announce(self) -> None:
        """Step 8: the Info lines, and the URL on stdout (or --json)."""
        assert self.server is not None and self.relay is not None
        server, port = self.server, self.relay.port
        say("Info", f"Jupyter {server.describe()} on {self.route.server_host}")
        if self.status == 403:
            say("Info", "The server asks for its password: the page will prompt for it.")
        if server.secure:
            say("Info", "The server uses https with its own certificate: the browser will warn about it.")
        if self.watch is not None:
            job = self.watch.job
            say("Info", f"Running in {job.scheduler} {job.describe()} on {job.node}: {self.watch.describe_left()}")
        say("Info", f"Port used on localhost: {port}")  # last, right before the URL
        if self.settings.json:
            where = {"sock": server.sock} if server.sock else {"remote_port": server.port}
            print(json.dumps({"url": self.url, "local_port": port, "remote_host": self.route.server_host,
                              **where, "forwards": [extra.info() for extra in self.extras], "pid": os.getpid(),
                              **(self.watch.info() if self.watch else {})}), flush=True)
        else:
            print(self.url, flush=True)

    def announce_extras(self) -> None:
        """The --forward ports' Info lines, once: after the URL and the browser's start, which the
        probe (up to FORWARD_PROBE_TIMEOUT) must not hold back; their ports never change."""
        self.probe_extras()
        for extra in self.extras:
            say("Info", build_extra_line(extra.describe(self.route.server_host), extra.answered))

    def probe_extras(self) -> list[ExtraForward]:
        """Probe the --forward ports nothing answered on yet (all at once, FORWARD_PROBE_TIMEOUT); those
        that answer now."""
        waiting = [extra for extra in self.extras if not extra.answered]
        for extra, answers in zip(waiting, probe_forwards([extra.forward for extra in waiting])):
            extra.answered = answers
        return [extra for extra in waiting if extra.answered]

    def stay(self) -> int:
        """Step 9: watch the connection and the server until interrupted; reconnect when it drops.
        At each check, a --forward port that nothing answered on yet is probed: the user hears when it does."""
        while True:
            master = self.connection.master
            assert master is not None and self.server is not None
            interval = self.settings.check_interval
            if not master.wait(interval if self.watch is None else self.watch.wait_time(interval)):
                if self.watch is None and server_stopped(master, self.forward, self.server):
                    raise ServerStopped()
                if self.watch is not None and self.watch.check(master, self.forward, self.server):
                    raise ServerStopped(f"{self.watch.job.describe(first=True)} has ended; closing the tunnel.")
                for extra in self.probe_extras():
                    say("Info", f"{extra.describe(self.route.server_host)} answers now.")
                continue
            reason = master.why(lost=True)
            if self.settings.no_reconnect:
                raise TunnelError(f"the connection to {self.route.target} was lost: {reason}", EXIT_LOST)
            say("Warning", f"connection to {self.route.target} lost ({reason}); reconnecting...")
            self.reconnect()

    def reconnect(self) -> None:
        """Log in again with backoff and forward the SAME local port (open tabs keep working)."""
        old_url = self.url
        self.unforward()
        self.connection.reset()
        for refused in self.connection.retries():
            try:
                self.connect()
            except TunnelError as error:
                self.unforward()
                self.connection.close_master()
                if error.code in (EXIT_NO_SERVER, EXIT_PORT):
                    raise
                stop = self.connection.refusal_error(refused)
                if stop is not None:
                    raise stop from None
                say("Warning", str(error))
                continue
            say("Info", "Reconnected.")
            if self.url != old_url:
                self.announce()  # the server was restarted: new token, new URL
            return

    def unforward(self) -> None:
        """While no connection holds the forwards, the relays wait instead of using them: a dead
        ssh's SOCKS port is free for any local user to listen on (and to get the browser's cookies)."""
        for relay in [self.relay, *(extra.relay for extra in self.extras)]:
            if relay is not None:
                relay.forward = ""

    def stop_server(self) -> None:
        """At close: with --stop-server, shut the server down (or cancel its job); else say it keeps running."""
        master = self.connection.master
        if self.watch is not None:
            self.watch.stop(master, self.route.target, self.settings.stop_server)
        elif self.server is not None:
            close_server(master, self.route.server_host, self.forward, self.server, self.settings.stop_server,
                         self.ready or self.started, self.started, self.settings.start is not None)

    def close(self) -> None:
        """Step 10: leave nothing behind: the local port, the server if asked, the connection,
        the private directory, and the registry entry last (until all is gone, it leads to it)."""
        for relay in [self.relay, *(extra.relay for extra in self.extras)]:
            if relay is not None:
                relay.close()  # first: no new connection reaches a server about to stop
        self.stop_server()
        self.connection.close()
        if self.directory:
            if WINDOWS and self.lock is not None:
                # an open file cannot be removed there: the lock goes first (a shutdown that finds
                # the run dead meanwhile only removes its files on Windows: clean_leftovers)
                os.close(self.lock)
                self.lock = None
            shutil.rmtree(self.directory, ignore_errors=True)
        if self.registration is not None:
            self.registration.remove()
        if self.lock is not None:
            # last: until the entry is gone, the lock tells that the run is alive; run() has
            # its signals ignored meanwhile (see jupyter_tunnel_shutdown.send)
            os.close(self.lock)
            self.lock = None


# ------------------------------------------------------------------- the command line


def resource_option(text: str) -> str:
    """An argparse type: a jupyter-node resource request, which must split like a shell's words."""
    return node_resource_option(text_option(text))


def text_option(text: str) -> str:
    """An argparse type: text without control characters (``-o`` values and the ``-F`` path go into
    the generated ssh config, where a newline would start an option of the user's making)."""
    if has_control(text):
        raise argparse.ArgumentTypeError(f"control characters (a newline, say) are not allowed: {text!r}")
    return text


def forward_option(text: str) -> tuple[int, int | None]:
    """An argparse type: ``--forward PORT[:LOCAL]``, each a port (1 to 65535); (PORT, LOCAL or None)."""
    port, colon, local = text.partition(":")
    check = int_option(1, 65535)
    try:
        return check(port), check(local) if colon else None
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected PORT or PORT:LOCAL, each a whole number from 1 to 65535, "
                                         f"not {text!r}") from None


def browser_option(text: str) -> str:
    """An argparse type: a browser command that splits like a shell's (``PROG [ARGS]``)."""
    try:
        words = shlex.split(text)
    except ValueError as error:  # "No closing quotation"
        raise argparse.ArgumentTypeError(f"{text!r} does not split into words like a shell command: "
                                         f"{str(error).lower()}") from None
    if not words:
        raise argparse.ArgumentTypeError('empty browser command: give a program, or "none"')
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the original tool's option names."""
    parser = argparse.ArgumentParser(
        prog="jupyter-tunnel",
        # one line: an error after it must not drown under 35 options (--help lists them)
        usage="%(prog)s [PROFILE] -s [USER@]HOST [HOST ...] [options]   (--help lists the options)",
        description=f"jupyter-tunnel {__version__}: create an SSH tunnel to a Jupyter server running\n"
                    "remotely and open the local web browser on it. One login per host for the whole run.",
        epilog="examples:\n"
               "  through a gateway:      jupyter-tunnel -s user@gateway.ext user@server.ext\n"
               "  start one if none runs: jupyter-tunnel -s gw server --start --pre '. ~/venv/bin/activate'\n"
               "  a cluster job:          jupyter-tunnel -s gw head --submit -t lab -r h_rt=4:00:00 -w 10m\n"
               "\nexit codes: 0 closed normally, 2 bad option, 3 program missing, 4 cannot connect (or\n"
               "  the account runs no command), 5 no (single) server, 6 no local port, 7 Jupyter did\n"
               "  not answer in time (or the job did not start), 8 connection lost, 9 --start or\n"
               "  --submit could not start a server,\n"
               "  130 interrupted before the tunnel was ready,\n"
               "  1 other errors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # the groups in the order a run needs them (the README's tables follow the same order)
    connection = parser.add_argument_group("connection (one login per host for the whole run)")
    choosing = parser.add_argument_group("choosing a server")
    local = parser.add_argument_group("the browser and the local port")
    lifetime = parser.add_argument_group("lifetime: waiting, reconnecting, closing")
    connection.add_argument("-s", "--host", type=text_option, nargs="+", action="extend", default=[], metavar="HOST",
                        help="host(s) to contact in order: all but the last are jump hosts ([user@]host[:port], "
                             "names from ~/.ssh/config work); repeatable: -s gw -s srv is -s gw srv")
    local.add_argument("-b", "--browser", type=browser_option, metavar="PROG",
                        help="browser to start once the tunnel answers (it gets a one-time address that redirects "
                             'to the URL); "n" or "none": start none [default: the system\'s default browser]')
    connection.add_argument("-n", "--node", type=text_option, metavar="NODE",
                        help="cluster node (Grid Engine, Slurm) running the server; the last -s host "
                             "is then the head node, from which the node is reached; \"auto\": the node "
                             "of your running Jupyter job; with --submit: the node to ask for")
    connection.add_argument("-a", "--ssha", dest="new_agent", action="store_true",
                        help="start a fresh ssh-agent for this run even if one runs "
                             "(one is started anyway when SSH_AUTH_SOCK is unset)")
    connection.add_argument("--new-login", action="store_true",
                        help="log in for this run even when your own ssh connection to the host is open "
                             "(a ControlMaster at its ControlPath), which is otherwise used without a login; "
                             "-a and -p imply it")
    connection.add_argument("--no-control-master", action="store_true",
                        help="hold the run's one login without an ssh master: one ssh runs the remote commands "
                             "in a shell on its stdin and forwards through a SOCKS port on 127.0.0.1 (chosen by "
                             "itself for Windows' own OpenSSH); for an ssh or a machine where ControlMaster "
                             "fails. A server on a unix socket cannot be reached so")
    connection.add_argument("-p", "--pass", "--sshp", dest="password", action="store_true",
                        help="ask the SSH password once and answer every hop's password prompt with it "
                             "(read from stdin when it is not a terminal)")
    connection.add_argument("-F", "--ssh-config", type=text_option, metavar="FILE",
                        help="ssh config file, used for every hop [default: ~/.ssh/config]")
    connection.add_argument("-o", "--ssh-option", type=text_option, action="append", default=[], metavar="OPT",
                        help="ssh option (Key=Value) for every hop; repeatable")
    choosing.add_argument("--list", action="store_true",
                        help="list the Jupyter servers running on the host (numbered) and exit")
    choosing.add_argument("--stop", action="store_true",
                        help="stop the Jupyter server chosen as a run would choose it (with -n auto or --job: "
                             "cancel its job) and exit, without a tunnel")
    local.add_argument("--json", action="store_true",
                        help="machine-readable output on stdout: the --list as a JSON array, or, once the tunnel "
                             "is ready, one JSON object (url, local_port, ...) instead of the URL")
    choosing.add_argument("--port", type=int_option(1, 65535), metavar="RPORT",
                        help="use the server listening on this remote port")
    choosing.add_argument("--dir", metavar="TEXT", help="use the server whose root directory contains TEXT")
    choosing.add_argument("--pick", type=int_option(1, MAX_PICK), metavar="N", help="use server number N of --list")
    local.add_argument("--local-port", type=int_option(1, 65535), metavar="LPORT",
                        help="local port to use [default: the remote port, or the next free one]")
    local.add_argument("--forward", type=forward_option, action="append", default=[], metavar="PORT[:LOCAL]",
                        help="also forward PORT of the host where Jupyter runs (the node, on a cluster), e.g. a "
                             "Dask dashboard (8787) or TensorBoard (6006), to local port LOCAL [default: PORT, or "
                             "the next free one]; as Jupyter's port: yours only, kept across reconnects; repeatable")
    lifetime.add_argument("-w", "--timeout", type=number_option("seconds", MAX_TIMEOUT, durations=True),
                        default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up when Jupyter does not answer (with --start: has not started) within "
                             f"SECONDS (at most {MAX_TIMEOUT:g}; sleep syntax works too: 90s, 5m, 1.5h); with "
                             "--submit, the job's whole wait in the queue [default: %(default)g]")
    connection.add_argument("--keepalive", type=int_option(1, MAX_KEEPALIVE), default=DEFAULT_KEEPALIVE,
                        metavar="SECONDS",
                        help=f"ssh keepalive interval (1 to {MAX_KEEPALIVE}): a dead connection is noticed "
                             "after 3 of them [default: %(default)s]")
    lifetime.add_argument("--no-reconnect", action="store_true",
                        help="exit (code 8) when the connection drops instead of reconnecting")
    lifetime.add_argument("--max-retries", type=int_option(1, MAX_RETRIES), default=DEFAULT_MAX_RETRIES, metavar="N",
                        help=f"give up (code 8) after N failed reconnection attempts after a drop (at most "
                             f"{MAX_RETRIES}); {MAX_REFUSED_LOGINS} logins refused by the server end the run "
                             "anyway [default: %(default)s]")
    lifetime.add_argument("--check-interval", type=number_option("seconds", MAX_CHECK_INTERVAL),
                        default=DEFAULT_CHECK_INTERVAL, metavar="SECONDS",
                        help=f"how often to check that the Jupyter server still runs (at most {MAX_CHECK_INTERVAL:g}); "
                             "the tunnel closes (code 0) when it has stopped [default: %(default)g]")
    start = parser.add_argument_group(
        "starting a server (--start)", "without -n: a server on a cluster node needs a job (--submit)")
    start.add_argument("--start", action="store_true",
                       help="when no Jupyter server runs (or none matches --port/--dir/--pick), start one "
                            "on the remote through the same login: detached, on 127.0.0.1 with a token, "
                            "its log private under ~/.local/state/jupyter-tunnel; it keeps running after "
                            "the tunnel closes")
    add_server_options(start, START_APPS, "lab", "the remote", "lab, notebook or server")
    parser.set_defaults(type=None)  # told from "-t lab" given: see ignored_option_problem
    start.add_argument("--jupyter", type=text_option, metavar="PROG",
                       help="the remote jupyter command, when it is not on PATH [default: jupyter]")
    start.add_argument("--root-dir", type=text_option, metavar="PATH",
                       help="the started server's working and root directory [default: the remote home]")
    start.add_argument("--stop-server", action="store_true",
                       help="when the tunnel closes, shut down the Jupyter server it is attached to "
                            "(POST /api/shutdown with its token) and wait until it is gone; with --start, "
                            "only a server this run started (one that already ran is left running)")
    cluster = parser.add_argument_group(
        "a cluster job (--submit, -n auto, --job)",
        "jupyter_node.py runs on the head through the same login (its source on the head's python's "
        "stdin: nothing to install); -t, --pre and --conda-env are those of --start")
    cluster.add_argument("--submit", action="store_true",
                         help="submit Jupyter as a scheduler job, as jupyter-node does, then tunnel to it; "
                              "a Jupyter job of yours that runs already is used instead (see --new)")
    cluster.add_argument("--new", action="store_true", help="with --submit: submit a new job even if one runs")
    cluster.add_argument("--job", type=job_option, metavar="ID",
                         help="tunnel to the server of this job (implies -n auto)")
    cluster.add_argument("-q", "--queue", type=text_option, metavar="NAME",
                         help="with --submit: queue (Grid Engine: -l q=NAME) or partition (Slurm)")
    cluster.add_argument("-r", "--resource", type=resource_option, action="append", default=[], metavar="REQ",
                         help="with --submit: resource request, repeatable, as jupyter-node's "
                              "(h_rt=1:00:00, mem=4G, time=2:00:00)")
    cluster.add_argument("--scheduler", choices=SCHEDULERS, help="sge or slurm [default: the one on the head's PATH]")
    cluster.add_argument("--python", type=text_option, metavar="PROG",
                         help=f"the head's Python (>= 3.6) that runs jupyter_node.py [default: {DEFAULT_PYTHON}]")
    cluster.add_argument("--warn-before", type=number_option("minutes", MAX_WARN_BEFORE), metavar="MINUTES",
                         help=f"warn this long before the job's time limit, and again {LAST_WARNING:g} minutes "
                              f"before [default: {DEFAULT_WARN_BEFORE:g}]")
    parser.add_argument("--profiles", action="store_true",
                        help="list the profiles (jupyter-tunnel PROFILE [options]: the options of [PROFILE] in "
                             "/etc/jupyter-tunnel/profiles.ini and ~/.config/jupyter-tunnel/profiles.ini, "
                             "before yours) and exit; after PROFILE: print the command line it runs and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show every ssh command run and the ssh config file it reads (on "
                             "Debug: lines); twice (-vv): run ssh with -v too, and show what it says")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def explain_error(error: Exception) -> tuple[str, int]:
    """The ``Error:`` line and exit code for a TunnelError, a hung ssh or an OSError."""
    if isinstance(error, TunnelError):
        return str(error), error.code
    if isinstance(error, subprocess.TimeoutExpired):
        # a multiplexed ssh (discovery, -O forward) that hangs: the connection is stuck
        return f"ssh did not answer within {error.timeout:g} s: the connection seems stuck", EXIT_ERROR
    # an OSError: a file of the run (private directory, registry entry) that cannot be written
    return describe_os_error(error), EXIT_ERROR


# Options that only a started server uses: given without --start or --submit they would be
# ignored, so they are refused (one rule for all, as -q, -r and --new always were).
STARTING_OPTIONS = (("-t/--type", "type"), ("--pre", "pre"), ("--conda-env", "conda_env"),
                    ("--jupyter", "jupyter"), ("--root-dir", "root_dir"))
# ...and those that only a scheduler job uses (--submit, -n auto, --job).
JOB_OPTIONS = (("--scheduler", "scheduler"), ("--python", "python"), ("--warn-before", "warn_before"))


def ignored_option_problem(args: argparse.Namespace) -> str:
    """Which option of ``args`` this run would ignore, and with what it goes ("" for none); their
    argparse defaults are None (or []), so that a value given is told from none given."""
    if not (args.start or args.submit):
        for name, dest in STARTING_OPTIONS:
            if getattr(args, dest):
                return f"{name} goes with --start or --submit (no server is started without them)"
    if not (args.submit or args.node == AUTO_NODE or args.job):
        for name, dest in JOB_OPTIONS:
            if getattr(args, dest) is not None:
                return f"{name} goes with a scheduler job: --submit, -n auto or --job"
    if args.list and args.stop_server:
        return "--stop-server cannot go with --list: --list only lists, it stops nothing"
    clashes = [name for name, given in (("--list", args.list), ("--start", args.start), ("--submit", args.submit),
                                        ("--stop-server", args.stop_server)) if given and args.stop]
    return f"--stop cannot go with {clashes[0]}: it stops a running server, and opens no tunnel" if clashes else ""


def cluster_option_problem(args: argparse.Namespace) -> str:
    """Why the cluster options of ``args`` do not go together ("" when they do)."""
    if args.submit:
        clashes = [("--start", args.start), ("--list", args.list), ("--job", args.job),
                   ("-n auto", args.node == AUTO_NODE), ("-t server", args.type == "server"),
                   ("--jupyter", args.jupyter), ("--root-dir", args.root_dir)]
        given = [name for name, value in clashes if value]
        if given:
            return (f"--submit cannot go with {given[0]}: it submits jupyter-node's job (-t lab|notebook, "
                    "-n NODE asks for that node)")
    elif args.new or args.queue or args.resource:
        return "--new, -q/--queue and -r/--resource go with --submit"
    if args.job and args.node not in (None, AUTO_NODE):
        return "--job names the job whose node to use: it cannot go with -n NODE"
    return ""


# A profile's keys that are jupyter-node's options (--wait, --log...): left out here, not
# refused, so that one profile serves both tools (jupyter-node leaves out the tunnel's).
NODE_KEYS = frozenset(profile_keys(jupyter_node.build_parser()))


# Windows' answers to the options it cannot serve (docs/windows.md)
WINDOWS_NO_PASSWORD = ("-p/--pass cannot work on Windows: its ssh runs an SSH_ASKPASS helper only if it is an .exe "
                       "(a script fails with \"CreateProcessW failed error:193\"). Type the password at ssh's own "
                       "prompt in this console (once per host for the whole run), or load your key into the "
                       "Windows ssh-agent service (ssh-add) and leave -p out")
WINDOWS_NO_AGENT = ("-a/--ssha cannot work on Windows: the agent there is the Windows service ssh-agent, which "
                    "every ssh uses. Enable it once in an elevated PowerShell (Get-Service ssh-agent | "
                    "Set-Service -StartupType Automatic; Start-Service ssh-agent), run ssh-add, and leave -a out")


def platform_option_problem(args: argparse.Namespace, windows: bool) -> str:
    """Why this system cannot do what ``args`` ask ("" when it can): -p and -a on ``windows``."""
    if windows and args.password:
        return WINDOWS_NO_PASSWORD
    if windows and args.new_agent:
        return WINDOWS_NO_AGENT
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:  # "jupyter-tunnel PROFILE [options]": the profile's options, then the user's
        profile, argv, notes = expand_profile(sys.argv[1:] if argv is None else list(argv), parser, left_out=NODE_KEYS)
    except ProfileError as error:
        say("Error", str(error))
        return EXIT_USAGE
    if "-J" in argv:
        parser.error("-J is ssh's option: give jupyter-tunnel the whole chain with -s, in order "
                     "(ssh -J gw srv is jupyter-tunnel -s gw srv)")
    args = parser.parse_args(argv)
    if args.profiles:
        return show_profiles(parser, profile, argv, left_out=NODE_KEYS)
    for note in notes if args.verbose else ():
        say("Debug", note)
    if not args.host:
        parser.error("no host given: name them with -s, in order, e.g. jupyter-tunnel -s gw.example.org "
                     "server.internal")
    for problem in (ignored_option_problem(args), cluster_option_problem(args),
                    platform_option_problem(args, WINDOWS)):
        if problem:
            parser.error(problem)
    if args.ssh_config and not os.path.isfile(args.ssh_config):
        parser.error(f"ssh config file not found: {args.ssh_config}")
    settings = settings_from(args)
    try:
        route = parse_hosts(args.host, args.node)
    except TunnelError as error:
        parser.error(str(error))
    if settings.cluster is not None:  # the node is learnt from the scheduler, once on the head
        route = route._replace(node="", scheduled=True)
    if args.start and (args.node or args.job):  # --job: a server on the job's node
        parser.error("--start cannot start a server on a cluster node: that needs a scheduler job. "
                     "Use --submit, or run jupyter-node on the head node, then jupyter-tunnel -s ... HEAD -n NODE")
    # put back at every exit whatever a prompt of the run left changed (echo off)
    terminal = save_terminal()
    try:
        ssh = which_or_fail("ssh", "the OpenSSH client", TunnelError)
        if settings.browser:
            which_or_fail(shlex.split(settings.browser)[0], "given with -b/--browser", TunnelError)
        password = read_password() if args.password else None
        prune_registry()  # a SIGKILLed tunnel's ssh master and files go now
        return Tunnel(settings, ssh, route, password).run()
    except (KeyboardInterrupt, Interrupted):  # before the run, or a signal that escaped its handling
        say("Info", "Interrupted.")
        return EXIT_INTERRUPTED
    except (TunnelError, subprocess.TimeoutExpired, OSError) as error:  # the one place: one line
        message, code = explain_error(error)
        say("Error", message)
        return code
    finally:
        restore_terminal(terminal)


if __name__ == "__main__":
    sys.exit(main())

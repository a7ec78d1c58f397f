"""The real test environment as plain code: a real sshd, test users, real Jupyter servers.

tests/conftest.py wraps these in pytest fixtures; benchmarks/ready.py uses them directly,
so the benchmark measures exactly what the integration tests exercise.  Nothing here
imports pytest: set-up failures raise SetupError (conftest turns it into pytest.fail).

Everything runs on this machine, as root (tests/run.sh installs what is needed):

* ``start_sshd(dir)``: one OpenSSH server listening on 127.0.0.1, .2 and .3 — distinct
  addresses, because a jump hop that is the same user@host:port as the target fails
  with "jumphost loop" — on two ports: ``port`` (public key) and ``pw_port``
  (password only).  Its ``config`` is an ssh_config for ``ssh -F`` with the aliases
  gw/head/srv (key), pgw/phead/psrv (password) and dead (connection refused).
* ``setup_users()``: the test users, all with password ``TEST_PASSWORD``; and two accounts
  whose login shell runs no command (``jtfalse``: /bin/false, ``jtnologin``: nologin).
* ``JupyterStarter``: the real ``jupyter server``/``jupyter lab`` of a venv, started as a
  test user; they write their real runtime files.

Users of this module on one machine are serialised by ``machine_lock()``: they share the
users, their runtime directories and the one-server invariant.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

from helpers import free_port, http_get, pids_of, tail, tcp_open, wait_for

TEST_PASSWORD = "jt-Secret-pw1"
SERVER_USER = "jtuser"  # exactly one Jupyter server during the session
NO_SERVER_USER = "jtnone"  # never a Jupyter server
MULTI_USER = "jtmulti"  # tests start several servers for it
TEST_USERS = (SERVER_USER, NO_SERVER_USER, MULTI_USER)
# Accounts whose login shell runs no command: ssh logs in (-N needs no shell), and every
# command fails.  Never a Jupyter server; the same key and password as the others.
FALSE_SHELL_USER = "jtfalse"  # login shell /bin/false: exits 1, says nothing
NOLOGIN_USER = "jtnologin"  # login shell nologin: "This account is currently not available."
REFUSING_USERS = {FALSE_SHELL_USER: "/bin/false", NOLOGIN_USER: "/usr/sbin/nologin"}

SSHD = "/usr/sbin/sshd"
# one loopback address per "host", so that gw -> head -> srv are three distinct hops
HOST_ADDRESSES = {"gw": "127.0.0.1", "head": "127.0.0.2", "srv": "127.0.0.3"}
PASSWORD_ALIASES = {"pgw": "127.0.0.1", "phead": "127.0.0.2", "psrv": "127.0.0.3"}
DEAD_ADDRESS = ("127.0.0.4", 1)  # nothing listens there: "Connection refused"
LISTEN_ADDRESSES = tuple(sorted(set(HOST_ADDRESSES.values())))

RUNTIME_SUBDIR = Path(".local/share/jupyter/runtime")  # jupyter_core's default
JUPYTER_START_TIMEOUT = 60.0
LOCK_FILE = "/tmp/jupyter-tunnel-tests.lock"
LOCK_TIMEOUT = 1800.0  # a whole other test session may be running

# "Accepted publickey for U from A port P ssh2: ..." / "Accepted password for ..." (the
# 2FA sshd: "Accepted keyboard-interactive/pam for ...", after a key's "Partial publickey") is
# logged once per real login; "Accepted key ED25519 ... found at" (the key query) is not one
_LOGIN_RE = re.compile(r"\bAccepted (?:publickey|password|keyboard-interactive/pam) for \S+ from ")

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


class SetupError(Exception):
    """The environment cannot be set up; the message says why and what to do."""


def die_with_parent() -> None:
    """preexec_fn: have the kernel SIGTERM the child when its parent dies, so a killed run leaks no daemons."""
    # runs after subprocess has switched uid, which would otherwise clear the setting
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run(argv: Sequence[str], what: str, env: Optional[Dict[str, str]] = None, check: bool = True,
        input: Optional[str] = None, timeout: float = 60.0) -> "subprocess.CompletedProcess[str]":
    """Run a set-up command (text output); SetupError with its output when it fails and `check`."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise SetupError(f"{what} failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    return proc


def stop_process(proc: "subprocess.Popen[Any]", timeout: float = 10.0, group: bool = False) -> None:
    """SIGTERM `proc` (or its process group), wait, SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    # the group only while its leader lives: afterwards its pid may belong to someone else
    kill: Callable[[int, int], None] = os.killpg if group else os.kill
    try:
        kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def processes_in(directory: Path, uid: int) -> List[int]:
    """The pids of ``uid``'s processes whose working directory is ``directory`` or below it."""
    found = []
    for pid in pids_of(uid):
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue  # gone meanwhile
        if cwd == directory or directory in cwd.parents:
            found.append(pid)
    return found


def stop_leftovers(find: Callable[[], Iterable[int]], grace: float = 5.0, timeout: float = 10.0) -> List[int]:
    """Stop the processes that ``find()`` lists (a Jupyter server that a failed run left):
    ``grace`` seconds to go by themselves (a server asked to shut down removes its runtime
    file before it exits), then SIGTERM (on which Jupyter removes its runtime file too), then
    SIGKILL; returns the pids that had to be signalled."""
    def gone_within(seconds: float) -> bool:
        try:
            wait_for(lambda: not list(find()), seconds, what="processes left behind")
        except AssertionError:
            return False
        return True

    if gone_within(grace):
        return []
    signalled = list(find())
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in find():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if gone_within(timeout):
            break
    return signalled


# --- session basics: lock, users ----------------------------------------------


def check_can_run() -> None:
    """SetupError unless we are root and sshd is installed."""
    if os.geteuid() != 0:
        raise SetupError("the integration tests must run as root (use ./tests/run.sh)")
    if not os.access(SSHD, os.X_OK):
        raise SetupError(f"{SSHD} is missing: install openssh-server (./tests/run.sh does)")


@contextlib.contextmanager
def machine_lock(on_wait: Callable[[str], None] = lambda message: None) -> Iterator[None]:
    """Hold the machine-wide test lock; `on_wait` is told when another holder makes us wait."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    def try_lock() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    try:
        if not try_lock():
            on_wait(f"waiting for another test session to release {LOCK_FILE}")
            wait_for(try_lock, LOCK_TIMEOUT, interval=0.5, what=f"the test lock {LOCK_FILE}")
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class UserAccount:
    """A local test user, as the fixtures set it up."""

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def runtime_dir(self) -> Path:
        """The user's default Jupyter runtime directory (where servers write jpserver-*.json)."""
        return self.home / RUNTIME_SUBDIR

    def runtime_files(self) -> List[Path]:
        """The jpserver-*.json and nbserver-*.json files now in the runtime directory."""
        if not self.runtime_dir.is_dir():
            return []
        return sorted(
            p for p in self.runtime_dir.iterdir() if re.fullmatch(r"(jp|nb)server-\d+\.json", p.name)
        )

    def write_runtime_file(self, name: str, content: str) -> Path:
        """Put a runtime file `name` into the runtime directory, owned by the user as a server's own is."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.runtime_dir, self.uid, self.gid)
        path = self.runtime_dir / name
        path.write_text(content)
        os.chown(path, self.uid, self.gid)
        return path


def setup_users() -> Dict[str, UserAccount]:
    """Create the test users if missing, set their password, wipe their Jupyter runtime dirs."""
    shells = {**{name: "/bin/sh" for name in TEST_USERS}, **REFUSING_USERS}
    for name, shell in shells.items():
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            run(["useradd", "--create-home", "--shell", shell, name], f"creating user {name}")
            continue
        if name in REFUSING_USERS and entry.pw_shell != shell:
            run(["usermod", "--shell", shell, name], f"setting the shell of {name}")
    # also unlocks the accounts: useradd leaves "!" which sshd (UsePAM no) refuses
    run(["chpasswd"], "setting the test passwords", input="".join(f"{n}:{TEST_PASSWORD}\n" for n in shells))
    users = user_accounts()
    for user in users.values():
        # files left by earlier (killed) runs would look like servers to discovery
        shutil.rmtree(user.runtime_dir, ignore_errors=True)
    return users


def user_accounts() -> Dict[str, UserAccount]:
    """The test users as they exist now (`setup_users` makes them)."""
    users = {}
    for name in TEST_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SetupError(f"test user {name} is missing (tests/realenv.setup_users makes it)") from None
        users[name] = UserAccount(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    return users


def make_session_dir() -> Path:
    """A short, world-readable temp dir (ControlPath sockets need short paths)."""
    path = Path(tempfile.mkdtemp(prefix="jt-", dir="/tmp"))
    # 0755: sshd reads authorized_keys there as the logging-in user
    path.chmod(0o755)
    return path


# --- sshd --------------------------------------------------------------------


@dataclass
class SshServer:
    """A running sshd and the client-side files to reach it (always use `ssh -F config`)."""

    dir: Path
    config: Path  # ssh_config for `ssh -F`: OpenSSH ignores $HOME, so tests never rely on ~/.ssh
    sshd_config: Path
    log: Path
    port: int  # public-key logins
    pw_port: int  # password-only logins
    client_key: Path
    known_hosts: Path
    askpass: Path  # SSH_ASKPASS program answering password prompts from $JT_TEST_PASSWORD
    proc: "subprocess.Popen[bytes]" = field(repr=False)

    def log_offset(self) -> int:
        """Current size of the sshd log, to pass to `logins_since` later."""
        return self.log.stat().st_size

    def logins_since(self, offset: int) -> List[str]:
        """The "Accepted publickey/password for ..." lines (one per real login) logged after `offset`."""
        with open(self.log, "rb") as f:
            f.seek(offset)
            data = f.read().decode("utf-8", errors="replace")
        # a line still being written is not counted yet
        lines = data.split("\n")[:-1]
        return [line for line in lines if _LOGIN_RE.search(line)]

    def ssh_argv(self, *args: str) -> List[str]:
        """`ssh -F <config> args...`."""
        return ["ssh", "-F", str(self.config), *args]

    def ssh(
        self, *args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 30.0
    ) -> "subprocess.CompletedProcess[str]":
        """Run `ssh -F <config> args...` with no stdin; return the completed process (text output)."""
        return subprocess.run(
            self.ssh_argv(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
        )

    def askpass_env(
        self, password: str = TEST_PASSWORD, prompt_log: Optional[Path] = None
    ) -> Dict[str, str]:
        """os.environ plus what makes ssh ask `askpass` for every password (works through -J hops)."""
        env = dict(os.environ)
        env.update(
            SSH_ASKPASS=str(self.askpass),
            # force: ask the program even with a terminal and without DISPLAY
            SSH_ASKPASS_REQUIRE="force",
            JT_TEST_PASSWORD=password,
        )
        if prompt_log is not None:
            env["JT_ASKPASS_LOG"] = str(prompt_log)  # one line per prompt shown
        else:
            env.pop("JT_ASKPASS_LOG", None)
        return env

    def stop(self) -> None:
        """Stop sshd (sessions it forked go with their connections)."""
        stop_process(self.proc)


_SSHD_CONFIG = """\
# written by tests/realenv.py for one test session
{listen}
HostKey {keys}/host_ed25519
PidFile {dir}/sshd.pid
# one authorized_keys for every user; StrictModes no because it lives in /tmp
AuthorizedKeysFile {keys}/authorized_keys
StrictModes no
{login}
PermitRootLogin no
PubkeyAuthentication yes
PermitEmptyPasswords no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
# tests open many connections at once: don't let sshd drop them
MaxStartups 100:30:200
MaxSessions 50
# VERBOSE logs one "Accepted publickey/password for" line per login: tests count them
LogLevel VERBOSE
Subsystem sftp /usr/lib/openssh/sftp-server
{methods}"""

# how passwords are asked, by whether sshd goes through PAM
_SSHD_LOGIN = {
    False: """\
# no PAM: sshd checks /etc/shadow itself, no pam_systemd/motd side effects
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no""",
    True: """\
# PAM asks passwords and codes (keyboard-interactive); its service is the name of the
# program, sshd-jt2fa: /etc/pam.d/sshd-jt2fa
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication yes""",
}

_SSH_CONFIG = """\
# written by tests/realenv.py: use with `ssh -F {config}`
{key_hosts}
Host {key_aliases}
    Port {port}
    User {user}
    IdentityFile {client_key}
    IdentitiesOnly yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no

{password_hosts}
Host {password_aliases}
    Port {pw_port}
    User {user}
    PubkeyAuthentication no
    PreferredAuthentications password

Host dead
    HostName {dead_host}
    Port {dead_port}
    User {user}

Host *
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    # not yes: the tool's password mode must be able to prompt
    BatchMode no
{connect_timeout}    LogLevel ERROR
"""

_ASKPASS = """\
#!/bin/sh
# SSH_ASKPASS for the tests: ssh passes the prompt as $1. With SSH_ASKPASS_REQUIRE=force
# every prompt comes here (host-key questions too), so answer password prompts only.
if [ -n "${JT_ASKPASS_LOG:-}" ]; then printf '%s\\n' "$1" >>"$JT_ASKPASS_LOG"; fi
case "$1" in
    *[Pp]assword*) printf '%s\\n' "$JT_TEST_PASSWORD" ;;
    *) echo "askpass: refusing to answer: $1" >&2; exit 1 ;;
esac
"""


def sshd_config_text(d: Path, keys: Path, ports: Iterable[int], methods: Mapping[int, str],
                     pam: bool = False) -> str:
    """The sshd_config of a test sshd: listening on every test address on ``ports``, its pid file
    in ``d``, the host key and authorized_keys in ``keys``, logins on port P limited to
    ``methods[P]`` (AuthenticationMethods); ``pam``: PAM asks the passwords and codes."""
    listen = "\n".join(f"ListenAddress {a}:{p}" for a in LISTEN_ADDRESSES for p in ports)
    matches = "".join(f"\nMatch LocalPort {port}\n    AuthenticationMethods {how}\n" for port, how in methods.items())
    return _SSHD_CONFIG.format(listen=listen, dir=d, keys=keys, login=_SSHD_LOGIN[pam], methods=matches)


def host_blocks(aliases: Mapping[str, str]) -> str:
    """``Host ALIAS`` blocks of a client config, each with its ``HostName``."""
    return "\n".join(f"Host {alias}\n    HostName {addr}" for alias, addr in aliases.items())


def known_hosts_text(host_key_pub: Path, ports: Iterable[int]) -> str:
    """A known_hosts line giving the host key for every test address on `ports`."""
    host_key = host_key_pub.read_text().split()[:2]
    patterns = ",".join(f"[{a}]:{p}" for a in LISTEN_ADDRESSES for p in ports)
    return f"{patterns} {' '.join(host_key)}\n"


def ssh_config_text(d: Path, config: Path, port: int, pw_port: int, known_hosts: Path,
                    connect_timeout: Optional[int] = 5) -> str:
    """The client config for `ssh -F`: aliases gw/head/srv on `port`, pgw/phead/psrv on `pw_port`
    (``connect_timeout`` None: no ConnectTimeout, as a person's config mostly has none)."""
    return _SSH_CONFIG.format(
        config=config,
        key_hosts=host_blocks(HOST_ADDRESSES),
        key_aliases=" ".join(HOST_ADDRESSES),
        password_hosts=host_blocks(PASSWORD_ALIASES),
        password_aliases=" ".join(PASSWORD_ALIASES),
        port=port,
        pw_port=pw_port,
        user=SERVER_USER,
        client_key=d / "client_ed25519",
        dead_host=DEAD_ADDRESS[0],
        dead_port=DEAD_ADDRESS[1],
        known_hosts=known_hosts,
        connect_timeout="" if connect_timeout is None else f"    ConnectTimeout {connect_timeout}\n",
    )


def _write_ssh_files(d: Path, port: int, pw_port: int) -> None:
    """Write sshd_config, ssh_config, known_hosts and the askpass program into `d`."""
    # the password-only port: keys are refused there
    (d / "sshd_config").write_text(sshd_config_text(d, d, (port, pw_port), {pw_port: "password"}))
    (d / "known_hosts").write_text(known_hosts_text(d / "host_ed25519.pub", (port, pw_port)))
    (d / "ssh_config").write_text(ssh_config_text(d, d / "ssh_config", port, pw_port, d / "known_hosts"))
    askpass = d / "askpass.sh"
    askpass.write_text(_ASKPASS)
    askpass.chmod(0o755)


def start_sshd(d: Path) -> SshServer:
    """Start an sshd (key port and password port on 127.0.0.1-3) with its files in `d`; check logins work.

    The caller stops it with `SshServer.stop()`.
    """
    # sshd's privilege-separation dir; a fresh container has no /run/sshd
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    os.chmod("/run/sshd", 0o755)
    for key, comment in (("host_ed25519", "jt-host"), ("client_ed25519", "jt-client")):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(d / key)], "ssh-keygen")
    shutil.copyfile(d / "client_ed25519.pub", d / "authorized_keys")
    (d / "authorized_keys").chmod(0o644)  # read by sshd as the logging-in user

    port = free_port(LISTEN_ADDRESSES)
    pw_port = free_port(LISTEN_ADDRESSES, exclude=[port])
    _write_ssh_files(d, port, pw_port)
    run([SSHD, "-t", "-f", str(d / "sshd_config")], "sshd -t (config check)")

    log = d / "sshd.log"
    proc = _spawn_sshd(SSHD, d / "sshd_config", log, d / "sshd.out")
    server = SshServer(
        dir=d,
        config=d / "ssh_config",
        sshd_config=d / "sshd_config",
        log=log,
        port=port,
        pw_port=pw_port,
        client_key=d / "client_ed25519",
        known_hosts=d / "known_hosts",
        askpass=d / "askpass.sh",
        proc=proc,
    )
    try:
        _wait_listening(proc, (port, pw_port), log, d / "sshd.out")
        _check_logins(server)
    except BaseException:
        server.stop()
        raise
    return server


def _spawn_sshd(program: str, config: Path, log: Path, out: Path) -> "subprocess.Popen[bytes]":
    """Start ``program`` (sshd, or a link to it: its name is its PAM service) on ``config``."""
    log.touch()
    with open(out, "wb") as output:
        return subprocess.Popen(
            [program, "-D", "-e", "-f", str(config), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


def _wait_listening(proc: "subprocess.Popen[bytes]", ports: Iterable[int], log: Path, out: Path) -> None:
    """Wait until the sshd ``proc`` listens on every test address on ``ports``."""
    ports = tuple(ports)

    def listening() -> bool:
        if proc.poll() is not None:
            raise SetupError(f"sshd exited with {proc.returncode}:\n{tail(log)}{tail(out)}")
        return all(tcp_open(a, p) for a in LISTEN_ADDRESSES for p in ports)

    try:
        wait_for(listening, 10, what=f"sshd to listen on {LISTEN_ADDRESSES} ports {ports}")
    except AssertionError as err:
        raise SetupError(str(err)) from None


def _check_logins(server: SshServer) -> None:
    """Fail early and clearly unless jump hops and every test user can log in (run in parallel)."""
    checks = {
        "ssh -J gw,head srv": server.ssh_argv("-J", "gw,head", "srv", "true"),
        f"{NO_SERVER_USER}@srv": server.ssh_argv(f"{NO_SERVER_USER}@srv", "true"),
        f"{MULTI_USER}@srv": server.ssh_argv(f"{MULTI_USER}@srv", "true"),
    }
    procs = {
        what: subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for what, argv in checks.items()
    }
    failures = []
    try:
        for what, proc in procs.items():
            try:
                output, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"{what}: exit {proc.returncode}: {output.decode(errors='replace').strip()}")
    finally:
        # on Ctrl+C too: no check may outlive the set-up
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failures:
        raise SetupError("sshd set-up check failed:\n" + "\n".join(failures) + f"\nsshd log:\n{tail(server.log)}")


# --- the two-factor sshd: PAM and TOTP codes, as HPC centres run them ------------

# sshd names its PAM service after its program (auth-pam.c: SSHD_PAM_SERVICE is __progname):
# started through a link of its own it reads /etc/pam.d/sshd-jt2fa, written here, and the
# system's /etc/pam.d/sshd stays untouched
TWO_FACTOR_SSHD = "/usr/local/sbin/sshd-jt2fa"
TWO_FACTOR_PAM = Path("/etc/pam.d/sshd-jt2fa")
# aliases of the client config: password + code (keyboard-interactive only), key + code
CODE_ALIASES = {"tgw": "127.0.0.1", "tsrv": "127.0.0.3"}
KEY_CODE_ALIASES = {"kgw": "127.0.0.1", "ksrv": "127.0.0.3"}
CODE_PROMPT = "Verification code: "  # pam_google_authenticator's
FORWARD_PASS_PROMPT = "Password & verification code: "  # ...with its forward_pass option
# one failed attempt each, as sshd logs it (kbdint through PAM, or plain password)
_FAILED_RE = re.compile(r"\bFailed (?:keyboard-interactive/pam|password) for ")
_CLOSED_RE = re.compile(r"\b(?:Connection closed by|Disconnected from) ")  # a connection's end, logged last

# PAM stacks of the 2FA sshd (TwoFactorServer.use_pam).  "code": pam_unix's "Password: ",
# then google-authenticator's "Verification code: "; after an accepted key (AuthenticationMethods
# publickey,keyboard-interactive) the code only: sshd hands the methods passed so far to PAM
# in SSH_AUTH_INFO_0 (auth-pam.c, expose_authinfo), and keyed.sh skips pam_unix then.
# "forward_pass": one prompt for both, "Password & verification code: ", the password passed
# on to pam_unix.  "refuse": the password, then a refusal without any prompt (what a centre's
# rate limit or a revoked token looks like to the client).  nodelay: no 2 s pause after a
# failure (the tests count failures, not time).
_PAM_STACKS = {
    "code": """\
auth [success=1 default=ignore] pam_exec.so quiet {dir}/keyed.sh
auth required pam_unix.so nodelay
auth required pam_google_authenticator.so secret={dir}/secrets/${{USER}} user=root
""",
    "forward_pass": """\
auth required pam_google_authenticator.so forward_pass secret={dir}/secrets/${{USER}} user=root
auth required pam_unix.so use_first_pass nodelay
""",
    "refuse": """\
auth required pam_unix.so nodelay
auth requisite pam_deny.so
""",
}
_PAM_REST = """\
account required pam_unix.so
session required pam_permit.so
password required pam_deny.so
"""
_KEYED = """\
#!/bin/sh
# pam_exec: success when a key was accepted first (sshd's SSH_AUTH_INFO_0 says "publickey ...")
case "${SSH_AUTH_INFO_0:-}" in publickey*) exit 0;; esac
exit 1
"""

_TWO_FACTOR_HOSTS = """\
# the two-factor sshd: password + code ({code_aliases}), key + code ({key_aliases})
{code_hosts}
Host {code_aliases}
    Port {code_port}
    User {user}
    PubkeyAuthentication no
    PreferredAuthentications keyboard-interactive

{key_hosts}
Host {key_aliases}
    Port {key_port}
    User {user}
    IdentityFile {client_key}
    IdentitiesOnly yes
    PreferredAuthentications publickey,keyboard-interactive

"""


@dataclass
class TwoFactorServer(SshServer):
    """The 2FA sshd (``port``: key + code, ``pw_port``: password + code) and its ``config``: the
    aliases tgw/tsrv and kgw/ksrv, then the usual gw/head/srv, with no ConnectTimeout (a person's
    config mostly has none: ssh then waits at a prompt as long as the person takes)."""

    secrets: Path = Path()
    secret: str = ""  # jtuser's TOTP secret (base32), the codes' source

    def code(self) -> str:
        """The code the user's authenticator app shows now (oathtool; the secret on its stdin)."""
        return run(["oathtool", "--totp", "-b", "-"], "oathtool", input=self.secret + "\n").stdout.strip()

    def use_pam(self, stack: str) -> None:
        """Switch the PAM stack ("code", "forward_pass", "refuse"): sshd reads it at every new connection."""
        TWO_FACTOR_PAM.write_text(f"# written by tests/realenv.py for {TWO_FACTOR_SSHD}; removed when it stops\n"
                                  + _PAM_STACKS[stack].format(dir=self.dir) + _PAM_REST)

    def failures_since(self, offset: int) -> List[str]:
        """The "Failed keyboard-interactive/pam|password for ..." lines logged after ``offset``."""
        return self._lines_since(offset, _FAILED_RE)

    def closed_since(self, offset: int) -> List[str]:
        """The lines of a connection's end logged after ``offset`` (its failures come before)."""
        return self._lines_since(offset, _CLOSED_RE)

    def _lines_since(self, offset: int, pattern: "re.Pattern[str]") -> List[str]:
        """The whole lines matching ``pattern`` logged after ``offset``."""
        with open(self.log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", errors="replace").split("\n")[:-1]
        return [line for line in lines if pattern.search(line)]

    def stop(self) -> None:
        """Stop it; remove its PAM file and its link (whatever stopping it raised)."""
        try:
            super().stop()
        finally:
            remove_two_factor_files()


def start_two_factor_sshd(d: Path, base: SshServer) -> TwoFactorServer:
    """Start the 2FA sshd (files in ``d``, ``base``'s host and client keys) for ``SERVER_USER``:
    the user's TOTP secret made here, PAM stack "code"."""
    import base64
    import secrets as random_secrets

    for program in ("oathtool", "google-authenticator"):
        if not shutil.which(program):
            raise SetupError(f"{program} is missing: install oathtool and libpam-google-authenticator "
                             "(./tests/run.sh does)")
    if os.path.lexists(TWO_FACTOR_SSHD) and os.path.realpath(TWO_FACTOR_SSHD) != SSHD:
        raise SetupError(f"{TWO_FACTOR_SSHD} exists and is not a link to {SSHD}: not touching it")
    if not os.path.lexists(TWO_FACTOR_SSHD):
        os.symlink(SSHD, TWO_FACTOR_SSHD)
    server: Optional[TwoFactorServer] = None
    try:  # from here on, the link and the PAM file go again whatever fails
        secret_dir = d / "secrets"
        secret_dir.mkdir(mode=0o700)
        secret = base64.b32encode(random_secrets.token_bytes(10)).decode()
        # google-authenticator's file format: the secret, then its options; no DISALLOW_REUSE nor
        # RATE_LIMIT (a test logs in several times within one 30 s step), WINDOW_SIZE 3: the code of
        # the step before and after is taken too
        path = secret_dir / SERVER_USER
        path.write_text(f'{secret}\n" WINDOW_SIZE 3\n" TOTP_AUTH\n')
        path.chmod(0o400)  # owned by root, as user=root wants
        (d / "keyed.sh").write_text(_KEYED)
        (d / "keyed.sh").chmod(0o755)

        key_port = free_port(LISTEN_ADDRESSES, exclude=[base.port, base.pw_port])
        code_port = free_port(LISTEN_ADDRESSES, exclude=[base.port, base.pw_port, key_port])
        # password + code, key + code; PAM asks the code (and the password), sshd the key
        methods = {code_port: "keyboard-interactive", key_port: "publickey,keyboard-interactive"}
        (d / "sshd_config").write_text(sshd_config_text(d, base.dir, (key_port, code_port), methods, pam=True))
        known_hosts = d / "known_hosts"
        known_hosts.write_text(known_hosts_text(base.dir / "host_ed25519.pub",
                                                (base.port, base.pw_port, key_port, code_port)))
        config = d / "ssh_config"
        config.write_text(_TWO_FACTOR_HOSTS.format(
            code_aliases=" ".join(CODE_ALIASES), key_aliases=" ".join(KEY_CODE_ALIASES),
            code_hosts=host_blocks(CODE_ALIASES), key_hosts=host_blocks(KEY_CODE_ALIASES), code_port=code_port,
            key_port=key_port, user=SERVER_USER, client_key=base.client_key)
            + ssh_config_text(base.dir, config, base.port, base.pw_port, known_hosts, connect_timeout=None))
        server = TwoFactorServer(
            dir=d, config=config, sshd_config=d / "sshd_config", log=d / "sshd.log", port=key_port,
            pw_port=code_port, client_key=base.client_key, known_hosts=known_hosts, askpass=base.askpass,
            proc=None,  # type: ignore[arg-type]  # set below, once the PAM file is there
            secrets=secret_dir, secret=secret)
        server.use_pam("code")
        run([TWO_FACTOR_SSHD, "-t", "-f", str(d / "sshd_config")], "sshd -t (2FA config check)")
        server.proc = _spawn_sshd(TWO_FACTOR_SSHD, d / "sshd_config", server.log, d / "sshd.out")
        _wait_listening(server.proc, (key_port, code_port), server.log, d / "sshd.out")
    except BaseException:
        if server is not None and server.proc is not None:
            server.stop()
        else:
            remove_two_factor_files()
        raise
    return server


def remove_two_factor_files() -> None:
    """Remove the 2FA sshd's PAM file and its link (the system's own files are never touched)."""
    TWO_FACTOR_PAM.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(TWO_FACTOR_SSHD)


# --- Jupyter -----------------------------------------------------------------


def check_venv(venv: Path, user: UserAccount) -> None:
    """SetupError unless `venv` has jupyter and `user` can run its Python (they run Jupyter from it)."""
    jupyter = venv / "bin" / "jupyter"
    if not os.access(jupyter, os.X_OK):
        raise SetupError(f"{jupyter} not found: run the tests with ./tests/run.sh (it makes the venv)")
    try:
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import jupyter_core"],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            env=user_env(user, venv),
            cwd="/",
            capture_output=True,
            text=True,
        )
        problem = proc.stderr.strip() if proc.returncode != 0 else ""
    except PermissionError as err:
        problem = str(err)
    if problem:
        raise SetupError(
            f"the venv {venv} is not usable by user {user.name}: {problem}\n"
            "(a Python under /root, e.g. pyenv's, is not: /root is 0700; ./tests/run.sh makes "
            "the venv from /usr/bin/python3)"
        )


def user_env(user: UserAccount, venv: Path) -> Dict[str, str]:
    """A minimal login-like environment for `user`, with the venv's bin first on PATH."""
    return {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": "/bin/sh",
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }


@dataclass
class JupyterProc:
    """A real Jupyter server run as a test user, with what its runtime file says."""

    user: str
    app: str
    pid: int
    port: int
    token: str
    url: str
    base_url: str
    root_dir: Path
    runtime_file: Path
    info: Dict[str, Any] = field(repr=False)  # the whole runtime file
    log: Path
    proc: "subprocess.Popen[bytes]" = field(repr=False)

    @property
    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.proc.poll() is None

    def api(self, path: str = "", token: Optional[str] = None) -> "tuple[int, bytes]":
        """GET <base_url>api/<path> directly (not through a tunnel), with `token` if given."""
        headers = {"Authorization": f"token {token}"} if token else {}
        return http_get(f"http://127.0.0.1:{self.port}{self.base_url}api/{path}".rstrip("/"), headers)

    def stop(self) -> None:
        """Stop the server like a user would (SIGTERM; SIGINT would ask for confirmation); SIGKILL after 10 s."""
        stop_process(self.proc, group=True)
        # after a SIGKILL the file stays behind: don't let it leak into later tests
        self.runtime_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the server, leaving its runtime file behind as a real crash does."""
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class _Launch:
    """A Jupyter process started but maybe not ready yet."""

    user: str
    app: str
    proc: "subprocess.Popen[bytes]"
    runtime_dir: Path
    root_dir: Path
    log: Path
    answers: bool  # ready only once GET 127.0.0.1:<port><base_url>api answers

    def runtime_files(self) -> List[Path]:
        """Its jpserver-PID.json (nbserver-PID.json for notebook < 7) and -open.html, once written."""
        return sorted(self.runtime_dir.glob(f"*server-{self.proc.pid}*"))


class JupyterStarter:
    """Starts Jupyter servers as test users and stops them all at the end."""

    def __init__(self, venv: Path, log_dir: Path, users: Mapping[str, UserAccount]) -> None:
        self.venv = venv
        self.log_dir = log_dir
        self.users = users
        self._launches: List[_Launch] = []
        self._made_dirs: List[Path] = []

    def start(
        self,
        user: str,
        *,
        app: str = "server",
        args: Sequence[str] = (),
        root_dir: Optional[Path] = None,
    ) -> JupyterProc:
        """Start `jupyter <app>` as `user` and return it once its runtime file and /api answer."""
        return self._wait_ready(self._launch(user, app, args, root_dir))

    def start_typed(self, user: str, app: str, *args: str, venv: Optional[Path] = None,
                    root: str = "jt-root") -> JupyterProc:
        """Start `jupyter <app> <args>` exactly as given (where it listens too) from `venv`, in a new
        root dir named `root`-XXXX; return it once its runtime file parses (it may not answer on
        127.0.0.1: a socket, TLS, another address)."""
        return self._wait_ready(self._launch(user, app, args, None, venv=venv, root=root, as_typed=True))

    def start_many(
        self, count: int, user: str, *, app: str = "server", args: Sequence[str] = ()
    ) -> List[JupyterProc]:
        """Start `count` servers at once (each ~2 s of CPU) and return them when all are ready."""
        launches = [self._launch(user, app, args, None) for _ in range(count)]
        return [self._wait_ready(launch) for launch in launches]

    def _launch(self, user: str, app: str, args: Sequence[str], root_dir: Optional[Path], *,
                venv: Optional[Path] = None, root: str = "jt-root", as_typed: bool = False) -> _Launch:
        """Spawn the server process as `user`; don't wait for it."""
        if app not in ("server", "lab", "notebook"):
            raise ValueError(f"app must be 'server', 'lab' or 'notebook', not {app!r}")
        account = self.users[user]
        venv = venv or self.venv
        if root_dir is None:
            # a fresh directory the user owns, under its home, like a real notebook dir
            root_dir = Path(tempfile.mkdtemp(prefix=f"{root}-", dir=account.home))
            os.chown(root_dir, account.uid, account.gid)
            self._made_dirs.append(root_dir)
        log = Path(tempfile.mkstemp(prefix=f"jupyter-{user}-{app}-", suffix=".log", dir=self.log_dir)[1])
        where = [] if as_typed else [
            "--ip=127.0.0.1",
            f"--port={free_port()}",  # jupyter_server moves on to the next port if this one got taken
            f"--ServerApp.root_dir={root_dir}",
        ]
        argv = [str(venv / "bin" / "jupyter"), app, "--no-browser", *where, *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=account.uid,
                group=account.gid,
                extra_groups=[],
                env=user_env(account, venv),
                cwd=root_dir,
                # its own process group: stopping it reaches any kernels too
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        # `jupyter server` execs jupyter-server, so the pid (and the file name) is the child's
        launch = _Launch(user, app, proc, account.runtime_dir, Path(root_dir), log, answers=not as_typed)
        self._launches.append(launch)
        return launch

    def _wait_ready(self, launch: _Launch) -> JupyterProc:
        """Wait until the runtime file parses and GET <url>api answers 200."""
        proc, log = launch.proc, launch.log
        what = f"jupyter {launch.app} of {launch.user}"

        def ready() -> "Optional[tuple[Path, Dict[str, Any]]]":
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited with {proc.returncode}")
            try:
                [path] = [p for p in launch.runtime_files() if p.suffix == ".json"]
                info: Dict[str, Any] = json.loads(path.read_text())
                if launch.answers:
                    status, _ = http_get(f"http://127.0.0.1:{info['port']}{info['base_url']}api", timeout=2)
                    if status != 200:
                        return None
            except (OSError, ValueError, KeyError):
                return None  # not written yet / half written / not listening yet
            return path, info

        try:
            path, info = wait_for(ready, JUPYTER_START_TIMEOUT, interval=0.1,
                                  what=f"{what} (its runtime file *server-{proc.pid}.json)")
        except AssertionError as err:
            stop_process(proc, group=True)
            raise AssertionError(f"{err}\n--- {log} ---\n{tail(log)}") from None
        return JupyterProc(
            user=launch.user,
            app=launch.app,
            pid=proc.pid,
            port=int(info["port"]),
            token=str(info.get("token", "")),
            url=str(info["url"]),
            base_url=str(info["base_url"]),
            root_dir=launch.root_dir,
            runtime_file=path,
            info=info,
            log=log,
            proc=proc,
        )

    def stop_all(self) -> None:
        """Stop every server started here (in parallel: each takes ~0.7 s) and remove their root dirs."""
        for launch in self._launches:
            if launch.proc.poll() is None:
                try:
                    os.killpg(launch.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass  # exited meanwhile
        for launch in self._launches:
            stop_process(launch.proc, group=True)  # waits; SIGKILL if SIGTERM was not enough
            for path in launch.runtime_files():  # left by kill() or a SIGKILL
                path.unlink(missing_ok=True)
        self._launches.clear()
        for path in self._made_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._made_dirs.clear()


# --- the whole environment, for scripts (benchmarks/ready.py, tests/demo.py) ---------


@contextlib.contextmanager
def environment(
    user: str, app: str = "server", no_lock: bool = False, on_wait: Callable[[str], None] = lambda message: None
) -> Iterator["tuple[SshServer, JupyterProc, Path]"]:
    """Lock, users, sshd and one Jupyter ``app`` of ``user`` from this venv; all stopped at exit.

    ``no_lock``: the caller is a test session, which holds the lock and has set the users
    up already (setting them up again would wipe the runtime file of its jtuser server).
    """
    with contextlib.ExitStack() as stack:
        check_can_run()
        venv = Path(sys.prefix)
        if not (venv / "bin" / "jupyter").exists():
            # before the lock: there may be a long wait for it, and nothing to wait for
            raise SetupError(f"no Jupyter in {venv}: run this with the test venv's Python, e.g. "
                             "/opt/jupyter-tunnel-test/bin/python (./tests/run.sh makes the venv)")
        if not no_lock:
            stack.enter_context(machine_lock(on_wait))
        users = user_accounts() if no_lock else setup_users()
        directory = make_session_dir()
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        check_venv(venv, users[user])
        sshd = start_sshd(directory)
        stack.callback(sshd.stop)
        starter = JupyterStarter(venv, directory, users)
        stack.callback(starter.stop_all)
        yield sshd, starter.start(user, app=app), directory

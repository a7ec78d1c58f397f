"""Fixtures for jupyter-tunnel's tests: a real sshd and real Jupyter servers, no mocks.

The set-up code itself is in tests/realenv.py (plain functions, shared with
benchmarks/ready.py); this file wraps it in pytest fixtures.

Everything runs on this machine, as root (tests/run.sh installs what is needed):

* ``sshd`` (session): one OpenSSH server listening on 127.0.0.1, .2 and .3 — distinct
  addresses, because a jump hop that is the same user@host:port as the target fails
  with "jumphost loop" — on two ports: ``port`` (public key) and ``pw_port``
  (password only).  Its ``config`` is an ssh_config for ``ssh -F`` with the aliases
  gw/head/srv (key), pgw/phead/psrv (password) and dead (connection refused).
* test users, all with password ``TEST_PASSWORD``: ``jtuser`` has exactly one Jupyter
  server for the whole session (``jtuser_server``), ``jtnone`` never has one, and
  ``jtmulti`` gets the servers that tests start with ``start_jupyter``.  ``jtfalse`` and
  ``jtnologin`` can log in but run no command (login shell /bin/false, nologin).
* Jupyter servers are the real ``jupyter server``/``jupyter lab`` of the venv that
  runs pytest, started as the test user; they write their real runtime files.
* ``tunnel`` runs jupyter_tunnel.py (tests/tunnelrun.py's ``TunnelRun``) and ``shutdown``
  jupyter_tunnel_shutdown.py, both on the test's own ``registry``; ``forged_file`` and
  ``hung_server`` put a fake Jupyter (a sleeping process and a runtime file) on a test user.
* the clusters (Grid Engine, Slurm) are in tests/cluster_fixtures.py, a plugin.

Test sessions on one machine are serialised by a lock file: they share the users,
their runtime directories and the one-server invariant.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pytest

from realenv import (
    MULTI_USER,
    NO_SERVER_USER,
    RUNTIME_SUBDIR,
    SERVER_USER,
    JupyterProc,
    JupyterStarter,
    SetupError,
    SshServer,
    TwoFactorServer,
    UserAccount,
    check_can_run,
    check_venv,
    machine_lock,
    make_session_dir,
    setup_users,
    start_sshd,
    start_two_factor_sshd,
    stop_leftovers,
)
from helpers import user_processes
from tunnelrun import SHUTDOWN, TunnelRun

# fixtures that live in modules of their own, registered as pytest plugins
pytest_plugins = ["cluster_fixtures"]  # the clusters (Grid Engine, Slurm) for jupyter_node.py

# fixtures that need root, sshd or Jupyter: tests using them get the `integration` mark
INTEGRATION_FIXTURES = frozenset(
    {"sshd", "test_users", "start_jupyter", "jtuser_server", "jupyter_venv", "session_dir", "two_factor_sshd"}
)


def _note(config: pytest.Config, message: str) -> None:
    """Tell the person at the terminal now: pytest captures fd 2 itself while fixtures run."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n[conftest] {message}")


@contextlib.contextmanager
def fail_on_setup_error() -> Iterator[None]:
    """Turn realenv's SetupError into a clean fixture failure (never a skip: a skip would pass for green)."""
    try:
        yield
    except SetupError as err:
        pytest.fail(str(err), pytrace=False)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Mark tests that use the real-process fixtures `integration`, so `-m "not integration"` works."""
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# Seconds a test's Jupyter processes get after its teardown to go by themselves (a server
# asked to shut down, a remote shell of a killed tunnel) before they count as left behind.
LEFT_BEHIND_GRACE = 10.0


@pytest.fixture(autouse=True)
def no_jupyter_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After an integration test: jtmulti and jtnone run no Jupyter process any more.

    Autouse, so set up first and torn down last, after the test's own fixtures have stopped
    what they started.  What a test left (a started server, a hung remote shell) is stopped and
    fails that test alone: left, it would be one more server in every later test, which then
    fail by the dozen far from the cause."""
    yield
    if request.node.get_closest_marker("integration") is None:
        return
    left: Dict[int, str] = {}
    for name in (MULTI_USER, NO_SERVER_USER):
        with contextlib.suppress(KeyError):  # the users are made by the first test that needs them
            account = pwd.getpwnam(name)
            found = user_processes(account.pw_uid)
            stopped = stop_leftovers(lambda: user_processes(account.pw_uid), grace=LEFT_BEHIND_GRACE)
            left.update((pid, found.get(pid, "?")) for pid in stopped)
            runtime = Path(account.pw_dir) / RUNTIME_SUBDIR
            for pid, kind, end in itertools.product(stopped, ("jp", "nb"), (".json", "-open.html")):
                (runtime / f"{kind}server-{pid}{end}").unlink(missing_ok=True)  # what a SIGKILL leaves
    if left:
        pytest.fail(f"the test left Jupyter processes of {MULTI_USER}/{NO_SERVER_USER} running "
                    f"(stopped now): {left}", pytrace=False)


# --- session basics: lock, users, temp dir ------------------------------------


@pytest.fixture(scope="session")
def _session_lock(pytestconfig: pytest.Config) -> Iterator[None]:
    """Check we can run at all, then hold the machine-wide test lock for the session."""
    with fail_on_setup_error():
        check_can_run()
    with machine_lock(lambda message: _note(pytestconfig, message)):
        yield


@pytest.fixture(scope="session")
def test_users(_session_lock: None) -> Dict[str, UserAccount]:
    """Create the test users if missing, set their password, wipe their Jupyter runtime dirs."""
    with fail_on_setup_error():
        return setup_users()


@pytest.fixture(scope="session")
def session_dir(_session_lock: None, pytestconfig: pytest.Config) -> Iterator[Path]:
    """A short, world-readable temp dir for the session (ControlPath sockets need short paths)."""
    path = make_session_dir()
    yield path
    if os.environ.get("JT_KEEP_TMP"):
        _note(pytestconfig, f"kept test files in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


# --- sshd --------------------------------------------------------------------


@pytest.fixture(scope="session")
def sshd(session_dir: Path, test_users: Dict[str, UserAccount]) -> Iterator[SshServer]:
    """Start the session's sshd (key port and password port on 127.0.0.1-3) and check logins work."""
    with fail_on_setup_error():
        server = start_sshd(session_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def two_factor_sshd(sshd: SshServer, session_dir: Path) -> Iterator[TwoFactorServer]:
    """The two-factor sshd (PAM service sshd-jt2fa, TOTP codes of pam_google_authenticator) beside
    the session's: aliases tgw/tsrv (password + code), kgw/ksrv (key + code) in its ``config``."""
    directory = session_dir / "2fa"
    directory.mkdir(mode=0o755)
    with fail_on_setup_error():
        server = start_two_factor_sshd(directory, sshd)
    try:
        yield server
    finally:
        server.stop()


# --- Jupyter -----------------------------------------------------------------


@pytest.fixture(scope="session")
def jupyter_venv(test_users: Dict[str, UserAccount]) -> Path:
    """The venv running pytest, checked to be usable by the test users (they run Jupyter from it)."""
    venv = Path(sys.prefix)
    with fail_on_setup_error():
        check_venv(venv, test_users[SERVER_USER])
    return venv


class JupyterFactory:
    """The `start_jupyter` fixture: start servers for jtmulti (or other non-invariant users)."""

    def __init__(self, starter: JupyterStarter) -> None:
        self._starter = starter

    @staticmethod
    def _check_user(user: str) -> None:
        """Keep the invariants other tests rely on."""
        if user == SERVER_USER:
            raise ValueError(f"{SERVER_USER} has exactly one server: use the jtuser_server fixture")
        if user == NO_SERVER_USER:
            raise ValueError(f"{NO_SERVER_USER} must never run a Jupyter server")

    def __call__(
        self,
        user: str = MULTI_USER,
        *,
        app: str = "server",
        args: Sequence[str] = (),
        root_dir: Optional[Path] = None,
    ) -> JupyterProc:
        """Start `jupyter <app> <args>` as `user` and wait until it is ready."""
        self._check_user(user)
        return self._starter.start(user, app=app, args=args, root_dir=root_dir)

    def many(
        self, count: int, user: str = MULTI_USER, *, app: str = "server", args: Sequence[str] = ()
    ) -> List[JupyterProc]:
        """Start `count` identical servers concurrently (faster than one by one)."""
        self._check_user(user)
        return self._starter.start_many(count, user, app=app, args=args)

    def typed(self, app: str, *args: str, user: str = MULTI_USER, venv: Optional[Path] = None,
              root: str = "jt-root") -> JupyterProc:
        """Start `jupyter <app> <args>` as a user types it (where it listens too), from `venv`, in a
        new root dir `root`-XXXX; ready once its runtime file parses."""
        self._check_user(user)
        return self._starter.start_typed(user, app, *args, venv=venv, root=root)


@pytest.fixture(scope="session")
def jtuser_server(
    jupyter_venv: Path, session_dir: Path, test_users: Dict[str, UserAccount]
) -> Iterator[JupyterProc]:
    """The one `jupyter server` that jtuser runs for the whole session."""
    starter = JupyterStarter(jupyter_venv, session_dir, test_users)
    try:
        yield starter.start(SERVER_USER)
    finally:
        starter.stop_all()


@pytest.fixture
def start_jupyter(
    jupyter_venv: Path, session_dir: Path, test_users: Dict[str, UserAccount]
) -> Iterator[JupyterFactory]:
    """start_jupyter(user="jtmulti", *, app="server"|"lab", args=(), root_dir=None) -> JupyterProc; all stopped after the test."""
    starter = JupyterStarter(jupyter_venv, session_dir, test_users)
    try:
        yield JupyterFactory(starter)
    finally:
        starter.stop_all()


# --- tunnels ---------------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[str]:
    """The registry directory (JUPYTER_TUNNEL_REGISTRY) that a test's tunnels and shutdown runs share."""
    path = tempfile.mkdtemp(prefix="jtr-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tunnel(sshd: SshServer, registry: str) -> Iterator[Callable[..., TunnelRun]]:
    """tunnel(*args, registry_dir=registry, stdin=None, env=None) -> TunnelRun: jupyter_tunnel.py with the
    fixtures' ssh config, registering in the test's registry as one user's tunnels share one; killed at teardown."""
    started: List[TunnelRun] = []

    def start(*args: str, registry_dir: str = registry, **kwargs: Any) -> TunnelRun:
        run = TunnelRun(sshd.config, *args, registry=registry_dir, **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


@pytest.fixture
def shutdown(registry: str) -> Callable[..., "subprocess.CompletedProcess[str]"]:
    """shutdown(*args, **env): jupyter_tunnel_shutdown.py on ``registry``, without a terminal, as a sleep hook runs it."""

    def run(*args: str, **more_env: str) -> "subprocess.CompletedProcess[str]":
        env = {**os.environ, "NO_COLOR": "1", "JUPYTER_TUNNEL_REGISTRY": registry, **more_env}
        return subprocess.run([sys.executable, str(SHUTDOWN), *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, env=env, timeout=60)

    return run


@pytest.fixture
def forged_file(test_users: Dict[str, UserAccount]) -> Iterator[Callable[..., Path]]:
    """forged_file(content, user="jtmulti") -> Path: a runtime file with any content, for a live process
    that looks like Jupyter (its command line says jupyter), as the remote account could write it.
    A dict gets that process's pid; in a str, @PID@ stands for it.  Both removed after the test."""
    made: List["tuple[subprocess.Popen[bytes], Path]"] = []

    def forge(content: "dict | str", user: str = MULTI_USER) -> Path:
        account = test_users[user]
        fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "jupyter-fake"],
                                user=account.uid, group=account.gid, extra_groups=[])
        text = json.dumps(dict(content, pid=fake.pid)) if isinstance(content, dict) else content
        path = account.write_runtime_file(f"jpserver-{fake.pid}.json", text.replace("@PID@", str(fake.pid)))
        made.append((fake, path))
        return path

    yield forge
    for fake, path in made:
        fake.kill()
        fake.wait()
        path.unlink(missing_ok=True)


@pytest.fixture
def hung_server(forged_file: Callable[..., Path]) -> Iterator[int]:
    """A live "jupyter" process of jtnone (never a real server) whose port accepts
    connections but never answers (a hung server); yields the port."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # connections wait in the backlog: never accepted, never answered
        port = hung.getsockname()[1]
        forged_file(dict(port=port, url=f"http://localhost:{port}/", token="t"), user=NO_SERVER_USER)
        yield port

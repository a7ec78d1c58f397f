"""A simulated Windows interpreter: this Linux Python, told it runs on Windows.

``simulate_windows()`` flips the interpreter it runs in: ``sys.platform`` becomes "win32" and
``os.name`` "nt"; the POSIX-only modules (BLOCKED_MODULES) cannot be imported any more; the
POSIX-only attributes (REMOVED) are gone; and what Windows has instead (ADDED: SIGBREAK, the
CTRL_* events, CREATE_NEW_PROCESS_GROUP) is there.  It runs BEFORE jupyter_tunnel,
jupyter_tunnel_shutdown and jupyter_node are imported, so their import-time choices are
Windows' ones.  Never call it in the pytest process itself: it runs in a subprocess
(``run_python``, ``run_pytest``), or as the plugin of a pytest subprocess (``-p winsim``).

Careful: standard modules that look at sys.platform or os.name when THEY are imported
(subprocess imports _winapi and msvcrt on "win32", shutil imports nt, mimetypes winreg...)
would fail after the flip, as Linux has none of those.  So they are imported first:
PREIMPORTED, and every module our three modules import anywhere (found in their source).
Their import-time branches stay Linux's (subprocess.Popen is POSIX's: it refuses creationflags),
and only that: what a standard function decides at call time from sys.platform (shutil.which
looks for PATHEXT names) follows the flip.  webbrowser is the exception (AFTER_FLIP).

What this proves and what it does not is in tests/test_windows_units.py's docstring.
"""

from __future__ import annotations

import ast
import errno
import importlib
import importlib.abc
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
OUR_MODULES = ("jupyter_tunnel", "jupyter_tunnel_shutdown", "jupyter_node")
BLOCKED_MODULES = ("fcntl", "pwd", "grp", "termios", "resource")
REMOVED = {
    "os": ("getuid", "geteuid", "setsid", "killpg"),
    "signal": ("SIGHUP", "SIGTTOU", "SIGKILL"),
    "socket": ("AF_UNIX",),
}
# the values of CPython on Windows (signal.h, WinBase.h)
ADDED = {
    "signal": {"SIGBREAK": 21, "CTRL_C_EVENT": 0, "CTRL_BREAK_EVENT": 1},
    "subprocess": {"CREATE_NEW_PROCESS_GROUP": 0x00000200},
}
# Standard modules that branch on the platform at import, imported before the flip (see above);
# and the test suite's own helpers, which use POSIX freely (they are not what is tested here).
PREIMPORTED = ("subprocess", "selectors", "shutil", "tempfile", "getpass", "mimetypes",
               "ssl", "secrets", "ipaddress", "csv", "uuid", "asyncio", "multiprocessing", "platform",
               "urllib.request", "http.client", "helpers")
# ...but webbrowser defines its WindowsDefault (os.startfile) only when imported on Windows, and
# needs nothing Linux lacks for that: it is imported after the flip, as our modules' own import.
AFTER_FLIP = ("webbrowser",)
MARK = "::winsim::"  # begins what run_python's snippets print for the test to read


class _Blocked(importlib.abc.MetaPathFinder):
    """Refuses the POSIX-only modules, as Windows' Python has none of them."""

    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r} (simulated Windows)", name=name)
        return None


def modules_imported_by_ours() -> set[str]:
    """The top-level modules our three modules import, at their top or inside a function."""
    found: set[str] = set()
    for name in OUR_MODULES:
        tree = ast.parse((REPO / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return found - set(OUR_MODULES) - {"__future__"}


def _msvcrt_stand_in():
    """A stand-in ``msvcrt`` with the one call our modules make, ``locking``, over POSIX record
    locks (fcntl.lockf, taken before fcntl is blocked).  It raises what msvcrt raises for a range
    another process holds (EACCES).  It proves our use of the lock (the offset, the pid readable
    before it, the unlock), across processes; not Windows' LockFile itself."""
    import fcntl
    import types

    module = types.ModuleType("msvcrt", "simulated: msvcrt.locking over fcntl.lockf (tests/winsim.py)")
    module.LK_UNLCK, module.LK_LOCK, module.LK_NBLCK, module.LK_RLCK, module.LK_NBRLCK = 0, 1, 2, 3, 4

    def locking(fd: int, mode: int, nbytes: int) -> None:
        start = os.lseek(fd, 0, os.SEEK_CUR)  # msvcrt locks from the file's position
        if mode == module.LK_UNLCK:
            fcntl.lockf(fd, fcntl.LOCK_UN, nbytes, start)
            return
        # LockFile takes any handle; an exclusive POSIX record lock needs a writable descriptor:
        # a read-only one (a reader's) takes a shared one, which the run's exclusive one refuses alike
        readonly = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        try:
            fcntl.lockf(fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB, nbytes, start)
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EAGAIN):
                raise PermissionError(errno.EACCES, "Permission denied") from None
            raise

    module.locking = locking
    return module


def simulate_windows(msvcrt: bool = True) -> None:
    """Make this interpreter look like Windows' to the modules imported from now on (see the
    module's docstring); with ``msvcrt``, the stand-in msvcrt (_msvcrt_stand_in) is importable."""
    if sys.platform == "win32":
        return
    for name in (*PREIMPORTED, *sorted(modules_imported_by_ours() - set(AFTER_FLIP))):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a Windows-only module (msvcrt): not on Linux, and not needed before the flip
    import tempfile

    tempfile.gettempdir()  # Linux's, cached: on "nt" it would list Windows' places, then the cwd
    stand_in = _msvcrt_stand_in() if msvcrt else None
    for name in AFTER_FLIP:
        sys.modules.pop(name, None)
    for name in BLOCKED_MODULES:
        sys.modules.pop(name, None)
    sys.meta_path.insert(0, _Blocked())
    if stand_in is not None:
        sys.modules["msvcrt"] = stand_in
    for module_name, names in REMOVED.items():
        module = sys.modules[module_name]
        for name in names:
            if hasattr(module, name):
                delattr(module, name)
    for module_name, values in ADDED.items():
        for name, value in values.items():
            setattr(sys.modules[module_name], name, value)
    sys.platform = "win32"
    os.name = "nt"
    # pathlib's Path() picks its class from os.name at each call, and Linux cannot make a
    # WindowsPath: here that name means PosixPath (pytest and the tests use pathlib; ours do not)
    import pathlib

    pathlib.WindowsPath = pathlib.PosixPath  # type: ignore[misc]
    if "pathlib._local" in sys.modules:  # Python >= 3.13: Path() looks the name up there
        sys.modules["pathlib._local"].WindowsPath = pathlib.PosixPath  # type: ignore[attr-defined]
    # shutil.which takes its Windows branch at each call, and since Python 3.12 it asks _winapi
    # whether the current directory is searched; Linux's shutil has none (None): a stand-in that
    # answers as Windows does by default (yes, unless NoDefaultCurrentDirectoryInExePath is set)
    import shutil
    import types

    if getattr(shutil, "_winapi", False) is None:
        shutil._winapi = types.SimpleNamespace(  # type: ignore[attr-defined]
            NeedCurrentDirectoryForExePath=lambda name: "NoDefaultCurrentDirectoryInExePath" not in os.environ)
    for name in OUR_MODULES:
        if name in sys.modules:
            raise RuntimeError(f"{name} was imported before the flip: its import-time choices are Linux's")


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a simulated interpreter: our modules and the tests' on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTEST_ADDOPTS", None)
    env.update(extra or {})
    return env


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh simulated Windows interpreter (flipped before ``code`` runs)."""
    prologue = "import winsim\nwinsim.simulate_windows()\n"
    return subprocess.run([sys.executable, "-c", prologue + code], capture_output=True, text=True,
                          env=environment(env), cwd=REPO, timeout=timeout)


def run_pytest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run pytest on ``args`` in a simulated Windows interpreter: this module is its plugin
    (flipped as pytest loads it, before any test module is collected); no conftest.py, whose
    fixtures need root, sshd and POSIX (the unit tests use none of them)."""
    # --capture=sys: with fd capture, pytest would reach for io._WindowsConsoleIO, which Linux lacks
    argv = [sys.executable, "-m", "pytest", "-p", "winsim", "--noconftest", "-p", "no:cacheprovider", "--capture=sys",
            *args]
    # no plugin of the venv's (playwright's, anyio's): they would be imported after the flip
    env = environment({"WINSIM_PLUGIN": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


# A stand-in for Windows' tasklist, as a program on PATH: the rows its documented CSV format has
# (/FO CSV /NH) for the /FI "PID eq N" process when it lives and belongs to this uid (what its
# /FI "USERNAME eq DOMAIN\USER" filter does); the image name is the Linux process's name + ".exe".
TASKLIST = r'''#!@PYTHON@
import os, sys
args = sys.argv[1:]
filters = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg.upper() == "/FI"]
pids = [f.split(" eq ", 1)[1] for f in filters if f.upper().startswith("PID EQ ")]
users = [f.split(" eq ", 1)[1] for f in filters if f.upper().startswith("USERNAME EQ ")]
me = os.environ.get("USERDOMAIN", "") + "\\" + os.environ.get("USERNAME", "")
try:
    with open(f"/proc/{pids[0]}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    alive = status["State"].split()[0] not in ("Z", "X")
    ours = int(status["Uid"].split()[0]) == os.getuid() and all(user == me for user in users)
except (IndexError, OSError, KeyError, ValueError):
    alive = ours = False
if alive and ours:
    print(f'"{status["Name"].strip()}.exe","{pids[0]}","Console","1","9,876 K"')
else:
    print("INFO: No tasks are running which match the specified criteria.")
'''


def write_tasklist(directory: Path) -> Path:
    """Write the stand-in tasklist (TASKLIST) into ``directory``, to be put first on PATH."""
    path = directory / "tasklist"
    path.write_text(TASKLIST.replace("@PYTHON@", sys.executable))
    path.chmod(0o755)
    return path


# As a pytest plugin (``-p winsim``), this module flips the interpreter when pytest imports it:
# pytest's own modules are imported by then, the test modules (and so ours) only later.
if __name__ != "__main__" and "pytest" in sys.modules and os.environ.get("WINSIM_PLUGIN") == "1":
    simulate_windows()

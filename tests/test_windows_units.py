"""The Python side on Windows (issue 23), in a simulated Windows interpreter (tests/winsim.py).

There is no Windows machine here.  Each test runs a subprocess of this Linux Python in which,
before our modules are imported, ``sys.platform`` is "win32", ``os.name`` "nt", the POSIX-only
modules (fcntl, pwd, grp, termios, resource) cannot be imported and the POSIX-only attributes
(os.getuid, os.setsid, os.killpg, signal.SIGHUP, SIGKILL, socket.AF_UNIX...) are gone.

What it proves: the three modules import on Windows; their pure parts pass the unit tests
there (all of tests/*_units.py and test_api.py, but the POSIX-only ones listed, with why, in
POSIX_ONLY); and their Windows branches choose right: the registry and the private directory
under %LOCALAPPDATA%, SIGBREAK for SIGHUP, -p and -a refused with what to do instead, no
agent of the run's own, a new process group for children, the browser through webbrowser's
"windows-default", tasklist's CSV parsed, the run's lock (msvcrt.locking, through a stand-in
over POSIX record locks) held and seen held from another process; and jupyter-tunnel-shutdown's
Windows path end to end (a run found by its lock, ended, then its ssh, its files removed) with
a stand-in tasklist (winsim.TASKLIST) that prints tasklist's documented CSV rows.

What it does not prove: that any Win32 API behaves as its documentation says (LockFile,
TerminateProcess, CONIN$, ACLs of mkdtemp and %LOCALAPPDATA%); that tasklist prints what
these tables and the stand-in say on a real Windows (they copy its documented format); that a
SIGTERM ends a process as TerminateProcess does (here it is a POSIX signal); anything about the real
Win32-OpenSSH or a real console (prompts, Ctrl+C, Ctrl+Break); ntpath's path rules (os.path
stays posixpath here, as the standard modules were imported before the flip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import helpers
import jupyter_tunnel as jt
import winsim

# every unit test file but this one (it starts the simulations)
UNIT_FILES = sorted(name for name in os.listdir(winsim.TESTS)
                    if name.endswith("_units.py") and name != os.path.basename(__file__)) + ["test_api.py"]
# Unit tests that are POSIX's by nature, deselected in the simulation (node id prefixes), with why.
RELAY_UPSTREAM = "the relay's upstream is ssh's unix-socket forward (ControlMaster mode): Windows has no AF_UNIX"
HEAD_NODE = "jupyter_node.py on a cluster's head node, which is POSIX (the remote side)"
REMOTE_SH = "the remote start script, a POSIX sh on the remote (and its test kills process groups)"
PROFILE_PLACES = "the profile files' POSIX places (/etc's and XDG_CONFIG_HOME's): Windows reads %APPDATA%'s alone"
POSIX_ONLY = {
    "test_profiles_units.py::test_verbose_shows_the_files_the_profile_and_the_command_line": PROFILE_PLACES,
    "test_profiles_units.py::test_the_users_keys_win_and_the_sites_others_stay": PROFILE_PLACES,
    "test_profiles_units.py::test_one_profile_serves_both_tools_each_leaving_out_the_others_keys": PROFILE_PLACES,
    "test_profiles_units.py::test_main_with_no_profiles_says_so": PROFILE_PLACES,
    "test_profiles_units.py::test_main_shows_a_profiles_command_line_without_running_it": PROFILE_PLACES,
    "test_profiles_units.py::test_main_profile_errors_are_one_line_and_exit_2": PROFILE_PLACES,
    "test_profiles_units.py::test_main_lists_the_profiles": PROFILE_PLACES,
    "test_profiles_units.py::test_a_site_file_others_may_write_is_skipped_with_a_warning": PROFILE_PLACES,
    "test_profiles_units.py::test_a_safe_site_file_is_read": PROFILE_PLACES,
    "test_profiles_units.py::test_a_profile_can_set_verbose_itself": PROFILE_PLACES,
    "test_browser_units.py::test_peer_uid_of_our_own_connection": "a socket peer's uid: Linux's netlink and /proc",
    "test_browser_units.py::test_this_machine_tells_who_connects": "a socket peer's uid: Linux's netlink and /proc",
    "test_browser_units.py::test_where_peers_cannot_be_told_the_port_serves_everyone_and_says_so": RELAY_UPSTREAM,
    "test_browser_units.py::test_the_relay_listens_on_both_loopbacks_and_splices_both_ways": RELAY_UPSTREAM,
    "test_browser_units.py::test_the_one_time_address_redirects_once_then_is_jupyters": RELAY_UPSTREAM,
    "test_browser_units.py::test_the_one_time_address_is_withdrawn_after_its_time": RELAY_UPSTREAM,
    "test_browser_units.py::test_a_request_while_the_forward_is_down_waits_then_gets_a_page_that_reloads":
        RELAY_UPSTREAM,
    "test_browser_units.py::test_a_request_while_the_forward_is_down_goes_through_once_it_is_back": RELAY_UPSTREAM,
    "test_browser_units.py::test_close_ends_the_connections_and_frees_the_port": RELAY_UPSTREAM,
    "test_browser_units.py::test_a_failure_while_accepting_never_frees_the_port": RELAY_UPSTREAM,
    "test_forward_units.py::test_forward_answers_through_a_unix_socket": RELAY_UPSTREAM,
    "test_forward_units.py::test_forward_answers_nothing_without_the_socket": RELAY_UPSTREAM,
    "test_forward_units.py::test_announce_says_each_forward_and_json_lists_them":
        "a Relay, whose wake-up socketpair is AF_UNIX in the simulation (Windows' own is made over TCP)",
    # Windows' shutil.which looks for ssh.exe (PATHEXT): the Linux ssh is not found under that name
    "test_errors_units.py::test_a_signal_that_escapes_the_run_is_an_interruption_not_a_traceback":
        "main() needs ssh on PATH as ssh.exe",
    "test_node_units.py::test_make_log_default_is_private_and_named": HEAD_NODE,
    "test_node_units.py::test_a_profile_gives_jupyter_node_its_own_options": HEAD_NODE,
    "test_node_units.py::test_a_profile_error_is_one_line_with_its_file_and_line": HEAD_NODE,
    "test_node_units.py::test_a_log_directory_that_is_not_a_private_one_is_refused": HEAD_NODE,
    "test_node_units.py::test_remove_ended_logs_takes_only_our_own_files": HEAD_NODE,
    "test_node_units.py::test_reuse_of_a_ready_job_says_found_then_nothing_twice": HEAD_NODE,
    "test_node_units.py::test_reuse_of_a_pending_job_says_what_helps_where_it_is_read": HEAD_NODE,
    "test_node_units.py::test_jobs_with_both_schedulers_lists_both_and_says_which": HEAD_NODE,
    "test_node_units.py::test_jobs_with_both_schedulers_one_that_cannot_be_asked_is_a_warning": HEAD_NODE,
    "test_node_units.py::test_cancel_with_both_schedulers_cancels_where_the_job_is": HEAD_NODE,
    "test_node_units.py::test_cancel_of_an_id_both_schedulers_have_asks_which": HEAD_NODE,
    "test_node_units.py::test_submitting_with_both_schedulers_asks_which": HEAD_NODE,
    # its last step asks tasklist, Windows' own program; the lock itself: test_the_run_lock_... below
    "test_registry_units.py::test_holds_run_lock": "Windows asks tasklist whether the pid lives",
    "test_shutdown_units.py::test_registry_dirs": "POSIX's places ($XDG_RUNTIME_DIR, /run/user/UID)",
    "test_shutdown_units.py::test_stop_tunnels_says_closed_for_sigint_and_killed_only_for_sigkill":
        "SIGINT, then SIGKILL: Windows ends the process instead (end_windows_tunnels)",
    "test_start_units.py::test_start_script": REMOTE_SH,
}


PRINT = "import json\ndef tell(value):\n    print(winsim.MARK + json.dumps(value))\n"  # a snippet's answer


def run(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a simulated Windows interpreter; it must succeed."""
    done = winsim.run_python(PRINT + textwrap.dedent(code), env=env)
    assert done.returncode == 0, done.stderr
    return done


def answer(done: subprocess.CompletedProcess) -> object:
    """The JSON a snippet printed on its last line that starts with winsim.MARK."""
    lines = [line for line in done.stdout.splitlines() if line.startswith(winsim.MARK)]
    assert lines, done.stdout + done.stderr
    return json.loads(lines[-1][len(winsim.MARK):])


def test_the_simulated_interpreter_is_windows_to_our_modules():
    """The simulation itself: what Windows lacks is missing, what it has instead is there."""
    done = run("""
        import importlib, os, signal, socket, subprocess, sys
        blocked = []
        for name in winsim.BLOCKED_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                blocked.append(name)
        tell({"platform": sys.platform, "os": os.name, "blocked": blocked,
              "present": [m + "." + n for m, names in winsim.REMOVED.items() for n in names
                          if hasattr(sys.modules[m], n)],
              "added": [hasattr(signal, "SIGBREAK"), hasattr(signal, "CTRL_C_EVENT"),
                        hasattr(signal, "CTRL_BREAK_EVENT"), hasattr(subprocess, "CREATE_NEW_PROCESS_GROUP")]})
    """)
    assert answer(done) == {"platform": "win32", "os": "nt", "blocked": list(winsim.BLOCKED_MODULES),
                            "present": [], "added": [True, True, True, True]}


def test_the_three_modules_import_and_choose_windows():
    """They import, and their import-time choices are Windows' (SIGBREAK instead of SIGHUP)."""
    done = run("""
        import signal
        import jupyter_node, jupyter_tunnel_shutdown as sd, jupyter_tunnel as jt
        tell({"windows": [jt.WINDOWS, sd.WINDOWS], "signals": [signal.Signals(s).name for s in jt.HANDLED_SIGNALS],
              "sigbreak": jt.HANDLED_SIGNALS[-1] == signal.SIGBREAK, "terminal": jt.TERMINAL,
              "group": jt.popen_group_options(), "have_proc": sd.HAVE_PROC})
    """)
    found = answer(done)
    assert found["windows"] == [True, True] and found["sigbreak"] and found["terminal"] == "CONIN$"
    assert found["signals"][:2] == ["SIGINT", "SIGTERM"]
    assert found["group"] == {"creationflags": 0x200}
    # ...and on this Linux, as before
    assert jt.HANDLED_SIGNALS[-1] == __import__("signal").SIGHUP
    assert jt.popen_group_options() == {"start_new_session": True} and jt.TERMINAL == "/dev/tty"


def test_the_unit_tests_pass_in_simulated_windows():
    """Every unit test file, in one simulated pytest, but the POSIX-only tests (POSIX_ONLY)."""
    deselect = [arg for nodeid in POSIX_ONLY for arg in ("--deselect", f"tests/{nodeid}")]
    done = winsim.run_pytest("-q", "-m", "not integration", *deselect, *(f"tests/{name}" for name in UNIT_FILES))
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in summary and "deselected" in summary and "skipped" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) > 1000, summary  # the bulk of the ~1,200 runs


def test_every_posix_only_test_exists():
    """The list names tests that exist: a renamed test must not slip out of the simulation unseen."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "not integration", *(f"tests/{name}" for name in UNIT_FILES)],
                          capture_output=True, text=True, cwd=winsim.REPO, timeout=120)
    collected = [line.split("tests/", 1)[-1] for line in done.stdout.splitlines() if "::" in line]
    for nodeid in POSIX_ONLY:
        assert any(item.startswith(nodeid) for item in collected), nodeid


def test_the_registry_and_the_private_directories_are_under_localappdata(tmp_path):
    """%LOCALAPPDATA%\\jupyter-tunnel\\registry and ...\\runs\\jt-XXXXXXXX; ~\\AppData\\Local without it;
    a directory's owner and mode are not checked there (st_uid is 0, chmod only the read-only
    flag), a link still is."""
    local = tmp_path / "Local"
    code = """
        import os
        import jupyter_tunnel_shutdown as sd
        private = sd.make_private_dir()
        os.chmod(private, 0o755)  # what a Windows stat could say of it: no refusal for that
        link = private + "-link"
        os.symlink(private, link)
        tell({"registry": sd.registry_dir(), "dirs": sd.registry_dirs(), "private": private,
              "parents": list(sd.private_dir_parents()), "problem": sd.check_private_dir(private),
              "link": sd.check_private_dir(link), "named": sd.is_private_dir_path(private, sd.private_dir_parents()),
              "prepared": sd.prepare_registry(sd.registry_dir())})
    """
    found = answer(run(code, LOCALAPPDATA=str(local), JUPYTER_TUNNEL_REGISTRY=""))
    assert found["registry"] == str(local / "jupyter-tunnel" / "registry")
    assert found["dirs"] == [found["registry"]]
    assert found["parents"] == [str(local / "jupyter-tunnel" / "runs")]
    assert os.path.dirname(found["private"]) == found["parents"][0] and found["named"]
    assert found["problem"] == "" and found["prepared"] == ""
    assert found["link"] == "it is a symbolic link"
    home = tmp_path / "home"
    found = answer(run(code, LOCALAPPDATA="", HOME=str(home), JUPYTER_TUNNEL_REGISTRY=""))
    assert found["registry"] == str(home / "AppData" / "Local" / "jupyter-tunnel" / "registry")


def test_a_junction_is_refused_like_a_link():
    """private_dir_problem: without a uid (Windows), a reparse point is refused, owner and mode are not."""
    import stat

    import jupyter_tunnel_shutdown as sd

    directory = stat.S_IFDIR | 0o777
    assert sd.private_dir_problem(directory, 0, None) == ""
    assert sd.private_dir_problem(directory, 0, None, stat.FILE_ATTRIBUTE_REPARSE_POINT) == "it is a symbolic link"
    assert sd.private_dir_problem(stat.S_IFREG | 0o666, 0, None) == "it is not a directory"
    assert sd.private_dir_problem(directory, 0, 1000) == "it belongs to uid 0"  # POSIX: as before


@pytest.mark.parametrize("option, message", [("-p", jt.WINDOWS_NO_PASSWORD), ("--ssha", jt.WINDOWS_NO_AGENT)])
def test_password_and_agent_options_are_refused_on_windows(option, message):
    """-p (askpass needs an .exe there) and -a (the agent is a service): one usage line, exit 2."""
    done = run(f"""
        import jupyter_tunnel as jt
        try:
            jt.main(["-s", "srv", {option!r}])
        except SystemExit as stop:
            tell(stop.code)
    """)
    assert answer(done) == 2
    assert done.stderr.strip().splitlines()[-1] == f"jupyter-tunnel: error: {message}"
    assert "CreateProcessW failed error:193" in jt.WINDOWS_NO_PASSWORD and "ssh-agent" in jt.WINDOWS_NO_AGENT


def test_platform_option_problem():
    """Only Windows refuses -p and -a."""
    args = jt.build_parser().parse_args(["-s", "srv", "-p", "-a"])
    assert jt.platform_option_problem(args, windows=False) == ""
    assert jt.platform_option_problem(args, windows=True) == jt.WINDOWS_NO_PASSWORD
    args.password = False
    assert jt.platform_option_problem(args, windows=True) == jt.WINDOWS_NO_AGENT


def test_no_agent_of_the_runs_own_and_no_terminal_without_a_console():
    """An unset SSH_AUTH_SOCK is the ssh-agent service on Windows, not a reason to start an agent;
    without a console (CONIN$), ssh cannot prompt: BatchMode, as without /dev/tty on POSIX."""
    done = run("""
        import os
        import jupyter_tunnel as jt
        os.environ.pop("SSH_AUTH_SOCK", None)
        connection = jt.Connection(jt.Settings(), "ssh", jt.parse_hosts(["srv"]))
        forced = jt.Connection(jt.Settings(new_agent=True), "ssh", jt.parse_hosts(["srv"]))
        tell({"own": connection.own_agent, "forced": forced.own_agent, "terminal": jt.has_terminal(),
              "batch": connection.batch})
    """)
    assert answer(done) == {"own": False, "forced": True, "terminal": False, "batch": True}


def test_the_browser_is_webbrowsers_windows_default_in_a_process_group_of_its_own():
    """Without -b: ``python -m webbrowser -t`` (its "windows-default", os.startfile), never
    xdg-open, and no "no graphical display" without DISPLAY (that is Linux's); in a new group."""
    done = run("""
        import os, subprocess, sys, webbrowser
        import jupyter_tunnel as jt
        for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
            os.environ.pop(name, None)
        started = []
        jt.subprocess.Popen = lambda argv, **options: started.append([argv, options.get("creationflags")])
        class Relay:
            def offer_redirect(self, url):
                return "http://127.0.0.1:9/once"
        jt.open_browser(None, "http://localhost:9/lab?token=t", Relay())
        tell({"started": started, "python": sys.executable, "default": type(webbrowser.get()).__name__})
    """)
    found = answer(done)
    assert found["started"] == [[[found["python"], "-m", "webbrowser", "-t", "http://127.0.0.1:9/once"], 0x200]]
    assert found["default"] == "WindowsDefault"
    assert "display" not in done.stderr


def test_ctrl_break_raises_interrupted_and_the_handlers_come_back():
    """signals_raised on Windows: SIGBREAK (here delivered as its number) ends the run as SIGHUP does."""
    done = run("""
        import os, signal, time
        import jupyter_tunnel as jt
        before = signal.getsignal(signal.SIGBREAK)
        caught = False
        try:
            with jt.signals_raised():
                os.kill(os.getpid(), signal.SIGBREAK)
                time.sleep(5)
        except jt.Interrupted:
            caught = True
        tell({"caught": caught, "restored": signal.getsignal(signal.SIGBREAK) == before})
    """)
    assert answer(done) == {"caught": True, "restored": True}


# tasklist /FI "PID eq N" /FI "USERNAME eq D\\U" /FO CSV /NH: one quoted CSV row per process
# (Image Name, PID, Session Name, Session#, Mem Usage), or an INFO line in the user's language.
TASKLIST_CASES = [
    ('"ssh.exe","4242","Console","1","9,876 K"\r\n', 4242, "ssh.exe"),
    ('"python.exe","17","Console","1","31,204 K"\n', 17, "python.exe"),
    ('"ssh.exe","42420","Console","1","9,876 K"\n', 4242, None),  # another pid: no prefix match
    ('"ssh.exe","4242","Console","1","9,876 K"\n', 424, None),
    ("INFO: No tasks are running which match the specified criteria.\r\n", 4242, None),
    ("INFORMATION: Es werden keine Aufgaben mit den angegebenen Kriterien ausgeführt.\n", 4242, None),
    ('"my, app.exe","7","Services","0","1,024 K"\n', 7, "my, app.exe"),
    ('"","7","Console","1","0 K"\n', 7, None),
    ("", 7, None),
]


def test_tasklist_output_is_parsed_in_simulated_windows():
    """parse_tasklist by table, in the simulated interpreter; and the argv that asks for one
    process of this user (None when the user is not known: nothing is then ours to signal)."""
    done = run(f"""
        import jupyter_tunnel_shutdown as sd
        cases = {TASKLIST_CASES!r}
        tell({{"images": [sd.parse_tasklist(text, pid) for text, pid, _ in cases],
              "argv": sd.build_tasklist_argv(4242, {{"USERDOMAIN": "LAB", "USERNAME": "ana"}}),
              "nobody": sd.build_tasklist_argv(4242, {{"USERNAME": "ana"}})}})
    """)
    found = answer(done)
    assert found["images"] == [image for _, _, image in TASKLIST_CASES]
    assert found["argv"] == ["tasklist", "/FI", "PID eq 4242", "/FI", "USERNAME eq LAB\\ana", "/FO", "CSV", "/NH"]
    assert found["nobody"] is None


def test_the_run_lock_is_seen_held_from_another_process_until_the_run_ends(tmp_path):
    """take_run_lock on Windows (msvcrt.locking, here the stand-in over POSIX record locks): the
    file names the run's pid, another process finds it held, and free once the run has gone."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import winsim, sys\nwinsim.simulate_windows()\nimport jupyter_tunnel_shutdown as sd\n"
                               f"fd = sd.take_run_lock({str(tmp_path)!r})\nprint(fd is not None, flush=True)\n"
                               "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=winsim.environment(), cwd=winsim.REPO)
    try:
        assert holder.stdout.readline().strip() == "True"
        check = f"""
            import os
            import jupyter_tunnel_shutdown as sd
            fd = sd.open_own_file(os.path.join({str(tmp_path)!r}, sd.RUN_LOCK))
            pid = os.read(fd, 32).strip().decode()
            try:
                sd.lock_file(fd, shared=True)
            except BlockingIOError:
                tell([pid, "held"])
            else:
                sd.unlock_file(fd)
                tell([pid, "free"])
        """
        assert answer(run(check)) == [str(holder.pid), "held"]
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        assert answer(run(check)) == [str(holder.pid), "free"]
    finally:
        holder.kill()
        holder.wait()


RUN = """
import os, shutil, subprocess, sys, time
import jupyter_tunnel_shutdown as sd
directory = sd.make_private_dir()
lock = sd.take_run_lock(directory)
connection = subprocess.Popen([sys.argv[1], "600"])  # its ssh.exe: a process named ssh
registration = sd.Registration(sd.build_state(os.getpid(), ["gw", "srv"], "", "srv", directory, time.time()))
registration.update(master_pid=int(sys.argv[2]) if len(sys.argv) > 2 else connection.pid, state=sd.READY,
                    local_port=9000, remote_port=8888)
print(directory, connection.pid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def windows_env(tmp_path):
    """A simulated Windows user: %LOCALAPPDATA%, USERDOMAIN\\USERNAME, and the stand-in tasklist first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    winsim.write_tasklist(bin_dir)
    return {"LOCALAPPDATA": str(tmp_path / "Local"), "JUPYTER_TUNNEL_REGISTRY": "", "USERDOMAIN": "SIM",
            "USERNAME": "ana", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def start_run(tmp_path, env: dict, *args: str) -> tuple[subprocess.Popen, str, int]:
    """A simulated Windows run (RUN): its lock, its registry entry, a child named ssh; (process, directory, ssh pid)."""
    ssh = tmp_path / "ssh"
    shutil.copy(shutil.which("sleep"), ssh)
    code = "import sys, winsim\nwinsim.simulate_windows()\nsys.argv[1:] = sys.argv[2:]\n" + RUN
    run = subprocess.Popen([sys.executable, "-c", code, "--", str(ssh), *args], stdout=subprocess.PIPE, text=True,
                           env=winsim.environment(env), cwd=winsim.REPO)
    directory, pid = run.stdout.readline().split()
    return run, directory, int(pid)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie awaiting its reaper counts)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split()[1] in ("Z", "X") for line in f if line.startswith("State:"))
    except OSError:
        return True


def test_shutdown_on_windows_ends_the_run_then_its_ssh_and_removes_its_files(tmp_path, windows_env):
    """end_windows_tunnels, in the simulation with the stand-in tasklist: the run (found by its
    lock) is ended, then the ssh.exe it registered, then its directory and entry are removed here,
    as no handler runs in a process that TerminateProcess ends."""
    run, directory, ssh = start_run(tmp_path, windows_env)
    try:
        listed = winsim.run_python("import jupyter_tunnel_shutdown as sd\nsd.main(['--list'])", env=windows_env)
        assert f"{run.pid} " in listed.stdout and "gw,srv" in listed.stdout, listed.stdout + listed.stderr
        done = winsim.run_python("import sys, jupyter_tunnel_shutdown as sd\nsys.exit(sd.main([]))",
                                 env=windows_env)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"Info: Ended the tunnel localhost:9000 -> srv:8888 via gw (pid {run.pid}), and removed its files."]
        assert run.wait(timeout=10) == -15  # on Windows, TerminateProcess
        helpers.wait_for(lambda: gone(ssh), 10, what="the run's ssh to end")
        assert not os.path.exists(directory)
        assert os.listdir(os.path.join(windows_env["LOCALAPPDATA"], "jupyter-tunnel", "registry")) == []
    finally:
        helpers.kill_all([run.pid, ssh])
        run.wait()


def test_shutdown_on_windows_never_ends_a_registered_pid_that_is_no_ssh(tmp_path, windows_env):
    """A registry entry whose master_pid is some other program of the user's (a pid reused, a
    forged entry): the run is ended, that process is left alone."""
    other = subprocess.Popen(["sleep", "600"])
    run, directory, ssh = start_run(tmp_path, windows_env, str(other.pid))
    try:
        done = winsim.run_python("import sys, jupyter_tunnel_shutdown as sd\nsys.exit(sd.main([]))",
                                 env=windows_env)
        assert done.returncode == 0, done.stderr
        assert run.wait(timeout=10) == -15
        assert not os.path.exists(directory)
        with pytest.raises(subprocess.TimeoutExpired):  # a signal sent would have ended it by now
            other.wait(timeout=1)
    finally:
        helpers.kill_all([run.pid, ssh, other.pid])
        run.wait()
        other.wait()


def test_profiles_come_from_appdata_alone(tmp_path):
    """Windows' profile file is %APPDATA%\\jupyter-tunnel\\profiles.ini, and there is no site file."""
    (tmp_path / "jupyter-tunnel").mkdir()
    (tmp_path / "jupyter-tunnel" / "profiles.ini").write_text("[hpc]\nhost = gw head\nno-control-master = yes\n")
    done = run("""
        import contextlib, io, os
        import jupyter_tunnel as jt
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = jt.main(["hpc", "--profiles"])
        tell({"code": code, "printed": printed.getvalue()})
    """, APPDATA=str(tmp_path))
    assert answer(done) == {"code": 0, "printed": "jupyter-tunnel --host=gw --host=head --no-control-master\n"}

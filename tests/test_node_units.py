"""Unit tests of jupyter_node.py's pure parts (tables, no cluster) and of its command line.

They run under Python 3.6 too (tests/test_pythons.py), as jupyter_node.py does on old head
nodes: nothing newer than 3.6 here either (no ``from __future__ import annotations``, no
``capture_output``), and no import of jupyter_tunnel.py (Python >= 3.9).
"""

import argparse
import getpass
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
try:
    import tomllib
except ImportError:  # Python < 3.11: the same parser, from PyPI (the test extra)
    import tomli as tomllib
from pathlib import Path
from typing import List

import pytest

import jupyter_node as jn

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch) -> Path:
    """$XDG_STATE_HOME of the test's own: the logs' directory, never the real one's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"
# subprocess.run's text output, as Python 3.6 spells it (capture_output/text came in 3.7)
TEXT = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "universal_newlines": True}


@pytest.mark.parametrize("text, seconds", [
    ("15s", 15), ("15", 15), ("2m", 120), ("1.5h", 5400), ("1d", 86400), ("0", 0), ("0s", 0), (" 3s ", 3),
])
def test_parse_duration(text, seconds):
    assert jn.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "-1", "1.5.2s", "2 m", "1e3", "15sec"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="sleep syntax"):
        jn.parse_duration(text)


@pytest.mark.parametrize("scheduler, resources, expected", [
    ("sge", ["h_vmem=4G"], ["-l", "h_vmem=4G"]),
    ("sge", ["h_vmem=4G", "h_rt=2:00:00"], ["-l", "h_vmem=4G", "-l", "h_rt=2:00:00"]),
    ("sge", ["-pe smp 4"], ["-pe", "smp", "4"]),
    ("slurm", ["mem=4G", "time=2:00:00", "gres=gpu:1"], ["--mem=4G", "--time=2:00:00", "--gres=gpu:1"]),
    ("slurm", ["--exclusive", "-c 4"], ["--exclusive", "-c", "4"]),
    ("slurm", ["", "  "], []),
])
def test_build_resource_args(scheduler, resources, expected):
    assert jn.build_resource_args(scheduler, resources) == expected


def run_script(script: str, tmp_path: Path, path_dirs: str = "") -> str:
    """Run the node script with a fake `jupyter`/`hostname` first on PATH; what `jupyter` got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("jupyter", 'printf "%s\\n" "$@" >"$OUT"'), ("hostname", "echo node1.cluster")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "args"
    env = {"PATH": f"{path_dirs}{bin_dir}:/usr/bin:/bin", "OUT": str(out), "JOB_ID": "42", "HOME": str(tmp_path)}
    done = subprocess.run(["sh", "-c", script], **TEXT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{jn.MARK} job 42 node node1.cluster"
    return out.read_text()


def test_server_script_runs_jupyter_on_the_node_fqdn(tmp_path):
    script = jn.build_server_script("lab", config="/home/u/.jupyter/jupyter notebook_config.py")
    assert "\n" not in script  # qrsh joins it into one command line
    assert run_script(script, tmp_path).splitlines() == [
        "lab", "--no-browser", "--ip=node1.cluster", "--config=/home/u/.jupyter/jupyter notebook_config.py"]


def test_server_script_activates_first_and_stops_when_activation_fails(tmp_path):
    script = jn.build_server_script("notebook", pre=["export A=1; export B=2", "test \"$A$B\" = 12"])
    assert run_script(script, tmp_path).splitlines() == ["notebook", "--no-browser", "--ip=node1.cluster"]
    failing = jn.build_server_script("notebook", pre=["false"])
    done = subprocess.run(["sh", "-c", failing], **TEXT)
    assert done.returncode != 0
    assert jn.parse_log(done.stdout).failure == "failed: false"


@pytest.mark.parametrize("pre, failure, said", [
    # a comment or a "&" of the user's stays inside that command: jupyter still starts
    (["true # a comment"], "", ""),
    (["sleep 0 &"], "", ""),
    (["echo 'a \\n b' # quotes, a backslash"], "", ""),
    # "." of a missing file would end sh before "|| fail": command eval keeps it going
    ([". /nonexistent/activate"], "failed: . /nonexistent/activate", "/nonexistent/activate"),
    (["if"], "failed: if", "syntax error"),  # a syntax error of the user's: the shell's words
])
def test_server_script_runs_each_pre_on_its_own(tmp_path, pre, failure, said):
    script = jn.build_server_script("lab", pre=pre)
    assert "\n" not in script  # qrsh joins it into one command line
    if not failure:
        assert run_script(script, tmp_path).splitlines()[0] == "lab"
        return
    done = subprocess.run(["sh", "-c", script], **TEXT, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    info = jn.parse_log(done.stdout + done.stderr)
    assert info.failure == failure and said in done.stderr.lower()


def test_failing_activation_fails_the_job_without_asking_the_scheduler(tmp_path):
    log = tmp_path / "log"
    log.write_text(f"{jn.MARK} job 7 node n1\nsh: 1: .: cannot open /x: No such file\n"
                   f"{jn.MARK} fail failed: . /x\n")
    job = jn.Job(str(log), "7")  # its ask_scheduler is not there: asking would raise
    assert job.poll() == jn.JobState("failed", "n1", detail="failed: . /x")


def test_server_script_conda_env(tmp_path):
    # a stand-in `conda` that prints what `conda shell.posix activate ENV` prints: exports
    conda_dir = tmp_path / "conda"
    conda_dir.mkdir()
    (conda_dir / "conda").write_text('#!/bin/sh\n[ "$1 $2 $3" = "shell.posix activate my env" ] && '
                                     'echo "export CONDA_DEFAULT_ENV=\'$3\'"\n')
    (conda_dir / "conda").chmod(0o755)
    script = jn.build_server_script("lab", pre=["test -z \"$CONDA_DEFAULT_ENV\""], conda_env="my env")
    script = script.replace("exec jupyter", 'test "$CONDA_DEFAULT_ENV" = "my env" && exec jupyter')
    assert run_script(script, tmp_path, f"{conda_dir}:").splitlines()[0] == "lab"
    # a conda that fails (no such environment) fails the activation: eval of nothing would not
    failing = jn.build_server_script("lab", conda_env="other")
    done = subprocess.run(["sh", "-c", failing], **TEXT, env={"PATH": f"{conda_dir}:/usr/bin:/bin"})
    assert done.returncode == 1 and jn.parse_log(done.stdout).failure.startswith("failed: eval ")


@pytest.mark.parametrize("kwargs, expected", [
    ({}, ["qrsh", "-w", "e", "-V", "-now", "no", "-cwd", "-N", "notebook"]),
    ({"queue": "gpu.q", "node": "n1", "resources": ["h_vmem=4G"]},
     ["qrsh", "-w", "e", "-V", "-now", "no", "-cwd", "-N", "notebook", "-l", "q=gpu.q", "-l", "h=n1",
      "-l", "h_vmem=4G"]),
])
def test_build_qrsh_argv(kwargs, expected):
    argv = jn.build_qrsh_argv("qrsh", "notebook", "echo 'hi'", **kwargs)
    assert argv[:-1] == expected
    assert shlex.split(argv[-1]) == ["sh", "-c", "echo 'hi'"]


def test_build_qrsh_argv_lab_job_name():
    assert jn.build_qrsh_argv("qrsh", "lab", "x")[8] == "jp-lab"


@pytest.mark.parametrize("kwargs, expected", [
    ({}, ["sbatch", "--parsable", "-J", "jp-lab", "-o", "/l.log", "--open-mode=append", "--wrap", "S"]),
    ({"queue": "gpu", "node": "n1", "resources": ["mem=4G", "gres=gpu:1"]},
     ["sbatch", "--parsable", "-J", "jp-lab", "-o", "/l.log", "--open-mode=append", "--partition=gpu",
      "--nodelist=n1", "--mem=4G", "--gres=gpu:1", "--wrap", "S"]),
])
def test_build_sbatch_argv(kwargs, expected):
    assert jn.build_sbatch_argv("sbatch", "lab", "S", "/l.log", **kwargs) == expected


@pytest.mark.parametrize("text, expected", [
    ("", jn.LogInfo()),
    ("qrsh: waiting\n", jn.LogInfo()),
    (f"{jn.MARK} job 12 node n1.cluster\n[I ServerApp] starting\n", jn.LogInfo("12", "n1.cluster", 0)),
    (f"{jn.MARK} job 12 node n1\n[I ServerApp] Jupyter Server 2.21.1 is running at:\n"
     "[I ServerApp] http://n1:8889/lab?token=abc\n", jn.LogInfo("12", "n1", 8889)),
    (f"{jn.MARK} job  node n1\n    http://[fe80::1]:8890/tree\n", jn.LogInfo("", "n1", 8890)),
    # a log given with -l twice: the last run counts
    (f"{jn.MARK} job 1 node a\nhttp://a:8888/\n{jn.MARK} job 2 node b\n", jn.LogInfo("2", "b", 0)),
    # a URL before the marker (not ours) does not make the server ready
    (f"see http://example.org:80/\n{jn.MARK} job 3 node c\n", jn.LogInfo("3", "c", 0)),
    # a failed activation command, as build_server_script's fail() prints it
    (f"{jn.MARK} job 4 node d\nsh: 1: .: cannot open /a\n{jn.MARK} fail failed: . /a\n",
     jn.LogInfo("4", "d", 0, "failed: . /a")),
    # an earlier run's failure in a log given with -l twice does not count
    (f"{jn.MARK} job 1 node a\n{jn.MARK} fail failed: x\n{jn.MARK} job 2 node b\n", jn.LogInfo("2", "b", 0)),
])
def test_parse_log(text, expected):
    assert jn.parse_log(text) == expected


@pytest.mark.parametrize("output, expected", [
    ("RUNNING|node1|None\n", ("RUNNING", "node1", "None")),
    ("PENDING||Resources\n", ("PENDING", "", "Resources")),
    ("", ("", "", "")),
])
def test_parse_squeue(output, expected):
    assert jn.parse_squeue(output) == expected


@pytest.mark.parametrize("state, reason, expected", [
    ("PENDING", "Resources", "Resources"),
    ("PENDING", "None", ""),
    ("PENDING", "(null)", ""),
    ("SUSPENDED", "(null)", "suspended"),  # the listing once showed "suspended: (null)"
    ("SUSPENDED", "None", "suspended"),
    ("REQUEUE_HOLD", "JobHeldAdmin", "requeue_hold: JobHeldAdmin"),
])
def test_slurm_waiting_reason(state, reason, expected):
    assert jn.slurm_waiting(state, reason) == expected


@pytest.mark.parametrize("sge, slurm, expected", [(True, False, "sge"), (False, True, "slurm")])
def test_choose_scheduler(sge, slurm, expected):
    assert jn.choose_scheduler(sge, slurm) == expected


@pytest.mark.parametrize("sge, slurm, words", [(True, True, "both"), (False, False, "neither")])
def test_choose_scheduler_asks_for_the_option(sge, slurm, words):
    with pytest.raises(jn.NodeError, match=f"{words}.*--scheduler") as caught:
        jn.choose_scheduler(sge, slurm)
    assert caught.value.code == jn.EXIT_MISSING


@pytest.mark.parametrize("sge, slurm, expected", [
    (True, True, ["sge", "slurm"]), (True, False, ["sge"]), (False, True, ["slurm"]),
])
def test_found_schedulers_to_list_or_cancel_are_all_there_are(sge, slurm, expected):
    assert jn.found_schedulers(sge, slurm) == expected


def test_found_schedulers_none_is_an_error():
    with pytest.raises(jn.NodeError) as caught:
        jn.found_schedulers(False, False)
    assert (str(caught.value), caught.value.code) == (
        "found neither qrsh nor sbatch/srun on PATH: choose with --scheduler sge|slurm", jn.EXIT_MISSING)


def test_build_tunnel_command_quotes():
    assert jn.build_tunnel_command("me@head.x", "n1") == "jupyter-tunnel -s me@head.x -n n1"
    assert shlex.split(jn.build_tunnel_command("a b", "n;1")) == ["jupyter-tunnel", "-s", "a b", "-n", "n;1"]


def test_log_tail():
    text = "\n".join(f"line {i}" for i in range(30)) + "\n\n"
    assert jn.log_tail(text, 3) == "    line 27\n    line 28\n    line 29"
    assert jn.log_tail("") == "    (the log is empty)"
    # blank lines do not count, and a traceback keeps its indentation
    assert jn.log_tail("Traceback:\n  File x\n \n", 2) == "    Traceback:\n      File x"


def test_make_log_default_is_private_and_named(state_home):
    path = jn.make_log(None)
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(state_home / "jupyter-node")
    assert name.startswith(f"jupyter_nb_{getpass.getuser()}_") and name.endswith(".log")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    # one made open to others (umask 022, say) is made private again
    os.chmod(os.path.dirname(path), 0o755)
    jn.make_log(None)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


@pytest.mark.parametrize("environ, directory", [
    ({"XDG_STATE_HOME": "/s"}, "/s/jupyter-node"),
    ({}, "/home/u/.local/state/jupyter-node"),
    ({"XDG_STATE_HOME": ""}, "/home/u/.local/state/jupyter-node"),
    ({"XDG_STATE_HOME": "state"}, "/home/u/.local/state/jupyter-node"),  # relative: ignored (XDG spec)
])
def test_build_log_dir(environ, directory):
    assert jn.build_log_dir(environ, "/home/u") == directory


@pytest.mark.parametrize("make, words", [
    (lambda path: path.symlink_to(path.parent), "it is a symbolic link"),
    (lambda path: path.write_text(""), "it is not a directory"),
])
def test_a_log_directory_that_is_not_a_private_one_is_refused(state_home, make, words):
    state_home.mkdir()
    make(state_home / "jupyter-node")
    with pytest.raises(jn.NodeError) as caught:
        jn.make_log(None)
    assert str(caught.value) == (f"not writing the log in {state_home / 'jupyter-node'}: {words}; remove it, "
                                 "or give a log file with -l PATH")


AGE = jn.LOG_GRACE + 1  # older than the grace a new log has


@pytest.mark.parametrize("head, age, listings, removed", [
    # the job id (ours, or the job's own marker) in the listing: it runs; else it has ended
    (f"{jn.MARK} submitting to slurm\n{jn.MARK} submitted to slurm as job 7\n", AGE,
     {"slurm": [jn.JobRow("7", "jp-lab", "running", "n1")]}, False),
    (f"{jn.MARK} submitting to slurm\n{jn.MARK} submitted to slurm as job 7\n", AGE,
     {"slurm": [jn.JobRow("8", "jp-lab", "running", "n1")]}, True),
    (f"{jn.MARK} submitting to sge\n{jn.MARK} job 7 node n1\n", AGE, {"sge": []}, True),
    (f"{jn.MARK} submitting to sge\n{jn.MARK} job 7 node n1\n", AGE,
     {"sge": [jn.JobRow("7", "notebook", "running", "n1")]}, False),
    # young: a submission may be under way, whatever the listing says
    (f"{jn.MARK} submitting to slurm\n", 10, {"slurm": []}, False),
    # no job id yet (a qrsh's pending job): kept while a Jupyter job has no log of its own
    (f"{jn.MARK} submitting to sge\n", AGE, {"sge": [jn.JobRow("9", "jp-lab", "pending")]}, False),
    (f"{jn.MARK} submitting to sge\n", AGE, {"sge": [jn.JobRow("9", "simulation", "pending")]}, True),
    (f"{jn.MARK} submitting to sge\nerror: no suitable queues\n", AGE, {"sge": []}, True),
    # a scheduler that was not asked, or no scheduler said: nothing is known, nothing removed
    (f"{jn.MARK} submitting to slurm\n{jn.MARK} submitted to slurm as job 7\n", AGE, {"sge": []}, False),
    ("something else\n", AGE, {"sge": [], "slurm": []}, False),
])
def test_ended_logs(head, age, listings, removed):
    assert jn.ended_logs([("/l/a.log", head, 1000.0)], listings, 1000.0 + age) == (["/l/a.log"] if removed else [])


def test_a_pending_jobs_log_is_kept_once_another_has_its_own():
    logs = [("/l/pending.log", f"{jn.MARK} submitting to sge\n", 0.0),
            ("/l/running.log", f"{jn.MARK} submitting to sge\n{jn.MARK} job 4 node n1\n", 0.0)]
    listing = {"sge": [jn.JobRow("4", "jp-lab", "running", "n1"), jn.JobRow("5", "jp-lab", "pending")]}
    assert jn.ended_logs(logs, listing, AGE) == []
    assert jn.ended_logs(logs, {"sge": listing["sge"][:1]}, AGE) == ["/l/pending.log"]


def test_remove_ended_logs_takes_only_our_own_files(state_home, tmp_path):
    directory = Path(jn.make_log(None)).parent
    user = getpass.getuser()
    ended = f"{jn.MARK} submitting to slurm\n{jn.MARK} submitted to slurm as job 7\n"
    outside = tmp_path / "outside.log"
    outside.write_text(ended)
    files = {
        f"jupyter_nb_{user}_h_ended001.log": ended,
        f"jupyter_nb_{user}_h_running1.log": f"{jn.MARK} submitting to slurm\n{jn.MARK} submitted to slurm as job 8\n",
        "notes.log": ended,  # not our naming
        f"jupyter_nb_{user}_h_ended002.txt": ended,
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    (directory / f"jupyter_nb_{user}_h_link0001.log").symlink_to(outside)  # never followed
    old = time.time() - jn.LOG_GRACE - 60
    for path in [*directory.iterdir(), outside]:
        os.utime(path, (old, old), follow_symlinks=False)
    jn.remove_ended_logs({"slurm": [jn.JobRow("8", "jp-lab", "running", "n1")]})
    left = sorted(path.name for path in directory.iterdir())
    assert f"jupyter_nb_{user}_h_ended001.log" not in left
    assert set(left) >= {f"jupyter_nb_{user}_h_running1.log", "notes.log", f"jupyter_nb_{user}_h_ended002.txt",
                         f"jupyter_nb_{user}_h_link0001.log"}
    assert outside.read_text() == ended


def test_make_log_given_path_is_made_private(tmp_path):
    log = tmp_path / "my.log"
    log.write_text("old run\n")
    log.chmod(0o644)
    assert jn.make_log(str(log)) == str(log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and log.read_text() == "old run\n"


@pytest.mark.parametrize("argv, message", [
    (["-t", "hub"], "invalid choice: 'hub'"),
    (["-w", "5x"], "invalid wait time '5x'"),
    (["-w", "-1"], "invalid wait time '-1'"),
    (["--scheduler", "pbs"], "invalid choice: 'pbs'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    # a job id goes on qdel/scancel's command line: nothing else, and never an option of theirs
    (["--job", "4711;rm"], "argument --job: not a job id (a letter or digit, then letters, digits, . _ -): '4711;rm'"),
    (["--cancel", "a b"], "argument --cancel: not a job id (a letter or digit, then letters, digits, . _ -): 'a b'"),
    (["--cancel=-1"], "argument --cancel: not a job id (a letter or digit, then letters, digits, . _ -): '-1'"),
    (["--job=-u"], "argument --job: not a job id (a letter or digit, then letters, digits, . _ -): '-u'"),
    (["--pre", "true\nfalse"], "argument --pre: must be one line (no newline): 'true\\nfalse'"),
    (["--conda-env", "a\u2029b"], "argument --conda-env: must be one line (no newline)"),
    (["--jobs", "--reuse"], "not allowed with argument"),
    (["--cancel", "1", "--jobs"], "not allowed with argument"),
])
def test_bad_options_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        jn.main(argv)
    assert caught.value.code == jn.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_runs_directly_with_help_and_version():
    done = subprocess.run([str(REPO / "jupyter_node.py"), "--help"], **TEXT)
    assert done.returncode == jn.EXIT_OK and "--conda-env" in done.stdout and "exit codes" in done.stdout
    done = subprocess.run([sys.executable, str(REPO / "jupyter_node.py"), "--version"], **TEXT)
    assert done.stdout.strip() == f"jupyter-node {jn.__version__}"
    done = subprocess.run([sys.executable, str(REPO / "jupyter_node.py"), "-w", "soon"], **TEXT)
    assert done.returncode == jn.EXIT_USAGE and "sleep syntax" in done.stderr


def test_console_script_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["jupyter-node"] == "jupyter_node:main"
    assert "jupyter_node" in project["tool"]["setuptools"]["py-modules"]


def test_scheduler_is_asked_gently():
    delays = jn.doubling_delays(first=0.5, cap=10)
    assert [next(delays) for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]


class ScriptedJob(jn.Job):
    """A Job whose scheduler answers from a list: the log/scheduler combination, alone."""

    def __init__(self, log: str, answers: list) -> None:
        super().__init__(log)
        self.answers = answers
        self.asked = 0

    def ask_scheduler(self, info):
        self.asked += 1
        return self.answers.pop(0)


@pytest.mark.parametrize("log, answer, expected", [
    ("", jn.JobState("pending", detail="pending: Resources"), jn.JobState("pending", detail="pending: Resources")),
    ("", jn.JobState("running"), jn.JobState("pending")),  # running, but not on a node we know yet
    ("", jn.JobState("running", "n1"), jn.JobState("running", "n1")),
    (f"{jn.MARK} job 7 node n1.x\n", jn.JobState("running"), jn.JobState("running", "n1.x")),
    (f"{jn.MARK} job 7 node n1.x\nhttp://n1.x:8888/lab?token=t\n", jn.JobState("running"),
     jn.JobState("ready", "n1.x", 8888)),
    (f"{jn.MARK} job 7 node n1.x\n", jn.JobState("failed", "n1.x", detail="the job is failed"),
     jn.JobState("failed", "n1.x", detail="the job is failed")),
])
def test_job_poll_combines_log_and_scheduler(tmp_path, log, answer, expected):
    path = tmp_path / "log"
    path.write_text(log)
    job = ScriptedJob(str(path), [answer])
    assert job.poll() == expected
    # not asking again keeps the scheduler's last word: only the log is read
    assert job.poll(ask=False) == expected and job.asked == 1


def test_version_is_the_projects():
    # jupyter_node.py must run alone on a head node, so it keeps its own copy of the version
    # (read, not imported: jupyter_tunnel.py needs Python >= 3.9, these tests run under 3.6)
    tunnel = re.search(r'^__version__ = "([^"]+)"$', (REPO / "jupyter_tunnel.py").read_text(), re.M)
    assert tunnel and jn.__version__ == tunnel.group(1)


# --------------------------------------------------------------------------- jobs and time left

# `qstat -xml -r -u jtcluster` of Son of Grid Engine 8.1.9, as the tests' cluster prints it: a
# job with its own h_rt, one without (its queue's h_rt applies), one being deleted, a job of
# another name, and pending ones (on hold; in error; waiting for a queue it asked for)
QSTAT_XML = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>65</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>jp-lab</JB_name>
      <JB_owner>jtcluster</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-29T09:48:35</JAT_start_time>
      <queue_name>all.q@node07.cluster</queue_name>
      <slots>1</slots>
      <full_job_name>jp-lab</full_job_name>
      <hard_request name="h_rt" resource_contribution="0.000000">600</hard_request>
      <binding>NONE</binding>
    </job_list>
    <job_list state="running">
      <JB_job_number>66</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>notebook</JB_name>
      <JB_owner>jtcluster</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-29T09:48:35.117</JAT_start_time>
      <queue_name>gpu.q@node08</queue_name>
      <slots>1</slots>
      <full_job_name>notebook</full_job_name>
      <binding>NONE</binding>
    </job_list>
    <job_list state="running">
      <JB_job_number>60</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>jp-lab</JB_name>
      <JB_owner>jtcluster</JB_owner>
      <state>dr</state>
      <JAT_start_time>2026-11-29T08:00:00</JAT_start_time>
      <queue_name>all.q@node07.cluster</queue_name>
      <slots>1</slots>
      <full_job_name>jp-lab</full_job_name>
    </job_list>
    <job_list state="running">
      <JB_job_number>61</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>simulation</JB_name>
      <JB_owner>jtcluster</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-29T08:00:00</JAT_start_time>
      <queue_name>all.q@node09</queue_name>
      <slots>4</slots>
      <full_job_name>simulation</full_job_name>
      <hard_request name="h_vmem" resource_contribution="0.000000">4G</hard_request>
      <hard_request name="h_rt" resource_contribution="0.000000">86400</hard_request>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>67</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>notebook</JB_name>
      <JB_owner>jtcluster</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-11-29T09:50:01</JB_submission_time>
      <queue_name></queue_name>
      <slots>8</slots>
      <full_job_name>notebook</full_job_name>
      <hard_request name="h_rt" resource_contribution="0.000000">3600</hard_request>
      <hard_req_queue>all.q</hard_req_queue>
      <requested_PE name="smp">8</requested_PE>
    </job_list>
    <job_list state="pending">
      <JB_job_number>68</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>jp-lab</JB_name>
      <JB_owner>jtcluster</JB_owner>
      <state>hqw</state>
      <JB_submission_time>2026-11-29T09:51:00</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <full_job_name>jp-lab</full_job_name>
    </job_list>
    <job_list state="pending">
      <JB_job_number>69</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>jp-lab</JB_name>
      <JB_owner>jtcluster</JB_owner>
      <state>Eqw</state>
      <JB_submission_time>2026-11-29T09:52:00</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <full_job_name>jp-lab</full_job_name>
    </job_list>
  </job_info>
</job_info>
"""

START = "2026-11-29T09:48:35"


def test_parse_qstat_xml():
    assert jn.parse_qstat_xml(QSTAT_XML) == [
        jn.SgeEntry("65", "jp-lab", "running", "node07.cluster", "all.q", START, 600, ""),
        jn.SgeEntry("66", "notebook", "running", "node08", "gpu.q", START + ".117", None, ""),
        jn.SgeEntry("61", "simulation", "running", "node09", "all.q", "2026-11-29T08:00:00", 86400, ""),
        jn.SgeEntry("67", "notebook", "pending", "", "all.q", "", 3600, ""),
        jn.SgeEntry("68", "jp-lab", "pending", "", "", "", None, "on hold"),
        jn.SgeEntry("69", "jp-lab", "pending", "", "", "", None, "error state"),
    ]


def test_parse_qstat_xml_without_jobs_and_broken():
    empty = "<?xml version='1.0'?>\n<job_info>\n  <queue_info>\n  </queue_info>\n  <job_info>\n  </job_info>\n</job_info>\n"
    assert jn.parse_qstat_xml(empty) == []
    with pytest.raises(jn.NodeError, match="no XML"):
        jn.parse_qstat_xml("error: commlib error: got select error (Connection refused)\n")


def test_build_sge_rows_time_left():
    # start + h_rt (the job's own, else its queue's) - now; the start is the head's local time
    now = jn.parse_sge_start(START) + 100
    rows = jn.build_sge_rows(jn.parse_qstat_xml(QSTAT_XML), {"gpu.q": 7200, "all.q": None}, now)
    assert [(row.job, row.state, row.node, row.time_left, row.reason) for row in rows] == [
        ("65", "running", "node07.cluster", 500, ""),
        ("66", "running", "node08", 7100, ""),  # gpu.q's h_rt
        ("61", "running", "node09", 86400 - 100 - 6515, ""),
        ("67", "pending", "", 3600, ""),  # not started: the whole limit is ahead of it
        ("68", "pending", "", None, "on hold"),  # no h_rt, no queue known: no limit known
        ("69", "pending", "", None, "error state"),
    ]


def test_time_left_never_negative():
    start = jn.parse_sge_start(START)
    assert jn.time_left(start, 60, start + 61) == 0
    assert jn.time_left(start, None, start) is None
    assert jn.time_left(None, 60, start) == 60


@pytest.mark.parametrize("text", ["", "soon", "2026-11-29 09:48:35"])
def test_parse_sge_start_unknown(text):
    assert jn.parse_sge_start(text) is None


# `qconf -sq all.q` (lines of it): h_rt is INFINITY, seconds, a clock, or per host in brackets
QCONF = "qname                 all.q\nhostlist              @allhosts\ns_rt                  INFINITY\nh_rt                  {}\nh_cpu                 INFINITY\n"


@pytest.mark.parametrize("h_rt, host, seconds", [
    ("INFINITY", "node07", None),
    ("3600", "node07", 3600),
    ("48:00:00", "node07", 172800),
    ("INFINITY,[node07=1:00:00],[node08=600]", "node07.cluster", 3600),  # the short name counts
    ("INFINITY,[node07=1:00:00],[node08=600]", "node08", 600),
    ("2:00:00,[node07=1:00:00]", "node09", 7200),
    ("2:00:00,[node07=1:00:00]", "", 7200),
])
def test_parse_qconf_h_rt(h_rt, host, seconds):
    assert jn.parse_qconf_h_rt(QCONF.format(h_rt), host) == seconds


def test_parse_qconf_h_rt_missing():
    assert jn.parse_qconf_h_rt("error: no such queue\n") is None


@pytest.mark.parametrize("text, seconds", [
    ("10:00", 600), ("9:58", 598), ("1:00:00", 3600), ("1-02:00:00", 93600), ("45", 45),
    ("0:00", 0), ("UNLIMITED", None), ("NOT_SET", None), ("INVALID", None), ("INFINITY", None),
])
def test_parse_clock(text, seconds):
    assert jn.parse_clock(text) == seconds


@pytest.mark.parametrize("text", ["1:2:3:4", "soon", "1-", "-5", "1.5"])
def test_parse_clock_rejects(text):
    with pytest.raises(ValueError):
        jn.parse_clock(text)


# `squeue -h -u jtcluster -o '%i|%j|%T|%N|%L|%r'` of Slurm 22.05, as the tests' cluster prints it
SQUEUE = """51|notebook|PENDING||1-02:00:00|PartitionConfig
49|jp-lab|RUNNING|node1|10:00|None
50|notebook|RUNNING|node2|UNLIMITED|None
52|jp-lab|COMPLETING|node1|0:00|None
53|jp-lab|CONFIGURING|node3|59:59|None
54|jp-lab|PENDING||1:00:00|(null)
55|a|b|c
"""


def test_parse_squeue_jobs():
    assert jn.parse_squeue_jobs(SQUEUE) == [
        jn.JobRow("51", "notebook", "pending", "", 93600, "PartitionConfig"),
        jn.JobRow("49", "jp-lab", "running", "node1", 600, ""),
        jn.JobRow("50", "notebook", "running", "node2", None, ""),
        jn.JobRow("53", "jp-lab", "pending", "node3", 3599, "configuring"),
        jn.JobRow("54", "jp-lab", "pending", "", 3600, ""),
    ]
    assert jn.parse_squeue_jobs("") == []


def test_parse_scontrol_stdout():
    text = ("JobId=49 JobName=jp-lab UserId=jtcluster(1001) JobState=RUNNING Reason=None "
            "WorkDir=/home/jtcluster StdErr=/tmp/jupyter_nb_jtcluster_head_x1.log StdIn=/dev/null "
            "StdOut=/tmp/jupyter_nb_jtcluster_head_x1.log Power= \n")
    assert jn.parse_scontrol_stdout(text) == "/tmp/jupyter_nb_jtcluster_head_x1.log"
    assert jn.parse_scontrol_stdout("slurm_load_jobs error: Invalid job id specified\n") == ""


@pytest.mark.parametrize("rows, expected", [
    ([jn.JobRow("51", "notebook", "pending"), jn.JobRow("49", "jp-lab", "running", "n1")], "49"),
    ([jn.JobRow("51", "notebook", "pending"), jn.JobRow("52", "jp-lab", "pending")], "51"),
    ([jn.JobRow("61", "simulation", "running", "n1")], None),
    ([], None),
])
def test_job_to_reuse(rows, expected):
    chosen = jn.job_to_reuse(rows, list(jn.JOB_NAMES.values()))
    assert (chosen.job if chosen else None) == expected


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (59.9, "59 s"), (60, "1 min"), (598, "9 min"), (600, "10 min"), (3600, "1 h"),
    (5400, "1 h 30 min"), (86400, "1 d"), (93600, "1 d 2 h"), (2 * 86400 + 3 * 3600 + 59, "2 d 3 h"), (-5, "0 s"),
    (None, "no time limit"),
])
def test_format_time_left(seconds, text):
    """The time left, as all three tools print it (jupyter-tunnel's messages and tables,
    jupyter-node's, jupyter-tunnel-shutdown --list)."""
    assert jn.format_time_left(seconds) == text


def test_format_jobs_says_each_jobs_scheduler_when_two_were_asked():
    lines = jn.format_jobs([jn.JobRow("49", "jp-lab", "running", "node1", 598),
                            jn.JobRow("81234", "notebook", "pending", "", None, "Resources")],
                           ["sge", "slurm"]).splitlines()
    assert lines == [
        "SCHEDULER  JOB    NAME      STATE    NODE   TIME LEFT      REASON",
        "sge        49     jp-lab    running  node1  9 min",
        "slurm      81234  notebook  pending  -      no time limit  Resources",
    ]


def test_format_jobs():
    lines = jn.format_jobs([jn.JobRow("49", "jp-lab", "running", "node1", 598),
                            jn.JobRow("51", "notebook", "pending", "", None, "Resources")]).splitlines()
    # the same table as jupyter-tunnel's and jupyter-tunnel-shutdown's (jn.format_table)
    assert lines == [
        "JOB  NAME      STATE    NODE   TIME LEFT      REASON",
        "49   jp-lab    running  node1  9 min",
        "51   notebook  pending  -      no time limit  Resources",
    ]


@pytest.mark.parametrize("state, expected", [
    (jn.JobState("ready", "n1", 8888), {"state": "ready", "node": "n1", "port": 8888, "reason": "", "error": None}),
    (jn.JobState("pending", detail="Resources"),
     {"state": "pending", "node": "", "port": None, "reason": "Resources", "error": None}),
    (jn.JobState("failed", "n1", detail="error: no suitable queues"),
     {"state": "failed", "node": "n1", "port": None, "reason": "", "error": "error: no suitable queues"}),
])
def test_build_result(state, expected):
    result = jn.build_result("sge", "65", "jp-lab", state, "/tmp/l.log", 500, False)
    assert result == dict(expected, scheduler="sge", job="65", name="jp-lab", log="/tmp/l.log",
                          time_left=500, existing=False)


@pytest.mark.parametrize("job, state, wait, line", [
    ("51", jn.JobState("pending", detail="Resources"), "", "job 51 is pending (Resources)"),
    ("", jn.JobState("pending"), "", "the job is pending"),
    ("51", jn.JobState("running", "node1"), "", "job 51 is running on node1; waiting for Jupyter..."),
    # the first line of a wait says how long it may be
    ("51", jn.JobState("pending", detail="Resources"), "2m",
     "job 51 is pending (Resources); waiting up to 2m for it to start..."),
    ("", jn.JobState("pending"), "15s", "the job is pending; waiting up to 15s for it to start..."),
    ("51", jn.JobState("running", "node1"), "2m", "job 51 is running on node1; waiting up to 2m for Jupyter..."),
])
def test_progress_line(job, state, wait, line):
    assert jn.progress_line(job, state, wait) == line


def test_wait_tells_each_change_once(tmp_path, capsys):
    path = tmp_path / "log"
    path.write_text("")
    answers = [jn.JobState("pending", detail="Priority"), jn.JobState("pending", detail="Priority"),
               jn.JobState("pending", detail="Resources"), jn.JobState("running", "n1"), jn.JobState("running", "n1")]

    class Changing(ScriptedJob):
        def ask_scheduler(self, info):
            if len(self.answers) == 2:  # the server comes up once the job runs (seen at the next look)
                path.write_text(f"{jn.MARK} job 7 node n1\nhttp://n1:8888/lab?token=t\n")
            return ScriptedJob.ask_scheduler(self, info)

    job = Changing(str(path), answers)
    job.job_id = "7"
    assert jn.wait_for_job(job, 30, "30s") == jn.JobState("ready", "n1", 8888)
    assert capsys.readouterr().err.splitlines() == [
        "Info: job 7 is pending (Priority); waiting up to 30s for it to start...",
        "Info: job 7 is pending (Resources)", "Info: job 7 is running on n1; waiting for Jupyter..."]


def test_wait_tells_nothing_when_nothing_is_waited_for(tmp_path, capsys):
    path = tmp_path / "log"
    path.write_text(f"{jn.MARK} job 7 node n1.x\nhttp://n1.x:8888/lab?token=t\n")  # ready at the first look
    assert jn.wait_for_job(ScriptedJob(str(path), [jn.JobState("running", "n1")]), 30, "30s") == \
        jn.JobState("ready", "n1.x", 8888)
    found = ScriptedJob("", [jn.JobState("running", "n1")])  # found by --reuse, its log not here
    assert jn.wait_for_job(found, 30, "30s") == jn.JobState("running", "n1")
    assert capsys.readouterr().err == ""


def test_wait_does_not_retell_a_running_job_whose_node_name_grows(tmp_path, capsys):
    path = tmp_path / "log"
    path.write_text("")

    class Starting(ScriptedJob):
        def ask_scheduler(self, info):
            if self.asked == 1:  # squeue's short name first, then the job's marker with its FQDN
                path.write_text(f"{jn.MARK} job 7 node n1.cluster\n")
            if self.asked == 3:
                path.write_text(f"{jn.MARK} job 7 node n1.cluster\nhttp://n1.cluster:8888/lab?token=t\n")
            return ScriptedJob.ask_scheduler(self, info)

    job = Starting(str(path), [jn.JobState("running", "n1")] * 6)
    job.job_id = "7"
    assert jn.wait_for_job(job, 30, "1m").state == "ready"
    assert capsys.readouterr().err.splitlines() == ["Info: job 7 is running on n1; waiting up to 1m for Jupyter..."]


def test_log_tail_leaves_out_our_marker_lines():
    text = f"{jn.MARK} job 7 node vm\nsh: module: not found\n{jn.MARK} fail failed: module load x\n"
    assert jn.log_tail(text) == "    sh: module: not found"
    assert jn.log_tail(f"{jn.MARK} job 7 node vm\n") == "    (the log is empty)"


def test_jobs_table_escapes_the_schedulers_words():
    row = jn.JobRow("4711", "evil\x1b[2J", "pending", "", None, "Resources\nInfo: forged")
    table = jn.format_jobs([row])
    assert "\x1b" not in table and len(table.splitlines()) == 2
    assert "evil\\x1b[2J" in table and "Resources\\nInfo: forged" in table


@pytest.mark.parametrize("text, ok", [
    ("4711", True), ("81234_3", True), ("4711.1", True), ("a", True), ("A-1", True),
    ("-1", False), ("--help", False), (".", False), ("_1", False), ("", False),
    ("4711\n", False), ("4711 ", False), ("1;x", False),
])
def test_job_id_never_starts_with_a_dash(text, ok):
    assert bool(jn.JOB_ID_RE.fullmatch(text)) is ok


@pytest.mark.parametrize("text, ok", [
    (". ~/venv/bin/activate", True), ("module load python; echo 'a\tb'", True), ("", True),
    ("a\nb", False), ("a\rb", False), ("a\x0bb", False), ("a\x1cb", False), ("a\x85b", False),
    ("a\u2028b", False), ("trailing\n", False),
])
def test_line_option(text, ok):
    if ok:
        assert jn.line_option(text) == text
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="must be one line"):
            jn.line_option(text)


# --------------------------------------------------------------------------- the whole run, fake scheduler

class FakeScheduler:
    """Scheduler commands (squeue, scontrol, qstat...) that answer what a test wrote for them,
    alone on PATH: main() runs as on a head, its messages read as a user reads them."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "fake-bin"
        self.bin.mkdir()
        self.calls = tmp_path / "calls"

    def answer(self, program: str, stdout: str = "", code: int = 0) -> None:
        """``program`` prints ``stdout`` and exits with ``code`` (its argv goes to ``calls``)."""
        answer = self.bin / f"{program}.out"
        answer.write_text(stdout)
        script = self.bin / program
        script.write_text(f'#!/bin/sh\necho "{program} $*" >>{shlex.quote(str(self.calls))}\n'
                          f"/bin/cat {shlex.quote(str(answer))}\nexit {code}\n")
        script.chmod(0o755)

    def called(self) -> List[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def fake(tmp_path, monkeypatch, state_home):
    scheduler = FakeScheduler(tmp_path)
    monkeypatch.setenv("PATH", str(scheduler.bin))
    monkeypatch.setenv("NO_COLOR", "1")
    return scheduler


def run_main(argv, capsys):
    """main(argv): its exit code, stdout and stderr lines."""
    code = jn.main(argv)
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


@pytest.mark.parametrize("json_mode", [False, True])
def test_reuse_of_a_ready_job_says_found_then_nothing_twice(fake, tmp_path, capsys, json_mode):
    """jupyter-tunnel --submit with a Jupyter job running (issue 22): no waiting, one line a fact."""
    log = tmp_path / "job.log"
    log.write_text(f"{jn.MARK} job 7 node vm.cluster\n[I ServerApp] http://vm.cluster:8888/lab?token=t\n")
    fake.answer("squeue", "7|jp-lab|RUNNING|vm|1:30:00|None\n")
    fake.answer("scontrol", f"JobId=7 JobName=jp-lab StdOut={log}\n")
    code, out, err = run_main(["--scheduler", "slurm", "--reuse", "-t", "lab", "-w", "60s"]
                              + (["--json"] if json_mode else []), capsys)
    assert code == jn.EXIT_OK
    if json_mode:  # the tunnel tells the outcome (its "Running in slurm job 7 ...")
        assert err == ["Info: Found your Jupyter job 7 (jp-lab): attaching to it instead of submitting "
                       "another (--new submits one)."]
        result = json.loads(out)
        assert (result["state"], result["existing"], result["port"], result["time_left"]) == ("ready", True, 8888, 5400)
    else:
        assert err == [
            "Info: Found your Jupyter job 7 (jp-lab): using it instead of submitting another.",
            "Info: Jupyter lab is running on node vm.cluster, port 8888 (job 7, 1 h 30 min left).",
            "Info: On your computer, run (put your gateway hosts first after -s if you need them):",
            f"Info: Log (it holds the token; private): {log}",
        ]
        assert out.startswith("jupyter-tunnel -s ") and out.rstrip().endswith(" -n vm.cluster")


@pytest.mark.parametrize("json_mode", [False, True])
def test_reuse_of_a_pending_job_says_what_helps_where_it_is_read(fake, capsys, json_mode):
    fake.answer("squeue", "7|jp-lab|PENDING||1:30:00|Resources\n")
    fake.answer("scontrol", "JobId=7 JobName=jp-lab StdOut=/nonexistent/job.log\n")  # not written yet
    code, out, err = run_main(["--scheduler", "slurm", "--reuse", "-t", "lab", "-w", "0.3s"]
                              + (["--json"] if json_mode else []), capsys)
    assert code == jn.EXIT_OK
    waiting = "Info: job 7 is pending (Resources); waiting up to 0.3s for it to start..."
    if json_mode:  # no log path, no jupyter-node command: the tunnel says what its user can do
        assert err == ["Info: Found your Jupyter job 7 (jp-lab): attaching to it instead of submitting "
                       "another (--new submits one).", waiting]
        assert json.loads(out)["state"] == "pending"
    else:
        assert err == [
            "Info: Found your Jupyter job 7 (jp-lab): using it instead of submitting another.", waiting,
            "Info: After 0.3s, job 7 is still pending (Resources); it stays in the queue: jupyter-node "
            "--scheduler slurm --reuse -t lab waits for it again, jupyter-node --scheduler slurm --cancel 7 "
            "cancels it.",
        ]
        assert out == ""


@pytest.mark.parametrize("job_id, scheduler, hint", [
    ("7", "", "jupyter-node --reuse -t lab waits for it again, jupyter-node --cancel 7 cancels it"),
    ("", "sge", "jupyter-node --scheduler sge --reuse -t notebook waits for it again, "
                "jupyter-node --scheduler sge --jobs shows its id"),
])
def test_build_again_hint(job_id, scheduler, hint):
    assert jn.build_again_hint(job_id, "lab" if job_id else "notebook", scheduler) == hint


# Both schedulers on PATH (a head with Grid Engine and Slurm): a job of each, as they list them.
# Grid Engine's are QSTAT_XML's (65 jp-lab and 66 notebook running, 67-69 pending...)
BOTH_SQUEUE = "81234|jp-lab|RUNNING|gpu03|1:00:00|None\n81300|simulation|RUNNING|gpu04|2:00:00|None\n"


@pytest.fixture
def both(fake):
    for program in ("qrsh", "sbatch", "qdel", "scancel"):
        fake.answer(program)
    fake.answer("qstat", QSTAT_XML)
    fake.answer("squeue", BOTH_SQUEUE)
    fake.answer("scontrol", "JobId=81234 StdOut=/nonexistent/log\n")
    return fake


def test_jobs_with_both_schedulers_lists_both_and_says_which(both, capsys):
    code, out, err = run_main(["--jobs", "--json"], capsys)
    assert code == jn.EXIT_OK and err == []
    answer = json.loads(out)
    assert answer["scheduler"] is None  # no one scheduler: each job says its own
    assert [(job["scheduler"], job["job"]) for job in answer["jobs"]] == [
        ("sge", "65"), ("sge", "66"), ("sge", "67"), ("sge", "68"), ("sge", "69"), ("slurm", "81234")]
    code, out, err = run_main(["--jobs"], capsys)
    assert code == jn.EXIT_OK
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["SCHEDULER", "JOB"], ["sge", "65"], ["sge", "66"], ["sge", "67"], ["sge", "68"], ["sge", "69"],
        ["slurm", "81234"]]
    # one scheduler asked (--scheduler): as before, and each job says its scheduler in JSON too
    asked = len(both.called())
    code, out, err = run_main(["--jobs", "--json", "--scheduler", "slurm"], capsys)
    answer = json.loads(out)
    assert answer["scheduler"] == "slurm" and [job["scheduler"] for job in answer["jobs"]] == ["slurm"]
    assert [line.split()[0] for line in both.called()[asked:]] == ["squeue", "scontrol"]


def test_jobs_with_both_schedulers_one_that_cannot_be_asked_is_a_warning(both, capsys):
    both.answer("qstat", "", code=1)
    (both.bin / "qstat").write_text((both.bin / "qstat").read_text().replace(
        "/bin/cat", "echo 'error: commlib error: got select error (Connection refused)' >&2; /bin/cat"))
    code, out, err = run_main(["--jobs", "--json"], capsys)
    assert code == jn.EXIT_OK
    assert err == ["Warning: Grid Engine could not be asked (qstat failed: error: commlib error: got select error "
                   "(Connection refused)): its jobs are left out; --scheduler slurm asks Slurm alone"]
    assert [(job["scheduler"], job["job"]) for job in json.loads(out)["jobs"]] == [("slurm", "81234")]
    both.answer("squeue", "", code=1)
    code, out, err = run_main(["--jobs", "--json"], capsys)
    assert code == jn.EXIT_ERROR
    assert json.loads(out)["error"] == (
        "neither scheduler could be asked: Grid Engine: qstat failed: error: commlib error: got select error "
        "(Connection refused); Slurm: squeue failed: (no message)")


@pytest.mark.parametrize("job, code, said, called", [
    ("81234", jn.EXIT_OK, "Info: Cancelled job 81234 (Slurm).", "scancel 81234"),
    ("65", jn.EXIT_OK, "Info: Cancelled job 65 (Grid Engine).", "qdel 65"),
    ("4711", jn.EXIT_ERROR, "Error: no job 4711 of yours is pending or running in Grid Engine or Slurm", None),
])
def test_cancel_with_both_schedulers_cancels_where_the_job_is(both, capsys, job, code, said, called):
    assert run_main(["--cancel", job], capsys)[::2] == (code, [said])
    assert [line for line in both.called() if line.startswith(("qdel", "scancel"))] == ([called] if called else [])


def test_cancel_of_an_id_both_schedulers_have_asks_which(both, capsys):
    both.answer("squeue", "65|jp-lab|RUNNING|gpu03|1:00:00|None\n")
    code, out, err = run_main(["--cancel", "65", "--json"], capsys)
    assert code == jn.EXIT_ERROR and json.loads(out)["error"] == (
        "both Grid Engine and Slurm have a job 65 of yours: choose with --scheduler sge|slurm")
    code, out, err = run_main(["--cancel", "65", "--json", "--scheduler", "slurm"], capsys)
    assert (code, json.loads(out)) == (jn.EXIT_OK, {"cancelled": "65", "scheduler": "slurm"})


def test_submitting_with_both_schedulers_asks_which(both, capsys):
    code, out, err = run_main(["-t", "lab", "--pre", "true"], capsys)
    assert (code, err) == (jn.EXIT_MISSING, ["Error: found both Grid Engine (qrsh) and Slurm (sbatch) on PATH: "
                                             "choose the one to submit to with --scheduler sge|slurm"])
    assert not [line for line in both.called() if line.startswith(("qrsh", "sbatch"))]


# --- profiles (issue 24; tests/test_profiles_units.py has the rest): the code is here, so it
# must run on Python 3.6 as the rest of this file does

@pytest.fixture
def profiles_file(tmp_path, monkeypatch) -> Path:
    """The user's profiles.ini (not yet written) in the test's own XDG_CONFIG_HOME; no site file."""
    monkeypatch.setattr(jn, "SITE_PROFILES", str(tmp_path / "none" / "profiles.ini"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "jupyter-tunnel").mkdir()
    return tmp_path / "jupyter-tunnel" / "profiles.ini"


def test_a_profile_gives_jupyter_node_its_own_options(profiles_file, capsys):
    profiles_file.write_text("[hpc]\nhost = gw head\nsubmit = yes\nqueue = short\nresource =\n  mem=8G\n"
                             "  -pe smp 4\npre = module load x 50%\nwait = 2m\nreuse = yes\n")
    assert jn.main(["hpc", "-r", "h_rt=1:00:00", "--profiles"]) == jn.EXIT_OK
    out = capsys.readouterr().out
    assert shlex.split(out) == ["jupyter-node", "--queue=short", "--resource=mem=8G", "--resource=-pe smp 4",
                                "--pre=module load x 50%", "--wait=2m", "--reuse", "-r", "h_rt=1:00:00"]
    args = jn.build_parser().parse_args(shlex.split(out)[1:])
    assert (args.queue, args.resource, args.pre, args.wait, args.reuse) == \
        ("short", ["mem=8G", "-pe smp 4", "h_rt=1:00:00"], ["module load x 50%"], "2m", True)
    assert jn.main(["--profiles"]) == jn.EXIT_OK
    assert capsys.readouterr().out.splitlines()[2] == "  (not jupyter-node's, left out: host, submit)"


@pytest.mark.parametrize("text, argv, message", [
    ("[hpc]\nwait = 5x\n", ["hpc"], "{file}:2: [hpc] wait: invalid wait time '5x'"),
    ("[hpc]\ntype = server\n", ["hpc"], "{file}:2: [hpc] type: invalid choice: 'server' (choose from 'notebook', 'lab')"),
    ("[hpc]\nqueue =\n  a\n  b\n", ["hpc"], "{file}:4: [hpc] queue: one value, on one line"),
    ("[hpc\nqueue = a\n", ["hpc"], "{file}:1: a key before the first [NAME] line: '[hpc'"),
    ("[hpc]\nqueue = a\n", ["other"], "no profile other in {file}, {site} (jupyter-node --profiles lists them)"),
])
def test_a_profile_error_is_one_line_with_its_file_and_line(profiles_file, text, argv, message, capsys):
    profiles_file.write_text(text)
    assert jn.main(argv) == jn.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("Error: " + message.format(file=profiles_file, site=jn.SITE_PROFILES))
    assert err.count("\n") == 1

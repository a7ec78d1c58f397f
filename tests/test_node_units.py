"""Unit tests of jupyter_node.py's pure parts (tables, no cluster) and of its command line."""

from __future__ import annotations

import getpass
import os
import shlex
import stat
import subprocess
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11: the same parser, from PyPI (the test extra)
    import tomli as tomllib
from pathlib import Path

import pytest

import jupyter_node as jn

REPO = Path(__file__).resolve().parent.parent


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
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)
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
    done = subprocess.run(["sh", "-c", failing], capture_output=True, text=True)
    assert done.returncode != 0


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
])
def test_parse_log(text, expected):
    assert jn.parse_log(text) == expected


@pytest.mark.parametrize("output, expected", [
    ("RUNNING|node1|None\n", ("RUNNING", "node1", "")),
    ("PENDING||Resources\n", ("PENDING", "", "Resources")),
    ("", ("", "", "")),
])
def test_parse_squeue(output, expected):
    assert jn.parse_squeue(output) == expected


@pytest.mark.parametrize("sge, slurm, expected", [(True, False, "sge"), (False, True, "slurm")])
def test_choose_scheduler(sge, slurm, expected):
    assert jn.choose_scheduler(sge, slurm) == expected


@pytest.mark.parametrize("sge, slurm, words", [(True, True, "both"), (False, False, "neither")])
def test_choose_scheduler_asks_for_the_option(sge, slurm, words):
    with pytest.raises(jn.NodeError, match=f"{words}.*--scheduler") as caught:
        jn.choose_scheduler(sge, slurm)
    assert caught.value.code == jn.EXIT_MISSING


def test_build_tunnel_command_quotes():
    assert jn.build_tunnel_command("me@head.x", "n1") == "jupyter-tunnel -s me@head.x -n n1"
    assert shlex.split(jn.build_tunnel_command("a b", "n;1")) == ["jupyter-tunnel", "-s", "a b", "-n", "n;1"]


def test_log_tail():
    text = "\n".join(f"line {i}" for i in range(30)) + "\n\n"
    assert jn.log_tail(text, 3) == "    line 27\n    line 28\n    line 29"
    assert jn.log_tail("") == "    (the log is empty)"


def test_make_log_default_is_private_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = jn.make_log(None)
    name = os.path.basename(path)
    assert name.startswith(f"jupyter_nb_{getpass.getuser()}_") and name.endswith(".log")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


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
])
def test_bad_options_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        jn.main(argv)
    assert caught.value.code == jn.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_runs_directly_with_help_and_version():
    done = subprocess.run([str(REPO / "jupyter_node.py"), "--help"], capture_output=True, text=True)
    assert done.returncode == jn.EXIT_OK and "--conda-env" in done.stdout and "exit codes" in done.stdout
    done = subprocess.run([sys.executable, str(REPO / "jupyter_node.py"), "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"jupyter-node {jn.__version__}"
    done = subprocess.run([sys.executable, str(REPO / "jupyter_node.py"), "-w", "soon"], capture_output=True, text=True)
    assert done.returncode == jn.EXIT_USAGE and "sleep syntax" in done.stderr


def test_console_script_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["jupyter-node"] == "jupyter_node:main"
    assert "jupyter_node" in project["tool"]["setuptools"]["py-modules"]


def test_scheduler_is_asked_gently():
    delays = jn.scheduler_delays(first=0.5, cap=10)
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
    import jupyter_tunnel

    # jupyter_node.py must run alone on a head node, so it keeps its own copy of the version
    assert jn.__version__ == jupyter_tunnel.__version__

"""Unit tests of the cluster options' pure parts (--submit, -n auto, --job): what is sent to
jupyter_node.py on the head, how its JSON answer is checked, the job's time left and warnings."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import jupyter_tunnel as jt

HEAD = jt.Route(("gw", "alice@head"), scheduled=True)
READY = {"scheduler": "sge", "job": "4711", "name": "jp-lab", "state": "ready", "node": "node07.cluster",
         "port": 8888, "reason": "", "log": "/tmp/jupyter_nb_alice_head_x.log", "time_left": 5400,
         "existing": False, "error": None}
JOB = jt.parse_job(READY)


def options(**changes) -> jt.ClusterOptions:
    return jt.ClusterOptions(submit=True)._replace(**changes)


@pytest.mark.parametrize("changes, timeout, expected", [
    ({}, 60.0, ["--json", "-t", "lab", "-w", "60s", "--reuse"]),
    ({"new": True, "app": "notebook"}, 0.5, ["--json", "-t", "notebook", "-w", "1s"]),
    # every value as --option=value: one starting with "-" is not taken for an option
    ({"queue": "gpu.q", "node": "node07", "conda_env": "my env", "scheduler": "slurm",
      "pre": (". ~/v/bin/activate", "-x"), "resources": ("h_rt=0:10:0", "-pe smp 4")}, 600.0,
     ["--json", "-t", "lab", "-w", "600s", "--reuse", "--queue=gpu.q", "--node=node07", "--conda-env=my env",
      "--scheduler=slurm", "--pre=. ~/v/bin/activate", "--pre=-x", "--resource=h_rt=0:10:0",
      "--resource=-pe smp 4"]),
])
def test_submit_args_are_jupyter_nodes_own(changes, timeout, expected):
    assert jt.build_submit_args(options(**changes), timeout) == expected


@pytest.mark.parametrize("job, scheduler, expected", [
    ("", "", ["--json", "--jobs"]),
    ("4711", "sge", ["--json", "--job", "4711", "--scheduler", "sge"]),
])
def test_jobs_args(job, scheduler, expected):
    assert jt.build_jobs_args(jt.ClusterOptions(scheduler=scheduler), job) == expected


def test_cancel_args_name_the_job_and_its_scheduler():
    assert jt.build_cancel_args(JOB) == ["--json", "--cancel", "4711", "--scheduler", "sge"]


@pytest.mark.parametrize("args", [
    ["--json", "--pre=echo 'a' \"b\" $HOME `x` ! ; \\"],
    ["--pre=line one\nline two", "--conda-env=é€😀"],
    [],
])
def test_node_program_runs_the_source_with_its_arguments_untouched(args):
    # the source may start with a __future__ import (it is compiled as a module of its own)
    source = "from __future__ import annotations\nimport sys\nprint(repr(sys.argv))\n"
    program = jt.build_node_program(args, source)
    assert program.isascii()  # parses on any python, whatever the source holds
    done = subprocess.run([sys.executable, "-"], input=program, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert eval(done.stdout) == ["-", *args]


def test_node_program_tells_a_python_too_old():
    program = jt.build_node_program(["--json"], "print('never')").replace("(3, 6)", "(99, 0)")
    done = subprocess.run([sys.executable, "-"], input=program, capture_output=True, text=True)
    assert done.returncode == 3 and done.stdout == ""
    assert jt.parse_python_version(done.stderr.splitlines()) == f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.mark.parametrize("python, command", [
    ("python3", "python3 -"),
    ("/opt/my python/bin/python3", "'/opt/my python/bin/python3' -"),
])
def test_node_command_is_only_the_interpreter(python, command):
    # the program comes on stdin: nothing on the command line for the login shell to parse again
    assert jt.build_node_command(python) == command


@pytest.mark.parametrize("stdout, expected", [
    (json.dumps(READY) + "\n", READY),
    ("Welcome to the cluster!\n{not json\n" + json.dumps(READY, indent=2) + "\n", READY),
    ("", None),
    ("[1, 2]\n", None),
    ("{\"a\": \n", None),
    # the last object that starts a line and ends the output
    ('{"a": 1}\n{"b": 2}\n', {"b": 2}),
    ('{"a": 1}\n{"b": 2}\ntrailing words\n', None),
    ('{"a": 1}\n{"b": \n', None),  # a cut answer is no answer, not the one before it
    ('{"outer":\n{"inner": 1}\n}\n', {"outer": {"inner": 1}}),  # an object inside one, on its own line
    ('{"a": 1}  \r\n\n', {"a": 1}),
    ('  {"a": 1}\n', None),  # not at the start of a line
    ("{}\n", {}),
    ('{"a": [1, 2]}' + "\n{" * 5, None),
    ('{"a": "x"}\n' + "[" * 100_000 + "\n", None),  # too deep for json: no crash
    ("{" + "[" * 100_000 + "\n", None),
])
def test_node_json_is_the_last_object(stdout, expected):
    assert jt.parse_node_json(stdout) == expected


def test_node_json_is_linear_in_lines_of_braces():
    """20,000 lines of "{" before (or after) the answer: each line start was decoded to the end
    (quadratic: minutes); now only the last few are tried, each stopping at its first error."""
    chatter = "{\n" * 20_000
    started = time.monotonic()
    assert jt.parse_node_json(chatter + json.dumps(READY) + "\n") == READY
    assert jt.parse_node_json(json.dumps(READY) + "\n" + chatter) is None
    assert jt.parse_node_json('{"a": [\n' * 20_000) is None  # each an open array: decoding goes far
    assert time.monotonic() - started < 5  # a generous bound: it takes milliseconds


def test_job_fields_are_checked():
    assert JOB == jt.ClusterJob("sge", "4711", "jp-lab", "ready", "node07.cluster", 8888, "", 5400, False, "")
    assert JOB.cancel_command == "qdel 4711" and JOB.describe() == "job 4711 (jp-lab)"
    assert jt.parse_job(dict(READY, scheduler="slurm", job="81234_3", port=None, time_left=None)).cancel_command \
        == "scancel 81234_3"


@pytest.mark.parametrize("changes, message", [
    ({"scheduler": "pbs"}, "its scheduler 'pbs' is neither sge nor slurm"),
    ({"job": "4711; rm -rf ~"}, "its job id '4711; rm -rf ~' is not one"),
    ({"node": "-oProxyCommand=x"}, "its node '-oProxyCommand=x' is not a host name"),
    ({"node": "node\n1"}, "is not a host name"),
    ({"state": "zombie"}, "its state 'zombie' is none of ready, running, pending, failed"),
    ({"port": 0}, "its port 0 is not a whole number from 1 to 65535"),
    ({"port": "8888"}, "its port '8888' is not a whole number"),
    ({"time_left": -5}, "its time_left -5 is not a whole number"),
    ({"time_left": True}, "its time_left True is not a whole number"),
    ({"time_left": 1.5}, "its time_left 1.5 is not a whole number"),
    ({"name": ["jp-lab"]}, "its name ['jp-lab'] is not text"),
])
def test_bad_job_fields_are_refused(changes, message):
    with pytest.raises(ValueError, match=None) as error:
        jt.parse_job(dict(READY, **changes))
    assert message in str(error.value)


def test_jobs_take_the_scheduler_of_the_answer():
    jobs = jt.parse_jobs({"scheduler": "slurm", "jobs": [
        {"job": "81", "name": "jp-lab", "state": "running", "node": "n1", "time_left": 60, "reason": ""},
        {"job": "82", "name": "notebook", "state": "pending", "node": "", "time_left": None, "reason": "Resources"}]})
    assert [(j.scheduler, j.job, j.state, j.node, j.reason) for j in jobs] == [
        ("slurm", "81", "running", "n1", ""), ("slurm", "82", "pending", "", "Resources")]
    with pytest.raises(ValueError, match="it holds no list of jobs"):
        jt.parse_jobs({"scheduler": "sge"})


@pytest.mark.parametrize("code, stderr, info, message, exit_code", [
    (3, ["::jupyter-tunnel:: python 3.5"], None,
     "python3 on head is Python 3.5, and jupyter_node.py needs 3.6 or newer: name another interpreter with "
     "--python PROG", jt.EXIT_MISSING),
    (127, ["sh: 1: python3: not found"], None,
     "python3 not found on head, where it runs jupyter_node.py (nothing needs to be installed there but "
     "Python >= 3.6): name it with --python PROG (sh: 1: python3: not found)", jt.EXIT_MISSING),
    (255, ["Control socket connect(/tmp/jt-x/c): No such file or directory"], None,
     "cannot run jupyter_node.py on head: Control socket connect", jt.EXIT_ERROR),
    (1, ["Traceback (most recent call last):", "SyntaxError: invalid syntax"], None,
     "jupyter_node.py on head gave no answer (Traceback (most recent call last):; SyntaxError: invalid syntax)",
     jt.EXIT_ERROR),
    (1, [], {"scheduler": "sge", "job": "", "state": "failed", "error": "qrsh exited with code 1",
             "log": "/tmp/l.log", "log_tail": "error: no suitable queues\nhttp://n:8888/?token=abc123\n"},
     "the Jupyter job could not start on head: qrsh exited with code 1 (log on head: /tmp/l.log); its log ends "
     "with: error: no suitable queues | http://n:8888/?token=…", jt.EXIT_START),
    (3, [], {"error": "sbatch not found in PATH", "state": "failed"},
     "the Jupyter job could not start on head: sbatch not found in PATH", jt.EXIT_MISSING),
])
def test_node_tool_failures(code, stderr, info, message, exit_code):
    error = jt.node_tool_failure("python3", "head", code, stderr, info)
    assert error is not None and message in str(error) and error.code == exit_code
    assert "abc123" not in str(error)


@pytest.mark.parametrize("action, message, exit_code", [
    # -n auto starts nothing: its failure says what failed, not "could not start" (issue 22)
    ("listing your jobs", "listing your jobs on head failed: squeue not found in PATH", jt.EXIT_MISSING),
    ("looking for job 4711", "looking for job 4711 on head failed: squeue said: boom", jt.EXIT_ERROR),
    ("cancelling job 4711", "cancelling job 4711 on head failed: squeue said: boom", jt.EXIT_ERROR),
])
def test_node_tool_failures_name_the_action(action, message, exit_code):
    error_text = "squeue not found in PATH" if exit_code == jt.EXIT_MISSING else "squeue said: boom"
    error = jt.node_tool_failure("python3", "head", 3 if exit_code == jt.EXIT_MISSING else 1, [],
                                 {"error": error_text}, action)
    assert error is not None and str(error) == message and error.code == exit_code
    assert "could not start" not in str(error)


def test_node_tool_answer_is_no_failure():
    assert jt.node_tool_failure("python3", "head", 0, ["Info: job 4711 is pending"], READY) is None


@pytest.mark.parametrize("time_left, warn_before, expected", [
    (None, 10, []),
    (0, 10, []),
    (5400, 10, [(4800.0, 600.0), (5280.0, 120.0)]),
    # a mark already passed: one warning at once, with the time really left
    (300, 10, [(0.0, 300.0), (180.0, 120.0)]),
    (90, 10, [(0.0, 90.0)]),
    (600, 10, [(0.0, 600.0), (480.0, 120.0)]),
    (200, 3, [(20.0, 180.0), (80.0, 120.0)]),
    (5400, 2, [(5280.0, 120.0)]),  # --warn-before 2: one warning
])
def test_warning_times(time_left, warn_before, expected):
    assert jt.build_warning_times(time_left, warn_before) == expected


@pytest.mark.parametrize("seconds_left, text", [(600, "10 min"), (119.97, "2 min"), (58.2, "59 s")])
def test_warning_is_the_line_a_user_cannot_miss(seconds_left, text):
    assert jt.build_job_warning(JOB, seconds_left) == f"job 4711 ends in {text} (time limit): save your notebooks."


@pytest.mark.parametrize("changes, message, code", [
    ({"state": "pending", "reason": "Resources", "node": "", "port": None},
     "job 4711 (jp-lab) is still pending (Resources) after 60 s; it stays in the queue: attach to it later with "
     "jupyter-tunnel -s gw alice@head --job 4711, or cancel it with qdel 4711 on alice@head", jt.EXIT_TIMEOUT),
    ({"state": "running", "port": None},
     "job 4711 (jp-lab) runs on node07.cluster, but its Jupyter did not start within 60 s; attach to it later",
     jt.EXIT_TIMEOUT),
    ({"state": "pending", "job": "", "node": "", "port": None}, "the scheduler gave no job id yet", jt.EXIT_TIMEOUT),
    ({"state": "failed", "error": "killed"}, "job 4711 (jp-lab) failed on alice@head: killed", jt.EXIT_START),
])
def test_a_job_not_ready_in_time_says_what_is_known_and_how_to_go_on(changes, message, code):
    with pytest.raises(jt.TunnelError) as error:
        jt.check_ready(jt.parse_job(dict(READY, **changes)), HEAD, 60)
    assert message in str(error.value) and error.value.code == code


def test_a_ready_job_is_ready():
    jt.check_ready(JOB, HEAD, 60)


RUNNING = jt.parse_job(dict(READY, state="running", port=None))


@pytest.mark.parametrize("jobs, pick, message", [
    ([], None, "no Jupyter job of yours runs on head's cluster: start one with --submit"),
    ([RUNNING._replace(state="pending", node="", reason="Priority")], None,
     "your Jupyter job 4711 (jp-lab) is still pending (Priority) on head's cluster: attach once it runs, or "
     "cancel it with qdel 4711"),
    ([RUNNING, RUNNING._replace(job="4712")], None,
     "2 Jupyter jobs of yours run on head's cluster: choose one with --job ID or --pick N"),
    ([RUNNING], 2, "there is no job number 2: 1 Jupyter jobs of yours are on head's cluster (see --list -n auto)"),
])
def test_choosing_a_job_fails_with_advice(jobs, pick, message, capsys):
    with pytest.raises(jt.TunnelError) as error:
        jt.choose_job(jobs, "head", pick)
    assert str(error.value) == message and error.value.code == jt.EXIT_NO_SERVER


def test_choosing_a_job():
    other = RUNNING._replace(job="4712", node="node08")
    pending = RUNNING._replace(job="4713", state="pending", node="")
    assert jt.choose_job([pending, other], "head") == other  # the only running one
    # --pick numbers the jobs as --list -n auto does: every job listed
    assert jt.choose_job([RUNNING, pending, other], "head", pick=3) == other
    with pytest.raises(jt.TunnelError, match="job number 2, job 4713 .*, is pending, not running yet"):
        jt.choose_job([RUNNING, pending, other], "head", pick=2)
    with pytest.raises(jt.TunnelError, match="there is no job number 4: 3 Jupyter jobs"):
        jt.choose_job([RUNNING, pending, other], "head", pick=4)


def test_job_table_shows_time_left_and_servers():
    server = jt.parse_server({"pid": 9, "port": 8888, "hostname": "node07.cluster"}, "/r/jpserver-9.json",
                             "jupyter-lab")
    table = jt.format_job_table([RUNNING, RUNNING._replace(job="4712", state="pending", node="",
                                                           time_left=None, reason="Resources")],
                                {"node07.cluster": [server]})
    assert table.splitlines() == [
        "#  JOB   NAME    STATE    NODE            TIME LEFT      SERVERS",
        "1  4711  jp-lab  running  node07.cluster  1 h 30 min     8888 lab",
        "2  4712  jp-lab  pending  -               no time limit  Resources",
    ]
    info = jt.job_info(1, RUNNING, [server])
    assert (info["job"], info["time_left"], info["servers"][0]["port"]) == ("4711", 5400, 8888)


def test_job_table_marks_a_node_that_could_not_be_asked():
    other = RUNNING._replace(job="4713", node="node08.cluster")
    table = jt.format_job_table([RUNNING, other], {RUNNING.node: None, "node08.cluster": []})
    assert [line.split()[-1] for line in table.splitlines()[1:]] == ["?", "-"]  # unknown, none
    assert jt.job_info(1, RUNNING, None)["servers"] is None
    assert jt.job_info(2, other, [])["servers"] == []


def test_a_scheduled_route_forwards_the_agent_to_the_head():
    argv = jt.build_master_argv("ssh", "/c", "/s", HEAD)
    assert "ForwardAgent=yes" in argv and argv[-1] == "alice@head"


@pytest.mark.parametrize("argv, expected", [
    (["-s", "head", "-n", "auto"], jt.ClusterOptions()),
    (["-s", "head", "--job", "4711", "--python", "/usr/bin/python3.9", "--list"],
     jt.ClusterOptions(job="4711", python="/usr/bin/python3.9")),
    (["-s", "head", "--submit", "-n", "node07", "-t", "notebook", "-q", "gpu", "-r", "mem=4G", "-r", "time=1:00",
      "--pre", "module load x", "--conda-env", "e", "--scheduler", "slurm", "--new"],
     jt.ClusterOptions(submit=True, node="node07", new=True, app="notebook", pre=("module load x",), conda_env="e",
                       queue="gpu", resources=("mem=4G", "time=1:00"), scheduler="slurm")),
    (["-s", "head", "-n", "node07"], None),
])
def test_cluster_options_from_the_command_line(argv, expected):
    assert jt.settings_from(jt.build_parser().parse_args(argv)).cluster == expected


@pytest.mark.parametrize("value, seconds", [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0)])
def test_timeout_takes_jupyter_nodes_durations(value, seconds):
    assert jt.build_parser().parse_args(["-s", "h", "-w", value]).timeout == seconds


@pytest.mark.parametrize("argv, message", [
    (["--submit", "--start"], "--submit cannot go with --start"),
    (["--submit", "--list"], "--submit cannot go with --list"),
    (["--submit", "-n", "auto"], "--submit cannot go with -n auto"),
    (["--submit", "--job", "1"], "--submit cannot go with --job"),
    (["--submit", "-t", "server"], "--submit cannot go with -t server"),
    (["--submit", "--root-dir", "/x"], "--submit cannot go with --root-dir"),
    (["--new"], "--new, -q/--queue and -r/--resource go with --submit"),
    (["-q", "gpu"], "--new, -q/--queue and -r/--resource go with --submit"),
    (["--job", "1", "-n", "node07"], "--job names the job whose node to use: it cannot go with -n NODE"),
    (["--job", "1;x"], "argument --job: not a job id (a letter or digit, then letters, digits, . _ -): '1;x'"),
    # qdel/scancel would take it for one of their options
    (["--job=-1"], "argument --job: not a job id (a letter or digit, then letters, digits, . _ -): '-1'"),
    (["--job=--help"], "argument --job: not a job id"),
    (["--job", "4711\n"], "argument --job: not a job id"),
    # values that go into a remote script, refused whole rather than cut at the newline
    (["--submit", "--pre", "true\nrm -rf ~"], "argument --pre: must be one line (no newline): 'true\\nrm -rf ~'"),
    (["--submit", "--pre", "true\u2028x"], "argument --pre: must be one line (no newline)"),
    (["--submit", "--conda-env", "a\rb"], "argument --conda-env: must be one line (no newline): 'a\\rb'"),
    (["--submit", "--resource=-pe 'smp 4"], "argument -r/--resource: \"-pe 'smp 4\" does not split like a shell command"),
    (["--warn-before", "0"], "argument --warn-before: expected minutes, more than 0 and at most 1440, not '0'"),
    (["--warn-before", "nan"], "argument --warn-before: expected minutes"),
    (["--python", "py\nthon"], "argument --python: control characters"),
    (["-n", "auto", "--start"], "--start cannot start a server on a cluster node: that needs a scheduler job. "
                                "Use --submit"),
    (["--job", "4711", "--start"], "--start cannot start a server on a cluster node"),
])
def test_cluster_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        jt.main(["-s", "head", *argv])
    assert exit_info.value.code == jt.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_job_list_goes_on_past_a_node_that_refuses(monkeypatch, capsys):
    """--list -n auto: a node whose discovery fails is a Warning and '?', the others are listed,
    and the master stays the head's (the route is control flow, no ssh here)."""
    other = RUNNING._replace(job="4713", node="node08.cluster")
    asked = []

    def discover(master, node=None):
        asked.append(node)
        if node == RUNNING.node:
            raise jt.TunnelError("cannot connect to node07.cluster: Connection refused", jt.EXIT_CONNECT)
        return []

    monkeypatch.setattr(jt, "discover", discover)
    master = jt.SharedMaster("ssh", HEAD, "/nonexistent", {}, 0, "/nonexistent/socket")
    assert jt.list_jobs(master, [RUNNING, other], as_json=False) == jt.EXIT_OK
    out, err = capsys.readouterr()
    assert asked == ["node07.cluster", "node08.cluster"] and master.route == HEAD
    assert "Warning: cannot list the servers on node07.cluster: cannot connect" in err
    assert [line.split()[-1] for line in out.splitlines()[1:]] == ["?", "-"]


@pytest.mark.parametrize("args, words", [
    (["--json", "-t", "lab", "-w", "60s", "--reuse"], "submitting the job"),
    (["--json", "--jobs"], "listing your jobs"),
    (["--json", "--job", "4711"], "looking for job 4711"),
    (["--json", "--cancel", "4711", "--scheduler", "sge"], "cancelling job 4711"),
    (["--json", "--pre=--job"], "submitting the job"),  # a value, not the option
])
def test_describe_node_args(args, words):
    assert jt.describe_node_args(args) == words

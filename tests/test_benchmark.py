"""benchmarks/ready.py and relay.py: their pure parts by tables, and a one-run smoke test each
so that they cannot rot.

No timing is asserted anywhere: the targets are read from the benchmark's output by a
person (README "Benchmark"); here only the shape of that output and the login count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from benchmarks import ready, relay, submit
from cluster import ClusterUser
from realenv import UserAccount

BENCHMARK = Path(ready.__file__)
SMOKE_TIMEOUT = 300.0  # ~15 s on an idle machine; CI machines are slower and shared


def make_row(hops: int = 1, ssh=(0.2, 0.3, 0.25), ready_=(0.3, 0.33, 0.36), logins=(1, 1, 1), kind: str = "cold",
             delay_ms: float = 0.0, startup=(0.03, None, 0.05), server_startup=()) -> ready.Row:
    """A row as a benchmark run would fill it."""
    phases = {name: [0.01, None, 0.02] for name in ready.PHASES}
    phases["start-up"] = list(startup)
    return ready.Row(hops, delay_ms, kind, ssh=list(ssh), ready=list(ready_), teardown=[0.03, 0.04, 0.05],
                     logins=list(logins), ssh_logins=[hops] * len(logins), phases=phases,
                     rss_python_mb=18.0, rss_master_mb=8.5, server_startup=list(server_startup))


def make_result(*rows: ready.Row) -> ready.Result:
    """A result around `rows`."""
    machine = {"cpus": 2, "cpu": "AMD EPYC", "system": "Linux 6", "openssh": "9.2p1", "python": "3.11.2"}
    return ready.Result(list(rows), help=[0.05, 0.06, 0.055], python_floor=[0.01, 0.012, 0.011],
                        runs=3, idle=5.0, machine=machine)


@pytest.mark.parametrize(
    "samples, expected",
    [
        ([3.0, 1.0, 2.0], ready.Stats(2.0, 1.0, 3.0, 3)),
        ([1.0, 4.0], ready.Stats(2.5, 1.0, 4.0, 2)),
        ([None, 5.0, None], ready.Stats(5.0, 5.0, 5.0, 1)),  # a phase whose message was not seen
        ([None], None),
        ([], None),
    ],
)
def test_summarize(samples, expected) -> None:
    assert ready.summarize(samples) == expected


@pytest.mark.parametrize(
    "stats, scale, digits, expected",
    [
        (ready.Stats(0.4123, 0.398, 0.43, 3), 1.0, 3, "0.412 [0.398–0.430]"),
        (ready.Stats(0.0521, 0.0504, 0.0549, 3), 1000, 0, "52 [50–55]"),
        (ready.Stats(1.0, 1.0, 1.0, 2), 1.0, 3, "1.000"),  # no range when there is none
        (None, 1.0, 3, "–"),
    ],
)
def test_format_stats(stats, scale, digits, expected) -> None:
    assert ready.format_stats(stats, scale, digits) == expected


def test_ratio_is_of_the_medians() -> None:
    assert ready.ratio(make_row()) == pytest.approx(0.33 / 0.25)
    assert ready.ratio(ready.Row(1, 0.0)) is None


@pytest.mark.parametrize(
    "status, expected",
    [("Name:\tpython3\nVmRSS:\t   19532 kB\nThreads:\t2\n", 19532 * 1024 / 1e6), ("Name:\tzombie\n", None)],
)
def test_parse_rss_mb(status, expected) -> None:
    assert ready.parse_rss_mb(status) == expected


def test_phase_times_split_the_run_at_the_tools_messages() -> None:
    stderr = [(10.05, "Info: Connecting to srv..."), (10.30, "Info: Connected in 0.25 s; ..."), (10.31, "Info: x")]
    phases = ready.phase_times(10.0, stderr, t_url=10.42, t_answer=10.45)
    assert phases == pytest.approx(
        {"start-up": 0.05, "login": 0.25, "discover+forward+probe": 0.12, "URL answers": 0.03}
    )
    # messages reworded: those phases are unknown, never wrong
    phases = ready.phase_times(10.0, [], t_url=10.42, t_answer=10.45)
    assert phases["login"] is None and phases["URL answers"] == pytest.approx(0.03)


@pytest.mark.parametrize(
    "row, failed",
    [
        # (b)-(a) = 80 ms <= start-up 40 + 2 round trips 0 + 30 ms? no
        (make_row(), {"(f) (b)-(a)", "(f) start-up"}),
        (make_row(ready_=(0.29, 0.29, 0.29), startup=(0.03, 0.03)), set()),
        (make_row(ready_=(0.5, 0.5, 0.5), startup=(0.03,)), {"(b) <=", "(f) (b)-(a)"}),  # 0.5 > 1.2 * 0.25 + 0.1
        (make_row(ready_=(0.29, 0.29, 0.29), startup=(0.03,), logins=(1, 2, 1)), {"(d) logins"}),  # one extra login
        # 20 ms per hop, 2 hops: a round trip is 80 ms, two are 160 ms
        (make_row(2, ssh=(1.0,), ready_=(1.2,), startup=(0.03,), delay_ms=20, logins=(2,)), set()),
        (make_row(2, ssh=(1.0,), ready_=(1.3,), startup=(0.03,), delay_ms=20, logins=(2,)), {"(f) (b)-(a)"}),
        # the user's master already open: no login at all, ready within half a bare ssh
        (make_row(ready_=(0.1,), logins=(0, 0), kind="shared"), set()),
        (make_row(ready_=(0.2,), logins=(0, 1), kind="shared"), {"(b) <=", "(d) logins"}),
        # --start: ready within a bare ssh + the server's own start-up + 0.3 s
        (make_row(ready_=(2.0,), kind="start", server_startup=(1.5,)), set()),
        (make_row(ready_=(2.1,), kind="start", server_startup=(1.5,)), {"(b) <="}),
    ],
)
def test_check_targets(row: ready.Row, failed: set) -> None:
    checks = ready.check_targets(make_result(row))
    assert {" ".join(name.split()[:2]) for name, ok, _ in checks if not ok} == failed
    assert any(name.startswith("(e) --help") for name, _, _ in checks)


def test_floor_terms_of_a_cold_row() -> None:
    terms = ready.floor_terms(make_row(2, ssh=(1.0,), ready_=(1.2,), startup=(0.03,), delay_ms=20))
    assert terms == pytest.approx({"extra": 0.2, "startup": 0.03, "round_trips": 0.16, "allowance": 0.22})
    assert ready.floor_terms(make_row(startup=(None,))) is None


def test_report_tables_are_well_formed_markdown() -> None:
    report = ready.build_report(make_result(make_row(1), make_row(3, logins=(3, 3, 3)),
                                            make_row(1, ready_=(0.1,), logins=(0,), kind="shared"),
                                            make_row(1, ready_=(2.0,), kind="start", server_startup=(1.5,))))
    tables = [line for line in report.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in tables[:6]}) == 1  # main table: same cells everywhere
    assert ("| cold | 1 | 0 ms | 0.250 [0.200–0.300] | 0.330 [0.300–0.360] | 1.32 | 0.040 [0.030–0.050] | 1 "
            "| 18.0 | 8.5 |") in tables
    assert tables[3].startswith("| cold | 3 | 0 ms |")
    assert tables[4].startswith("| master already open | 1 | 0 ms | 0.250 [0.200–0.300] | 0.100 |")
    assert "| 1 | 0 ms | 80 | 40 | 0 | 70 |" in tables  # the floor table: cold rows only
    assert "| 1 | 0 ms | 0.250 [0.200–0.300] | 1.500 | 2.000 | 0.250 |" in tables  # the --start table
    assert "- [x] (b) <= 1.2*(a)+0.1 s, 1 hop, 0 ms" in report
    assert "- [x] (b) <= 0.5*(a), master already open, 1 hop, 0 ms: 0.100 s vs 0.125 s" in report
    assert "- [x] (d) logins = 0 on every run, master already open, 1 hop, 0 ms" in report


def test_json_has_samples_summaries_and_targets() -> None:
    data = json.loads(ready.result_to_json(make_result(make_row(ready_=(0.29, 0.3, 0.33), startup=(0.03,)))))
    (row,) = data["rows"]
    assert row["logins"] == [1, 1, 1] and row["summary"]["ready"]["median"] == 0.3
    assert row["ratio"] == pytest.approx(1.2)
    assert data["summary"]["help"]["median"] == 0.055
    assert all(target["met"] for target in data["targets"])


def test_benchmark_smoke_one_run_one_hop(test_users: Dict[str, UserAccount], jupyter_venv: Path) -> None:
    """The real benchmark, 1 run on 1 hop of each kind: a well-formed table whose login counts
    are 1, 0 (the user's master already open), 1 (--start) and 1 (no master)."""
    # --no-lock: this session holds the machine-wide lock and has set the users up
    proc = subprocess.Popen(
        [sys.executable, str(BENCHMARK), "--runs", "1", "--hosts", "1", "--idle", "0.5", "--no-lock"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=SMOKE_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM, not subprocess.run's SIGKILL: the benchmark then stops what it started
        # (a server it left would fail this test: conftest's no_jupyter_left_behind)
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    last = stderr.strip().splitlines()[-1:]  # the benchmark's "error: ..." first: CI shows a message's start
    assert proc.returncode == 0, f"{last}\n{stderr}"
    print(stdout)  # the report, for pytest -s
    lines = stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| run | hops |")))
    header, separator, *rows = lines[start:start + 6]
    assert not lines[start + 6].startswith("|")  # one row per kind: 1 hop, no delay
    names = [cell.strip() for cell in header.strip("|").split("|")]
    table = {}
    for row in rows:
        assert separator.count("|") == header.count("|") == row.count("|")
        values = dict(zip(names, (cell.strip() for cell in row.strip("|").split("|"))))
        table[values["run"]] = values
    assert {run: values["(d) logins"] for run, values in table.items()} == \
        {"cold": "1", "master already open": "0", "--start, no server running": "1",
         "no master (--no-control-master)": "1"}
    assert all(value not in ("", "–") for value in table["cold"].values())
    assert all(value not in ("", "–") for value in table["no master (--no-control-master)"].values())
    for kept in ("- [x] (d) logins = hops on every run, 1 hop, 0 ms",
                 "- [x] (d) logins = 0 on every run, master already open, 1 hop, 0 ms",
                 "- [x] (d) logins = hops on every run, --start, no server running, 1 hop, 0 ms",
                 "- [x] (d) logins = hops on every run, no master (--no-control-master), 1 hop, 0 ms"):
        assert kept in stdout
    assert "(f) start-up <= 35 ms, 1 hop, 0 ms" in stdout  # the floor's terms are reported


# --------------------------------------------------------------------------- benchmarks/submit.py

CHAIN = {"gw": 1, "head": 1, "node": 1}


@pytest.mark.parametrize(
    "stdout, expected",
    [("startup 1700000000.250 1700000003.000\n", 2.75), ("", None), ("startup 1.0\n", None)],
)
def test_parse_startup(stdout, expected) -> None:
    assert ready.parse_startup(stdout) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    "logins, expected",
    [
        ([CHAIN, CHAIN], "gw 1, head 1, node 1"),
        ([{"node": 1, "gw": 1, "head": 1}], "gw 1, head 1, node 1"),  # the chain's order
        ([CHAIN, {"gw": 1, "head": 2, "node": 1}], "gw 1, head 1, node 1 / gw 1, head 2, node 1"),
        ([{}], "none"),
        ([], "–"),
    ],
)
def test_format_logins(logins, expected) -> None:
    assert submit.format_logins(logins) == expected


@pytest.mark.parametrize(
    "job, ready_, logins, failed",
    [
        ((3.0,), (3.9,), [CHAIN], set()),  # 3.9 <= 3.0 + 0.4 + 0.5
        ((3.0,), (4.0,), [CHAIN], {"(b) <="}),
        ((3.0, 2.0, 4.0), (3.5,), [CHAIN, {"gw": 1, "head": 1}], {"(c) one"}),  # no login on node: no discovery
    ],
)
def test_submit_targets(job, ready_, logins, failed) -> None:
    row = submit.SubmitRow(len(job), ssh=[0.4], job=list(job), ready=list(ready_), logins=logins)
    checks = submit.check_targets(row)
    assert {" ".join(name.split()[:2]) for name, ok, _ in checks if not ok} == failed


def test_submit_table_row() -> None:
    row = submit.SubmitRow(3, ssh=[0.5, 0.4, 0.6], job=[2.8, 2.9, 3.0], ready=[3.5, 3.4, 3.6], logins=[CHAIN] * 3)
    assert ("| --submit, SGE gw → head → node | 3 | 2.900 [2.800–3.000] | 3.500 [3.400–3.600] | 0.600 "
            "| 0.500 [0.400–0.600] | gw 1, head 1, node 1 |") in submit.build_report(row)


def test_submit_benchmark_smoke_one_run(sge_netns, cluster_user: ClusterUser, tmp_path: Path) -> None:
    """benchmarks/submit.py's measurement, 1 run (after its warm-up) on the session's namespace
    cluster: every number is there and the tool logged in once on gw, head and node."""
    hosts, cell = sge_netns
    tool = ready.prepare_tool(sys.executable, ready.SCRIPT, "installed", tmp_path)
    row = submit.measure(hosts, cell, cluster_user, tool, runs=1)
    print(submit.build_report(row))  # for pytest -s
    assert row.logins == [CHAIN]
    assert len(row.ssh) == len(row.job) == len(row.ready) == 1 and min(row.ssh + row.job + row.ready) > 0


def test_relay_report_compares_the_medians() -> None:
    samples = {"relay": {"download": [0.3, 0.5, 0.4], "new": [2.0, 2.0], "alive": [1.0]},
               "direct": {"download": [0.25, 0.25], "new": [1.5], "alive": [0.95]}}
    lines = relay.report({1: samples}, 100, 3, 1000).splitlines()
    assert "| 1 | download 100 MB, s | 0.400 [0.300–0.500] | 0.250 [0.250–0.250] | 1.60 | 250 MB/s via relay " \
           "| <= 1.2x: missed |" in lines
    assert "| 1 | request, new connection each, ms | 2.000 [2.000–2.000] | 1.500 [1.500–1.500] | 1.33 | +0.500 ms " \
           "| <= 1 ms: met |" in lines
    assert len({line.count("|") for line in lines if line.startswith("|")}) == 1


def test_relay_benchmark_smoke_one_run(test_users: Dict[str, UserAccount], jupyter_venv: Path) -> None:
    """One small run of benchmarks/relay.py: it stands its environment up, measures both ways
    and prints its table (no timing asserted: the README's table is read by a person)."""
    done = subprocess.run([sys.executable, relay.__file__, "--runs", "1", "--requests", "20", "--megabytes", "5",
                           "--hops", "1", "--no-lock"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT)
    assert done.returncode == 0, done.stderr.splitlines()[-1:] + [done.stderr]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1 |")]
    assert [row.split(" | ")[1] for row in rows] == [
        "download 5 MB, s", "request, new connection each, ms", "request, kept-alive, ms"]

"""benchmarks/ready.py: its pure parts by tables, and a one-run smoke test so that it cannot rot.

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

from benchmarks import ready
from conftest import UserAccount

BENCHMARK = Path(ready.__file__)


def make_row(hops: int = 1, ssh=(0.2, 0.3, 0.25), ready_=(0.3, 0.33, 0.36), logins=(1, 1, 1)) -> ready.Row:
    """A row as a benchmark run would fill it."""
    return ready.Row(hops, 0.0, ssh=list(ssh), ready=list(ready_), teardown=[0.03, 0.04, 0.05],
                     logins=list(logins), ssh_logins=[hops] * len(logins),
                     phases={name: [0.01, None, 0.02] for name in ready.PHASES},
                     rss_python_mb=18.0, rss_master_mb=8.5)


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
        (make_row(), set()),
        (make_row(ready_=(0.5, 0.5, 0.5)), {"(b)"}),  # 0.5 > 1.2 * 0.25 + 0.1
        (make_row(logins=(1, 2, 1)), {"(d)"}),  # one extra login on one run is a miss
    ],
)
def test_check_targets(row: ready.Row, failed: set) -> None:
    checks = ready.check_targets(make_result(row))
    assert {name.split()[0] for name, ok, _ in checks if not ok} == failed
    assert any(name.startswith("(e) --help") for name, _, _ in checks)


def test_report_tables_are_well_formed_markdown() -> None:
    report = ready.build_report(make_result(make_row(1), make_row(3, logins=(3, 3, 3))))
    tables = [line for line in report.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in tables[:4]}) == 1  # main table: same cells everywhere
    assert "| 1 | 0 ms | 0.250 [0.200–0.300] | 0.330 [0.300–0.360] | 1.32 | 0.040 [0.030–0.050] | 1 | 18.0 | 8.5 |" in tables
    assert "| 3 | 0 ms |" in tables[3]
    assert "- [x] (b) <= 1.2*(a)+0.1 s, 1 hop, 0 ms" in report


def test_json_has_samples_summaries_and_targets() -> None:
    data = json.loads(ready.result_to_json(make_result(make_row())))
    (row,) = data["rows"]
    assert row["logins"] == [1, 1, 1] and row["summary"]["ready"]["median"] == 0.33
    assert row["ratio"] == pytest.approx(1.32)
    assert data["summary"]["help"]["median"] == 0.055
    assert all(target["met"] for target in data["targets"])


def test_benchmark_smoke_one_run_one_hop(test_users: Dict[str, UserAccount], jupyter_venv: Path) -> None:
    """The real benchmark, 1 run on 1 hop: a well-formed table whose login count is 1."""
    # --no-lock: this session holds the machine-wide lock and has set the users up
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--runs", "1", "--hosts", "1", "--idle", "0.5", "--no-lock"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| hops |")))
    header, separator, row = lines[start:start + 3]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    names = [cell.strip() for cell in header.strip("|").split("|")]
    assert separator.count("|") == header.count("|") == row.count("|")
    assert not lines[start + 3].startswith("|")  # one row: 1 hop, no delay
    values = dict(zip(names, cells))
    assert values["hops"] == "1" and values["(d) logins"] == "1"
    assert all(values[name] not in ("", "–") for name in names)
    assert "- [x] (d) logins = hops on every run, 1 hop, 0 ms" in done.stdout

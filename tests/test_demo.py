"""tests/demo.py, the README's "try it in one command": the URL it shows answers, Ctrl+C ends all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import jupyter_processes, wait_for
from realenv import MULTI_USER
from tunnelrun import get_status

DEMO = Path(__file__).resolve().parent / "demo.py"


def test_demo_serves_the_lab_through_two_hops_and_takes_it_all_down(test_users, jupyter_venv):
    # --no-lock: this session holds the machine lock and has set the users up
    demo = subprocess.Popen([sys.executable, str(DEMO), "--no-lock"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, NO_COLOR="1"), start_new_session=True)
    try:
        url = demo.stdout.readline().strip()
        assert url.startswith("http://localhost:"), demo.stderr.read() if demo.poll() is not None else url
        status, body = get_status(url)
        assert status == 200 and "started" in body
        assert jupyter_processes(MULTI_USER)
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl+C in the demo's terminal
        assert demo.wait(timeout=60) == 0
        stderr = demo.stderr.read()
        assert "Info: Closing the tunnel." in stderr and "[demo] taking down Jupyter and sshd..." in stderr
        wait_for(lambda: not jupyter_processes(MULTI_USER), 10, what="the demo's JupyterLab to stop")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()

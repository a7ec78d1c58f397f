"""Integration tests: tunnels started at the same time, through the real sshd to one real server.

Every run picks its local port itself (the remote port or the next free one above), so
runs started together race for the same ports, and each prunes the registry they share
while the others start: each must still come up, on a port of its own, through its one login.
"""

from __future__ import annotations

import json
import os

import pytest

import jupyter_tunnel as jt
from helpers import port_is_free, wait_for
from tunnelrun import get_status, local_port_of

pytestmark = pytest.mark.integration
RUNS = 10


def test_ten_tunnels_started_together_all_come_up(tunnel, sshd, jtuser_server, registry):
    offset = sshd.log_offset()
    runs = [tunnel("-s", "srv") for _ in range(RUNS)]  # sharing the test's registry
    urls = [run.url(timeout=60) for run in runs]
    ports = sorted(local_port_of(url) for url in urls)
    assert len(set(ports)) == RUNS, ports  # each on a port of its own
    for url in urls:
        status, body = get_status(url)
        assert status == 200 and "started" in body  # the token works through each
    # a port lost to another run costs nothing: each run kept its one master (one login
    # each, no reconnection), so a refused "ssh -O forward" left the master as it was
    assert len(sshd.logins_since(offset)) == RUNS
    for run in runs:
        assert "Warning" not in run.stderr and "Error" not in run.stderr, run.stderr
    entries = [json.loads(open(os.path.join(registry, name)).read()) for name in os.listdir(registry)]
    assert sorted((e["pid"], e["local_port"], e["state"]) for e in entries) == \
        sorted((run.process.pid, local_port_of(url), "ready") for run, url in zip(runs, urls))
    for run in runs:
        assert run.stop() == jt.EXIT_OK
        run.assert_clean()
    assert os.listdir(registry) == []
    for port in ports:
        wait_for(lambda: port_is_free(port), 5, what=f"local port {port} to be free again")

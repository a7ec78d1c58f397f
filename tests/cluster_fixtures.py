"""pytest fixtures around tests/cluster.py (a plugin: tests/conftest.py names it in ``pytest_plugins``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple, TypeVar

import pytest

from cluster import (
    ClusterUser,
    SgeCluster,
    SlurmCluster,
    setup_cluster_user,
    sge_down,
    sge_up,
    slurm_down,
    slurm_up,
    stop_user_jobs_and_servers,
    this_host,
)
from netns import (
    NetnsHosts,
    SgeNetns,
    SlurmNetns,
    known_hosts_line,
    netns_down,
    netns_up,
    sge_netns_down,
    sge_netns_up,
    slurm_netns_down,
    slurm_netns_up,
)
from conftest import fail_on_setup_error
from realenv import SshServer, UserAccount

T = TypeVar("T")


def _emptied_after(value: T, remove_jobs: Callable[[], None], user: ClusterUser) -> Iterator[T]:
    """Give ``value`` to a test; after it, no job and no server of the cluster user is left."""
    yield value
    try:
        remove_jobs()
    finally:
        stop_user_jobs_and_servers(user)


def _up_down(up: Callable[[], T], down: Callable[[T], None]) -> Iterator[T]:
    """A cluster for the session: stood up (a failure fails the tests), taken down after."""
    with fail_on_setup_error():
        cluster = up()
    try:
        yield cluster
    finally:
        down(cluster)


@pytest.fixture(scope="session")
def cluster_user(sshd: SshServer, session_dir: Path, jupyter_venv: Path) -> ClusterUser:
    """The user who submits Jupyter jobs on the head node; its ~/.ssh reaches the node from the head."""
    from jupyter_node import head_name  # the name jupyter-node prints for the head

    with fail_on_setup_error():
        return setup_cluster_user(sshd, session_dir, jupyter_venv, head_name(), this_host())


@pytest.fixture(scope="session")
def _sge_session(test_users: Dict[str, UserAccount]) -> Iterator[SgeCluster]:
    yield from _up_down(sge_up, sge_down)


@pytest.fixture
def sge_cluster(_sge_session: SgeCluster, cluster_user: ClusterUser) -> Iterator[SgeCluster]:
    """The single-host Grid Engine cluster, with no job and no server of the cluster user left after the test."""
    yield from _emptied_after(_sge_session, _sge_session.qdel_all, cluster_user)


@pytest.fixture(scope="session")
def _slurm_session(test_users: Dict[str, UserAccount]) -> Iterator[SlurmCluster]:
    yield from _up_down(slurm_up, slurm_down)


@pytest.fixture
def slurm_cluster(_slurm_session: SlurmCluster, cluster_user: ClusterUser) -> Iterator[SlurmCluster]:
    """The single-host Slurm cluster, with no job and no server of the cluster user left after the test."""
    yield from _emptied_after(_slurm_session, _slurm_session.cancel_all, cluster_user)


# --- the multi-host variant: gw -> head -> node in network namespaces (tests/netns.py) ----


@pytest.fixture(scope="session")
def _netns_hosts(sshd: SshServer, session_dir: Path, cluster_user: ClusterUser) -> Iterator[NetnsHosts]:
    with fail_on_setup_error():
        hosts = netns_up(session_dir / "netns", sshd.dir / "authorized_keys", sshd.client_key, cluster_user.name)
    try:
        # the head's `ssh node` must know node's host key (the user's home is shared by all hosts)
        with open(cluster_user.home / ".ssh" / "known_hosts", "a") as f:
            f.write(known_hosts_line(hosts, "node") + "\n")
        yield hosts
    finally:
        netns_down(hosts)


@pytest.fixture(scope="session")
def _sge_netns_session(_netns_hosts: NetnsHosts) -> Iterator[SgeNetns]:
    yield from _up_down(sge_netns_up, sge_netns_down)


@pytest.fixture
def sge_netns(_netns_hosts: NetnsHosts, _sge_netns_session: SgeNetns,
              cluster_user: ClusterUser) -> Iterator[Tuple[NetnsHosts, SgeNetns]]:
    """(hosts, cell): Grid Engine with qmaster on head and execd on node, node reachable only from head."""
    yield from _emptied_after((_netns_hosts, _sge_netns_session), _sge_netns_session.qdel_all, cluster_user)


@pytest.fixture(scope="session")
def _slurm_netns_session(_netns_hosts: NetnsHosts, _slurm_session: SlurmCluster) -> Iterator[SlurmNetns]:
    # after _slurm_session: it runs the machine's munged, which slurmctld and slurmd use here too
    yield from _up_down(slurm_netns_up, slurm_netns_down)


@pytest.fixture
def slurm_netns(_netns_hosts: NetnsHosts, _slurm_netns_session: SlurmNetns,
                cluster_user: ClusterUser) -> Iterator[Tuple[NetnsHosts, SlurmNetns]]:
    """(hosts, cluster): Slurm with slurmctld on head and slurmd on node, node reachable only from head."""
    yield from _emptied_after((_netns_hosts, _slurm_netns_session), _slurm_netns_session.cancel_all, cluster_user)

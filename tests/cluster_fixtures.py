"""pytest fixtures around tests/cluster.py (registered by an import in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import pytest

from cluster import (
    ClusterError,
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
from realenv import SshServer, UserAccount


def _fail(err: Exception) -> None:
    """A set-up failure fails the tests (never a skip: a skip would pass for green)."""
    pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def cluster_user(sshd: SshServer, session_dir: Path, jupyter_venv: Path) -> ClusterUser:
    """The user who submits Jupyter jobs on the head node; its ~/.ssh reaches the node from the head."""
    from jupyter_node import head_name  # the name jupyter-node prints for the head

    try:
        return setup_cluster_user(sshd, session_dir, jupyter_venv, head_name(), this_host())
    except ClusterError as err:
        _fail(err)
        raise


@pytest.fixture(scope="session")
def _sge_session(test_users: Dict[str, UserAccount]) -> Iterator[SgeCluster]:
    try:
        cluster = sge_up()
    except ClusterError as err:
        _fail(err)
        raise
    try:
        yield cluster
    finally:
        sge_down(cluster)


@pytest.fixture
def sge_cluster(_sge_session: SgeCluster, cluster_user: ClusterUser) -> Iterator[SgeCluster]:
    """The single-host Grid Engine cluster, with no job and no server of the cluster user left after the test."""
    yield _sge_session
    try:
        _sge_session.qdel_all()
    finally:
        stop_user_jobs_and_servers(cluster_user)


@pytest.fixture(scope="session")
def _slurm_session(test_users: Dict[str, UserAccount]) -> Iterator[SlurmCluster]:
    try:
        cluster = slurm_up()
    except ClusterError as err:
        _fail(err)
        raise
    try:
        yield cluster
    finally:
        slurm_down(cluster)


@pytest.fixture
def slurm_cluster(_slurm_session: SlurmCluster, cluster_user: ClusterUser) -> Iterator[SlurmCluster]:
    """The single-host Slurm cluster, with no job and no server of the cluster user left after the test."""
    yield _slurm_session
    try:
        _slurm_session.cancel_all()
    finally:
        stop_user_jobs_and_servers(cluster_user)

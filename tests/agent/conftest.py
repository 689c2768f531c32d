"""What the agent tests share: one cluster CA with its bundles per module, and an agent of
host hv-a serving it from `agent_dir` (a module may make its own `agent_a` instead)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.agent_process import AgentProcess, Cluster, agent_process, make_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return make_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of `agent_a`'s state and drives."""
    return tmp_path_factory.mktemp("hv-a")


@pytest.fixture(scope="module")
def agent_a(cluster: Cluster, agent_dir: Path) -> Iterator[AgentProcess]:
    with agent_process(agent_dir, cluster.host("hv-a")) as agent:
        yield agent

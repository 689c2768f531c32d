"""What the agent tests share: one cluster CA with its bundles per module, and an agent of
host hv-a serving it (a module may make its own `agent_a` instead)."""

from collections.abc import Iterator

import pytest

from testbed.agent_process import AgentProcess, Cluster, agent_process, make_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return make_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="module")
def agent_a(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with agent_process(tmp_path_factory.mktemp("hv-a"), cluster.host("hv-a")) as agent:
        yield agent

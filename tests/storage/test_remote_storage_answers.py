"""What the API node takes from an agent whose storage calls are answered wrongly (a bug,
another version, a host taken over): an answer that is no object with an `answer`, or a
refusal that is no object, is `503 failed` naming the host, never an error of ours (500).
The agent is tests/hypervisor/test_remote_driver_answers.py's, over the real mutual TLS."""

import uuid

import pytest

from openhosting.agent.host_connection import HostConnection
from openhosting.agent.pki import control_context
from openhosting.errors import FailedError, UnavailableError
from openhosting.storage.remote_image_cache import RemoteImageCache
from openhosting.storage.remote_storage import RemoteDriveStorage
from testbed.agent_process import Cluster, make_cluster
from tests.hypervisor.test_remote_driver_answers import hostile_agent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return make_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.mark.parametrize("body", [b"[1]", b'"text"', b"{}", b"null"])
async def test_a_storage_answer_without_an_answer_is_503_naming_the_host(
    cluster: Cluster, body: bytes
) -> None:
    async for address in hostile_agent(cluster, lambda _method: body, []):
        storage = RemoteDriveStorage(
            HostConnection("hv-a", address, control_context(cluster.control))
        )
        try:
            drive = str(uuid.uuid4())
            with pytest.raises(UnavailableError, match="hv-a"):
                await storage.destroy(drive, "disk")
            with pytest.raises(UnavailableError, match="hv-a"):
                await storage.hash(drive, "disk", None, 0, 512)
            with pytest.raises(UnavailableError, match="hv-a"):
                await RemoteImageCache(storage).lookup(drive, "1")
        finally:
            await storage.close()


@pytest.mark.parametrize("body", [b"[1]", b'"text"', b"null"])
async def test_a_refusal_that_is_no_object_is_failed_naming_the_host(
    cluster: Cluster, body: bytes
) -> None:
    async for address in hostile_agent(cluster, lambda _method: (507, body), []):
        storage = RemoteDriveStorage(
            HostConnection("hv-a", address, control_context(cluster.control))
        )
        try:
            with pytest.raises(FailedError, match=r"status 507 \(host hv-a\)"):
                await storage.destroy(str(uuid.uuid4()), "disk")
        finally:
            await storage.close()

"""What the control plane takes of a target agent's `prepare_incoming` answer
(remote_driver.checked_incoming): the source will check the target's certificate against the
answer's `tls_hostname`, so it must name the host the control plane reached, and the answer
must be for the server asked about."""

import uuid

import pytest

from openhosting.hypervisor.driver import IncomingInfo
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.remote_driver import checked_incoming

SERVER = str(uuid.uuid4())


def answer(server: str = SERVER, tls_hostname: str | None = "hv-b") -> IncomingInfo:
    return IncomingInfo(
        server, "tcp:10.0.0.2:49153", "tcp:10.0.0.2:49152", (), tls_hostname=tls_hostname
    )


def test_an_answer_for_the_server_naming_the_host_reached_is_taken() -> None:
    assert checked_incoming("hv-b", SERVER, answer()) == answer()
    assert checked_incoming("hv-b", SERVER, answer(tls_hostname=None)) == answer(tls_hostname=None)


@pytest.mark.parametrize("wrong", [answer(tls_hostname="hv-c"), answer(server=str(uuid.uuid4()))])
def test_an_answer_naming_another_host_or_server_is_refused(wrong: IncomingInfo) -> None:
    with pytest.raises(HypervisorError, match="prepare_incoming answered"):
        checked_incoming("hv-b", SERVER, wrong)

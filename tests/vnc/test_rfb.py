"""The browser's side of the console's RFB greeting (vnc/rfb.py): the daemon offers
security type None alone and passes clients of RFB 3.3, 3.7 and 3.8. The QEMU side (`log_in`)
is tested against real QEMU in tests/integration/test_console.py."""

import struct

import pytest

from openhosting.vnc.rfb import RfbError, greet_without_auth


class Client:
    """A scripted RFB client: what it sends, in order, and what it was sent."""

    def __init__(self, sends: bytes) -> None:
        self.pending, self.received = sends, b""

    async def read_exactly(self, count: int) -> bytes:
        if len(self.pending) < count:
            raise ConnectionError("the client has nothing more to say")
        data, self.pending = self.pending[:count], self.pending[count:]
        return data

    async def write(self, data: bytes) -> None:
        self.received += data


async def test_a_3_8_client_is_offered_none_alone_and_told_it_passed() -> None:
    client = Client(b"RFB 003.008\n\x01")
    await greet_without_auth(client.read_exactly, client.write)
    assert client.received == b"RFB 003.008\n" + bytes([1, 1]) + b"\0\0\0\0"


async def test_a_3_7_client_hears_no_security_result_and_a_3_3_client_is_told_none() -> None:
    client = Client(b"RFB 003.007\n\x01")
    await greet_without_auth(client.read_exactly, client.write)
    assert client.received == b"RFB 003.008\n" + bytes([1, 1])
    client = Client(b"RFB 003.003\n")
    await greet_without_auth(client.read_exactly, client.write)
    assert client.received == b"RFB 003.008\n" + struct.pack(">I", 1)


@pytest.mark.parametrize("sends", [b"GET / HTTP/1.1\r\n", b"RFB 003.00x\n", b"RFB 003.008\n\x02"])
async def test_a_client_not_speaking_rfb_or_choosing_another_type_is_refused(
    sends: bytes,
) -> None:
    client = Client(sends)
    with pytest.raises(RfbError):
        await greet_without_auth(client.read_exactly, client.write)

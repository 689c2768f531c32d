"""The QMP monitor against a small fake QMP server (the real QEMU is in tests/integration).

The fake speaks just enough of the protocol: the greeting, capabilities negotiation, scripted
replies per command, events, and hanging up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openhosting.hypervisor.driver import BlockStats
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.monitor import GREETING_ATTEMPTS, Monitor, MonitorEvent

GREETING: dict[str, object] = {
    "QMP": {
        "version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
        "capabilities": [],
    }
}
SILENT = object()  # never answer this command
HANG_UP = object()  # close the connection instead of answering


def stats(rd_bytes: int, rd_ops: int, wr_bytes: int, wr_ops: int) -> dict[str, int]:
    return {
        "rd_bytes": rd_bytes,
        "rd_operations": rd_ops,
        "wr_bytes": wr_bytes,
        "wr_operations": wr_ops,
    }


# The shapes QEMU 7.2 answers for ide-hd, scsi-cd, virtio-blk and a node no device uses.
BLOCKSTATS = [
    {"device": "", "node-name": "drive-ide-0-0", "qdev": "ide-0-0", "stats": stats(1, 2, 3, 4)},
    {"device": "", "node-name": "drive-scsi-0-1", "qdev": "scsi-0-1", "stats": stats(5, 6, 0, 0)},
    {
        "device": "",
        "node-name": "drive-block-2",
        "qdev": "/machine/peripheral/block-2/virtio-backend",
        "stats": stats(7, 8, 9, 10),
    },
    {"device": "", "node-name": "#block123", "stats": stats(0, 0, 0, 0)},
]


class FakeQmp:
    """A QMP server on a unix socket answering from `replies` (command -> return value)."""

    def __init__(
        self,
        replies: dict[str, object],
        *,
        greet: bool = True,
        events_before_greeting: int = 0,
        events_before_capabilities: int = 0,
    ) -> None:
        self.replies = replies
        self.greet = greet
        # How many of the first sessions get an event before the greeting (QEMU's race).
        self.events_before_greeting = events_before_greeting
        # ... and how many get one before the answer to qmp_capabilities.
        self.events_before_capabilities = events_before_capabilities
        self.sessions = 0
        self.received: list[dict[str, object]] = []
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.sessions += 1
        if self.sessions <= self.events_before_greeting:
            self.event("RTC_CHANGE", offset=0)
        if self.greet:
            self.send(GREETING)
        async for message in self.messages(reader):
            self.received.append(message)
            command, exec_id = str(message["execute"]), message.get("id")
            if command == "qmp_capabilities" and self.sessions <= self.events_before_capabilities:
                self.event("RESET", guest=False, reason="host-qmp-system-reset")
            reply = {} if command == "qmp_capabilities" else self.replies.get(command, {})
            if reply is SILENT:
                continue
            if reply is HANG_UP:
                break
            if isinstance(reply, Exception):
                self.send({"error": {"class": "GenericError", "desc": str(reply)}, "id": exec_id})
            else:
                self.send({"return": reply, "id": exec_id})
        writer.close()

    @staticmethod
    async def messages(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, object]]:
        # Clients need not end messages with a newline: QMP input is a stream of JSON values.
        decoder, buffer = json.JSONDecoder(), ""
        while chunk := await reader.read(4096):
            buffer += chunk.decode()
            while buffer.strip():
                try:
                    message, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                yield message

    def send(self, message: dict[str, object]) -> None:
        assert self.writer is not None
        self.writer.write(json.dumps(message).encode() + b"\r\n")

    def event(self, name: str, **data: object) -> None:
        self.send(
            {
                "event": name,
                "data": data,
                "timestamp": {"seconds": 1700000000, "microseconds": 500000},
            }
        )

    def hang_up(self) -> None:
        assert self.writer is not None
        self.writer.close()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "qmp.sock"


@pytest.fixture
async def fake(socket_path: Path) -> AsyncIterator[FakeQmp]:
    qmp = FakeQmp(
        {"query-status": {"status": "running", "running": True}, "query-blockstats": BLOCKSTATS}
    )
    server = await asyncio.start_unix_server(qmp.serve, str(socket_path))
    yield qmp
    server.close()
    await server.wait_closed()


@pytest.fixture
async def monitor(fake: FakeQmp, socket_path: Path) -> AsyncIterator[Monitor]:
    monitor = Monitor(socket_path, command_timeout=0.5)
    await monitor.connect(timeout=5)
    yield monitor
    await monitor.close()


async def test_commands_return_qemus_answers(monitor: Monitor, fake: FakeQmp) -> None:
    assert monitor.connected
    assert await monitor.query_status() == "running"
    await monitor.system_powerdown()
    await monitor.system_reset()
    await monitor.set_vnc_password("pw")
    await monitor.expire_vnc_password()
    assert [(m["execute"], m.get("arguments")) for m in fake.received[1:]] == [
        ("query-status", None),
        ("system_powerdown", None),
        ("system_reset", None),
        ("set_password", {"protocol": "vnc", "password": "pw"}),
        ("expire_password", {"protocol": "vnc", "time": "now"}),
    ]


async def test_vcpu_threads_are_the_thread_ids_of_query_cpus_fast(
    monitor: Monitor, fake: FakeQmp
) -> None:
    # The shape QEMU 7.2 answers for two vCPUs under TCG.
    fake.replies["query-cpus-fast"] = [
        {"cpu-index": n, "qom-path": f"/machine/unattached/device[{n}]", "thread-id": tid,
         "target": "x86_64", "props": {"core-id": 0, "thread-id": 0, "node-id": 0,
                                        "socket-id": n}}
        for n, tid in enumerate([4301, 4302])
    ]  # fmt: skip
    assert await monitor.query_vcpu_threads() == [4301, 4302]


async def test_blockstats_are_keyed_by_slot(monitor: Monitor) -> None:
    assert await monitor.query_blockstats() == {
        "ide:0:0": BlockStats(1, 2, 3, 4),
        "scsi:0:1": BlockStats(5, 6, 0, 0),
        "block:2": BlockStats(7, 8, 9, 10),
    }


async def test_an_error_reply_is_a_hypervisor_error(monitor: Monitor, fake: FakeQmp) -> None:
    fake.replies["cont"] = RuntimeError("Resetting the Virtual Machine is required")
    with pytest.raises(HypervisorError, match="QMP cont failed: Resetting the Virtual"):
        await monitor.execute("cont")


async def test_a_command_without_answer_times_out(monitor: Monitor, fake: FakeQmp) -> None:
    fake.replies["stop"] = SILENT
    with pytest.raises(HypervisorError, match=r"QMP stop got no answer within 0\.1 s"):
        await monitor.execute("stop", timeout=0.1)


async def test_quit_tolerates_qemu_hanging_up_before_answering(
    monitor: Monitor, fake: FakeQmp
) -> None:
    fake.replies["quit"] = HANG_UP
    await monitor.quit()
    assert await monitor.next_event(timeout=5) is None
    assert not monitor.connected


async def test_events_arrive_in_order_and_end_when_qemu_hangs_up(
    monitor: Monitor, fake: FakeQmp
) -> None:
    fake.event("POWERDOWN")
    fake.event("SHUTDOWN", guest=True, reason="guest-shutdown")
    fake.hang_up()
    events = [event async for event in monitor.events()]
    assert events == [
        MonitorEvent("POWERDOWN", {}, 1700000000.5),
        MonitorEvent("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, 1700000000.5),
    ]
    assert events[1].reason == "guest-shutdown" and events[0].reason is None


async def test_wait_for_event_skips_others(monitor: Monitor, fake: FakeQmp) -> None:
    fake.event("RTC_CHANGE", offset=1)
    fake.event("RESET", guest=False, reason="host-qmp-system-reset")
    event = await monitor.wait_for_event("RESET", timeout=5)
    assert event.reason == "host-qmp-system-reset"


async def test_waiting_for_an_event_has_a_time_limit(monitor: Monitor, fake: FakeQmp) -> None:
    with pytest.raises(HypervisorError, match=r"no QMP event within 0\.1 s"):
        await monitor.next_event(timeout=0.1)
    with pytest.raises(HypervisorError, match=r"no QMP SHUTDOWN event within 0\.1 s"):
        await monitor.wait_for_event("SHUTDOWN", timeout=0.1)


async def test_waiting_for_an_event_fails_when_qemu_hangs_up_first(
    monitor: Monitor, fake: FakeQmp
) -> None:
    fake.hang_up()
    with pytest.raises(HypervisorError, match="closed before a SHUTDOWN event"):
        await monitor.wait_for_event("SHUTDOWN", timeout=5)


async def test_connecting_to_a_missing_socket_gives_up_after_the_timeout(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path / "absent.sock")
    with pytest.raises(HypervisorError, match=r"no QMP socket at .* after 0\.2 s"):
        await monitor.connect(timeout=0.2)
    await monitor.close()


async def test_connecting_to_a_silent_server_gives_up_after_the_timeout(
    socket_path: Path,
) -> None:
    # QEMU's QMP socket serves one client at a time; a second one waits for a greeting.
    silent = FakeQmp({}, greet=False)
    server = await asyncio.start_unix_server(silent.serve, str(socket_path))
    try:
        monitor = Monitor(socket_path)
        with pytest.raises(HypervisorError, match=r"did not answer within 0\.3 s"):
            await monitor.connect(timeout=0.3)
        await monitor.close()
    finally:
        if silent.writer is not None:
            silent.writer.close()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def serving(fake: FakeQmp, socket_path: Path) -> AsyncIterator[FakeQmp]:
    """`fake` answering on `socket_path` for the block's length."""
    server = await asyncio.start_unix_server(fake.serve, str(socket_path))
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "early", ["events_before_greeting", "events_before_capabilities"]
)  # fmt: skip
async def test_an_event_opening_a_session_is_survived_by_a_new_session(
    socket_path: Path, early: str
) -> None:
    fake = FakeQmp({"query-status": {"status": "running"}}, **{early: 1})  # type: ignore[arg-type]
    async with serving(fake, socket_path):
        monitor = Monitor(socket_path, command_timeout=0.5)
        await monitor.connect(timeout=5)
        assert fake.sessions == 2
        assert await monitor.execute("query-status") == {"status": "running"}
        await monitor.close()


async def test_a_server_that_never_greets_first_is_an_error_after_a_few_sessions(
    socket_path: Path,
) -> None:
    async with serving(FakeQmp({}, events_before_greeting=100), socket_path) as never:
        monitor = Monitor(socket_path)
        with pytest.raises(HypervisorError, match="Did not understand Greeting"):
            await monitor.connect(timeout=5)
        assert never.sessions == GREETING_ATTEMPTS
        await monitor.close()

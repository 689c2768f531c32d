"""The driver's calls as plain data (hypervisor/calls.py): every method has its record, and
every record and answer survives JSON whole; what is not a record is refused."""

import inspect
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from openhosting.hypervisor.calls import (
    CALLS,
    EXPORT_CALLS,
    MIGRATING,
    WHOLE_RECORD,
    CallError,
    arguments,
    decode,
    encode,
)
from openhosting.hypervisor.driver import (
    BlockStats,
    ExportingDriver,
    ExportRequest,
    HypervisorDriver,
    IncomingInfo,
    IncomingRequest,
    MigratingDriver,
    PauseReason,
    StartRequest,
    VmEnd,
    VmEvent,
    VmEventKind,
    VmState,
    VmStatus,
)
from openhosting.hypervisor.spec import (
    DiskSpec,
    DriveSecret,
    HostVmSettings,
    NbdSource,
    NicSpec,
    StreamNetdev,
    TapNetdev,
    UserNetdev,
    VmSpec,
    VncSpec,
)

SERVER = str(uuid.uuid4())


def _through_json(hint: Any, value: object) -> Any:
    return decode(hint, json.loads(json.dumps(encode(value))))


def _full_request() -> StartRequest:
    run = Path("/run/oh") / SERVER
    spec = VmSpec(
        SERVER, 2, 256, run,
        disks=(
            DiskSpec("ide:0:0", Path("/d/a.raw")),
            DiskSpec("block:1", Path("/d/b"), format="luks", secret_file=run / "s", shared=True),
            DiskSpec("ide:1:0", Path("/d/c.iso"), media="cdrom"),
        ),
        boot=("ide:1:0", "ide:0:0"),
        nics=(
            NicSpec(0, "virtio", "52:54:00:00:00:01"),
            NicSpec(1, "e1000", "52:54:00:00:00:02", TapNetdev("tap-x")),
            NicSpec(2, "rtl8139", "52:54:00:00:00:03", StreamNetdev(run / "passt.sock")),
            NicSpec(3, "virtio", "52:54:00:00:00:04", UserNetdev(net="10.0.2.0/24")),
        ),
        vnc=VncSpec("127.0.0.1", 7, tls_dir=Path("/s/vnc-tls")),
        netns="oh-ns", run_as="nobody", incoming=True,
    )  # fmt: skip
    return StartRequest(
        spec,
        secrets=(DriveSecret(run / "s", b"\x00hush\xff"),),
        vnc_password="whisper",
        vnc_names=("vnc.example",),
        cpu_mhz=1500,
        timeout=12.5,
    )


def test_every_driver_method_has_a_record_naming_its_parameters() -> None:
    members = inspect.getmembers(MigratingDriver, inspect.isfunction)
    methods = {name for name, _ in members if not name.startswith("_")} - {"listen"}
    assert set(CALLS) == methods
    assert set(CALLS) - MIGRATING == {
        name for name, _ in inspect.getmembers(HypervisorDriver, inspect.isfunction)
    } - {"listen"} - {name for name, _ in members if name.startswith("_")}
    for name, call in CALLS.items():
        if name in WHOLE_RECORD:
            continue  # takes its record whole
        parameters = set(inspect.signature(getattr(MigratingDriver, name)).parameters)
        fields = set(arguments(call.request(**_sample_fields(call.request))))
        assert fields == parameters - {"self", "sink"}, name


def _sample_fields(record: type) -> dict[str, object]:
    samples: dict[str, object] = {"server": SERVER, "timeout": 1.0, "started": 1.0}
    samples |= {"vnc_listen": "::", "netns": None, "address": "::1", "port": 5900}
    samples |= {"cpu_mhz": 100, "password": None, "target": _incoming_info()}
    return {name: samples[name] for name in inspect.signature(record).parameters}


def _incoming_info(uri: str = "tcp:10.20.0.12:49152") -> IncomingInfo:
    return IncomingInfo(
        SERVER, uri, "tcp:10.20.0.12:49153", (("drive-ide0-0-0", "drive-ide0-0-0"),),
        tls_hostname="hv-b", drive_paths=(("ide:0:0", "/d/a.raw"),),
    )  # fmt: skip


def test_a_migrations_calls_cross_whole() -> None:
    # An encrypted drive's header goes with it (bytes, base64 in the line).
    headers = (("block:1", b"LUKS\xba\xbe\x00\x01" + bytes(range(256))),)
    request = IncomingRequest(
        _full_request(), (("ide:0:0", 25 << 20),), started=12.5, drive_headers=headers
    )
    assert _through_json(IncomingRequest, request) == request
    assert _through_json(IncomingInfo, _incoming_info()) == _incoming_info()
    call = CALLS["migrate_out"].request(server=SERVER, target=_incoming_info(), timeout=30.0)
    assert _through_json(CALLS["migrate_out"].request, call) == call


@pytest.mark.parametrize(
    "uri",
    [
        "exec:touch /tmp/pwned",  # QEMU would run it on the source host
        "fd:3",
        "tcp:10.0.0.1",
        "unix:relative.sock",
        "tcp:10.0.0.1:1,x=y",
        "rdma:10.0.0.1:4444",
    ],
)
def test_a_migration_target_is_a_unix_or_tcp_address_and_nothing_else(uri: str) -> None:
    data = encode(_incoming_info())
    with pytest.raises(CallError, match="stream address"):
        decode(IncomingInfo, {**data, "migration_uri": uri})
    with pytest.raises(CallError, match="stream address"):
        decode(IncomingInfo, {**data, "nbd_address": uri})


def test_a_migrate_out_names_the_server_its_target_waits_for() -> None:
    data = encode(CALLS["migrate_out"].request(SERVER, _incoming_info(), 1.0))
    with pytest.raises(CallError, match="waits for"):
        decode(CALLS["migrate_out"].request, {**data, "server": str(uuid.uuid4())})


def test_a_start_request_crosses_whole() -> None:
    request = _full_request()
    assert _through_json(StartRequest, request) == request
    # The passphrase crosses (the agent writes it for QEMU) but is never shown.
    assert "hush" not in repr(request) and "whisper" not in repr(request)


@pytest.mark.parametrize(
    ("hint", "value"),
    [
        (VmStatus | None, VmStatus(SERVER, VmState.PAUSED, PauseReason.NOSPACE, started=12.0)),
        (VmStatus | None, None),
        (dict[str, BlockStats], {"ide:0:0": BlockStats(1, 2, 3 << 40, 4)}),
        (bytes | None, b"\x00\xffboot\n"),
        (list[str], [SERVER]),
        (HostVmSettings, HostVmSettings("tcg", "::", Path("/s/vnc-tls"), run_as="nobody")),
        (VmEvent, VmEvent(SERVER, VmEventKind.EXITED, how=VmEnd.CRASH)),
        (Path, Path("/run/x")),
    ],
)
def test_answers_and_events_cross_whole(hint: Any, value: object) -> None:
    assert _through_json(hint, value) == value


def test_states_kinds_and_ends_come_back_as_their_enums() -> None:
    event = _through_json(VmEvent, VmEvent(SERVER, VmEventKind.EXITED, how=VmEnd.CRASH))
    assert type(event.kind) is VmEventKind and type(event.how) is VmEnd
    status = _through_json(VmStatus, VmStatus(SERVER, VmState.RUNNING))
    assert type(status.state) is VmState
    assert type(_through_json(CALLS["how_ended"].answer, VmEnd.SHUTDOWN)) is VmEnd
    # On the wire they are their plain values, as before they were enums.
    assert encode(event)["kind"] == "exited" and json.dumps(encode(event)).count('"crash"') == 1


@pytest.mark.parametrize(
    ("hint", "data"),
    [
        (StartRequest, {"spec": {"uuid": "not-a-uuid", "smp": 1, "mem_mb": 64, "run_dir": "/r"}}),
        (StartRequest, {"spec": None}),
        (VmStatus, {"server": SERVER, "state": "running", "started": "soon"}),
        (VmStatus, {"server": SERVER, "state": "running", "pid": 1}),  # no such field
        (VmStatus, {"type": "VmEvent", "server": SERVER, "state": "running"}),
        (VmStatus, {"server": SERVER, "state": "sleeping"}),  # no such state
        (VmEvent, {"server": SERVER, "kind": "exited", "how": 1}),
        (CALLS["how_ended"].answer, "vanished"),
        (CALLS["set_cpu"].request, {"server": SERVER, "cpu_mhz": True}),
        (CALLS["set_cpu"].request, {"server": SERVER, "cpu_mhz": 1.5}),
        (CALLS["stop"].request, {"timeout": 1}),  # the server is missing
        (bytes, "not base64!"),
        (CALLS["forget"].request, {"server": "../../etc"}),  # a run directory it would remove
        (CALLS["run_dir"].request, {"server": "/"}),
        (CALLS["stop"].request, {"server": SERVER.upper()}),
        (list[str], "a"),
        (
            NicSpec,
            {
                "index": 0,
                "model": "virtio",
                "mac": "52:54:00:00:00:01",
                "backend": {"type": "Socket"},
            },
        ),
    ],
)
def test_what_is_not_a_record_is_refused(hint: Any, data: Any) -> None:
    with pytest.raises(CallError):
        decode(hint, data)


def test_what_is_not_plain_data_is_not_encoded() -> None:
    with pytest.raises(CallError):
        encode(object())


def test_the_export_calls_are_the_exporting_drivers_methods_and_cross_whole() -> None:
    own = set(dir(ExportingDriver)) - set(dir(HypervisorDriver))
    assert set(EXPORT_CALLS) == {name for name in own if not name.startswith("_")}
    drive = str(uuid.uuid4())
    request = ExportRequest(SERVER, drive, "ssd", "hv-a", read_only=True)
    assert _through_json(EXPORT_CALLS["export_drive"].request, request) == request
    source = NbdSource("10.0.0.12", 49160, drive, "hv-b")
    assert _through_json(EXPORT_CALLS["export_drive"].answer, source) == source
    # A disk over NBD crosses in a start as its source, checked again when decoded.
    disk = DiskSpec("ide:0:1", Path("/d/b"), nbd=source)
    spec = VmSpec(SERVER, 1, 64, Path("/run/oh") / SERVER, disks=(disk,))
    assert _through_json(StartRequest, StartRequest(spec)).spec.disks == (disk,)
    bad = encode(request) | {"drive": "../../etc/shadow"}
    with pytest.raises(CallError):
        decode(ExportRequest, bad)

"""The isolation campaign: two users on one daemon, each working (drives written with known
content, servers, IP resources) while an attacker with the other's key sends every command
at their objects, by leaked UUID (the real ones) and guessed ones. Invariants: an attack on
another user's object is answered exactly as the same command on an object that does not
exist (never 2xx, never a `busy` that betrays it); lists, `info` and the `/events` stream
show a user only their own; the victim's drives still hold exactly what they wrote."""

import random
import socket
import threading
import time
import uuid as uuid_module
from pathlib import Path

from bench.reliability import checkers
from bench.reliability.model import DriveModel, pattern
from bench.reliability.table import CampaignResult
from testbed.daemon_process import Account, Api, DaemonProcess, create_user

DRIVE_SIZE = 64 * 1024
# (command, body): every command that names a drive, then a server, then an IP resource.
DRIVE_ATTACKS = [
    ("info", None), ("read", None), ("read/0/512", None), ("write/0", b"x" * 512),
    ("set", b"name stolen"), ("set", b"size 1M"), ("destroy", b""), ("hash", None),
]  # fmt: skip
SERVER_ATTACKS = [
    ("info", None), ("log", None), ("start", b""), ("stop", b""), ("shutdown", b""),
    ("reset", b""), ("set", b"name stolen"), ("destroy", b""), ("console", b""),
]  # fmt: skip
RESOURCE_ATTACKS = [("info", None), ("set", b"name stolen"), ("destroy", b"")]


class Tenant:
    """One user's work and what it owns (read by the other user's attacker)."""

    def __init__(self, name: str, account: Account, url: str, seed: int) -> None:
        self.name, self.account = name, account
        self.api = Api(account, url)
        self.rng = random.Random(seed)
        self.drives: dict[str, DriveModel] = {}
        self.servers: list[str] = []
        self.resources: list[str] = []
        self.lock = threading.Lock()
        self.seq = 0
        self.operations = 0
        self.violations: list[str] = []
        # The other user's objects, as last seen: none may show in this user's lists.
        self.stranger_ids: set[str] = set()

    def owned(self) -> set[str]:
        with self.lock:
            return {*self.drives, *self.servers, *self.resources, self.account.user}

    def step(self) -> None:
        roll = self.rng.random()
        self.operations += 1
        if roll < 0.1 or not self.drives:
            answer = self.api.properties("/drives/create", f"size {DRIVE_SIZE}".encode())
            with self.lock:
                self.drives[answer["drive"]] = DriveModel(answer["drive"], DRIVE_SIZE)
        elif roll < 0.15 and len(self.servers) < 5:
            answer = self.api.properties("/servers/create/stopped", b"name s\ncpu 500\nmem 64")
            with self.lock:
                self.servers.append(answer["server"])
        elif roll < 0.18 and len(self.resources) < 3:
            answer = self.api.properties("/resources/ip/create", b"")
            with self.lock:
                self.resources.append(answer["resource"])
        elif roll < 0.7:
            drive = self.drives[self.rng.choice(sorted(self.drives))]
            offset = self.rng.randrange(DRIVE_SIZE - 4096)
            self.seq += 1
            data = pattern(drive.uuid, offset, self.seq, 4096)
            status, _, body = self.api.call(f"/drives/{drive.uuid}/write/{offset}", data)
            if status != 204:
                self.violations.append(f"{self.name} own write: {status} {body[:100]!r}")
            else:
                drive.acknowledged_write(offset, data)
        else:
            self.check_lists()

    def check_lists(self, others: set[str] | None = None) -> None:
        """Every list and info-of-all of this user names only this user's objects."""
        others = others if others is not None else self.stranger_ids
        for path in ("/drives/list", "/drives/info", "/servers/list", "/servers/info",
                     "/resources/list", "/resources/info", "/account/info"):  # fmt: skip
            status, _, body = self.api.call(path)
            if status != 200:
                self.violations.append(f"{self.name} {path}: {status}")
            text = body.decode(errors="replace")
            self.violations += checkers.check_foreign_ids(f"{self.name} {path}", text, others)

    def check_drives(self) -> None:
        for uuid, drive in sorted(self.drives.items()):
            status, _, body = self.api.call(f"/drives/{uuid}/read")
            problems = drive.mismatches(body) if status == 200 else [f"read {status}"]
            self.violations += [f"{self.name} {problem}" for problem in problems]


class Attacker:
    """Sends the victim's UUIDs (and guessed ones) to every command, with its own key."""

    def __init__(self, own: Tenant, victim: Tenant, seed: int) -> None:
        self.api, self.victim, self.name = own.api, victim, own.name
        self.own = own
        self.rng = random.Random(seed)
        self.operations = 0
        self.violations: list[str] = []
        self.baseline: dict[str, int] = {}

    def absent_answer(self, path_of: str, command: str, body: bytes | None) -> int:
        """What the command answers for a UUID nobody has (cached per command)."""
        key = f"{path_of}/{command}/{body!r}"
        if key not in self.baseline:
            nobody = str(uuid_module.UUID(int=self.rng.getrandbits(128), version=4))
            if path_of == "resources/ip":
                nobody = f"198.51.100.{self.rng.randrange(1, 255)}"
            self.baseline[key] = self.api.call(f"/{path_of}/{nobody}/{command}", body).status
        return self.baseline[key]

    def step(self) -> None:
        victim = self.victim
        with victim.lock:
            targets = (
                [("drives", d, DRIVE_ATTACKS) for d in victim.drives]
                + [("servers", s, SERVER_ATTACKS) for s in victim.servers]
                + [("resources/ip", r, RESOURCE_ATTACKS) for r in victim.resources]
            )
        if not targets:
            return
        path_of, target, attacks = self.rng.choice(targets)
        if self.rng.random() < 0.1:  # a guessed UUID: one that nobody has
            target = str(uuid_module.UUID(int=self.rng.getrandbits(128), version=4))
        command, body = self.rng.choice(attacks)
        expected = self.absent_answer(path_of, command, body)
        status, _, answer = self.api.call(f"/{path_of}/{target}/{command}", body)
        self.operations += 1
        self.violations += checkers.check_attack(
            f"{self.name} → {path_of}/{target}/{command} {answer[:100]!r}", status, expected
        )
        if path_of == "drives" and self.own.drives and self.rng.random() < 0.2:
            # Imaging the victim's drive into one's own must fail as for a missing source.
            own = self.rng.choice(sorted(self.own.drives))
            status, _, answer = self.api.call(f"/drives/{own}/image/{target}", b"")
            self.operations += 1
            if status != 404:
                self.violations.append(f"{self.name} image from {target}: {status} {answer!r}")


def read_events(url: str, account: Account, stop: threading.Event, sink: bytearray) -> None:
    """Append everything `GET /events` (from the first event) sends until `stop`."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=1) as connection:
        connection.sendall(
            f"GET /events?after=0 HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {account.auth_header}\r\n\r\n".encode()
        )
        while not stop.is_set():
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            sink += chunk


def run(work_dir: Path, seed: int, seconds: float) -> CampaignResult:
    state = work_dir / "state"
    accounts = [create_user(state), create_user(state)]
    # Its run directory in the campaign's, removed with it (the default outlives the run).
    run_dir = {"OH_HYPERVISOR_RUN_DIR": str(work_dir / "run")}
    daemon = DaemonProcess(state, work_dir / "daemon.log", env=run_dir)
    result = CampaignResult("isolation")
    try:
        tenants = [Tenant(name, account, daemon.url, seed + index) for index, (name, account)
                   in enumerate(zip(("alice", "bob"), accounts, strict=True))]  # fmt: skip
        attackers = [Attacker(tenants[0], tenants[1], seed + 10),
                     Attacker(tenants[1], tenants[0], seed + 11)]  # fmt: skip
        stop = threading.Event()
        streams = [bytearray(), bytearray()]
        readers = [threading.Thread(target=read_events, args=(daemon.url, t.account, stop, s))
                   for t, s in zip(tenants, streams, strict=True)]  # fmt: skip
        failures: list[str] = []

        def loop(actor: Tenant | Attacker) -> None:
            try:
                while not stop.is_set():
                    actor.step()
            except Exception as error:
                failures.append(f"{actor.name} {type(actor).__name__}: {error!r}")

        actors = [threading.Thread(target=loop, args=(a,)) for a in [*tenants, *attackers]]
        for thread in [*readers, *actors]:
            thread.start()
        for tenant, other in ((tenants[0], tenants[1]), (tenants[1], tenants[0])):
            tenant.stranger_ids = {other.account.user}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not failures:
            time.sleep(0.5)
            for tenant, other in ((tenants[0], tenants[1]), (tenants[1], tenants[0])):
                tenant.stranger_ids = other.owned()
        stop.set()
        for thread in [*actors, *readers]:
            thread.join(60)
        for tenant, other, stream in ((tenants[0], tenants[1], streams[1]),
                                      (tenants[1], tenants[0], streams[0])):  # fmt: skip
            tenant.check_drives()
            tenant.check_lists(other.owned())
            result.violations += checkers.check_foreign_ids(
                f"{other.name}'s /events", stream.decode(errors="replace"), tenant.owned()
            )
            if tenant.drives and not any(uuid in stream_of(streams, tenants, tenant)
                                         for uuid in tenant.drives):  # fmt: skip
                result.violations.append(f"{tenant.name}'s /events lacks its own changes")
        for actor in [*tenants, *attackers]:
            result.operations += actor.operations
            result.violations += actor.violations
        result.violations += failures
        result.faults = sum(attacker.operations for attacker in attackers)
        result.notes.append(
            f"{result.faults} attacks on the other user's objects (leaked and guessed UUIDs);"
            f" /events read {sum(map(len, streams))} bytes"
        )
    finally:
        daemon.stop()
    return result


def stream_of(streams: list[bytearray], tenants: list[Tenant], tenant: Tenant) -> str:
    return streams[tenants.index(tenant)].decode(errors="replace")

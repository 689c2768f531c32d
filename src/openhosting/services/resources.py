"""Resources: IP addresses from the platform's public pool and VLANs (private layer-2
networks), owned by users (docs/api.md §6).

A user sees and changes only their own resources. An IP resource is an address of the pool
that no other resource and no active server holds; a VLAN is a fresh UUID. Limits come from
the account (402 `billing`), exhaustion of the pool is 507 `full`, and a resource an active
server uses cannot be destroyed (409 `busy`).
"""

import functools
import logging
import time
import uuid as uuid_module

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from openhosting.errors import BillingError, BusyError, FullError, MissingError, UsageError
from openhosting.model.resource import (
    ResourceSettings,
    apply_resource_properties,
    check_type,
    parse_resource_id,
)
from openhosting.network.pool import AddressPool
from openhosting.network.vxlan import vni_of
from openhosting.services.accounts.billing import Billing
from openhosting.services.off_loop import built_off_loop
from openhosting.store import resources as resource_store
from openhosting.store import row_locks
from openhosting.store import users as user_store
from openhosting.store import vnis as vni_store
from openhosting.store.reader import Reader
from openhosting.store.records import ResourceRecord, resource_settings_columns
from openhosting.wire.payload import Value

log = logging.getLogger("openhosting.resources")

# How many free addresses a create picking one for the caller tries (each taken at once by
# another create) before it answers 409.
ADDRESS_ATTEMPTS = 3


def _missing(kind: str, resource: str) -> MissingError:
    return MissingError(f"Resource {kind} {resource} could not be found")


def taken_addresses(connection: Connection) -> set[str]:
    """Every pool address someone holds: IP resources, and addresses active servers hold."""
    return resource_store.resource_names(connection, "ip") | resource_store.held_addresses(
        connection
    )


class Resources:
    """The resource service."""

    def __init__(
        self, engine: Engine, reader: Reader, pool: AddressPool, billing: Billing | None = None
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._pool = pool
        self._billing = billing

    def resource_info(self, row: ResourceRecord) -> dict[str, Value]:
        """The info of a resource: identity, owner, for IPs how to configure the address."""
        info: dict[str, Value] = {
            "resource": row.resource,
            "type": row.type,
            "name": row.name,
            "user": row.user,
        }
        if row.type == "ip":
            info["netmask"] = self._pool.netmask
            info["gateway"] = str(self._pool.gateway)
            info["nameserver"] = " ".join(str(ns) for ns in self._pool.nameservers)
        info["tags"] = " ".join(row.tags)
        info.update(sorted(row.user_keys.items()))
        return info

    # -- lookups -------------------------------------------------------------------------

    def owned(
        self, connection: Connection, user: str, kind: str, resource: str, lock: bool = False
    ) -> ResourceRecord:
        """The user's resource; 404 for anyone else's or none. With `lock`, its row held
        until the transaction ends (store/row_locks.py)."""
        canonical = parse_resource_id(kind, resource)
        if canonical and lock:
            row_locks.lock_resource(connection, kind, canonical)
        row = resource_store.get_resource(connection, kind, canonical) if canonical else None
        if row is None or row.user != user:
            raise _missing(kind, resource)
        return row

    # -- commands ------------------------------------------------------------------------

    def list_rows(self, user: str, kind: str | None = None) -> list[dict[str, Value]]:
        if kind is not None:
            check_type(kind)
        rows = self._reader.all(resource_store.RESOURCE_LIST_BY_USER, user=user)
        return [
            {"type": row_kind, "resource": resource}
            for row_kind, resource in rows
            if kind is None or row_kind == kind
        ]

    async def info_all(self, user: str, kind: str | None = None) -> list[dict[str, Value]]:
        if kind is not None:
            check_type(kind)
        count = (
            self._reader.scalar(resource_store.RESOURCE_COUNT_BY_USER, user=user, type=kind)
            if self._reader.local
            else None  # counting would be I/O on the loop already
        )
        return await built_off_loop(count, functools.partial(self._infos_of, user, kind))

    def _infos_of(self, user: str, kind: str | None) -> list[dict[str, Value]]:
        """The info of every resource of `user` (of `kind`); in a worker thread for many."""
        with self._engine.connect() as connection:
            rows = resource_store.resources_of(connection, user, kind)
        return [self.resource_info(row) for row in rows]

    def info(self, user: str, kind: str, resource: str) -> dict[str, Value]:
        check_type(kind)
        with self._engine.connect() as connection:
            return self.resource_info(self.owned(connection, user, kind, resource))

    def create(self, user: str, kind: str, properties: dict[str, str]) -> dict[str, Value]:
        check_type(kind)
        settings, wanted = apply_resource_properties(
            kind, ResourceSettings(), properties, creating=True
        )
        # An address picked for the caller may be taken at once by another create (another
        # node's, or a worker thread's of this one): the next free one is tried, a few times.
        attempts = ADDRESS_ATTEMPTS if kind == "ip" and wanted is None else 1
        for attempt in range(attempts):
            try:
                row = self._insert(user, kind, settings, wanted)
                break
            except IntegrityError:
                if attempt + 1 == attempts:
                    raise BusyError(
                        f"Resource {kind} {wanted or ''} was just taken; try again"
                    ) from None
        log.info("event=resource_created user=%s type=%s resource=%s", user, kind, row.resource)
        return self.resource_info(row)

    def _insert(
        self, user: str, kind: str, settings: ResourceSettings, wanted: str | None
    ) -> ResourceRecord:
        """A new resource of `user`, within their limit: the address `wanted` or a free one
        for an IP, a new UUID for a VLAN. IntegrityError if another took it meanwhile."""
        with self._engine.begin() as connection:
            self._check_limit(connection, user, kind)
            if self._billing is not None:
                self._billing.check_new_resource(connection, user)  # the balance
            resource = (
                self._choose_address(connection, wanted)
                if kind == "ip"
                else str(uuid_module.uuid4())
            )
            # A VLAN's VNI, the same on every host for its life: its hash when free.
            vni = vni_store.allocate_vni(connection, vni_of(resource)) if kind == "vlan" else None
            resource_store.insert_resource(
                connection,
                type=kind,
                resource=resource,
                user=user,
                created_at=int(time.time()),
                vni=vni,
                **resource_settings_columns(settings),
            )
            row = resource_store.get_resource(connection, kind, resource)
        assert row is not None
        return row

    def _check_limit(self, connection: Connection, user: str, kind: str) -> None:
        # The user's row held: another node's create of this user waits for this count.
        row_locks.lock_user(connection, user)
        account = user_store.get_user(connection, user)
        limit = (
            None if account is None else {"ip": account.max_ips, "vlan": account.max_vlans}[kind]
        )
        if limit is None:
            return
        used = resource_store.count_resources(connection, user, kind)
        if used + 1 > limit:
            raise BillingError(
                f"{kind.upper()} limit reached: {used} in use, limit {limit} for this account"
            )

    def _choose_address(self, connection: Connection, wanted: str | None) -> str:
        row_locks.lock_address_pool(connection)  # another node's pick waits for this one
        taken = taken_addresses(connection)
        if wanted is not None:
            if wanted not in self._pool:
                raise UsageError(
                    f"Address {wanted} is not in this platform's pool"
                    f" ({self._pool.first}-{self._pool.last})"
                )
            if wanted in taken:
                raise BusyError(f"Address {wanted} is in use")
            return wanted
        address = self._pool.choose_free(taken)
        if address is None:
            raise FullError("No free IP address is left in this platform's pool")
        return address

    def set(
        self, user: str, kind: str, resource: str, properties: dict[str, str]
    ) -> dict[str, Value]:
        check_type(kind)
        with self._engine.begin() as connection:
            row = self.owned(connection, user, kind, resource)
            settings, _ = apply_resource_properties(kind, row.settings, properties, creating=False)
            resource_store.update_resource(
                connection,
                kind,
                row.resource,
                **resource_settings_columns(settings),
            )
            updated = resource_store.get_resource(connection, kind, row.resource)
        assert updated is not None
        return self.resource_info(updated)

    def destroy(self, user: str, kind: str, resource: str) -> None:
        check_type(kind)
        with self._engine.begin() as connection:
            # Its row held: a server starting with it (another node's, or a worker thread's)
            # waits, then finds it gone; or it holds it first and this destroy is busy.
            row = self.owned(connection, user, kind, resource, lock=True)
            name = row.resource
            if kind == "ip":
                holders = [h] if (h := resource_store.holder_of_address(connection, name)) else []
            else:
                holders = resource_store.users_of_network(connection, name)
            if holders:
                raise BusyError(
                    f"Resource {kind} {name} is in use by active server {', '.join(holders)}"
                )
            resource_store.delete_resource(connection, kind, name)
        log.info("event=resource_destroyed user=%s type=%s resource=%s", user, kind, name)

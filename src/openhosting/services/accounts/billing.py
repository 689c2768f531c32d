"""Billing: subscription limits, prepaid balances, and metering usage against them.

Limits are checked where a command would take more (drive bytes, servers, cpu and mem of
active servers, IPs, VLANs); a command past a limit, or one that would start spending with an
exhausted balance, is refused with 402 `billing` naming what is short. Usage is measured every
interval and charged at the configured hourly prices; running servers are never stopped for
billing: the operator and the customer settle that.
"""

import asyncio
import logging
import time
from collections.abc import Collection
from decimal import Decimal, DecimalException
from typing import Any

from sqlalchemy import Connection, Engine

from openhosting.config import BillingSettings
from openhosting.errors import BillingError, MissingError, UsageError
from openhosting.services.accounts.usage_days import DAY_SECONDS, usage_per_day
from openhosting.store import billing as billing_store
from openhosting.store import drives as drive_store
from openhosting.store import row_locks
from openhosting.store.billing import Usage
from openhosting.store.records import UsageRecord, UserRecord

log = logging.getLogger("openhosting.billing")

MICROS = 1_000_000  # balances are kept in millionths of the currency
GB = 1 << 30


# The largest balance either way, and so the largest credit: a trillion of the currency, far
# inside the 64-bit column (9.2e18 millionths), so a balance plus any credit is still a number
# the store holds (past it SQLite refused the write with a traceback, PostgreSQL's bigint too).
MAX_BALANCE_MICROS = 10**18


def to_micros(amount: str) -> int:
    """`"12.5"` (currency) → 12500000 millionths; `UsageError` for anything that is not an
    amount a balance can hold (not a number, NaN, infinite, finer than a millionth, or beyond
    `MAX_BALANCE_MICROS`)."""
    try:
        micros = Decimal(amount) * MICROS
    except (DecimalException, ValueError):
        micros = Decimal("NaN")
    if not micros.is_finite():
        raise UsageError(f"Invalid amount {amount!r}: expected a number like 10.50")
    if micros != micros.to_integral_value():
        raise UsageError(f"Invalid amount {amount!r}: at most 6 decimal places (a millionth)")
    if abs(micros) > MAX_BALANCE_MICROS:
        raise UsageError(
            f"Invalid amount {amount!r}: at most {format_micros(MAX_BALANCE_MICROS)} either way"
        )
    return int(micros)


def format_micros(micros: int) -> str:
    """12500000 → `"12.500000"`."""
    return f"{Decimal(micros) / MICROS:.6f}"


class Billing:
    """Limits, balances and metering."""

    def __init__(self, engine: Engine, settings: BillingSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._prices = {
            name: Decimal(getattr(settings, name))
            for name in ("drive_gb_hour", "cpu_ghz_hour", "mem_gb_hour", "ip_hour", "vlan_hour")
        }

    # -- checks, called by the services that would take more ---------------------------

    def _account(self, connection: Connection, user: str, lock: bool = False) -> UserRecord:
        """The account of `user`; with `lock`, its row held until the transaction ends: a
        check and the write it allows are then safe from another node's (store/row_locks.py)."""
        if lock:
            row_locks.lock_user(connection, user)
        account = billing_store.account_of(connection, user)
        if account is None:
            raise MissingError(f"User {user} could not be found")
        return account

    def _require_balance(self, account: UserRecord) -> None:
        if self._settings.enabled and account.balance <= 0:
            raise BillingError(
                f"Balance exhausted ({format_micros(account.balance)}): add credit first"
            )

    def check_drive_bytes(
        self,
        connection: Connection,
        user: str,
        extra: int,
        tier: str,
        excluding: str | None = None,
    ) -> None:
        """Taking `extra` drive bytes in `tier` (in place of drive `excluding`'s): within the
        account's limit on all its drives and within its limit on that tier, if any."""
        account = self._account(connection, user, lock=True)
        limit = account.max_drive_bytes
        if limit is not None:
            used = drive_store.total_size_of(connection, user, excluding)
            if used + extra > limit:
                raise BillingError(
                    f"Drive bytes limit exceeded: {used} in use, {extra} asked, limit {limit}"
                )
        tier_limit = account.max_drive_bytes_by_tier.get(tier)
        if tier_limit is not None:
            used = drive_store.total_size_of(connection, user, excluding, tier=tier)
            if used + extra > tier_limit:
                raise BillingError(
                    f"Drive bytes limit of tier {tier} exceeded: {used} in use, {extra} asked,"
                    f" limit {tier_limit}"
                )
        self._require_balance(account)

    def check_new_server(self, connection: Connection, user: str) -> None:
        account = self._account(connection, user, lock=True)
        limit = account.max_servers
        if limit is not None:
            servers = billing_store.current_usage(connection, user).servers
            if servers + 1 > limit:
                raise BillingError(f"Servers limit reached: {servers} of {limit}")
        self._require_balance(account)

    def check_server_start(
        self,
        connection: Connection,
        user: str,
        server: str,
        cpu: int,
        mem: int,
        starting: Collection[str] = (),
    ) -> None:
        """402 unless the account's cpu and mem limits hold `server` besides its active
        servers and those of `starting` (passed their check, their VMs not yet running)."""
        account = self._account(connection, user, lock=True)
        usage = billing_store.current_usage(
            connection, user, excluding_server=server, starting=starting
        )
        for what, used, asked, limit in (
            ("cpu", usage.cpu_mhz, cpu, account.max_cpu_mhz),
            ("mem", usage.mem_mb, mem, account.max_mem_mb),
        ):
            if limit is not None and used + asked > limit:
                unit = "MHz" if what == "cpu" else "MB"
                raise BillingError(
                    f"{what} limit of active servers exceeded: {used} {unit} in use,"
                    f" {asked} {unit} asked, limit {limit} {unit}"
                )
        self._require_balance(account)

    def check_new_resource(self, connection: Connection, user: str) -> None:
        self._require_balance(self._account(connection, user, lock=True))

    # -- balances and metering ---------------------------------------------------------

    def credit(self, user: str, amount_micros: int) -> None:
        """Add `amount_micros` (negative: take) to the balance of `user`; `UsageError`, and
        nothing changed, when the balance would pass `MAX_BALANCE_MICROS` either way."""
        with self._engine.begin() as connection:
            balance = self._account(connection, user, lock=True).balance + amount_micros
            if abs(balance) > MAX_BALANCE_MICROS:
                raise UsageError(
                    f"A credit of {format_micros(amount_micros)} would take the balance of"
                    f" user {user} to {format_micros(balance)}: at most"
                    f" {format_micros(MAX_BALANCE_MICROS)} either way"
                )
            if not billing_store.credit(connection, user, amount_micros):
                raise MissingError(f"User {user} could not be found")
        log.info("event=credit user=%s amount=%s", user, format_micros(amount_micros))

    def cost(self, usage: Usage, seconds: float) -> int:
        """The charge, in millionths, for holding `usage` for `seconds`."""
        hours = Decimal(seconds) / 3600
        per_hour = (
            Decimal(usage.drive_bytes) / GB * self._prices["drive_gb_hour"]
            + Decimal(usage.cpu_mhz) / 1000 * self._prices["cpu_ghz_hour"]
            + Decimal(usage.mem_mb) / 1024 * self._prices["mem_gb_hour"]
            + usage.ips * self._prices["ip_hour"]
            + usage.vlans * self._prices["vlan_hour"]
        )
        return int(per_hour * hours * MICROS)

    def meter(self, now: float | None = None) -> None:
        """Charge every account for what it held since it was last metered."""
        now = time.time() if now is None else now
        with self._engine.begin() as connection:
            # Every API node meters: the rows held, a node that meters after another sees
            # its `metered_at` and charges only what came since (never the same hour twice).
            for account in billing_store.all_accounts(connection, lock=True):
                start = account.metered_at
                if start is None or now <= start:
                    billing_store.charge(connection, account.uuid, 0, now)
                    continue
                usage = billing_store.current_usage(connection, account.uuid)
                amount = self.cost(usage, now - start)
                billing_store.charge(connection, account.uuid, amount, now)
                billing_store.record_usage(
                    connection,
                    user=account.uuid,
                    start=start,
                    end=now,
                    charge=amount,
                    **billing_store.usage_columns(usage),
                )

    async def run(self) -> None:
        """Meter every interval until cancelled (the daemon's lifetime)."""
        while True:
            try:
                await asyncio.to_thread(self.meter)
            except Exception:
                log.exception("event=metering_failed")
            await asyncio.sleep(self._settings.interval)

    def account_info(self, user: str) -> dict[str, str | int]:
        """What `GET /account/info` shows: balance, limits, and what is in use now."""
        with self._engine.connect() as connection:
            account = self._account(connection, user)
            usage = billing_store.current_usage(connection, user)
        info: dict[str, str | int] = {
            "user": user,
            "name": account.name,
            "balance": format_micros(account.balance),
        }
        for key, limit in account.limits().items():
            if limit is not None:
                info[f"limit:{key}"] = limit
        for tier, limit in sorted(account.max_drive_bytes_by_tier.items()):
            info[f"limit:drive:bytes:{tier}"] = limit
            with self._engine.connect() as connection:
                info[f"usage:drive:bytes:{tier}"] = drive_store.total_size_of(
                    connection, user, tier=tier
                )
        info.update({
            "usage:drive:bytes": usage.drive_bytes, "usage:servers": usage.servers,
            "usage:cpu": usage.cpu_mhz, "usage:mem": usage.mem_mb, "usage:ips": usage.ips,
            "usage:vlans": usage.vlans,
        })  # fmt: skip
        return info

    def usage_days(self, user: str, days: int, now: float | None = None) -> list[dict[str, Any]]:
        """The account's metered usage per day (UTC) over the last `days` days, today
        included: see services/accounts/usage_days.py. The charge is formatted like a balance."""
        now = time.time() if now is None else now
        since = (now // DAY_SECONDS - days + 1) * DAY_SECONDS
        with self._engine.connect() as connection:
            records = billing_store.usage_since(connection, user, since)
        return [
            {**day, "charge": format_micros(day["charge"])} for day in usage_per_day(records, since)
        ]

    def usage_history(self, user: str, limit: int = 100) -> list[UsageRecord]:
        with self._engine.connect() as connection:
            return billing_store.usage_of(connection, user, limit)

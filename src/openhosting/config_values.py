"""What each setting's value may be, beyond its type: the words a setting chooses among, the
least a number may be, the prices that must be decimals. A value out of its bounds is named at
the start, in the words of the file (`Invalid hypervisor.accelerator 'kvvm': ...`), rather
than taken silently (a `log_level` of `verbose` logged at info) or met later as a traceback
(an accelerator at the first VM's start, a price at the first billing run)."""

from collections.abc import Iterator
from decimal import Decimal, InvalidOperation

# Settings that name one of a few words; `log_level` in any case, as logging takes it.
CHOICES: dict[str, tuple[str, ...]] = {
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("text", "json"),
    "hypervisor.driver": ("qemu", "fake"),
    "hypervisor.accelerator": ("kvm", "tcg", "auto"),
    "network.mode": ("user", "bridge"),
    "storage.default_cipher": ("aes-xts-plain", "none"),
}
CASE_FREE = frozenset({"log_level"})
# The least value of a number whose 0 means nothing useful (a timeout, an interval, a size);
# every other number may be 0 (its comment says what 0 does) but never negative.
MINIMUMS: dict[str, int] = {
    "api.max_body_bytes": 1,
    "api.idle_timeout": 1,
    "api.auth_failure_window": 1,
    "api.console_token_seconds": 1,
    "api.session_seconds": 1,
    "api.max_sessions_per_user": 1,
    "storage.imaging_concurrency": 1,
    "storage.imaging_lease_seconds": 1,
    "storage.orphan_check_seconds": 1,
    "hypervisor.core_mhz": 1,
    "hypervisor.start_timeout": 1,
    "hypervisor.stop_timeout": 1,
    "hypervisor.serial_log_kib": 1,
    "hypervisor.serial_log_files": 1,
    "host.heartbeat_seconds": 1,
    "host.offline_seconds": 1,
    "host.operation_lease_seconds": 1,
    # dnsmasq's least lease.
    "network.lease_seconds": 120,
    "network.vxlan_port": 1,
    "billing.interval": 1,
}
MAXIMUMS: dict[str, int] = {"network.vxlan_port": 65535}
# Prices, kept as text so that they are exact decimals.
DECIMALS = frozenset(
    f"billing.{name}"
    for name in ("drive_gb_hour", "cpu_ghz_hour", "mem_gb_hour", "ip_hour", "vlan_hour")
)


def value_problems(settings: dict[str, object]) -> Iterator[str]:
    """What is wrong with each of `settings` (`section.name` -> value, as the file names
    them), one sentence each."""
    for name, value in settings.items():
        if (choices := CHOICES.get(name)) is not None and isinstance(value, str):
            word = value.lower() if name in CASE_FREE else value
            if word not in choices:
                yield f"Invalid {name} {value!r}: use {', '.join(choices)}"
        elif isinstance(value, int) and not isinstance(value, bool):
            least, most = MINIMUMS.get(name, 0), MAXIMUMS.get(name)
            if value < least or (most is not None and value > most):
                bounds = f"from {least} to {most}" if most is not None else f"at least {least}"
                yield f"Invalid {name} {value}: {bounds}"
        elif name in DECIMALS and isinstance(value, str):
            try:
                price = Decimal(value)
            except InvalidOperation:
                price = Decimal(-1)
            if not price.is_finite() or price < 0:
                yield f"Invalid {name} {value!r}: a price, a decimal number such as 0.01"

"""The address pool: what belongs to it, and which free address is handed out."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openhosting.network.pool import AddressPool, PoolError


def pool(span: str = "192.0.2.10-192.0.2.20") -> AddressPool:
    return AddressPool.parse("192.0.2.0/24", "192.0.2.1", "192.0.2.1, 198.51.100.53", span)


def test_a_pool_reads_its_configuration_text() -> None:
    parsed = pool()
    assert parsed.netmask == "255.255.255.0"
    assert str(parsed.gateway) == "192.0.2.1"
    assert [str(ns) for ns in parsed.nameservers] == ["192.0.2.1", "198.51.100.53"]
    assert parsed.size == 11
    assert "192.0.2.10" in parsed and "192.0.2.20" in parsed
    assert "192.0.2.9" not in parsed and "192.0.2.21" not in parsed
    assert "not an address" not in parsed


@pytest.mark.parametrize(
    ("subnet", "gateway", "span", "message"),
    [
        ("192.0.2.0/24", "198.51.100.1", "192.0.2.10-192.0.2.20", "gateway"),
        ("192.0.2.0/24", "192.0.2.1", "192.0.2.10-198.51.100.20", "not inside"),
        ("192.0.2.0/24", "192.0.2.1", "192.0.2.20-192.0.2.10", "empty"),
        ("192.0.2.0/24", "192.0.2.1", "192.0.2.0-192.0.2.20", "leave out"),
        ("192.0.2.0/24", "192.0.2.1", "192.0.2.1-192.0.2.20", "leave out"),
        ("192.0.2.0/24", "192.0.2.1", "192.0.2.10-192.0.2.255", "leave out"),
        ("192.0.2.0/24", "192.0.2.1", "192.0.2.10", "FIRST-LAST"),
        ("192.0.2.1/24", "192.0.2.1", "192.0.2.10-192.0.2.20", "invalid address pool"),
        ("192.0.2.0/24", "gateway", "192.0.2.10-192.0.2.20", "invalid address pool"),
    ],
)
def test_inconsistent_pools_are_refused(subnet: str, gateway: str, span: str, message: str) -> None:
    with pytest.raises(PoolError, match=message):
        AddressPool.parse(subnet, gateway, "", span)


def test_the_lowest_free_address_is_chosen_and_none_when_all_are_taken() -> None:
    parsed = pool("192.0.2.10-192.0.2.12")
    assert parsed.choose_free([]) == "192.0.2.10"
    assert parsed.choose_free(["192.0.2.10", "192.0.2.99"]) == "192.0.2.11"
    assert parsed.choose_free(["192.0.2.10", "192.0.2.11"]) == "192.0.2.12"
    assert parsed.choose_free(["192.0.2.10", "192.0.2.11", "192.0.2.12"]) is None


@given(st.sets(st.integers(min_value=10, max_value=20)))
def test_a_chosen_address_is_in_the_range_and_not_taken(taken_hosts: set[int]) -> None:
    parsed = pool()
    taken = {f"192.0.2.{host}" for host in taken_hosts}
    chosen = parsed.choose_free(taken)
    if len(taken) == parsed.size:
        assert chosen is None
    else:
        assert chosen is not None and chosen in parsed and chosen not in taken

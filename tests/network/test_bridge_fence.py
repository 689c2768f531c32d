"""The bridge-mode guest fence's nftables rules (pure parts)."""

from openhosting.network.bridge_fence import GUEST_MARK, fence_ruleset, table_name


def test_each_public_bridge_has_its_own_fence_tables() -> None:
    assert table_name("oh-public") == "openhosting_fence_oh_public"
    assert table_name("oh-pub0") != table_name("oh-pub1")


def test_frames_from_taps_are_marked_and_get_only_dhcp_vnc_and_ping_of_the_host() -> None:
    rules = fence_ruleset("openhosting_fence_oh_public", "oh-t", "oh-v")
    mark = f"{GUEST_MARK:#x}"
    # The bridge family knows the port a frame came in by: only our taps are guests.
    assert f'iifname "oh-t*" meta mark set meta mark | {mark}' in rules
    # The inet input hook sees only what is addressed to the host itself.
    assert "type filter hook input priority 0; policy accept;" in rules
    lines = [line.strip() for line in rules.splitlines()]
    start = lines.index(f"meta mark & {mark} != {mark} accept")
    assert lines[start : start + 7] == [
        f"meta mark & {mark} != {mark} accept",  # the uplink and the host: untouched
        "ct state established,related accept",
        "udp dport 67 accept",  # DHCP
        "tcp dport 5900-6899 accept",  # every VNC display
        "icmp type echo-request accept",
        # Ping and neighbour discovery; no router advertisement nor redirect (the host took
        # a default route from a guest's).
        "icmpv6 type { echo-request, nd-neighbor-solicit, nd-neighbor-advert } accept",
        "reject",
    ]
    # Loaded again, it replaces both tables.
    assert "delete table bridge openhosting_fence_oh_public" in rules
    assert "delete table inet openhosting_fence_oh_public" in rules


def test_nothing_that_comes_from_a_vlans_bridge_is_routed() -> None:
    rules = fence_ruleset("openhosting_fence_oh_public", "oh-t", "oh-v")
    lines = [line.strip() for line in rules.splitlines()]
    start = lines.index("chain forward {")
    assert lines[start : start + 3] == [
        "chain forward {",
        "type filter hook forward priority 0; policy accept;",
        # From a VLAN's bridge to another link: the host has no address on the VLAN.
        # (With br_netfilter, frames bridged within the VLAN come here too, from and to it.)
        'iifname "oh-v*" oifname != "oh-v*" drop',
    ]

"""The VNC overlay's nftables rules (pure parts): one pair of tables per public bridge."""

from openhosting.network.vnc_overlay import overlay_ruleset, table_name


def test_each_public_bridge_has_its_own_tables_with_names_nft_accepts() -> None:
    assert table_name("oh-pub0") == "openhosting_vnc_oh_pub0"
    assert table_name("br.1") == "openhosting_vnc_br_1"
    assert table_name("oh-pub0") != table_name("oh-pub1")


def test_the_ruleset_readdresses_port_5900_of_guests_to_the_bridge_then_to_their_target() -> None:
    rules = overlay_ruleset("openhosting_vnc_oh_pub0", "02:00:00:00:00:01")
    assert "table bridge openhosting_vnc_oh_pub0 {" in rules
    assert "table ip openhosting_vnc_oh_pub0 {" in rules
    # Frames for a listed guest's port 5900 go up to the host's stack, as the bridge's own ...
    assert (
        "ip daddr @guests tcp dport 5900 ether daddr set 02:00:00:00:00:01 meta pkttype set host"
        in rules
    )
    # ... where NAT sends them to that guest's VNC server.
    assert "type nat hook prerouting" in rules
    assert "tcp dport 5900 dnat ip to ip daddr map @targets" in rules

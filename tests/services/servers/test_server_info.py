"""The info of a server: where its VNC listens is shown whenever it has VNC; its NICs' traffic."""

from openhosting.model.server import ServerConfig
from openhosting.network.links import Counters
from openhosting.services.servers.server_info import LiveFigures, server_info

SERVER = "11111111-1111-4111-8111-111111111111"
USER = "22222222-2222-4222-8222-222222222222"


def config(**keys: str) -> ServerConfig:
    return ServerConfig.from_properties({"name": "s", "cpu": "1000", "mem": "256", **keys})


def live(vnc_address: str | None, vnc_port: int | None) -> LiveFigures:
    return LiveFigures(started=1, nic0_address=None, vnc_address=vnc_address, vnc_port=vnc_port)


def test_a_password_without_vnc_ip_still_shows_the_listening_address() -> None:
    info = server_info(
        SERVER, USER, "active", config(**{"vnc:password": "pw"}), live("127.0.0.1", 5901)
    )
    assert (info["vnc:ip"], info["vnc"], info["vnc:port"]) == ("127.0.0.1", "127.0.0.1", 5901)


def test_vnc_ip_auto_shows_the_listening_address_in_place() -> None:
    keys = {"vnc:ip": "auto", "vnc:password": "pw"}
    info = server_info(SERVER, USER, "active", config(**keys), live("192.0.2.10", 5900))
    assert (info["vnc:ip"], info["vnc"]) == ("192.0.2.10", "192.0.2.10")
    assert "vnc:port" not in info


def test_no_vnc_no_vnc_keys() -> None:
    info = server_info(SERVER, USER, "active", config(), live(None, None))
    assert "vnc:ip" not in info and "vnc" not in info
    stopped = server_info(SERVER, USER, "stopped", config(**{"vnc:password": "pw"}), None)
    assert "vnc:ip" not in stopped


def test_the_traffic_of_its_nics_is_rx_and_tx_in_bytes_and_packets() -> None:
    figures = LiveFigures(1, None, None, None, traffic=Counters(100, 2000, 3, 40))
    info = server_info(SERVER, USER, "active", config(), figures)
    assert [info[key] for key in ("rx", "tx", "rx:packets", "tx:packets")] == [100, 2000, 3, 40]
    idle = server_info(SERVER, USER, "active", config(), live(None, None))
    assert [idle[key] for key in ("rx", "tx", "rx:packets", "tx:packets")] == [0, 0, 0, 0]

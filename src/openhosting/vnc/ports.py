"""Where VNC displays are reached: the one place that knows VNC's port numbers.

Display N of a VNC server listens on port 5900 + N (QEMU's rule, and every viewer's); bridge
mode also shows a server's VNC on its own address at the base port itself.
"""

VNC_BASE_PORT = 5900
# The displays the console service hands out to servers: 0 … 999, ports 5900 … 6899 (the
# bridge fence lets guests reach that range on the host).
VNC_DISPLAYS = 1000


def vnc_port(display: int) -> int:
    """The TCP port of VNC display `display`."""
    return VNC_BASE_PORT + display

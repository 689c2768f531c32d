"""Servers: their commands, VMs, moves, network side, consoles and VNC."""

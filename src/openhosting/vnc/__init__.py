"""VNC, the protocol of the consoles: the TLS credentials QEMU's VNC servers use (tls.py) and
the daemon's own RFB handshakes (rfb.py). Not of the hypervisor: the hypervisor driver makes
QEMU serve VNC with them, the console service speaks it."""

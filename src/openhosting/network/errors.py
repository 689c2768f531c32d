"""The network driver's one error type.

A subclass of the API's `FailedError` (500 `failed`), as the hypervisor driver's is: when the
host cannot set up a bridge, tap or DHCP server, the request failed.
"""

from openhosting.errors import FailedError


class NetworkError(FailedError):
    """A namespace, bridge, tap or DHCP server could not be set up, read or torn down."""

"""The hypervisor driver's error type, and its case of a host that cannot be reached.

A subclass of the API's `FailedError` (500 `failed`): when QEMU cannot do what was asked, the
request failed, and services may catch it to undo or to explain better.
"""

from openhosting.errors import FailedError


class HypervisorError(FailedError):
    """QEMU could not be started, reached, commanded or stopped."""


class HostUnreachableError(HypervisorError):
    """Another host's agent cannot be reached or does not answer (docs/cluster.md): 503
    `failed`, naming the host; the command may succeed once the host is back."""

    status = 503

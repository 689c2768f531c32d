"""The hypervisor driver's one error type.

A subclass of the API's `FailedError` (500 `failed`): when QEMU cannot do what was asked, the
request failed, and services may catch it to undo or to explain better.
"""

from openhosting.errors import FailedError


class HypervisorError(FailedError):
    """QEMU could not be started, reached, commanded or stopped."""

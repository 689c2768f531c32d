"""What the client tools share besides HTTP: the client made from `OHURI` and `OHAUTH` (asking
for a missing secret without echo), argument types, and errors turned into messages and exit
codes.

The older `EHURI` / `EHAUTH` names of the ElasticHosts tools are read when the new ones are
not set, so existing scripts keep working.
"""

import argparse
import getpass
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping

from openhosting.client.http_client import (
    DEFAULT_TIMEOUT,
    ApiClient,
    Trace,
    basic_authorization,
    parse_endpoint,
)
from openhosting.errors import ApiError, UsageError
from openhosting.wire.sizes import parse_size

# Exit codes: 1 = the API or the connection failed, 2 = wrong usage, 130 = interrupted.
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def ask_secret(user: str) -> str:
    """Ask the terminal for the secret API key of `user`, without echo."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        # getpass would fall back to standard input, which may be the request body.
        raise UsageError(
            "OHAUTH has no secret API key and there is no terminal to ask for it:"
            " set OHAUTH=<user uuid>:<secret API key>"
        ) from None
    return getpass.getpass(f"Enter the secret API key for user {user}: ")


def client_from_environment(
    env: Mapping[str, str] | None = None,
    *,
    trace: Trace | None = None,
    ask: Callable[[str], str] = ask_secret,
) -> ApiClient:
    """The API client `OHURI` and `OHAUTH` describe."""
    env = os.environ if env is None else env
    uri = env.get("OHURI") or env.get("EHURI")
    if not uri:
        raise UsageError("Please set OHURI=<API endpoint URI>")
    auth = env.get("OHAUTH") or env.get("EHAUTH")
    if not auth:
        raise UsageError("Please set OHAUTH=<user uuid>:<secret API key>")
    endpoint = parse_endpoint(uri)
    user, _, secret = auth.partition(":")
    if not user:
        raise UsageError("Invalid OHAUTH: expected <user uuid>:<secret API key>")
    timeout = timeout_from(env)
    if not secret:
        secret = ask(user)
    return ApiClient(endpoint, basic_authorization(user, secret), timeout=timeout, trace=trace)


# The longest `OH_TIMEOUT`: longer than any wait needs, and a socket's timeout must fit the
# system's time limits (1e309 seconds was an OverflowError from deep in the socket module).
MAX_TIMEOUT = 86400.0


def timeout_from(env: Mapping[str, str]) -> float:
    """The seconds `OH_TIMEOUT` gives each network wait (`DEFAULT_TIMEOUT` when unset).

    0 would make the sockets non-blocking ("Operation now in progress"), a negative or
    non-number value a traceback: each is a usage error naming the variable.
    """
    text = env.get("OH_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN too
        raise UsageError(
            f"Invalid OH_TIMEOUT {text!r}: expected seconds above 0, at most {MAX_TIMEOUT:.0f}"
            f" (default {DEFAULT_TIMEOUT:.0f})"
        )
    return seconds


def size_argument(text: str) -> int:
    """An argparse type: a byte count with an optional k/M/G/T suffix."""
    try:
        return parse_size(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(error.message) from None


def positive_size_argument(text: str) -> int:
    """An argparse type: a byte count above zero."""
    value = size_argument(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above zero")
    return value


def positive_int_argument(text: str) -> int:
    """An argparse type: a whole number above zero."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above zero")
    return int(text)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM interrupt like Ctrl-C, so the tools can say how to resume."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def run_tool(body: Callable[[], int]) -> int:
    """Run a tool's body: errors become one message on standard error and an exit code."""
    try:
        return body()
    except ApiError as error:
        print(error.message, file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output stopped reading (`| head`): nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED

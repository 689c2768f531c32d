"""`openhosting [-c | -f FILE] [-j] [-v] CMD [ARG]...`: one API call from the command line.

The arguments joined with `/` are the path under `OHURI` (`openhosting drives list` is
`POST ${OHURI}drives/list`); every call is a POST, as the original tool made. `-c` sends
standard input as the body and `-f FILE` a file, streamed (a pipe is spooled to a temporary
file first, since drive writes need the length up front); `-j` asks for and sends JSON; `-v`
shows the request and response headers on standard error. The answer's body is printed as it
arrives; an HTTP error prints its text on standard error and exits with status 1. `-h` or
`--help` prints the usage on standard output.
"""

import contextlib
import getopt
import os
import shutil
import sys
import tempfile
from typing import BinaryIO

from openhosting.client.http_client import SEND_BLOCK, api_path
from openhosting.client.tool import EXIT_FAILED, EXIT_USAGE, client_from_environment, run_tool

USAGE = """\
Usage: openhosting [ -c | -f FILENAME ] [ -j ] [ -v ] CMD [ARG]...
Options:
  -c            read input data for API call from stdin
  -f FILENAME   read input data for API call from FILENAME
  -j            input and output are in JSON format
  -v            show full headers sent and received during API call
Environment:
  OHURI         the API endpoint, e.g. http://127.0.0.1:8080/
  OHAUTH        <user uuid>:<secret API key> (without the secret, it is asked for)
"""

OUTPUT_BLOCK = 64 * 1024


def open_body(file: BinaryIO) -> tuple[BinaryIO, int]:
    """A body ready to stream and its length, from the current position of `file`.

    A regular file or a block device is sent as it is; anything else (a pipe, a terminal) is
    first spooled to a temporary file, so that a large body is never held in memory.
    """
    try:
        position = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(position)
        return file, end - position
    except OSError:
        pass  # not seekable
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (returned open, closed by the caller)
    shutil.copyfileobj(file, spool, SEND_BLOCK)
    length = spool.tell()
    spool.seek(0)
    return spool, length


def _usage(message: str = "") -> int:
    if message:
        print(f"openhosting: {message}", file=sys.stderr)
    sys.stderr.write(USAGE)
    return EXIT_USAGE


def _open_body_file(path: str) -> BinaryIO | None:
    """The file `-f` names, opened; None (the reason said on standard error) if it cannot be.

    The original tool said `FILE not found`; a directory or an unreadable file gets its own
    reason rather than a traceback.
    """
    try:
        return open(path, "rb")  # closed by the caller
    except FileNotFoundError:
        print(f"{path} not found", file=sys.stderr)
    except OSError as error:
        print(f"{path}: {error.strerror}", file=sys.stderr)
    return None


def _trace(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def call(argv: list[str]) -> int:
    try:
        options, args = getopt.getopt(argv, "cf:jvh", ["help"])
    except getopt.GetoptError as error:
        return _usage(str(error))
    if any(option in ("-h", "--help") for option, _ in options):
        sys.stdout.write(USAGE)  # asked for: not an error
        return 0
    body_path: str | None = None
    use_stdin = as_json = verbose = False
    for option, value in options:
        if option == "-c":
            use_stdin = True
        elif option == "-f":
            body_path = value
        elif option == "-j":
            as_json = True
        elif option == "-v":
            verbose = True
    if not args:
        return _usage()
    if use_stdin and body_path is not None:
        return _usage("-c and -f cannot be used together")
    with contextlib.ExitStack() as cleanup:
        source: BinaryIO | None = sys.stdin.buffer if use_stdin else None
        if body_path is not None:
            if (source := _open_body_file(body_path)) is None:
                return EXIT_FAILED
            cleanup.enter_context(source)
        client = client_from_environment(trace=_trace if verbose else None)
        cleanup.callback(client.close)
        headers = {"Accept": "application/json"} if as_json else {}
        body: BinaryIO | None = None
        length = 0
        if source is not None:
            body, length = open_body(source)
            if body is not source:
                cleanup.enter_context(body)
            headers["Content-Type"] = "application/json" if as_json else "application/octet-stream"
        response = client.request("POST", api_path(*args), body, length=length, headers=headers)
        output = sys.stdout.buffer
        for block in client.stream(response, OUTPUT_BLOCK):
            output.write(block)
            output.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(lambda: call(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())

"""The anchor of the API benchmark: a hello-world aiohttp handler on the daemon's server
set-up (same runner options and access logging), run as `python -m bench.hello_server PORT`."""

import asyncio
import logging
import signal
import sys

from aiohttp import web

from openhosting.api.access_log import RequestLogger
from openhosting.api.app import RUNNER_OPTIONS
from openhosting.logs import configure_logging


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(
        app, access_log_class=RequestLogger, handle_signals=False, **RUNNER_OPTIONS
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    configure_logging("warning")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(int(sys.argv[1])))

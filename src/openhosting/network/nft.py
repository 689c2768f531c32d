"""`nft`, the nftables command: how the guest and bridge fences, the NIC firewall, the VNC
overlay and the NIC counters run it, on the host or in the platform's network namespace (with
`links.run_command`'s time limit), and delete what may already be gone."""

from collections.abc import Awaitable, Callable

from openhosting.network.errors import NetworkError
from openhosting.network.links import netns_exec_argv, run_command

NFT_BINARY = "nft"

# `nft` with its arguments and standard input, as a table's owner runs it.
Nft = Callable[..., Awaitable[str]]


async def run_nft(namespace: str, *args: str, stdin: str | None = None) -> str:
    """`nft ARGS` (fed `stdin`) in `namespace` (empty: the host's): its output, or
    NetworkError with its message."""
    return await run_command(netns_exec_argv(namespace, [NFT_BINARY, *args]), stdin=stdin)


async def delete_if_present(nft: Nft, *args: str) -> None:
    """`nft delete ARGS` through `nft`: what is already gone is no error, so that taking
    things down is idempotent."""
    try:
        await nft("delete", *args)
    except NetworkError as error:
        if "No such file" not in str(error):
            raise

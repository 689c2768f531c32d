"""`python -m bench [NAME ...]`: run the named benchmarks (all by default), one ratio each."""

import argparse
import importlib
import sys

# Name → module with a `run()` that prints its figures and returns its main ratio.
BENCHMARKS = {
    "api": "bench.api_rps",
    "tools": "bench.client_tools",
    "drive-write": "bench.drive_write",
    "drive-upload": "bench.drive_upload",
    "drive-read": "bench.drive_read",
    "drive-read-encrypted": "bench.drive_read_encrypted",
    "drive-hash": "bench.drive_hash",
    "cluster-drive-io": "bench.cluster_drive_io",
    "imaging": "bench.imaging",
    "boot": "bench.server_boot",
    "console": "bench.console",
    "events": "bench.events",
    "suspend": "bench.suspend_resume",
    "scale": "bench.scale",
    "vm-scale": "bench.vm_scale",
    "capacity": "bench.capacity",
    "cluster": "bench.cluster",
    "migration": "bench.migration",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="NAME",
                        help=f"one of: {', '.join(BENCHMARKS)}")  # fmt: skip
    args = parser.parse_args()
    for name in args.names or list(BENCHMARKS):
        importlib.import_module(BENCHMARKS[name]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

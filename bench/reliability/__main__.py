"""`python -m bench.reliability [CAMPAIGN ...] [--seed N]` (`make reliability`): run the
campaigns (all by default) against real daemons, each bounded in time, and print one table.
The seed is printed; the same seed replays the same choices (the timing of a machine never
replays exactly, so a failing seed is a strong hint, not a proof)."""

import argparse
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.harness import work_directory
from bench.reliability.table import CampaignResult, render_table

CAMPAIGNS = ("crash", "network", "isolation", "load", "input", "storage", "eio")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__)
    parser.add_argument("campaigns", nargs="*", metavar="CAMPAIGN",
                        help=f"one of: {', '.join(CAMPAIGNS)} (default: all)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--crash-seconds", type=float, default=120)
    parser.add_argument("--network-seconds", type=float, default=45)
    parser.add_argument("--isolation-seconds", type=float, default=60)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--load-clients", type=int, default=32)
    parser.add_argument("--load-drives", type=int, default=1000)
    parser.add_argument("--load-servers", type=int, default=100)
    parser.add_argument("--input-examples", type=int, default=10000)
    parser.add_argument("--input-seconds", type=float, default=180)
    parser.add_argument("--storage-rounds", type=int, default=3)
    parser.add_argument("--eio-rounds", type=int, default=3)
    args = parser.parse_args()
    unknown = set(args.campaigns) - set(CAMPAIGNS)
    if unknown:
        parser.error(f"unknown campaign(s): {', '.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"reliability seed {seed} (replay: make reliability ARGS='--seed {seed}')", flush=True)

    def crash(work_dir: Path) -> CampaignResult:
        from bench.reliability import crash

        return crash.run(work_dir, seed, args.crash_seconds)

    def network(work_dir: Path) -> CampaignResult:
        from bench.reliability import network

        return network.run(work_dir, seed, args.network_seconds)

    def isolation(work_dir: Path) -> CampaignResult:
        from bench.reliability import isolation

        return isolation.run(work_dir, seed, args.isolation_seconds)

    def load(work_dir: Path) -> CampaignResult:
        from bench.reliability import load

        return load.run(work_dir, seed, args.load_seconds, args.load_clients,
                        args.load_drives, args.load_servers)  # fmt: skip

    def bad_input(work_dir: Path) -> CampaignResult:
        from bench.reliability import bad_input

        return bad_input.run(work_dir, seed, args.input_examples, args.input_seconds)

    def storage(work_dir: Path) -> CampaignResult:
        from bench.reliability import storage

        return storage.run(work_dir, seed, args.storage_rounds)

    def eio(work_dir: Path) -> CampaignResult:
        from bench.reliability import eio

        return eio.run(work_dir, seed, args.eio_rounds)

    runners: dict[str, Callable[[Path], CampaignResult]] = {
        "crash": crash, "network": network, "isolation": isolation, "load": load,
        "input": bad_input, "storage": storage, "eio": eio,
    }  # fmt: skip
    results = []
    for name in args.campaigns or CAMPAIGNS:
        started = time.monotonic()
        print(f"campaign {name} ...", flush=True)
        with work_directory(f"reliability-{name}") as work_dir:
            try:
                result = runners[name](work_dir)
            except Exception as error:  # a campaign that breaks is a finding, not the end
                result = CampaignResult(name, violations=[f"the campaign failed: {error!r}"])
                traceback.print_exc()
                print_log_tails(work_dir)
        result.notes.append(f"{time.monotonic() - started:.0f} s")
        results.append(result)
    print(render_table(results), flush=True)
    return 1 if any(result.violations for result in results) else 0


# Lines of each daemon log a failed campaign leaves, printed before its directory goes: the
# daemon's side of the failure (a refused connection says only that it was not listening).
LOG_TAIL_LINES = 40


def print_log_tails(work_dir: Path) -> None:
    for log in sorted(work_dir.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        print(f"--- the last {len(lines)} lines of {log.relative_to(work_dir)}:", flush=True)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())

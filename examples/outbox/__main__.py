"""Orders through the outbox, the relay, Redis and the billing service, all on this machine.

It starts a redis-server of its own on a free port of 127.0.0.1 (or uses the Redis at REDIS_URL
when that is set), starts the relay and the billing service as processes of their own, places
orders, shows how many are placed, relayed and billed, and ends with the counts and the latency
from an order's commit to its billing: median and p99.

The data folder keeps the databases, Redis's data and the services' logs between runs. Ctrl-C
stops every process, at any moment, and the same command goes on from there: it places only the
orders still missing up to --orders, then waits until every order placed is billed. Nothing
placed is lost, nothing is billed twice. Delete the folder to start over.
"""

import argparse
import os
import sys
from pathlib import Path

from examples.outbox import end_to_end


def main(argv: list[str]) -> int:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    parser = argparse.ArgumentParser(
        prog="python -m examples.outbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=200,
        metavar="N",
        help="how many orders the folder holds at the end (default 200)",
    )
    parser.add_argument(
        "--rate", type=float, metavar="R", help="orders a second (default: as fast as they go)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=cache / "mediator-outbox",
        metavar="DIR",
        help="the data folder, kept between runs (default %(default)s)",
    )
    arguments = parser.parse_args(argv)
    if arguments.rate is not None and arguments.rate <= 0:
        parser.error("--rate must be above 0; without it, orders go as fast as they can")

    def summary(figures: end_to_end.Figures) -> None:
        counts = figures.counts
        twice = counts.charges - counts.billed
        print(
            f"{counts.placed} orders placed ({figures.placed} by this run), "
            f"{counts.relayed} relayed, {counts.billed} billed, {twice or 'none'} twice"
        )
        if figures.placed:
            print(
                f"from commit to billing: median {figures.median:.1f} ms, p99 {figures.p99:.1f} ms,"
                f" over the {figures.placed} orders of this run"
            )
        print(f"databases, Redis's data and the services' logs in {arguments.data}")

    return end_to_end.main(
        arguments.data,
        count=arguments.orders,
        rate=arguments.rate,
        redis_url=os.environ.get("REDIS_URL"),
        report=summary,
        then="the same command goes on from here",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

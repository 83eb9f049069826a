"""Orders through the outbox, the relay, a real Redis and the billing service, end to end.

    python benchmarks/bench_outbox.py                # 10,000 orders, as fast as they go
    python benchmarks/bench_outbox.py --rate 400     # 10,000 orders, 400 a second
    python benchmarks/bench_outbox.py --orders 200   # a smoke run

Needs the examples' extra and redis-server. It runs what `python -m examples.outbox` runs, in a
folder of its own that it deletes at the end: its own redis-server on 127.0.0.1, the relay and
the billing service as processes of their own, as they would run in production, and this
process placing the orders, each in a transaction of its own, as fast as it can or at `--rate`
a second. It prints events per second, from the first order's commit to the last order
handled, and the latency from an order's commit to the end of its handler's transaction,
median and p99. At full speed orders are placed faster than they are billed, so the latency is
mostly the queue's; a rate below the throughput shows the latency of the path itself.
"""

import argparse
import sys
import tempfile
from pathlib import Path

# Run as a script from anywhere: the code under test is the repository's own.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--rate", type=float, help="orders a second; as fast as they go if unset")
    arguments = parser.parse_args(argv)
    if arguments.rate is not None and arguments.rate <= 0:
        parser.error("--rate must be above 0; without it, orders go as fast as they can")
    count: int = arguments.orders
    rate: float | None = arguments.rate
    try:
        # Imported here, not above: Ctrl-C while the libraries load is one line too.
        from examples.outbox import end_to_end
    except KeyboardInterrupt:
        print("interrupted before it began", file=sys.stderr)
        return 130

    def report(figures: end_to_end.Figures) -> None:
        pace = "as fast as they go" if rate is None else f"{rate:,.0f} a second"
        seconds, placing = figures.seconds, count / figures.placing_seconds
        print(f"mediator outbox benchmark, Python {sys.version.split()[0]}, orders placed {pace}")
        print(f"{count:,} orders placed, relayed through Redis and billed in {seconds:.1f} s")
        print(f"placing: {placing:,.0f} orders per second, each its own transaction")
        throughput = count / seconds
        print(f"throughput: {throughput:,.0f} events per second, from first commit to last handled")
        median, p99 = figures.median, figures.p99
        print(f"latency from commit to handled: median {median:.1f} ms, p99 {p99:.1f} ms")

    with tempfile.TemporaryDirectory() as folder:
        return end_to_end.main(
            Path(folder), count=count, rate=rate, redis_url=None, report=report, then="no figures"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The whole road on one machine: a redis-server, the relay and the billing service as processes
of their own, and orders placed through them, with their progress on the terminal.

`python -m examples.outbox` and `benchmarks/bench_outbox.py` run it. Its folder keeps the order
and billing databases, Redis's append-only file and the services' logs between runs, so a run
stopped at any moment goes on in the next: it places only the orders still missing, and waits
until every order placed, by it or before, is billed.
"""

import asyncio
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from examples.outbox import billing, orders
from examples.outbox.relay import STREAM
from examples.outbox.service import UNAVAILABLE, Interrupted, interruptible, redis_client
from examples.redis_server import MISSING, RedisServer

# Where `python -m examples.outbox.relay` finds the examples and the module: the repository.
ROOT = Path(__file__).resolve().parents[2]
ORDERS_DB, BILLING_DB = "orders.db", "billing.db"
# How long nothing may move before a run gives up, and says where to look.
STALLED_AFTER = 30.0


class Failed(RuntimeError):
    """The run cannot go on: Redis cannot be reached, a service stopped, or nothing moves."""


@dataclass(frozen=True)
class Counts:
    """How far a folder's orders got: placed, relayed to the stream, and billed."""

    placed: int
    relayed: int
    billed: int
    charges: int  # more than `billed` if an order was charged twice

    @classmethod
    def read(cls, folder: Path) -> "Counts":
        with closing(sqlite3.connect(folder / ORDERS_DB)) as orders_db:
            with closing(sqlite3.connect(folder / BILLING_DB)) as billing_db:
                return cls.count(orders_db, billing_db)

    @classmethod
    def count(cls, orders_db: sqlite3.Connection, billing_db: sqlite3.Connection) -> "Counts":
        placed, relayed = orders_db.execute(
            "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM outbox WHERE sent = 1)"
        ).fetchone()
        billed, charges = billing_db.execute(
            "SELECT COUNT(DISTINCT order_id), COUNT(*) FROM charges"
        ).fetchone()
        return cls(placed, relayed, billed, charges)


@dataclass(frozen=True)
class Figures:
    """What a run did: the counts at its end, and the orders it placed itself, timed."""

    counts: Counts
    placed: int  # by this run
    placing_seconds: float
    seconds: float  # from this run's first commit to the billing of its last order
    latencies: Sequence[float]  # ms from each order's commit to its billing, in order

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return self.latencies[min(len(self.latencies) - 1, round(len(self.latencies) * 0.99))]


def main(
    folder: Path,
    /,
    *,
    count: int,
    rate: float | None,
    redis_url: str | None,
    report: Callable[[Figures], None],
    then: str,
) -> int:
    """`run`, then `report` its figures; the exit status.

    Interrupted, or unable to go on, it says so in one line on stderr instead: interrupted, how
    far the orders got, and `then`, what the user may do next.
    """
    try:
        report(run(folder, count=count, rate=rate, redis_url=redis_url))
    except Interrupted as interrupted:
        # Every process has stopped, and further signals are ignored.
        counts = Counts.read(folder)
        progress = f"{counts.placed} of {count} orders placed, {counts.billed} billed"
        print(f"{interrupted}: {progress}, every process stopped; {then}", file=sys.stderr)
        return 128 + interrupted.signal
    except Failed as failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Before the run handled signals, or after it ended: none of its processes runs.
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def run(
    folder: Path, /, *, count: int, rate: float | None = None, redis_url: str | None = None
) -> Figures:
    """Bring `folder` up to `count` orders, and wait until every one of them is billed.

    It starts a redis-server of its own in the folder unless `redis_url` is given, then the
    relay and the billing service; it places the orders still missing, `rate` a second or as
    fast as they go; and it stops every process it started before it returns or raises. On
    SIGINT or SIGTERM it raises `Interrupted`, after that clean-up; `Failed` if it cannot go on.
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    orders.connect(str(folder / ORDERS_DB)).close()
    billing.connect(str(folder / BILLING_DB)).close()
    return asyncio.run(interruptible(lambda stop: _run(folder, count, rate, redis_url, stop)))


async def _run(
    folder: Path, count: int, rate: float | None, redis_url: str | None, stop: asyncio.Event
) -> Figures:
    # A signal cancels the task, and sets `stop`, which ends the loops below all the same if a
    # library swallowed the cancellation. The figures of a run so stopped go unused.
    async with AsyncExitStack() as stack:
        # Shown first, so that it counts last, once every process has stopped.
        display = stack.enter_context(_Display(folder, count))
        if redis_url is None:
            if shutil.which("redis-server") is None:
                raise Failed(f"{MISSING}; or set REDIS_URL to a Redis of yours")
            url = stack.enter_context(RedisServer(folder / "redis")).url
        else:
            await _check_answers(redis_url)
            url = redis_url
        _keep_one_redis(folder, redis_url or "a redis-server of its own")
        services = {
            name: await stack.enter_async_context(_service(folder, name, database, url))
            for name, database in [("relay", ORDERS_DB), ("billing", BILLING_DB)]
        }
        start = time.monotonic()
        placed = await _place(folder, count, rate, display, stop)
        placing_seconds = time.monotonic() - start
        await _until_billed(folder, display, services, stop)
    with closing(sqlite3.connect(folder / BILLING_DB)) as billing_db:
        rows = billing_db.execute("SELECT event_id, handled_at FROM handled")
        handled: dict[str, float] = dict(rows)
    billed = {event_id: handled[event_id] for event_id in placed if event_id in handled}
    latencies = sorted((at - placed[event_id]) * 1000 for event_id, at in billed.items())
    last = max(billed.values(), default=0.0)
    return Figures(
        counts=Counts.read(folder),
        placed=len(placed),
        placing_seconds=placing_seconds,
        seconds=last - min(placed.values(), default=last),
        latencies=latencies,
    )


async def _check_answers(redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        await client.exists(STREAM)  # any command tells whether it answers; this one is typed
    except UNAVAILABLE as error:
        raise Failed(f"no Redis answers at REDIS_URL={redis_url}: {error}") from None
    finally:
        await client.aclose()


def _keep_one_redis(folder: Path, redis: str) -> None:
    # The events relayed but not yet billed are in the stream of the Redis that the folder was
    # used with: another Redis would never bill them.
    marker = folder / "redis.txt"
    if marker.exists() and (used := marker.read_text()) != redis:
        raise Failed(f"{folder} has events in the stream of {used}: go on with that one")
    marker.write_text(redis)


@asynccontextmanager
async def _service(
    folder: Path, name: str, database: str, redis_url: str
) -> AsyncGenerator[asyncio.subprocess.Process, None]:
    """`python -m examples.outbox.NAME DATABASE REDIS_URL`, logging to NAME.log in the folder.

    It runs in a session of its own: Ctrl-C in the terminal reaches this process only, which
    stops the service with SIGTERM when the block ends, however it ends.
    """
    log = folder / f"{name}.log"
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"examples.outbox.{name}",
            str(folder / database),
            redis_url,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=output,
            start_new_session=True,
        )
    try:
        assert process.stdout is not None
        try:
            async with asyncio.timeout(60):
                said = await process.stdout.readline()
        except TimeoutError:
            raise Failed(f"the {name} did not start within 60 s; see {log}") from None
        if said != f"{name} ready\n".encode():
            raise Failed(f"the {name} stopped as it started; see {log}")
        yield process
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, and SIGKILL if it still runs 10 s later; it has ended when this returns."""
    if process.returncode is None:  # once it has ended, signalling it raises ProcessLookupError
        process.terminate()
    try:
        await _ended(process)
    except asyncio.CancelledError:
        # A signal during the clean-up cancelled the wait (a run is cancelled once, at most):
        # wait for the end all the same, then let the cancellation go on.
        await _ended(process)
        raise


async def _ended(process: asyncio.subprocess.Process) -> None:
    try:
        async with asyncio.timeout(10):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


class _Display:
    """Placed, relayed and billed, as bars on the terminal, counted in the databases."""

    def __init__(self, folder: Path, count: int) -> None:
        self._orders_db = sqlite3.connect(folder / ORDERS_DB)
        self._billing_db = sqlite3.connect(folder / BILLING_DB)
        self.counts = Counts.count(self._orders_db, self._billing_db)
        self._counted_at = time.monotonic()
        self._progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        total = max(count, self.counts.placed)
        names = ("placed", "relayed", "billed")
        self._bars = [self._progress.add_task(name, total=total) for name in names]
        self._show()

    def update(self, *, every: float = 0.0) -> Counts:
        """The counts, counted again if the last count is `every` seconds old, and shown."""
        if time.monotonic() - self._counted_at >= every:
            self.counts = Counts.count(self._orders_db, self._billing_db)
            self._counted_at = time.monotonic()
            self._show()
        return self.counts

    def _show(self) -> None:
        counts = self.counts
        for bar, done in zip(self._bars, (counts.placed, counts.relayed, counts.billed)):
            self._progress.update(bar, completed=done)

    def __enter__(self) -> "_Display":
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.counts = Counts.count(self._orders_db, self._billing_db)
        self._show()
        self._progress.stop()
        self._orders_db.close()
        self._billing_db.close()


async def _place(
    folder: Path, count: int, rate: float | None, display: _Display, stop: asyncio.Event
) -> dict[str, float]:
    """Place the orders missing up to `count`; when each was placed, by its event's id."""
    placed: dict[str, float] = {}
    with closing(orders.connect(str(folder / ORDERS_DB))) as connection:
        service = orders.OrderService(connection)
        [(first,)] = connection.execute("SELECT COUNT(*) FROM orders")
        start = time.monotonic()
        for number in range(first, count):
            if stop.is_set():
                break
            # A pause at every order, if only a zero one: a signal stops the run between two
            # orders or inside one, whose transaction then rolls back; and the display moves.
            pause = 0.0 if rate is None else start + (number - first) / rate - time.monotonic()
            await asyncio.sleep(max(0.0, pause))
            order = await service.place_order(f"customer {number}", 100 + number)
            placed[order.event_id] = order.placed_at
            display.update(every=0.1)
    return placed


async def _until_billed(
    folder: Path,
    display: _Display,
    services: dict[str, asyncio.subprocess.Process],
    stop: asyncio.Event,
) -> None:
    moved_at, seen = time.monotonic(), display.counts
    while (counts := display.update()).billed < counts.placed and not stop.is_set():
        for name, process in services.items():
            if process.returncode is not None:
                raise Failed(f"the {name} stopped (exit status {process.returncode}); see {folder}")
        if counts != seen:
            moved_at, seen = time.monotonic(), counts
        elif time.monotonic() - moved_at > STALLED_AFTER:
            raise Failed(f"nothing moved for {STALLED_AFTER:.0f} s; see the logs in {folder}")
        await asyncio.sleep(0.05)

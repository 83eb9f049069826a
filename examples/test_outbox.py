"""The outbox, the relay and the billing service against a real Redis, with their faults.

Each test places orders, breaks something at the worst moment, lets the services recover, then
counts: every order placed is billed exactly once, and nothing is lost.
"""

import asyncio
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.exceptions

from examples.outbox import billing, relay
from examples.outbox.events import OrderPlaced
from examples.outbox.orders import OrderService, connect
from examples.outbox.service import redis_client
from examples.redis_server import RedisServer
from mediator import EventRegistry, Mediator

ROOT = Path(__file__).resolve().parent.parent
_T = TypeVar("_T")

# A block of the examples' README that opens with this line quotes the code it names.
QUOTE = re.compile(r"^# From (examples/[\w/]+\.py)\n")


def run(main: Coroutine[Any, Any, _T], /) -> _T:
    """`asyncio.run(main)`, failing after two minutes rather than hanging."""

    async def bounded() -> _T:
        async with asyncio.timeout(120):
            return await main

    return asyncio.run(bounded())


async def place(orders_db: str, customers: list[str]) -> list[OrderPlaced]:
    with closing(connect(orders_db)) as connection:
        service = OrderService(connection)
        return [await service.place_order(name, 100 + i) for i, name in enumerate(customers)]


def billed(billing_db: str) -> Counter[int]:
    """How many times each order was charged."""
    with closing(sqlite3.connect(billing_db)) as connection:
        rows = connection.execute("SELECT order_id FROM charges").fetchall()
    return Counter(order_id for (order_id,) in rows)


class Stream:
    """What Redis holds: the stream's length, and the group's pending and unread entries."""

    def __init__(self, url: str) -> None:
        self._client = redis_client(url)

    async def length(self) -> int:
        return await self._client.xlen(relay.STREAM)

    async def settled(self) -> bool:
        """Whether the group read every entry and acknowledged every one it read."""
        groups: list[dict[str, int]] = await self._client.xinfo_groups(relay.STREAM)
        return groups[0]["pending"] == 0 and groups[0]["lag"] == 0

    async def parked(self) -> list[dict[bytes | str, bytes | str]]:
        entries = await self._client.xrange(billing.PARKED) or []
        return [fields for _, fields in entries if fields is not None]

    async def close(self) -> None:
        await self._client.aclose()


async def until(done: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(1500):
        try:
            if await done():
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError, ValueError):
            pass  # Redis restarting, or the group not made yet
        await asyncio.sleep(0.02)
    raise AssertionError(f"still waiting for {what}")


async def spawn(module: str, *arguments: str) -> asyncio.subprocess.Process:
    """A service in a process of its own, as in production, to be killed for real."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *arguments,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def said(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    if not line and process.stderr is not None:
        raise AssertionError((await process.stderr.read()).decode())
    return line.decode().strip()


async def serve(
    orders_db: str,
    billing_db: str,
    url: str,
    *,
    mediator: Mediator | None = None,
    retry_after_ms: int = 200,
) -> tuple[asyncio.Event, asyncio.Task[None], asyncio.Task[None]]:
    """The relay and a billing consumer, in this process, until the event returned is set."""
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(orders_db, url, stop=stop))
    consuming = asyncio.create_task(
        billing.run(
            billing_db,
            url,
            consumer="billing-2",
            stop=stop,
            mediator=mediator,
            retry_after_ms=retry_after_ms,
        )
    )
    return stop, relaying, consuming


def report(
    what: str,
    placed: list[OrderPlaced],
    charges: Counter[int],
    *,
    parked: list[OrderPlaced] | None = None,
    **counts: int,
) -> None:
    """Check that every order placed was billed exactly once, or parked; then say so."""
    parked = parked or []
    billable = {order.order_id for order in placed} - {order.order_id for order in parked}
    assert set(charges) == billable, "an order was lost, or a parked one billed"
    assert set(charges.values()) == {1}, f"an order was billed twice: {charges}"
    figures = "".join(f", {name.replace('_', ' ')} {count}" for name, count in counts.items())
    summary = f"{what}: placed {len(placed)}, billed {sum(charges.values())}"
    print(f"{summary}, parked {len(parked)}{figures}; each order billed exactly once, none lost")


def test_every_order_placed_is_billed_exactly_once(
    redis_server: RedisServer, databases: tuple[str, str]
) -> None:
    orders_db, billing_db = databases

    async def scenario() -> int:
        placed = await place(orders_db, [f"customer {i}" for i in range(50)])
        stream = Stream(redis_server.url)
        stop, *services = await serve(orders_db, billing_db, redis_server.url)
        await until(lambda: settled(stream, billing_db, 50), "every order billed")
        stop.set()
        await asyncio.gather(*services)
        length = await stream.length()
        await stream.close()
        report("no fault", placed, billed(billing_db), in_the_stream=length)
        return length

    assert run(scenario()) == 50


async def settled(stream: Stream, billing_db: str, count: int) -> bool:
    return sum(billed(billing_db).values()) >= count and await stream.settled()


def test_a_relay_killed_between_sending_and_marking_sent_sends_again_and_nobody_pays_twice(
    redis_server: RedisServer, databases: tuple[str, str]
) -> None:
    orders_db, billing_db = databases

    async def scenario() -> None:
        placed = await place(orders_db, [f"customer {i}" for i in range(30)])
        killed = await spawn("examples.outbox.relay", orders_db, redis_server.url, "--pause-after-send")
        assert await said(killed) == "relay ready"
        assert await said(killed) == "sent 30"
        killed.kill()  # SIGKILL: the rows are in the stream, and still unsent in the outbox
        await killed.wait()
        stream = Stream(redis_server.url)
        assert await stream.length() == 30
        with closing(connect(orders_db)) as orders:
            assert orders.execute("SELECT COUNT(*) FROM outbox WHERE sent = 0").fetchone() == (30,)
        stop, *services = await serve(orders_db, billing_db, redis_server.url)
        await until(lambda: settled(stream, billing_db, 30), "every order billed")
        stop.set()
        await asyncio.gather(*services)
        length = await stream.length()
        await stream.close()
        assert length == 60
        report(
            "relay killed between sending and marking sent",
            placed,
            billed(billing_db),
            in_the_stream=length,
            sent_twice=length - len(placed),
        )

    run(scenario())


def test_a_consumer_killed_between_handling_and_acknowledging_is_claimed_again_and_billed_once(
    redis_server: RedisServer, databases: tuple[str, str]
) -> None:
    orders_db, billing_db = databases

    async def scenario() -> None:
        placed = await place(orders_db, [f"customer {i}" for i in range(20)])
        stop = asyncio.Event()
        relaying = asyncio.create_task(relay.run(orders_db, redis_server.url, stop=stop))
        stream = Stream(redis_server.url)
        await until(lambda: has(stream, 20), "every order in the stream")
        killed = await spawn(
            "examples.outbox.billing",
            billing_db,
            redis_server.url,
            "--consumer",
            "billing-1",
            "--pause-before-ack",
        )
        assert await said(killed) == "billing ready"
        first = await said(killed)
        assert first == f"handled {placed[0].event_id}"
        killed.kill()  # SIGKILL: billed and committed, never acknowledged
        await killed.wait()
        assert billed(billing_db) == {placed[0].order_id: 1}
        client = redis_client(redis_server.url)
        pending: dict[str, int] = await client.xpending(relay.STREAM, billing.GROUP)
        await client.aclose()
        assert pending["pending"] == 20  # the dead consumer had read them all
        consuming = asyncio.create_task(
            billing.run(
                billing_db, redis_server.url, consumer="billing-2", stop=stop, retry_after_ms=100
            )
        )
        await until(lambda: settled(stream, billing_db, 20), "every order billed")
        stop.set()
        await asyncio.gather(relaying, consuming)
        await stream.close()
        report(
            "consumer killed between handling and acknowledging",
            placed,
            billed(billing_db),
            claimed_from_the_dead_consumer=pending["pending"],
        )

    run(scenario())


async def has(stream: Stream, count: int) -> bool:
    return await stream.length() >= count


def test_redis_killed_and_restarted_mid_stream_loses_nothing_with_persistence_on(
    redis_server: RedisServer, databases: tuple[str, str]
) -> None:
    orders_db, billing_db = databases

    async def scenario() -> None:
        stop, *services = await serve(orders_db, billing_db, redis_server.url)
        placed: list[OrderPlaced] = []
        billed_before_the_restart = 0
        for i in range(120):
            placed += await place(orders_db, [f"customer {i}"])
            await asyncio.sleep(0.002)  # the relay and the consumer keep up meanwhile
            if i == 60:
                billed_before_the_restart = sum(billed(billing_db).values())
                redis_server.kill()
                await asyncio.sleep(0.1)  # both services fail to reach it for a while
                redis_server.start()
        stream = Stream(redis_server.url)
        await until(lambda: settled(stream, billing_db, len(placed)), "every order billed")
        stop.set()
        await asyncio.gather(*services)
        length = await stream.length()
        await stream.close()
        assert 0 < billed_before_the_restart < len(placed)
        report(
            "Redis killed and restarted mid-stream",
            placed,
            billed(billing_db),
            billed_before_the_kill=billed_before_the_restart,
            in_the_stream=length,
        )

    run(scenario())


def test_a_failing_billing_handler_is_retried_then_parked_and_nothing_is_lost(
    redis_server: RedisServer, databases: tuple[str, str]
) -> None:
    orders_db, billing_db = databases
    tries: Counter[str] = Counter()

    class PaymentProvider:
        """Times out twice for the customer "flaky"; always refuses the customer "blocked"."""

        async def handle(self, event: OrderPlaced) -> None:
            tries[event.event_id] += 1
            if event.customer == "flaky" and tries[event.event_id] <= 2:
                raise TimeoutError("the payment provider timed out")
            if event.customer == "blocked":
                raise PermissionError("the card is blocked")

    registry = EventRegistry().merge(billing.registry).bind(OrderPlaced, [PaymentProvider])

    async def scenario() -> None:
        customers = ["ada"] * 10 + ["flaky"] * 2 + ["blocked"]
        placed = await place(orders_db, customers)
        stream = Stream(redis_server.url)
        stop, *services = await serve(
            orders_db, billing_db, redis_server.url, mediator=Mediator(registry), retry_after_ms=50
        )
        await until(lambda: settled(stream, billing_db, 12), "every order billed or parked")
        stop.set()
        await asyncio.gather(*services)
        parked = await stream.parked()
        await stream.close()
        [blocked] = [order for order in placed if order.customer == "blocked"]
        assert [entry[b"event_id"] for entry in parked] == [blocked.event_id.encode()]
        assert parked[0][b"tries"] == b"3"
        assert parked[0][b"error"] == b"PermissionError('the card is blocked')"
        charges = billed(billing_db)
        assert blocked.order_id not in charges
        assert [tries[order.event_id] for order in placed if order.customer == "flaky"] == [3, 3]
        report(
            "a billing handler failing",
            placed,
            charges,
            parked=[blocked],
            billed_on_the_third_try=2,
        )

    run(scenario())


@pytest.mark.parametrize("service", ["relay", "billing"])
def test_a_busy_service_stops_on_sigterm_with_one_line(
    service: str, redis_server: RedisServer, databases: tuple[str, str]
) -> None:
    """SIGTERM while it relays or bills a backlog, three times: each time it stops at once."""
    orders_db, billing_db = databases

    def done() -> int:
        if service == "relay":
            with closing(sqlite3.connect(orders_db)) as orders:
                [(sent,)] = orders.execute("SELECT COUNT(*) FROM outbox WHERE sent = 1")
            return int(sent)
        return sum(billed(billing_db).values())

    async def scenario() -> None:
        backlog(orders_db, 10_000)
        if service == "billing":  # the whole backlog in the stream first
            client = redis_client(redis_server.url)
            with closing(connect(orders_db)) as orders:
                while await relay.relay_batch(orders, client):
                    pass
            await client.aclose()
        database = orders_db if service == "relay" else billing_db
        for _ in range(3):
            before = done()
            process = await spawn(f"examples.outbox.{service}", database, redis_server.url)
            assert await said(process) == f"{service} ready"
            try:
                await until(lambda: is_more(done, before), f"the {service} at work")
                process.terminate()
                await asyncio.wait_for(process.wait(), 10)
            finally:
                if process.returncode is None:  # it did not stop: no process left behind
                    process.kill()
                    await process.wait()
            assert process.stderr is not None
            log = (await process.stderr.read()).decode()
            assert process.returncode == 0, log
            assert "Traceback" not in log and log.splitlines()[-1].endswith("stopped by SIGTERM")
        assert done() < 10_000, "the backlog was gone before the last SIGTERM: make it longer"

    run(scenario())


def backlog(orders_db: str, count: int) -> None:
    """`count` events in the outbox, unsent, written at once: more than placing them would."""
    events = [
        OrderPlaced(order_id=i, customer=f"customer {i}", total_cents=100, placed_at=time.time())
        for i in range(count)
    ]
    with closing(connect(orders_db)) as orders:
        orders.execute("BEGIN")
        orders.executemany(
            "INSERT INTO outbox (event_id, type, body) VALUES (?, ?, ?)",
            [(event.event_id, type(event).__name__, event.model_dump_json()) for event in events],
        )
        orders.execute("COMMIT")


async def is_more(count: Callable[[], int], than: int) -> bool:
    return count() > than


def test_the_load_benchmark_runs_end_to_end_in_a_small_run(redis_installed: None) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_outbox.py", "--orders", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "100 orders placed, relayed through Redis and billed in" in done.stdout
    assert re.search(r"latency from commit to handled: median [\d.]+ ms, p99 [\d.]+ ms", done.stdout)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="looks for processes in /proc")
def test_sigint_at_a_random_moment_leaves_nothing_running_and_the_next_run_bills_each_order_once(
    redis_installed: None, tmp_path: Path
) -> None:
    seed = int(os.environ.get("OUTBOX_SIGINT_SEED") or random.randrange(1_000_000))
    # From 0.2 s on, once the interpreter has started and runs the package's code (a Ctrl-C
    # before that is Python's own), to 3 s, before the last of 300 orders, 100 a second.
    moment = round(random.Random(seed).uniform(0.2, 3.0), 2)
    print(f"SIGINT after {moment} s; OUTBOX_SIGINT_SEED={seed} picks it again")
    folder = tmp_path / "data"
    command = [sys.executable, "-m", "examples.outbox", "--orders", "300", "--data", str(folder)]
    environment = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    # A process group of its own, as a terminal gives a command; and SIGINT's default action,
    # even if pytest was started in the background of a script, which ignores it: a handler
    # here is reset to the default in the command.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupted = subprocess.Popen(
            [*command, "--rate", "100"],
            cwd=ROOT,
            env=environment,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(moment)  # the moment itself is what the test varies
    os.killpg(interrupted.pid, signal.SIGINT)
    try:
        out, err = interrupted.communicate(timeout=60)
    finally:
        if interrupted.returncode is None:  # it hangs: the test fails, and leaves no process
            interrupted.kill()
            interrupted.wait()
    said = f"SIGINT after {moment} s (OUTBOX_SIGINT_SEED={seed}):\n{out}{err}"
    assert interrupted.returncode == 130, said
    assert "Traceback" not in out + err, said
    assert len(err.splitlines()) == 1, said
    assert running_in(folder) == [], said

    finished = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert running_in(folder) == []
    for name, started in [("relay", "relaying the outbox"), ("billing", "reading the stream")]:
        log = (folder / f"{name}.log").read_text()
        assert "Traceback" not in log, log
        # Each start of the service ended on SIGTERM, within the 10 s before a SIGKILL.
        assert log.count(started) == log.count("stopped by SIGTERM"), log
    with closing(sqlite3.connect(folder / "orders.db")) as orders:
        placed = [order_id for (order_id,) in orders.execute("SELECT order_id FROM orders")]
    charges = billed(str(folder / "billing.db"))
    assert len(placed) == 300
    assert set(charges) == set(placed), "an order was lost"
    assert set(charges.values()) == {1}, f"an order was billed twice: {charges}"
    print(err.strip())
    print(finished.stdout.splitlines()[-3])


def running_in(folder: Path) -> list[str]:
    """The processes that name `folder` on their command line (the services), or run in it
    (its redis-server, which changes its command line but not its working directory)."""
    found: list[str] = []
    for process in Path("/proc").iterdir():
        try:
            command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            directory = os.readlink(process / "cwd")
        except (OSError, ValueError):
            continue  # not a process, or one that ended meanwhile
        if str(folder) in command or directory.startswith(str(folder)):
            found.append(f"{process.name}: {command}")
    return found


def test_the_examples_readme_quotes_the_code_as_it_is() -> None:
    readme = (ROOT / "examples" / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, re.M | re.S)
    quotes = [quote for block in blocks if (quote := QUOTE.match(block))]
    assert quotes
    for quote in quotes:
        lines, path = quote.string[quote.end() :], quote[1]
        assert lines in (ROOT / path).read_text(), f"not a verbatim quote of {path}:\n{lines}"

"""What a publish costs, against the code one would write by hand, measured in the same run.

    python benchmarks/bench_mediator.py          # the full run, a few minutes
    python benchmarks/bench_mediator.py --quick  # under 30 seconds
    python benchmarks/bench_mediator.py --smoke  # a second or two: checks the work, not the time

Standard library only. Where blinker, pyee, python-cqrs or waku is installed, it joins the peers:
the same handlers published through its own API, against the same hand-written loop. The
contenders of a scenario take turns, batch after batch, so that the machine's drift hits them
alike; a ratio is the median of the ratios of adjacent batches. Every batch checks that each
handler ran exactly as often as it should, and the run exits 1 if not.
"""

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar

# Run as a script from anywhere: the module under test is the repository's own.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mediator import (  # noqa: E402
    EventPublisher,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    IEventHandler,
    Mediator,
    SequentialEventPublisher,
)

Publish = Callable[[IEvent], Awaitable[None]]
_EventT = TypeVar("_EventT", bound=IEvent)


class DomainEvent(IEvent):
    pass


@dataclass(frozen=True, slots=True)
class OrderPlaced(DomainEvent):
    order_id: int


class Counter:
    """How many times the handlers ran, all of them together, and the time middleware saw."""

    runs = 0
    elapsed = 0


class Handler:
    __slots__ = ()

    async def handle(self, event: IEvent, /) -> None:
        Counter.runs += 1


class Sleeper:
    __slots__ = ()

    async def handle(self, event: IEvent, /) -> None:
        Counter.runs += 1
        await asyncio.sleep(0)


class Timing:
    """Middleware that times each handler, as `hand_wrapped` does by hand."""

    __slots__ = ()

    async def handle(
        self, event: IEvent, handler: object, call_next: Callable[[], Awaitable[None]], /
    ) -> None:
        start = time.perf_counter_ns()
        await call_next()
        Counter.elapsed += time.perf_counter_ns() - start


@dataclass(frozen=True, slots=True)
class Step(IEvent):
    number: int


class LeavesTheNextStep:
    """A handler of step n that leaves step n + 1 as its follow-up, up to step 9."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[IEvent] = []

    async def handle(self, event: Step, /) -> None:
        Counter.runs += 1
        if event.number < 9:
            self.events.append(Step(event.number + 1))


class AwaitsTheNextStep:
    """The same chain written by hand: the handler of step n awaits the handler of step n + 1."""

    __slots__ = ()

    async def handle(self, event: Step, /) -> None:
        Counter.runs += 1
        if event.number < 9:
            await AwaitsTheNextStep().handle(Step(event.number + 1))


def handler_classes(
    count: int, base: type[IEventHandler[IEvent]] = Handler
) -> tuple[type[IEventHandler[IEvent]], ...]:
    """`count` distinct handler classes: a registry binds a class once per event type."""
    return tuple(type(f"{base.__name__}{i}", (base,), {"__slots__": ()}) for i in range(count))


def hand_loop(handlers: Sequence[type[IEventHandler[IEvent]]]) -> Publish:
    async def publish(event: IEvent) -> None:
        for cls in handlers:
            await cls().handle(event)

    return publish


def hand_wrapped(handlers: Sequence[type[IEventHandler[IEvent]]]) -> Publish:
    async def timed(handler: IEventHandler[IEvent], event: IEvent) -> None:
        start = time.perf_counter_ns()
        await handler.handle(event)
        Counter.elapsed += time.perf_counter_ns() - start

    async def publish(event: IEvent) -> None:
        for cls in handlers:
            await timed(cls(), event)

    return publish


def hand_task_group(handlers: Sequence[type[IEventHandler[IEvent]]]) -> Publish:
    async def publish(event: IEvent) -> None:
        async with asyncio.TaskGroup() as group:
            for cls in handlers:
                group.create_task(cls().handle(event))

    return publish


# --- peers: other libraries that publish an event to its handlers --------------------------------
#
# Each peer does the work of `hand_loop`: the async handlers of one event, each run once per
# publish, all of them done when the publish returns, a fresh handler object per publish where
# the library builds one. Each is set up as its documentation shows. They are imported through
# `import_module`, whose module attributes are typed `Any`: the benchmark then type-checks, and
# runs, where a peer is not installed.


@dataclass(frozen=True, slots=True)
class Peer:
    """A library, the call that publishes, and how to build a publish to `count` handlers."""

    package: str
    call: str
    build: Callable[[int], Publish]

    @property
    def name(self) -> str:
        return f"{self.package} {importlib.metadata.version(self.package)} {self.call}"


def optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def absent(package: str) -> str:
    return f"{package}: not installed, not compared"


def blinker_peer() -> Peer | str:
    """blinker's `send_async`: awaits the receivers one after another; an error propagates."""
    blinker = optional("blinker")
    if blinker is None:
        return absent("blinker")

    def build(count: int) -> Publish:
        signal = blinker.Signal()
        for _ in range(count):

            async def receiver(sender: object, **kwargs: object) -> None:
                Counter.runs += 1

            # A strong reference: nothing else keeps these receivers alive.
            signal.connect(receiver, weak=False)

        async def publish(event: IEvent) -> None:
            await signal.send_async(event)

        return publish

    return Peer("blinker", "Signal.send_async", build)


def pyee_peer() -> Peer | str:
    """pyee's asyncio emitter: `emit` starts a task per listener, `wait_for_complete` awaits them.

    An error goes to the emitter's "error" listeners rather than to the caller.
    """
    pyee = optional("pyee.asyncio")
    if pyee is None:
        return absent("pyee")

    def build(count: int) -> Publish:
        emitter = pyee.AsyncIOEventEmitter()
        for _ in range(count):

            async def listener(event: IEvent) -> None:
                Counter.runs += 1

            emitter.add_listener("event", listener)

        async def publish(event: IEvent) -> None:
            emitter.emit("event", event)
            await emitter.wait_for_complete()

        return publish

    return Peer("pyee", "emit + wait_for_complete, a task per listener", build)


class EventMap(Protocol):
    """What the mapper given to python-cqrs's `bootstrap` uses of its `EventMap`."""

    def bind(self, event_type: type, handler_type: type, /) -> None: ...


def cqrs_peer() -> Peer | str:
    """python-cqrs's `EventMediator.send`, built by its `bootstrap` with a `di` container.

    `send` resolves each handler class from the container and awaits it, one after another; an
    error propagates. (The `EventEmitter` that its request mediator uses for domain events runs
    the handlers with `asyncio.gather` and logs their errors instead: not the same work.)
    """
    cqrs, bootstrap, di = optional("cqrs"), optional("cqrs.bootstrap.events"), optional("di")
    if cqrs is None or bootstrap is None or di is None:
        return absent("python-cqrs")
    # Its mediator dispatches on its own event classes: a twin of OrderPlaced, a dataclass.
    twin = type("OrderPlaced", (cqrs.DomainEvent,), {"__annotations__": {"order_id": int}})

    async def handle(self: object, event: object) -> None:
        Counter.runs += 1

    def build(count: int) -> Publish:
        handlers = [
            type(f"Handler{i}", (cqrs.EventHandler,), {"handle": handle}) for i in range(count)
        ]

        def bind(events: EventMap) -> None:
            for handler in handlers:
                events.bind(twin, handler)

        mediator = bootstrap.bootstrap(di_container=di.Container(), events_mapper=bind)
        event = twin(order_id=1)

        # The twin is built once, as the hand loop's event is: the publish sends it instead.
        async def publish(_: IEvent) -> None:
            await mediator.send(event)

        return publish

    return Peer("python-cqrs", "EventMediator.send", build)


async def waku_note() -> str:
    """Whether waku's `IPublisher.publish` has run the handlers when it returns; it had not in 0.43.

    waku puts the event on a local queue and returns; a background worker runs the handlers
    later, each in a scope of its own, and logs their errors: not the same work, so it is not
    timed. One publish, with the application running as its documentation shows, tells.
    """
    waku, messaging = optional("waku"), optional("waku.messaging")
    if waku is None or messaging is None:
        return absent("waku")
    ran: list[object] = []

    async def handle(self: object, message: object, /) -> None:
        ran.append(message)

    event_type = type("OrderPlaced", (messaging.IEvent,), {"__slots__": ()})
    handler = type("Handler", (messaging.EventHandler,), {"handle": handle})
    # A module that binds the handler, and the application's root module that imports it.
    extension = messaging.MessagingExtension().bind(event_type, handler)
    orders = waku.module(extensions=[extension])(type("Orders", (), {}))
    shop = waku.module(imports=[messaging.MessagingModule.register(), orders])(type("Shop", (), {}))
    app = waku.WakuFactory(shop).create()
    async with app, app.container() as scope:
        publisher = await scope.get(messaging.IPublisher)
        await publisher.publish(event_type())
        before_return = len(ran)
    # Leaving `app` stopped its worker, which ran what was queued: nothing runs later.
    name = f"waku {importlib.metadata.version('waku')} IPublisher.publish"
    if before_return == 0 and len(ran) == 1:
        return (
            f"{name}: not compared; publish returned before its handler ran: it queues the "
            f"event for a background worker, which logs a handler's error instead of raising it"
        )
    return (
        f"{name}: not compared; its handler ran {before_return} time(s) before publish "
        f"returned, {len(ran)} in all"
    )


@dataclass
class Row:
    scenario: str
    median_ns: float
    ratio: float
    target: str
    met: bool | None


class WorkError(Exception):
    pass


async def batch(
    publish: Callable[[_EventT], Awaitable[None]], event: _EventT, times: int, handlers: int
) -> float:
    """ns per publish over `times` publishes, after checking every handler ran each time."""
    Counter.runs = 0
    start = time.perf_counter_ns()
    for _ in range(times):
        await publish(event)
    elapsed = time.perf_counter_ns() - start
    if Counter.runs != times * handlers:
        raise WorkError(f"expected {times * handlers} handler runs, counted {Counter.runs}")
    return elapsed / times


async def compare(
    contenders: Mapping[str, tuple[Callable[[_EventT], Awaitable[None]], int]],
    event: _EventT,
    times: int,
    rounds: int,
) -> dict[str, tuple[float, float]]:
    """Median ns per publish and median ratio to the first contender, interleaved by round.

    Each contender is a publish and how many handlers each of its publishes must run.
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm up caches and the allocator
        publish, handlers = contenders[name]
        await batch(publish, event, max(times // 10, 1), handlers)
    for round_number in range(rounds):
        # Rotate who goes first, so that no contender always follows the same one.
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            publish, handlers = contenders[name]
            samples[name].append(await batch(publish, event, times, handlers))
    baseline = samples[names[0]]
    return {
        name: (
            statistics.median(values),
            statistics.median(value / base for value, base in zip(values, baseline)),
        )
        for name, values in samples.items()
    }


def mediator_for(
    event_type: type[IEvent],
    handlers: Sequence[type[IEventHandler[IEvent]]],
    publisher: EventPublisher = SequentialEventPublisher(),
) -> Mediator:
    return Mediator(EventRegistry().bind(event_type, handlers), publisher=publisher)


def handlers_label(count: int) -> str:
    return f"{count} handler" if count == 1 else f"{count} handlers"


def sequential_limits() -> tuple[tuple[int, float], ...]:
    """The targets of the sequential publisher, with 0, 1 and 10 handlers, on this Python.

    They follow the interpreter: on 3.11 `asyncio.current_task()`, which every publish asks,
    makes a `getpid()` system call, and later interpreters call coroutines faster. The figures
    are set for 3.11 and for 3.13 on; 3.12, between them, is held to 3.11's.
    """
    if sys.version_info >= (3, 13):
        return ((0, 1.2), (1, 4.5), (10, 2.7))
    return ((0, 1.2), (1, 5.5), (10, 3.0))


async def overhead_rows(times: int, rounds: int) -> list[Row]:
    rows: list[Row] = []
    event = OrderPlaced(1)
    for count, limit in sequential_limits():
        handlers = handler_classes(count)
        contenders = {
            "hand loop": (hand_loop(handlers), count),
            "sequential": (mediator_for(OrderPlaced, handlers).publish, count),
        }
        result = await compare(contenders, event, times, rounds)
        rows += table_rows(result, handlers_label(count), "sequential", limit)
    group_times = max(times // 10, 10)
    group_limits: tuple[tuple[int, float | None], ...] = ((0, None), (1, 0.3), (10, 1.2))
    for count, group_limit in group_limits:
        handlers = handler_classes(count)
        group = mediator_for(OrderPlaced, handlers, GroupEventPublisher())
        contenders = {
            "hand TaskGroup": (hand_task_group(handlers), count),
            "group": (group.publish, count),
        }
        result = await compare(contenders, event, group_times, rounds)
        rows += table_rows(result, handlers_label(count), "group", group_limit)
    return rows


def table_rows(
    result: dict[str, tuple[float, float]], label: str, ours: str, limit: float | None
) -> list[Row]:
    """The baseline's row, and ours against its target, if it has one."""
    baseline, *_ = result
    ns, ratio = result[ours]
    if limit is None:
        row = Row(f"{ours}, {label}", ns, ratio, "reported", None)
    else:
        row = Row(f"{ours}, {label}", ns, ratio, f"<= {limit}x", ratio <= limit)
    return [Row(f"{baseline}, {label}", result[baseline][0], 1.0, "baseline", None), row]


async def peer_rows(times: int, rounds: int) -> tuple[list[Row], list[str]]:
    """The sequential publisher and each peer installed, against one hand loop; and a verdict.

    Reported, with no target: the lines say whether mediator is the faster, peer by peer.
    """
    peers: list[Peer] = []
    lines: list[str] = []
    for found in (blinker_peer(), pyee_peer(), cqrs_peer(), await waku_note()):
        if isinstance(found, Peer):
            peers.append(found)
        else:
            lines.append(found)
    rows: list[Row] = []
    if not peers:
        return rows, lines
    # How many times the time of mediator's publish each peer takes, at 1 and at 10 handlers.
    slower: dict[Peer, list[float]] = {peer: [] for peer in peers}
    for count in (1, 10):
        handlers = handler_classes(count)
        contenders = {
            "hand loop": (hand_loop(handlers), count),
            "sequential": (mediator_for(OrderPlaced, handlers).publish, count),
        }
        contenders.update({peer.name: (peer.build(count), count) for peer in peers})
        # Some peers take tens of microseconds a handler: fewer publishes a batch keep it short.
        result = await compare(contenders, OrderPlaced(1), max(times // 10, 20), rounds)
        label = handlers_label(count)
        rows += table_rows(result, label, "sequential", None)
        ours = result["sequential"][1]
        for peer in peers:
            ns, ratio = result[peer.name]
            rows.append(Row(f"{peer.name}, {label}", ns, ratio, "reported", None))
            slower[peer].append(ratio / ours)
    for peer, factors in slower.items():
        answers = ["yes" if factor > 1 else "no" for factor in factors]
        times_taken = " and ".join(f"{factor:.2f}x" for factor in factors)
        if len(set(answers)) == 1:
            verdict = f" at 1 and 10 handlers: {answers[0]}"
        else:
            verdict = f": {answers[0]} at 1 handler, {answers[1]} at 10 handlers"
        lines.append(
            f"mediator faster than {peer.package}{verdict} ({peer.package} takes {times_taken} "
            f"the time of the sequential publish)"
        )
    return rows, lines


async def runtime_processing_rows(times: int, rounds: int) -> list[Row]:
    """Middleware and follow-ups against the same work written by hand; reported, no target."""
    handlers = handler_classes(10)
    timed = Mediator(EventRegistry().bind(OrderPlaced, handlers).bind_middleware(IEvent, [Timing]))
    result = await compare(
        {"hand loop, a wrapper around each": (hand_wrapped(handlers), 10), "ours": (timed.publish, 10)},
        OrderPlaced(1),
        times,
        rounds,
    )
    rows = [
        Row("hand loop, a timing wrapper around each of 10 handlers", result["hand loop, a wrapper around each"][0], 1.0, "baseline", None),
        Row("sequential, 1 timing middleware on 10 handlers", *result["ours"], "reported", None),
    ]
    chain = Mediator(EventRegistry().bind(Step, [LeavesTheNextStep]))
    result = await compare(
        {"hand": (AwaitsTheNextStep().handle, 10), "ours": (chain.publish, 10)},
        Step(0),
        max(times // 10, 10),
        rounds,
    )
    rows += [
        Row("hand-written nested awaits, a chain of 10 events", result["hand"][0], 1.0, "baseline", None),
        Row("sequential, a follow-up chain of 10 events", *result["ours"], "reported", None),
    ]
    return rows


async def linearity_rows(times: int, rounds: int) -> list[Row]:
    """Cost per handler at 1,000 handlers against the cost per handler at 100."""
    rows: list[Row] = []
    event = OrderPlaced(1)
    publishers: dict[str, EventPublisher] = {
        "sequential": SequentialEventPublisher(),
        "group": GroupEventPublisher(),
    }
    for label, publisher in publishers.items():
        small = mediator_for(OrderPlaced, handler_classes(100), publisher)
        large = mediator_for(OrderPlaced, handler_classes(1000), publisher)
        result = await compare(
            {"100": (small.publish, 100), "1000": (large.publish, 1000)},
            event,
            max(times // 500, 3),
            rounds,
        )
        ns, ratio = result["1000"]
        per_handler = ratio / 10  # ten times the handlers: the ratio of the costs per handler
        rows.append(
            Row(
                f"{label}, per handler at 1,000 vs 100",
                ns / 1000,
                per_handler,
                "<= 1.2x",
                per_handler <= 1.2,
            )
        )
    return rows


async def dispatch_rows(times: int, rounds: int) -> list[Row]:
    """A handler bound to a base class costs what one bound to the exact class costs."""
    event = OrderPlaced(1)
    handlers = handler_classes(2)
    result = await compare(
        {
            "exact": (mediator_for(OrderPlaced, handlers).publish, 2),
            "base": (mediator_for(DomainEvent, handlers).publish, 2),
        },
        event,
        times,
        rounds,
    )
    ns, ratio = result["base"]
    exact = "sequential, 2 handlers bound to the exact class"
    return [
        Row(exact, result["exact"][0], 1.0, "baseline", None),
        Row("sequential, 2 handlers bound to a base class", ns, ratio, "<= 1.05x", ratio <= 1.05),
    ]


async def memory_report(handlers_count: int, publishes: int) -> tuple[list[str], bool]:
    lines: list[str] = []
    event = OrderPlaced(1)
    peaks: list[int] = []
    most_tasks = 0

    class Track:
        __slots__ = ()

        async def handle(self, event: IEvent, /) -> None:
            nonlocal most_tasks
            Counter.runs += 1
            most_tasks = max(most_tasks, len(asyncio.all_tasks()))
            await asyncio.sleep(0)

    many = handler_classes(handlers_count, Sleeper)
    limit = 8
    for publisher in (GroupEventPublisher(max_concurrency=limit), GroupEventPublisher()):
        mediator = mediator_for(OrderPlaced, many, publisher)
        gc.collect()
        tracemalloc.start()
        await batch(mediator.publish, event, 1, handlers_count)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    tracked = mediator_for(
        OrderPlaced, handler_classes(200, Track), GroupEventPublisher(max_concurrency=limit)
    )
    await batch(tracked.publish, event, 1, 200)
    # Under max_concurrency=k the publisher runs k worker tasks, and the caller's task waits for
    # them: k + 1 tasks alive at most. Memory follows the workers, not the handlers.
    bounded_ok = most_tasks <= limit + 1 and peaks[0] * 10 < peaks[1]
    lines.append(
        f"{handlers_count:,} handlers: peak traced memory {peaks[0] / 1024:,.0f} KiB with "
        f"max_concurrency={limit}, {peaks[1] / 1024:,.0f} KiB without a limit "
        f"({peaks[0] / peaks[1]:.1%}; target < 10%); at most {most_tasks} tasks alive with "
        f"max_concurrency={limit}, the caller's included (target <= {limit + 1})"
    )

    mediator = mediator_for(OrderPlaced, handler_classes(2))
    grouped = mediator_for(OrderPlaced, handler_classes(2), GroupEventPublisher())
    await batch(mediator.publish, event, 1000, 2)
    await batch(grouped.publish, event, 100, 2)
    gc.collect()
    tracemalloc.start()
    await batch(mediator.publish, event, 1000, 2)
    await batch(grouped.publish, event, 100, 2)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    await batch(mediator.publish, event, publishes, 2)
    await batch(grouped.publish, event, publishes // 10, 2)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    flat = after - before < 4096
    lines.append(
        f"{publishes:,} sequential and {publishes // 10:,} group publishes: traced memory "
        f"{before:,} bytes before, {after:,} after ({after - before:+,}; target < +4,096)"
    )
    return lines, bounded_ok and flat


def print_table(rows: list[Row]) -> None:
    width = max(len(row.scenario) for row in rows)
    print(f"{'scenario':<{width}}  {'median ns':>12}  {'ratio':>7}  target")
    for row in rows:
        verdict = "" if row.met is None else ("met" if row.met else "MISSED")
        target = "" if row.target == "baseline" else f"{row.target} {verdict}"
        line = f"{row.scenario:<{width}}  {row.median_ns:>12,.0f}  {row.ratio:>6.2f}x  {target}"
        print(line.rstrip())


async def main(mode: str) -> int:
    times, rounds, handlers_count, publishes = {
        "full": (20_000, 31, 10_000, 100_000),
        "quick": (5_000, 21, 10_000, 100_000),
        "smoke": (200, 3, 1_000, 2_000),
    }[mode]
    print(f"mediator benchmark, {mode} run, Python {sys.version.split()[0]}")
    try:
        rows = await overhead_rows(times, rounds)
        rows += await runtime_processing_rows(times, rounds)
        rows += await linearity_rows(times, rounds)
        rows += await dispatch_rows(times, rounds)
        print_table(rows)
        lines, memory_ok = await memory_report(handlers_count, publishes)
        for line in lines:
            print(line)
        peers, verdicts = await peer_rows(times, rounds)
    except WorkError as error:
        print(f"the handlers did not run as they should: {error}")
        return 1
    print()
    print("peers: the same handlers through another library's API, against the same hand loop")
    if peers:
        print_table(peers)
    for line in verdicts:
        print(line)
    print()
    missed = [row.scenario for row in rows if row.met is False]
    if not memory_ok:
        missed.append("memory")
    print("every target met" if not missed else f"targets missed: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="a run of under 30 seconds")
    modes.add_argument("--smoke", action="store_true", help="check the work, not the time")
    arguments = parser.parse_args()
    mode = "quick" if arguments.quick else "smoke" if arguments.smoke else "full"
    sys.exit(asyncio.run(main(mode)))

"""The contract of mediator.py, section by section, with plain asyncio and pytest."""

import ast
import asyncio
import contextlib
import contextvars
import gc
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import traceback
import tracemalloc
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Never, Protocol, TypeVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mediator
from mediator import (
    ChainLimitError,
    DuplicateHandlerError,
    EventHandler,
    EventPublisher,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    IEventHandler,
    IEventMiddleware,
    IPublisher,
    Mediator,
    MediatorError,
    RecordingPublisher,
    RegistryFrozenError,
    Resolve,
    SequentialEventPublisher,
)

ROOT = Path(__file__).resolve().parent
# The test extra brings them; without them the core tests still run, and these skip, saying so.
MODELS_MISSING = [
    name for name in ("pydantic", "msgspec", "attrs") if not importlib.util.find_spec(name)
]
needs_models = pytest.mark.skipif(
    bool(MODELS_MISSING), reason=f"needs {', '.join(MODELS_MISSING)}: pip install -e '.[test]'"
)
_T = TypeVar("_T")
_EventT = TypeVar("_EventT", bound=IEvent)


class DomainEvent(IEvent):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced(DomainEvent):
    order_id: int


@dataclass(frozen=True)
class OrderShipped(DomainEvent):
    order_id: int


@dataclass(frozen=True)
class UserSignedUp(IEvent):
    user_id: int


def not_marked() -> type:
    """A pydantic model whose base does not declare the marker; skips without pydantic."""
    try:
        import pydantic
    except ImportError:
        pytest.skip("needs pydantic: pip install -e '.[test]'")

    class NotMarked(pydantic.BaseModel):
        order_id: int

    return NotMarked


class Boom(Exception):
    pass


class Abort(BaseException):
    pass


def recording(
    log: list[str],
    name: str,
    *,
    raises: BaseException | None = None,
    gate: asyncio.Event | None = None,
) -> type[IEventHandler[IEvent]]:
    """A new handler class that appends `name` to `log`, then waits on `gate` or raises."""

    class Recording:
        async def handle(self, event: IEvent, /) -> None:
            log.append(name)
            if gate is not None:
                await gate.wait()
            if raises is not None:
                raise raises

    Recording.__name__ = Recording.__qualname__ = name
    return Recording


# The event loop every test runs on, named by MEDIATOR_TEST_LOOP: "asyncio" (the default),
# "eager" (asyncio's loop with asyncio.eager_task_factory, Python 3.12+) or "uvloop".
LOOP = os.environ.get("MEDIATOR_TEST_LOOP", "asyncio")


def new_loop() -> asyncio.AbstractEventLoop:
    if LOOP == "uvloop":
        uvloop_loop: asyncio.AbstractEventLoop = importlib.import_module("uvloop").new_event_loop()
        return uvloop_loop
    loop = asyncio.new_event_loop()
    if LOOP == "eager":
        if sys.version_info >= (3, 12):
            loop.set_task_factory(asyncio.eager_task_factory)
        else:
            loop.close()
            raise RuntimeError("MEDIATOR_TEST_LOOP=eager needs Python 3.12 or newer")
    elif LOOP != "asyncio":
        loop.close()
        raise RuntimeError(f"MEDIATOR_TEST_LOOP={LOOP!r}: use asyncio, eager or uvloop")
    return loop


def run(main: Coroutine[Any, Any, _T], /) -> _T:
    """`asyncio.run(main)`, on the event loop that MEDIATOR_TEST_LOOP names.

    A test that would wait forever fails after a minute instead: `main` runs in the runner's
    task, as it would alone, inside an `asyncio.timeout` that only a hang reaches.
    """

    async def bounded() -> _T:
        async with asyncio.timeout(60):
            return await main

    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(bounded())


def blocks_until_cancelled(
    log: list[str], name: str, *, reaction: str = "propagates"
) -> type[IEventHandler[IEvent]]:
    """A handler class that logs its start, waits until cancelled, then reacts to it.

    `reaction`: "propagates" re-raises the CancelledError, "fails" raises Boom instead,
    "swallows" waits one more loop turn and returns normally.
    """

    class Blocks:
        async def handle(self, event: IEvent, /) -> None:
            log.append(f"{name} started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                log.append(f"{name} cancelled")
                if reaction == "fails":
                    raise Boom(f"{name} failed while cancelled") from None
                if reaction == "swallows":
                    await asyncio.sleep(0)
                    return
                raise

    Blocks.__name__ = Blocks.__qualname__ = name
    return Blocks


async def when_started(log: Sequence[object], entry: object) -> None:
    """Wait, one loop turn at a time, until `entry` is in `log`."""
    for _ in range(1000):
        if entry in log:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{entry!r} never came; log: {log}")


def members(error: BaseException | None) -> tuple[BaseException, ...]:
    """The exceptions that `error` groups, or none when it is not a group."""
    # Not isinstance: pyright would narrow `error` to a group of unknown members.
    grouped: tuple[BaseException, ...] = getattr(error, "exceptions", ())
    return grouped if issubclass(type(error), BaseExceptionGroup) else ()


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside `error`, groups opened, in order."""
    grouped = members(error)
    return [leaf for member in grouped for leaf in leaves(member)] if grouped else [error]



def unchecked(value: object) -> Any:
    """`value`, hidden from the type checkers, to test what the runtime does with misuse."""
    return value


def build(handler_type: type[_T], /) -> _T:
    return handler_type()


async def build_async(handler_type: type[_T], /) -> _T:
    await asyncio.sleep(0)
    return handler_type()


class MakeMediator(Protocol):
    """Makes a mediator of one kind for a registry, with the limits a test asks for."""

    def __call__(
        self, registry: EventRegistry, /, *, max_depth: int = 32, max_follow_ups: int = 10_000
    ) -> Mediator: ...


CallNext = Callable[[], Awaitable[None]]


class PassesThrough:
    """Middleware that only calls on: every promise holds with middleware as without it."""

    async def handle(
        self, event: IEvent, handler: object, call_next: Callable[[], Awaitable[None]], /
    ) -> None:
        await call_next()


class InOrder:
    """A strategy of a user's own: the handlers one after another, the first error propagating."""

    async def __call__(self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        for handler in handlers:
            await handler.handle(event)


def mediators(
    publisher: EventPublisher = SequentialEventPublisher(),
    resolve: Resolve | None = None,
    *,
    middleware: bool = False,
) -> MakeMediator:
    def make(
        registry: EventRegistry, /, *, max_depth: int = 32, max_follow_ups: int = 10_000
    ) -> Mediator:
        if middleware:
            registry = EventRegistry().merge(registry).bind_middleware(IEvent, [PassesThrough])
        return Mediator(
            registry,
            publisher=publisher,
            resolve=resolve,
            max_depth=max_depth,
            max_follow_ups=max_follow_ups,
        )

    return make


# What a user can choose: the publishers and their settings, a strategy of one's own, resolve
# plain or async, and middleware or none.
SEQUENTIAL: dict[str, MakeMediator] = {
    "default": mediators(),
    "resolve": mediators(resolve=build),
    "async-resolve": mediators(resolve=build_async),
    "middleware": mediators(middleware=True),
    "own-strategy": mediators(InOrder()),
}
GROUP: dict[str, MakeMediator] = {
    "group": mediators(GroupEventPublisher()),
    "group-bounded": mediators(GroupEventPublisher(max_concurrency=2)),
    "group-one-at-a-time": mediators(GroupEventPublisher(max_concurrency=1)),
    "group-middleware-async-resolve": mediators(
        GroupEventPublisher(max_concurrency=2), build_async, middleware=True
    ),
}
EVERY = SEQUENTIAL | GROUP
COLLECTING: dict[str, MakeMediator] = {
    "collecting-sequential": mediators(SequentialEventPublisher(fail_fast=False)),
    "collecting-group": mediators(GroupEventPublisher(fail_fast=False)),
    "collecting-group-bounded": mediators(GroupEventPublisher(2, fail_fast=False)),
    "collecting-group-one-at-a-time": mediators(GroupEventPublisher(1, fail_fast=False)),
}
ALL = EVERY | COLLECTING
every = pytest.mark.parametrize("make", EVERY.values(), ids=EVERY.keys())
every_setting = pytest.mark.parametrize("make", ALL.values(), ids=ALL.keys())
sequential = pytest.mark.parametrize("make", SEQUENTIAL.values(), ids=SEQUENTIAL.keys())
group = pytest.mark.parametrize("make", GROUP.values(), ids=GROUP.keys())
collecting = pytest.mark.parametrize("make", COLLECTING.values(), ids=COLLECTING.keys())


# --- publishing ---------------------------------------------------------------------------------


@every
def test_publish_runs_each_bound_handler_once(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(
        OrderPlaced, [recording(log, "receipt"), recording(log, "stock"), recording(log, "mail")]
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert sorted(log) == ["mail", "receipt", "stock"]


@sequential
def test_sequential_publisher_runs_handlers_in_bind_order(make: MakeMediator) -> None:
    log: list[str] = []
    handlers = [recording(log, name) for name in "abcdef"]
    registry = EventRegistry().bind(OrderPlaced, handlers[:3]).bind(OrderPlaced, handlers[3:])
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == list("abcdef")


@group
def test_group_publisher_starts_handlers_in_bind_order(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, name) for name in "abcd"])
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == list("abcd")


@every
def test_publishing_an_event_nobody_handles_does_nothing(make: MakeMediator) -> None:
    built: list[type] = []

    def resolve(handler_type: type[_T], /) -> _T:
        built.append(handler_type)
        return handler_type()

    log: list[str] = []
    registry = EventRegistry().bind(OrderShipped, [recording(log, "shipped")])
    run(make(registry).publish(OrderPlaced(order_id=1)))
    run(Mediator(registry, resolve=resolve).publish(UserSignedUp(user_id=1)))
    assert log == [] and built == []


def test_publish_with_no_handlers_never_calls_the_publisher() -> None:
    calls: list[object] = []

    async def publisher(handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        calls.append(event)

    run(Mediator(EventRegistry(), publisher=publisher).publish(OrderPlaced(order_id=1)))
    assert calls == []


@every
def test_publish_rejects_an_event_class_instead_of_an_instance(make: MakeMediator) -> None:
    mediator = make(EventRegistry().bind(OrderPlaced, [recording([], "a")]))
    with pytest.raises(TypeError, match=r"got the class OrderPlaced; publish OrderPlaced\(\.\.\.\)"):
        run(mediator.publish(unchecked(OrderPlaced)))


def test_publish_rejects_an_event_class_even_after_its_metaclass_was_looked_up() -> None:
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a")])
    with pytest.raises(TypeError, match="Meta is not an event class"):
        registry.handlers_for(unchecked(type(OrderPlaced)))
    with pytest.raises(TypeError, match="got the class OrderPlaced"):
        run(Mediator(registry).publish(unchecked(OrderPlaced)))


def test_default_resolve_builds_handlers_afresh_for_every_publish() -> None:
    instances: list[object] = []

    class Remember:
        async def handle(self, event: OrderPlaced, /) -> None:
            instances.append(self)

    mediator = Mediator(EventRegistry().bind(OrderPlaced, [Remember]))

    async def twice() -> None:
        await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(OrderPlaced(order_id=2))

    run(twice())
    assert len(instances) == 2 and instances[0] is not instances[1]


@every
def test_handlers_see_the_callers_context_variables(make: MakeMediator) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[str] = []

    class Seer:
        async def handle(self, event: IEvent, /) -> None:
            seen.append(request_id.get())

    class OtherSeer:
        async def handle(self, event: IEvent, /) -> None:
            seen.append(request_id.get())

    mediator = make(EventRegistry().bind(OrderPlaced, [Seer, OtherSeer]))

    async def request() -> None:
        request_id.set("req-42")
        await mediator.publish(OrderPlaced(order_id=1))

    run(request())
    assert seen == ["req-42", "req-42"]


@every
def test_publish_leaves_no_task_behind(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a")])

    async def caller() -> None:
        await make(registry).publish(OrderPlaced(order_id=1))
        assert len(asyncio.all_tasks()) == 1

    run(caller())
    assert log == ["a"]


@every
def test_a_handler_may_publish_follow_up_events_depth_first(make: MakeMediator) -> None:
    log: list[str] = []
    holder: list[Mediator] = []

    class ShipAfterPlacing:
        async def handle(self, event: OrderPlaced, /) -> None:
            log.append("placed")
            await holder[0].publish(OrderShipped(event.order_id))
            log.append("placed done")

    class NotifyShipped:
        async def handle(self, event: OrderShipped, /) -> None:
            log.append("shipped")

    registry = EventRegistry().bind(OrderPlaced, [ShipAfterPlacing]).bind(
        OrderShipped, [NotifyShipped]
    )
    holder.append(make(registry))
    run(holder[0].publish(OrderPlaced(order_id=1)))
    assert log == ["placed", "shipped", "placed done"]


@every
def test_concurrent_publishes_on_one_mediator_are_independent(make: MakeMediator) -> None:
    seen: list[int] = []
    barrier_holder: list[asyncio.Barrier] = []

    class Slow:
        async def handle(self, event: OrderPlaced, /) -> None:
            await barrier_holder[0].wait()
            seen.append(event.order_id)

    class Fast:
        async def handle(self, event: OrderPlaced, /) -> None:
            seen.append(-event.order_id)

    mediator = make(EventRegistry().bind(OrderPlaced, [Slow, Fast]))

    async def many() -> None:
        barrier_holder.append(asyncio.Barrier(20))
        async with asyncio.TaskGroup() as tasks:
            for order_id in range(1, 21):
                tasks.create_task(mediator.publish(OrderPlaced(order_id=order_id)))

    run(many())
    assert sorted(seen) == sorted([*range(1, 21), *range(-20, 0)])


@every
def test_publish_keeps_nothing_once_it_returns(make: MakeMediator) -> None:
    class Nothing:
        async def handle(self, event: OrderPlaced, /) -> None:
            pass

    class AlsoNothing:
        async def handle(self, event: IEvent, /) -> None:
            pass

    mediator = make(EventRegistry().bind(OrderPlaced, [Nothing, AlsoNothing]))

    async def publish(times: int) -> None:
        for order_id in range(times):
            await mediator.publish(OrderPlaced(order_id=order_id))

    async def measure() -> tuple[int, int]:
        await publish(200)
        gc.collect()
        tracemalloc.start()
        try:
            await publish(200)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            await publish(3000)
            gc.collect()
            return before, tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    before, after = run(measure())
    assert after - before < 2048, f"traced memory grew by {after - before} bytes"


# --- errors --------------------------------------------------------------------------------------


@sequential
def test_sequential_publisher_propagates_the_first_error_unchanged_and_stops(
    make: MakeMediator,
) -> None:
    log: list[str] = []
    error = Boom("card declined")
    registry = EventRegistry().bind(
        OrderPlaced, [recording(log, "a"), recording(log, "b", raises=error), recording(log, "c")]
    )
    with pytest.raises(Boom) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value is error
    assert log == ["a", "b"]


def test_sequential_publisher_propagates_a_lone_handlers_error_unchanged() -> None:
    error = Boom("only one")
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a", raises=error)])
    with pytest.raises(Boom) as caught:
        run(Mediator(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value is error


@group
def test_group_publisher_raises_an_exception_group_even_for_one_handler(
    make: MakeMediator,
) -> None:
    error = Boom("only one")
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a", raises=error)])
    with pytest.raises(ExceptionGroup) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)
    assert str(caught.value).startswith("1 of 1 handlers of OrderPlaced failed")


@group
def test_group_publisher_failure_is_caught_by_except_star(make: MakeMediator) -> None:
    error = Boom("stock service down")
    registry = EventRegistry().bind(
        OrderPlaced, [recording([], "a"), recording([], "b", raises=error), recording([], "c")]
    )
    caught: list[BaseException] = []

    async def caller() -> None:
        try:
            await make(registry).publish(OrderPlaced(order_id=1))
        except* Boom as group:
            caught.extend(group.exceptions)

    run(caller())
    assert caught == [error]


@collecting
def test_collecting_publishers_run_every_handler_and_group_the_errors_in_handler_order(
    make: MakeMediator,
) -> None:
    log: list[str] = []
    first, second = Boom("first"), Boom("second")
    registry = EventRegistry().bind(
        OrderPlaced,
        [
            recording(log, "a", raises=first),
            recording(log, "b"),
            recording(log, "c", raises=second),
            recording(log, "d"),
        ],
    )
    with pytest.raises(ExceptionGroup) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (first, second)
    assert str(caught.value).startswith("2 of 4 handlers of OrderPlaced failed")
    assert sorted(log) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("limit", [None, 2])
def test_collecting_group_publisher_orders_errors_by_handler_not_by_finish(
    limit: int | None,
) -> None:
    first, second = Boom("first to bind, last to fail"), Boom("second")
    gate = asyncio.Event()

    class OpenGate:
        async def handle(self, event: IEvent, /) -> None:
            gate.set()

    registry = EventRegistry().bind(
        OrderPlaced,
        [recording([], "a", raises=first, gate=gate), recording([], "b", raises=second), OpenGate],
    )
    mediator = Mediator(registry, publisher=GroupEventPublisher(limit, fail_fast=False))
    with pytest.raises(ExceptionGroup) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (first, second)


@collecting
def test_collecting_publishers_return_normally_when_nothing_failed(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert sorted(log) == ["a", "b"]


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
@every_setting
def test_keyboard_interrupt_and_system_exit_propagate_bare(
    make: MakeMediator, error_type: type[BaseException]
) -> None:
    error = error_type()
    registry = EventRegistry().bind(
        OrderPlaced, [recording([], "a", raises=error), recording([], "b")]
    )

    async def caller() -> None:
        await make(registry).publish(OrderPlaced(order_id=1))

    with pytest.raises(error_type) as caught:
        run(caller())
    assert caught.value is error


@every_setting
def test_a_handlers_own_cancelled_error_reaches_the_caller(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(
        OrderPlaced, [recording(log, "a"), recording(log, "b", raises=asyncio.CancelledError())]
    )
    outcome: list[str] = []

    async def caller() -> None:
        try:
            await make(registry).publish(OrderPlaced(order_id=1))
        except asyncio.CancelledError:
            outcome.append("cancelled")

    run(caller())
    assert outcome == ["cancelled"]
    assert log == ["a", "b"]


@pytest.mark.parametrize(
    "make", [*SEQUENTIAL.values(), COLLECTING["collecting-sequential"]], ids=[*SEQUENTIAL, "collecting"]
)
def test_sequential_publisher_lets_other_base_exceptions_through_bare(make: MakeMediator) -> None:
    log: list[str] = []
    error = Abort()
    registry = EventRegistry().bind(
        OrderPlaced, [recording(log, "a", raises=error), recording(log, "b")]
    )
    with pytest.raises(Abort) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value is error
    assert log == ["a"]


@pytest.mark.parametrize("first", [True, False], ids=["first handler", "second handler"])
@pytest.mark.parametrize("error_type", [Abort, GeneratorExit])
@pytest.mark.parametrize(
    "make", [*GROUP.values(), *list(COLLECTING.values())[1:]], ids=[*GROUP, *list(COLLECTING)[1:]]
)
def test_group_publisher_groups_other_base_exceptions(
    make: MakeMediator, error_type: type[BaseException], first: bool
) -> None:
    error = error_type()
    handlers = [recording([], "a"), recording([], "b", raises=error)]
    registry = EventRegistry().bind(OrderPlaced, handlers[::-1] if first else handlers)
    with pytest.raises(BaseExceptionGroup) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)
    assert not isinstance(caught.value, ExceptionGroup)
    assert str(caught.value).startswith("1 of 2 handlers of OrderPlaced failed")


@group
def test_group_publisher_wraps_a_handlers_own_exception_group_once(make: MakeMediator) -> None:
    error = ExceptionGroup("two lookups failed", [Boom("a"), Boom("b")])
    registry = EventRegistry().bind(
        OrderPlaced, [recording([], "a"), recording([], "b", raises=error)]
    )
    with pytest.raises(ExceptionGroup) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)


@pytest.mark.parametrize("when", ["at once", "after an await"])
@pytest.mark.parametrize("limit", [None, 2])
def test_group_publisher_keeps_every_error_that_a_handler_raised(
    when: str, limit: int | None
) -> None:
    raised: list[BaseException] = []

    class FailsAfterAnAwait:
        async def handle(self, event: IEvent, /) -> None:
            try:
                await asyncio.sleep(0)
            finally:
                raised.append(Boom("first, after an await"))
                raise raised[-1]

    class Fails:
        async def handle(self, event: IEvent, /) -> None:
            if when == "after an await":
                await asyncio.sleep(0)
            raised.append(Boom("second"))
            raise raised[-1]

    mediator = Mediator(
        EventRegistry().bind(OrderPlaced, [FailsAfterAnAwait, Fails]),
        publisher=GroupEventPublisher(limit),
    )
    with pytest.raises(ExceptionGroup) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    in_handler_order = sorted(raised, key=lambda error: error.args[0] != "first, after an await")
    assert raised and leaves(caught.value) == in_handler_order


class Alive:
    """An object that only a handler's frame refers to: it dies with the frame."""

    __slots__ = ("__weakref__",)


@dataclass(frozen=True)
class Weakly(IEvent):
    """An event that weak references can watch."""

    order_id: int


@pytest.mark.parametrize("failure", [Boom, Abort, KeyboardInterrupt, asyncio.CancelledError])
@every_setting
def test_a_failed_publish_leaves_no_reference_cycle(
    make: MakeMediator, failure: type[BaseException]
) -> None:
    watched: list[weakref.ref[object]] = []

    class Fails:
        async def handle(self, event: Weakly, /) -> None:
            alive = Alive()
            watched.extend([weakref.ref(self), weakref.ref(alive)])
            await asyncio.sleep(0)
            raise failure()

    class FailsToo(Fails):
        pass

    class Succeeds:
        async def handle(self, event: Weakly, /) -> None:
            alive = Alive()
            watched.extend([weakref.ref(self), weakref.ref(alive)])
            await asyncio.sleep(0)

    mediator = make(EventRegistry().bind(Weakly, [Fails, Succeeds, FailsToo]))

    async def caller() -> None:
        event = Weakly(order_id=1)
        watched.append(weakref.ref(event))
        try:
            await mediator.publish(event)
        except BaseException:
            pass
        del event

    gc.collect()
    gc.disable()
    try:
        run(caller())
        alive = [ref() for ref in watched if ref() is not None]
    finally:
        gc.enable()
    assert len(watched) >= 3
    assert alive == []


# --- concurrency ---------------------------------------------------------------------------------


def test_group_publisher_runs_handlers_concurrently() -> None:
    barrier_holder: list[asyncio.Barrier] = []

    class Meet:
        async def handle(self, event: IEvent, /) -> None:
            await barrier_holder[0].wait()

    class MeetToo:
        async def handle(self, event: IEvent, /) -> None:
            await barrier_holder[0].wait()

    class MeetThree:
        async def handle(self, event: IEvent, /) -> None:
            await barrier_holder[0].wait()

    mediator = Mediator(
        EventRegistry().bind(OrderPlaced, [Meet, MeetToo, MeetThree]),
        publisher=GroupEventPublisher(),
    )

    async def caller() -> None:
        barrier_holder.append(asyncio.Barrier(3))
        async with asyncio.timeout(5):
            await mediator.publish(OrderPlaced(order_id=1))

    run(caller())


@pytest.mark.parametrize("limit", [1, 2, 3, 8])
@pytest.mark.parametrize("fail_fast", [True, False])
def test_max_concurrency_bounds_running_handlers_and_live_tasks(
    limit: int, fail_fast: bool
) -> None:
    running: list[int] = []
    peaks: list[tuple[int, int]] = []

    class Track:
        async def handle(self, event: IEvent, /) -> None:
            running.append(1)
            peaks.append((len(running), len(asyncio.all_tasks())))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            running.pop()

    def new_track() -> type[Track]:
        class NewTrack(Track):
            pass

        return NewTrack

    handler_types = [new_track() for _ in range(20)]
    mediator = Mediator(
        EventRegistry().bind(OrderPlaced, handler_types),
        publisher=GroupEventPublisher(limit, fail_fast=fail_fast),
    )
    run(mediator.publish(OrderPlaced(order_id=1)))
    assert len(peaks) == 20
    assert max(handlers for handlers, _ in peaks) == limit
    # k child tasks besides the caller's, which is the one worker itself when k is 1.
    assert max(tasks for _, tasks in peaks) == (1 if limit == 1 else limit + 1)


def test_max_concurrency_is_per_publish_so_nested_publishes_cannot_deadlock() -> None:
    log: list[str] = []
    holder: list[Mediator] = []

    class Outer:
        async def handle(self, event: OrderPlaced, /) -> None:
            await holder[0].publish(OrderShipped(event.order_id))
            log.append("outer")

    class Inner:
        async def handle(self, event: OrderShipped, /) -> None:
            await asyncio.sleep(0)
            log.append("inner")

    class OuterToo:
        async def handle(self, event: OrderPlaced, /) -> None:
            await holder[0].publish(OrderShipped(event.order_id))
            log.append("outer")

    registry = EventRegistry().bind(OrderPlaced, [Outer, OuterToo]).bind(OrderShipped, [Inner])
    holder.append(Mediator(registry, publisher=GroupEventPublisher(max_concurrency=1)))

    async def caller() -> None:
        async with asyncio.timeout(5):
            await holder[0].publish(OrderPlaced(order_id=1))

    run(caller())
    assert log == ["inner", "outer", "inner", "outer"]


@pytest.mark.parametrize("value", [0, -1])
def test_max_concurrency_below_one_is_a_value_error(value: int) -> None:
    with pytest.raises(ValueError, match=f"got {value}; pass None for no limit"):
        GroupEventPublisher(max_concurrency=value)


@pytest.mark.parametrize("value", [True, "3", 1.5])
def test_max_concurrency_that_is_not_an_int_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="max_concurrency must be a positive int; got .*; pass None"):
        GroupEventPublisher(max_concurrency=unchecked(value))


@pytest.mark.parametrize("make", [SequentialEventPublisher, GroupEventPublisher])
def test_fail_fast_must_be_a_bool(make: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match="fail_fast must be True or False; got 'no'"):
        make(fail_fast="no")


def test_publishers_show_their_settings() -> None:
    assert repr(SequentialEventPublisher()) == "SequentialEventPublisher(fail_fast=True)"
    assert SequentialEventPublisher(fail_fast=False).fail_fast is False
    group = GroupEventPublisher(4, fail_fast=False)
    assert repr(group) == "GroupEventPublisher(max_concurrency=4, fail_fast=False)"
    assert (group.max_concurrency, group.fail_fast) == (4, False)


@pytest.mark.parametrize("limit", [None, 3])
def test_group_publisher_starts_no_handler_after_one_failed_at_once(limit: int | None) -> None:
    log: list[str] = []
    error = Boom("fails before its first await")
    registry = EventRegistry().bind(
        OrderPlaced,
        [recording(log, "first", raises=error), recording(log, "second"), recording(log, "third")],
    )
    mediator = Mediator(registry, publisher=GroupEventPublisher(limit))
    with pytest.raises(ExceptionGroup) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)
    assert log == ["first"]


def test_bounded_group_publisher_starts_no_handler_after_one_failed() -> None:
    log: list[str] = []

    class WaitsForever:
        async def handle(self, event: IEvent, /) -> None:
            log.append("waits")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                log.append("waits cancelled")
                raise

    error = Boom("second handler")
    registry = EventRegistry().bind(
        OrderPlaced,
        [WaitsForever, recording(log, "fails", raises=error), recording(log, "c"), recording(log, "d")],
    )
    # Three workers: the caller's task waits, one task fails, and the third task, whose first
    # step comes after that failure in the same loop iteration, must find nothing left to run.
    mediator = Mediator(registry, publisher=GroupEventPublisher(max_concurrency=3))
    with pytest.raises(ExceptionGroup) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)
    assert log == ["waits", "fails", "waits cancelled"]


def test_a_failure_cancels_the_handler_that_the_callers_own_task_runs() -> None:
    """Three workers, three handlers: one of the two that wait runs in the caller's task."""
    log: list[str] = []
    error = Boom("fails once the others started")

    class FailsOnceAllStarted:
        async def handle(self, event: IEvent, /) -> None:
            await when_started(log, "first started")
            await when_started(log, "last started")
            raise error

    registry = EventRegistry().bind(
        OrderPlaced,
        [
            blocks_until_cancelled(log, "first"),
            FailsOnceAllStarted,
            blocks_until_cancelled(log, "last"),
        ],
    )

    async def caller() -> int:
        mediator = Mediator(registry, publisher=GroupEventPublisher(max_concurrency=3))
        with pytest.raises(ExceptionGroup) as caught:
            await mediator.publish(OrderPlaced(order_id=1))
        assert caught.value.exceptions == (error,)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert run(caller()) == 0
    assert sorted(log) == ["first cancelled", "first started", "last cancelled", "last started"]


def test_group_publisher_keeps_a_first_handlers_error_raised_while_the_group_aborts() -> None:
    converted = Boom("raised instead of CancelledError")
    error = Boom("second handler")

    class ConvertsCancellation:
        async def handle(self, event: IEvent, /) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise converted from None

    registry = EventRegistry().bind(
        OrderPlaced, [ConvertsCancellation, recording([], "fails", raises=error)]
    )
    mediator = Mediator(registry, publisher=GroupEventPublisher())
    with pytest.raises(ExceptionGroup) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    assert set(caught.value.exceptions) == {converted, error}


@pytest.mark.parametrize("fail_fast", [True, False])
def test_group_handlers_run_in_child_tasks_so_their_context_stays_theirs(fail_fast: bool) -> None:
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="caller's")
    tasks: list[asyncio.Task[Any] | None] = []

    class SetsTenant:
        async def handle(self, event: IEvent, /) -> None:
            tasks.append(asyncio.current_task())
            tenant.set(type(self).__name__)

    class SetsTenantToo(SetsTenant):
        pass

    class SetsTenantThree(SetsTenant):
        pass

    mediator = Mediator(
        EventRegistry().bind(OrderPlaced, [SetsTenant, SetsTenantToo, SetsTenantThree]),
        publisher=GroupEventPublisher(fail_fast=fail_fast),
    )

    async def caller() -> str:
        await mediator.publish(OrderPlaced(order_id=1))
        assert asyncio.current_task() not in tasks
        return tenant.get()

    assert run(caller()) == "caller's"
    assert len(set(tasks)) == 3


# --- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 2])
def test_group_publisher_cancels_siblings_when_a_handler_fails(limit: int | None) -> None:
    cancelled: list[str] = []
    started = asyncio.Event()

    class Waits:
        async def handle(self, event: IEvent, /) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append("waits")
                raise

    class FailsOnceTheOtherWaits:
        async def handle(self, event: IEvent, /) -> None:
            await started.wait()
            raise Boom("stock service down")

    mediator = Mediator(
        EventRegistry().bind(OrderPlaced, [Waits, FailsOnceTheOtherWaits]),
        publisher=GroupEventPublisher(limit),
    )
    with pytest.raises(ExceptionGroup) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    assert [type(error) for error in caught.value.exceptions] == [Boom]
    assert cancelled == ["waits"]


@every_setting
def test_cancelling_the_caller_cancels_the_running_handlers_and_leaves_no_task(
    make: MakeMediator,
) -> None:
    cancelled: list[str] = []
    started = asyncio.Event()

    class Waits:
        async def handle(self, event: IEvent, /) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append("waits")
                raise

    class WaitsToo:
        async def handle(self, event: IEvent, /) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append("waits too")
                raise

    mediator = make(EventRegistry().bind(OrderPlaced, [Waits, WaitsToo]))

    async def caller() -> None:
        task = asyncio.create_task(mediator.publish(OrderPlaced(order_id=1)))
        await started.wait()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(caller())
    assert cancelled and set(cancelled) <= {"waits", "waits too"}


@group
def test_no_task_outlives_a_failed_group_publish(make: MakeMediator) -> None:
    registry = EventRegistry().bind(
        OrderPlaced, [recording([], "a", raises=Boom()), recording([], "b"), recording([], "c")]
    )

    async def caller() -> None:
        with pytest.raises(ExceptionGroup):
            await make(registry).publish(OrderPlaced(order_id=1))
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(caller())


@pytest.mark.parametrize("outcome", ["succeeds", "fails at once", "fails after an await"])
@every_setting
def test_publish_leaves_the_callers_cancelling_count_as_it_found_it(
    make: MakeMediator, outcome: str
) -> None:
    class Handler:
        async def handle(self, event: IEvent, /) -> None:
            if outcome == "fails after an await":
                await asyncio.sleep(0)
            if outcome != "succeeds":
                raise Boom(outcome)

    class Other:
        async def handle(self, event: IEvent, /) -> None:
            await asyncio.sleep(0)

    mediator = make(EventRegistry().bind(OrderPlaced, [Handler, Other]))

    async def caller() -> int:
        with contextlib.suppress(Exception):
            await mediator.publish(OrderPlaced(order_id=1))
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert run(caller()) == 0


@every_setting
def test_a_timeout_that_expires_after_a_failed_publish_raises_timeout_error(
    make: MakeMediator,
) -> None:
    registry = EventRegistry().bind(
        OrderPlaced, [recording([], "fails", raises=Boom()), recording([], "other")]
    )

    async def caller() -> None:
        async with asyncio.timeout(None) as timeout:
            with contextlib.suppress(Exception):
                await make(registry).publish(OrderPlaced(order_id=1))
            timeout.reschedule(asyncio.get_running_loop().time())
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        run(caller())


@pytest.mark.parametrize("reaction", ["propagates", "fails", "swallows"])
@every_setting
def test_a_timeout_that_expires_during_a_publish_raises_timeout_error(
    make: MakeMediator, reaction: str
) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(
        OrderPlaced, [blocks_until_cancelled(log, "blocks", reaction=reaction)]
    )

    async def expire(timeout: asyncio.Timeout) -> None:
        await when_started(log, "blocks started")
        timeout.reschedule(asyncio.get_running_loop().time())

    async def caller() -> int:
        timeout = asyncio.timeout(None)
        expiry = asyncio.create_task(expire(timeout))
        with pytest.raises(TimeoutError):
            async with timeout:
                await make(registry).publish(OrderPlaced(order_id=1))
        await expiry
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert run(caller()) == 0
    assert log == ["blocks started", "blocks cancelled"]


@every_setting
def test_a_timeout_that_does_not_expire_lets_the_publish_error_through(make: MakeMediator) -> None:
    error = Boom("declined")
    registry = EventRegistry().bind(
        OrderPlaced, [recording([], "other"), recording([], "fails", raises=error)]
    )

    async def caller() -> int:
        with pytest.raises((Boom, ExceptionGroup)) as caught:
            async with asyncio.timeout(60):
                await make(registry).publish(OrderPlaced(order_id=1))
        assert error in leaves(caught.value)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert run(caller()) == 0


@every_setting
def test_once_the_caller_is_cancelled_no_further_handler_starts(make: MakeMediator) -> None:
    log: list[str] = []
    swallows = blocks_until_cancelled(log, "swallows", reaction="swallows")
    registry = EventRegistry().bind(
        OrderPlaced, [swallows, recording(log, "later started"), recording(log, "last started")]
    )

    async def caller() -> None:
        publishing = asyncio.create_task(make(registry).publish(OrderPlaced(order_id=1)))
        await when_started(log, "swallows started")
        log.append("caller cancelled")
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(caller())
    after = log[log.index("caller cancelled") + 1 :]
    assert [entry for entry in after if entry.endswith("started")] == [], log


@pytest.mark.parametrize("quick_first", [True, False], ids=["quick first", "quick second"])
def test_a_worker_that_finishes_after_the_caller_was_cancelled_starts_no_other_handler(
    quick_first: bool,
) -> None:
    """Which worker gets which handler depends on the task factory: each order covers one."""
    log: list[str] = []
    gate = asyncio.Event()

    class Quick:
        async def handle(self, event: IEvent, /) -> None:
            log.append("quick started")
            await gate.wait()

    blocks = blocks_until_cancelled(log, "blocks")
    first_two: list[type[IEventHandler[IEvent]]] = [Quick, blocks] if quick_first else [blocks, Quick]
    registry = EventRegistry().bind(OrderPlaced, [*first_two, recording(log, "later started")])
    mediator = Mediator(registry, publisher=GroupEventPublisher(max_concurrency=2))

    async def caller() -> None:
        publishing = asyncio.create_task(mediator.publish(OrderPlaced(order_id=1)))
        await when_started(log, "quick started")
        await when_started(log, "blocks started")
        gate.set()  # the quick handler ends in the same loop turn as the caller is cancelled
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing

    run(caller())
    assert "later started" not in log


@pytest.mark.parametrize("limit", [None, 2])
def test_a_caller_cancelled_while_a_failed_group_publish_cleans_up_is_cancelled(
    limit: int | None,
) -> None:
    log: list[str] = []
    cleaned = asyncio.Event()
    error = Boom("declined")

    class SlowCleanup:
        async def handle(self, event: IEvent, /) -> None:
            log.append("slow started")
            try:
                await asyncio.Event().wait()
            finally:
                log.append("slow cleaning up")
                await cleaned.wait()

    class FailsOnceTheOtherStarted:
        async def handle(self, event: IEvent, /) -> None:
            await when_started(log, "slow started")
            raise error

    mediator = Mediator(
        EventRegistry().bind(OrderPlaced, [SlowCleanup, FailsOnceTheOtherStarted]),
        publisher=GroupEventPublisher(limit),
    )

    async def caller() -> None:
        publishing = asyncio.create_task(mediator.publish(OrderPlaced(order_id=1)))
        await when_started(log, "slow cleaning up")
        publishing.cancel()
        cleaned.set()
        with pytest.raises(asyncio.CancelledError) as caught:
            await publishing
        assert publishing.cancelled()
        assert caught.value.__cause__ is not None
        assert leaves(caught.value.__cause__) == [error]

    run(caller())


@collecting
def test_errors_collected_before_the_caller_was_cancelled_are_chained_to_the_cancellation(
    make: MakeMediator,
) -> None:
    log: list[str] = []
    error = Boom("declined")
    registry = EventRegistry().bind(
        OrderPlaced, [recording(log, "fails", raises=error), blocks_until_cancelled(log, "blocks")]
    )

    async def caller() -> None:
        publishing = asyncio.create_task(make(registry).publish(OrderPlaced(order_id=1)))
        await when_started(log, "blocks started")
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError) as caught:
            await publishing
        assert caught.value.__cause__ is not None
        assert leaves(caught.value.__cause__) == [error]

    run(caller())


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
@collecting
def test_errors_collected_before_a_bare_base_exception_are_chained_to_it(
    make: MakeMediator, error_type: type[BaseException]
) -> None:
    log: list[str] = []
    first, ending = Boom("declined"), error_type()
    registry = EventRegistry().bind(
        OrderPlaced,
        [recording(log, "fails", raises=first), recording(log, "ends", raises=ending)],
    )

    async def caller() -> None:
        try:
            await make(registry).publish(OrderPlaced(order_id=1))
        except error_type as caught:
            assert caught is ending
            assert caught.__cause__ is not None
            assert leaves(caught.__cause__) == [first]
        else:
            raise AssertionError("the publish should have raised")

    run(caller())



@every_setting
def test_once_a_handler_swallowed_the_callers_cancellation_no_follow_up_starts(
    make: MakeMediator,
) -> None:
    """The CancelledError that reaches the caller names the event whose handler swallowed it."""
    log: list[str] = []

    class SwallowsThenLeaves:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: OrderPlaced, /) -> None:
            log.append("swallows started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.events.append(OrderShipped(event.order_id))

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [SwallowsThenLeaves])
        .bind(OrderShipped, [recording(log, "follow-up started")])
    )

    async def caller() -> None:
        publishing = asyncio.create_task(make(registry).publish(OrderPlaced(order_id=1)))
        await when_started(log, "swallows started")
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError) as caught:
            await publishing
        assert str(caught.value) == "a handler of OrderPlaced swallowed the caller's cancellation"

    run(caller())
    assert log == ["swallows started"]


@pytest.mark.parametrize("limit", [None, 2])
def test_the_group_publisher_never_cancels_or_uncancels_the_callers_task(limit: int | None) -> None:
    """A sibling that takes back the cancel it got cannot take the caller's own cancel with it."""
    log: list[str] = []
    caller_task: list[asyncio.Task[Any]] = []

    class Uncancels:
        async def handle(self, event: IEvent, /) -> None:
            log.append("uncancels started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None and task is not caller_task[0]
                task.uncancel()
                log.append("uncancels took its cancel back")

    class CancelsTheCallerThenFails:
        async def handle(self, event: IEvent, /) -> None:
            await when_started(log, "uncancels started")
            caller_task[0].cancel()  # as a timeout around the publish would
            raise Boom("failed")

    mediator = Mediator(
        EventRegistry().bind(OrderPlaced, [Uncancels, CancelsTheCallerThenFails]),
        publisher=GroupEventPublisher(limit),
    )

    async def caller() -> int:
        task = asyncio.current_task()
        assert task is not None
        caller_task.append(task)
        try:
            await mediator.publish(OrderPlaced(order_id=1))
        except asyncio.CancelledError:
            return task.uncancel() + 1
        raise AssertionError("the caller's cancellation was lost")

    assert run(caller()) == 1
    assert log == ["uncancels started", "uncancels took its cancel back"]


@pytest.mark.parametrize("limit", [None, 1, 2, 3])
def test_the_group_publisher_runs_a_handler_in_the_callers_task_only_when_it_runs_alone(
    limit: int | None,
) -> None:
    """Alone: one handler, or max_concurrency=1. Else each in a child task, and with no limit
    each handler in a child task of its own, also when none of them ever suspends."""
    tasks: list[asyncio.Task[Any] | None] = []

    class Notes:
        async def handle(self, event: IEvent, /) -> None:
            tasks.append(asyncio.current_task())

    def new_notes() -> type[Notes]:
        class Again(Notes):
            pass

        return Again

    async def caller(count: int) -> asyncio.Task[Any] | None:
        registry = EventRegistry().bind(OrderPlaced, [new_notes() for _ in range(count)])
        await Mediator(registry, publisher=GroupEventPublisher(limit)).publish(OrderPlaced(order_id=1))
        return asyncio.current_task()

    for count in (1, 3):
        tasks.clear()
        own = run(caller(count))
        alone = count == 1 or limit == 1
        assert [task is own for task in tasks] == [alone] * count
        if limit is None and count > 1:
            assert len(set(tasks)) == count


def test_a_cancellation_still_pending_when_the_handlers_end_is_the_one_the_caller_gets() -> None:
    """A handler that cancels its own task and returns before an await leaves the cancellation
    pending: the caller gets that one, and no second one after it."""

    class CancelsItsTask:
        async def handle(self, event: IEvent, /) -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel("from the handler")

    mediator = Mediator(EventRegistry().bind(OrderPlaced, [CancelsItsTask]))

    async def caller() -> int:
        task = asyncio.current_task()
        assert task is not None
        with pytest.raises(asyncio.CancelledError, match="from the handler"):
            await mediator.publish(OrderPlaced(order_id=1))
        cancelling = task.uncancel()
        await asyncio.sleep(0)  # a second cancellation would arrive here
        return cancelling

    assert run(caller()) == 0


def test_publish_outside_an_asyncio_task_says_to_await_it_from_one() -> None:
    mediator = Mediator(EventRegistry().bind(OrderPlaced, [recording([], "a")]))
    outcome: list[BaseException] = []

    def drive_by_hand() -> None:
        coroutine = mediator.publish(OrderPlaced(order_id=1))
        try:
            coroutine.send(None)
        except BaseException as error:
            outcome.append(error)
        finally:
            coroutine.close()

    async def caller() -> None:
        asyncio.get_running_loop().call_soon(drive_by_hand)
        await asyncio.sleep(0)

    run(caller())
    assert [type(error) for error in outcome] == [RuntimeError]
    assert str(outcome[0]).startswith("publish runs in an asyncio task; await it from a coroutine")


# --- dispatch along the class hierarchy ---------------------------------------------------------


@sequential
def test_publish_runs_exact_handlers_then_base_class_handlers_in_mro_order(
    make: MakeMediator,
) -> None:
    log: list[str] = []
    registry = (
        EventRegistry()
        .bind(IEvent, [recording(log, "audit")])
        .bind(DomainEvent, [recording(log, "domain")])
        .bind(OrderPlaced, [recording(log, "placed"), recording(log, "placed 2")])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == ["placed", "placed 2", "domain", "audit"]


def test_a_handler_bound_at_several_levels_runs_once_at_its_first_place() -> None:
    log: list[str] = []
    audit = recording(log, "audit")
    registry = (
        EventRegistry()
        .bind(IEvent, [audit])
        .bind(DomainEvent, [recording(log, "domain")])
        .bind(OrderPlaced, [audit])
    )
    run(Mediator(registry).publish(OrderPlaced(order_id=1)))
    assert log == ["audit", "domain"]
    assert registry.handlers_for(DomainEvent)[1] is audit


def test_one_binding_on_a_base_class_reaches_every_subclass() -> None:
    log: list[str] = []
    registry = EventRegistry().bind(DomainEvent, [recording(log, "forward")])
    mediator = Mediator(registry)

    async def publish_all() -> None:
        await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(OrderShipped(2))
        await mediator.publish(UserSignedUp(user_id=3))

    run(publish_all())
    assert log == ["forward", "forward"]


def test_a_bind_after_publishing_takes_effect_on_the_next_publish() -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "first")])
    mediator = Mediator(registry)
    run(mediator.publish(OrderPlaced(order_id=1)))
    registry.bind(DomainEvent, [recording(log, "base")])
    run(mediator.publish(OrderPlaced(order_id=2)))
    registry.merge(EventRegistry().bind(OrderPlaced, [recording(log, "merged")]))
    run(mediator.publish(OrderPlaced(order_id=3)))
    assert log == ["first", "first", "base", "first", "merged", "base"]


# --- registration --------------------------------------------------------------------------------


def test_bind_returns_the_registry_so_binds_chain() -> None:
    registry = EventRegistry()
    assert registry.bind(OrderPlaced, []) is registry
    assert registry.merge() is registry
    assert registry.freeze() is registry


def test_handlers_for_lists_what_a_publish_of_that_exact_type_runs() -> None:
    a, b, base = recording([], "a"), recording([], "b"), recording([], "base")
    registry = EventRegistry().bind(OrderPlaced, [a, b]).bind(DomainEvent, [base])
    assert registry.handlers_for(OrderPlaced) == (a, b, base)
    assert registry.handlers_for(DomainEvent) == (base,)
    assert registry.handlers_for(UserSignedUp) == ()


def test_merge_appends_other_registries_bindings_in_order() -> None:
    a, b, c, d = (recording([], name) for name in "abcd")
    orders = EventRegistry().bind(OrderPlaced, [a])
    billing = EventRegistry().bind(OrderPlaced, [b]).bind(UserSignedUp, [c])
    shipping = EventRegistry().bind(OrderPlaced, [d])
    orders.merge(billing, shipping)
    assert orders.handlers_for(OrderPlaced) == (a, b, d)
    assert orders.handlers_for(UserSignedUp) == (c,)
    assert billing.handlers_for(OrderPlaced) == (b,)


def test_registry_shows_how_many_event_types_and_handlers_it_binds() -> None:
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a"), recording([], "b")])
    registry.bind(UserSignedUp, [recording([], "c")]).bind(OrderShipped, [])
    assert repr(registry) == "EventRegistry(event_types=2, handlers=3, middleware=0, frozen=False)"


def test_a_frozen_registry_refuses_bind_and_merge_and_keeps_dispatching() -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a")]).freeze()
    assert registry.frozen
    with pytest.raises(RegistryFrozenError, match="is frozen and cannot bind"):
        registry.bind(UserSignedUp, [recording(log, "b")])
    with pytest.raises(RegistryFrozenError, match="is frozen and cannot merge"):
        registry.merge(EventRegistry())
    run(Mediator(registry).publish(OrderPlaced(order_id=1)))
    assert log == ["a"]
    assert registry.handlers_for(UserSignedUp) == ()


def test_errors_derive_from_mediator_error_and_the_fitting_builtin() -> None:
    assert issubclass(DuplicateHandlerError, MediatorError) and issubclass(
        DuplicateHandlerError, ValueError
    )
    assert issubclass(RegistryFrozenError, MediatorError) and issubclass(
        RegistryFrozenError, RuntimeError
    )


def test_binding_a_handler_twice_in_one_call_is_a_duplicate_and_changes_nothing() -> None:
    a = recording([], "a")
    registry = EventRegistry()
    with pytest.raises(DuplicateHandlerError, match="handler a is bound to OrderPlaced twice"):
        registry.bind(OrderPlaced, [a, a])
    assert registry.handlers_for(OrderPlaced) == ()


def test_binding_a_handler_twice_in_later_calls_is_a_duplicate_and_changes_nothing() -> None:
    a, b = recording([], "a"), recording([], "b")
    registry = EventRegistry().bind(OrderPlaced, [a])
    with pytest.raises(DuplicateHandlerError, match="handler a is bound to OrderPlaced twice"):
        registry.bind(OrderPlaced, [b, a])
    assert registry.handlers_for(OrderPlaced) == (a,)


def test_merging_a_handler_bound_twice_is_a_duplicate_and_changes_nothing() -> None:
    a, b = recording([], "a"), recording([], "b")
    registry = EventRegistry().bind(OrderPlaced, [a])
    other = EventRegistry().bind(UserSignedUp, [b]).bind(OrderPlaced, [a])
    with pytest.raises(DuplicateHandlerError, match="handler a is bound to OrderPlaced twice"):
        registry.merge(other)
    assert registry.handlers_for(OrderPlaced) == (a,)
    assert registry.handlers_for(UserSignedUp) == ()


def test_merge_rejects_what_is_not_a_registry() -> None:
    registry = EventRegistry()
    with pytest.raises(TypeError, match=r"merge takes an EventRegistry; got \{\}"):
        registry.merge(unchecked({}))


def test_mediator_rejects_a_registry_publisher_or_resolve_of_the_wrong_kind() -> None:
    with pytest.raises(TypeError, match=r"Mediator takes an EventRegistry; got \[\]"):
        Mediator(unchecked([]))
    with pytest.raises(TypeError, match="publisher 3 is not an EventPublisher instance"):
        Mediator(EventRegistry(), publisher=unchecked(3))
    with pytest.raises(TypeError, match="resolve 'container' is not callable"):
        Mediator(EventRegistry(), resolve=unchecked("container"))


def test_bind_rejects_an_event_type_that_is_not_a_class() -> None:
    registry = EventRegistry()
    with pytest.raises(TypeError, match=r"event type OrderPlaced\(order_id=1\) is not a class"):
        registry.bind(unchecked(OrderPlaced(order_id=1)), [])


class SendEmail:
    async def handle(self, event: OrderPlaced, /) -> None:
        pass


async def send_email(event: OrderPlaced) -> None:
    pass


class SyncHandle:
    def handle(self, event: OrderPlaced, /) -> None:
        pass


class NoHandle:
    pass


class Abstract(EventHandler[OrderPlaced]):
    pass


class MisspeltHandle(IEventHandler[OrderPlaced]):
    """Declares the protocol but misspells its method: only the protocol's empty stub remains."""

    async def hande(self, event: OrderPlaced, /) -> None:
        pass


class HandlerProtocol(IEventHandler[OrderPlaced], Protocol):
    async def handle(self, event: OrderPlaced, /) -> None: ...


class Audit(Generic[_EventT]):
    async def handle(self, event: _EventT, /) -> None:
        pass


BAD_HANDLERS: list[tuple[object, str]] = [
    (SendEmail(), r"handler <.*SendEmail object at .*> bound to OrderPlaced is an instance; "
     r"bind the class SendEmail instead"),
    (send_email, r"handler <function send_email at .*> bound to OrderPlaced is not a class"),
    ("SendEmail", r"handler 'SendEmail' bound to OrderPlaced is not a class"),
    (NoHandle, r"handler NoHandle bound to OrderPlaced has no handle method"),
    (SyncHandle, r"handler SyncHandle bound to OrderPlaced has a handle that is not `async def`"),
    (Abstract, r"handler Abstract bound to OrderPlaced is abstract; implement handle"),
    (MisspeltHandle, r"handler MisspeltHandle bound to OrderPlaced has only the empty handle of "
     r"IEventHandler; define `async def handle\(self, event\)` on MisspeltHandle"),
    (HandlerProtocol, r"handler HandlerProtocol bound to OrderPlaced is a protocol class; bind a "
     r"class that implements it"),
    (Audit[OrderPlaced], r"handler .*Audit\[.*OrderPlaced\] bound to OrderPlaced is a "
     r"parametrised generic; bind Audit"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_HANDLERS, ids=lambda value: str(value)[:20])
def test_bind_rejects_a_bad_handler_by_name_and_changes_nothing(bad: object, message: str) -> None:
    registry = EventRegistry()
    with pytest.raises(TypeError, match=message):
        registry.bind(OrderPlaced, [SendEmail, unchecked(bad)])
    assert registry.handlers_for(OrderPlaced) == ()


@pytest.mark.parametrize("bad", [SendEmail, "SendEmail"])
def test_bind_rejects_a_lone_handler_where_a_list_is_expected(bad: object) -> None:
    with pytest.raises(TypeError, match="bind takes a list of handler classes"):
        EventRegistry().bind(OrderPlaced, unchecked(bad))


def test_bind_accepts_handlers_that_do_not_inherit_and_name_the_event_as_they_like() -> None:
    log: list[str] = []

    class Plain:
        async def handle(self, placed: OrderPlaced) -> None:
            log.append(f"plain {placed.order_id}")

    class Inherits(EventHandler[OrderPlaced]):
        async def handle(self, event: OrderPlaced, /) -> None:
            log.append(f"inherits {event.order_id}")

    run(
        Mediator(EventRegistry().bind(OrderPlaced, [Plain, Inherits])).publish(
            OrderPlaced(order_id=5)
        )
    )
    assert log == ["plain 5", "inherits 5"]


@pytest.mark.parametrize(("bad", "shown"), [(42, "42"), ([], r"\[\]")])
def test_handlers_for_rejects_what_is_not_a_class(bad: object, shown: str) -> None:
    with pytest.raises(TypeError, match=f"event type {shown} is not a class"):
        EventRegistry().handlers_for(unchecked(bad))


def test_the_registry_shows_its_bindings_read_only_in_bind_order() -> None:
    a, b, c = recording([], "a"), recording([], "b"), recording([], "c")
    m = wrapping([], "m")
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [a, b])
        .bind_middleware(IEvent, [m])
        .bind(IEvent, [c, a])
    )
    assert dict(registry.bindings) == {OrderPlaced: (a, b), IEvent: (c, a)}
    assert dict(registry.middleware_bindings) == {IEvent: (m,)}
    assert registry.classes == (a, b, m, c)
    with pytest.raises(TypeError):
        unchecked(registry.bindings)[UserSignedUp] = (a,)
    registry.merge(EventRegistry().bind(UserSignedUp, [b]))
    assert registry.bindings[UserSignedUp] == (b,)
    assert registry.classes == (a, b, m, c)


def test_an_empty_registry_is_falsy() -> None:
    assert not EventRegistry()
    assert not EventRegistry().bind(OrderPlaced, [])
    assert EventRegistry().bind(OrderPlaced, [recording([], "a")])
    assert EventRegistry().bind_middleware(IEvent, [wrapping([], "m")])


def test_every_bound_class_can_be_built_at_start_up_from_the_registry() -> None:
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [recording([], "a")])
        .bind_middleware(IEvent, [wrapping([], "m")])
    )
    built = [cls() for cls in registry.classes]
    assert [type(instance).__name__ for instance in built] == ["a", "m"]


class TakesNoEvent:
    async def handle(self) -> None:
        pass


class TakesTheEventByKeyword:
    async def handle(self, *, event: OrderPlaced) -> None:
        pass


class NeedsMore:
    async def handle(self, event: OrderPlaced, extra: int, /) -> None:
        pass


@pytest.mark.parametrize("bad", [TakesNoEvent, TakesTheEventByKeyword, NeedsMore])
def test_bind_refuses_a_handle_that_cannot_take_the_event_positionally(bad: type) -> None:
    registry = EventRegistry()
    with pytest.raises(
        TypeError,
        match=rf"handler {bad.__name__} bound to OrderPlaced has handle\(.*\) -> None, not "
        rf"handle\(event\); define `async def handle\(self, event\)`",
    ):
        registry.bind(OrderPlaced, [SendEmail, unchecked(bad)])
    assert registry.handlers_for(OrderPlaced) == ()


def test_bind_middleware_refuses_a_handle_that_cannot_take_event_handler_and_call_next() -> None:
    with pytest.raises(
        TypeError,
        match=r"middleware SendEmail bound to IEvent has handle\(self, event: .*OrderPlaced, /\) "
        r"-> None, not handle\(event, handler, call_next\)",
    ):
        EventRegistry().bind_middleware(IEvent, [unchecked(SendEmail)])


class StaticHandle:
    @staticmethod
    async def handle(event: OrderPlaced, /) -> None:
        pass


class RealHandleInAProtocol(IEventHandler[OrderPlaced], Protocol):
    """A protocol base whose `handle` does real work, for its implementations to inherit."""

    async def handle(self, event: OrderPlaced, /) -> None:
        OrderLog.entries.append(f"handled {event.order_id}")


class InheritsARealHandle(RealHandleInAProtocol):
    pass


class OrderLog:
    entries: list[str] = []


def test_bind_accepts_a_real_handle_inherited_from_a_protocol_base_and_a_static_one() -> None:
    OrderLog.entries.clear()
    # unchecked: ty does not take a static method for the protocol's method, as the others do.
    registry = EventRegistry().bind(OrderPlaced, [InheritsARealHandle, unchecked(StaticHandle)])
    run(Mediator(registry).publish(OrderPlaced(order_id=3)))
    assert OrderLog.entries == ["handled 3"]


@pytest.mark.parametrize(
    "unordered",
    [{SendEmail}, frozenset([SendEmail]), {SendEmail: None}.keys(), (cls for cls in [SendEmail])],
    ids=["set", "frozenset", "dict keys", "generator"],
)
def test_bind_and_bind_middleware_refuse_a_collection_without_an_order(unordered: object) -> None:
    registry = EventRegistry()
    with pytest.raises(TypeError, match=r"bind takes a list of handler classes for OrderPlaced, "
                       r"in the order they run; got .*; write \[\.\.\.\]"):
        registry.bind(OrderPlaced, unchecked(unordered))
    with pytest.raises(TypeError, match="bind_middleware takes a list of middleware classes"):
        registry.bind_middleware(OrderPlaced, unchecked(unordered))
    assert not registry


@pytest.mark.parametrize(
    "given",
    [lambda: int, lambda: dict, not_marked, lambda: type(OrderPlaced)],
    ids=["int", "dict", "pydantic model", "metaclass"],
)
def test_bind_and_bind_middleware_refuse_an_event_type_that_is_not_an_event_class(
    given: Callable[[], type],
) -> None:
    not_event = given()
    registry = EventRegistry()
    message = rf"{not_event.__qualname__} is not an event class; subclass IEvent, or declare"
    with pytest.raises(TypeError, match=message):
        registry.bind(unchecked(not_event), [])
    with pytest.raises(TypeError, match=message):
        registry.bind_middleware(unchecked(not_event), [])
    with pytest.raises(TypeError, match=message):
        registry.handlers_for(unchecked(not_event))
    assert not registry


class HookedHash(type):
    """A metaclass whose classes run `HookedHash.hook` when hashed, once."""

    hook: list[Callable[[], None]] = []

    def __hash__(cls) -> int:
        while HookedHash.hook:
            HookedHash.hook.pop()()
        return id(cls)


def test_a_bind_during_a_lookup_is_seen_by_the_next_lookup() -> None:
    """As when another thread binds while a lookup computes the plan from the bindings before."""
    first = recording([], "first")
    late = recording([], "late")
    hooked: type[IEventHandler[IEvent]] = unchecked(HookedHash("Hooked", (), {"handle": first.handle}))
    registry = EventRegistry().bind(OrderPlaced, [hooked])
    def bind_late() -> None:
        registry.bind(OrderPlaced, [late])

    HookedHash.hook.append(bind_late)
    assert registry.handlers_for(OrderPlaced) == (hooked,)  # computed before the bind landed
    assert registry.handlers_for(OrderPlaced) == (hooked, late)


def test_binds_in_other_threads_are_seen_by_lookups_in_this_one() -> None:
    registry = EventRegistry()
    classes = [recording([], f"h{index}") for index in range(200)]

    def bind_all() -> None:
        for cls in classes:
            registry.bind(OrderPlaced, [cls])

    binder = threading.Thread(target=bind_all)
    binder.start()
    while binder.is_alive():
        registry.handlers_for(OrderPlaced)
    binder.join()
    assert registry.handlers_for(OrderPlaced) == tuple(classes)


# --- resolution ----------------------------------------------------------------------------------


def test_a_plain_resolve_builds_every_handler_before_the_first_runs() -> None:
    log: list[str] = []

    def resolve(handler_type: type[_T], /) -> _T:
        log.append(f"build {handler_type.__name__}")
        return handler_type()

    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
    run(Mediator(registry, resolve=resolve).publish(OrderPlaced(order_id=1)))
    assert log == ["build a", "build b", "a", "b"]


def test_an_async_resolve_is_awaited_for_every_handler_before_the_first_runs() -> None:
    log: list[str] = []

    async def resolve(handler_type: type[_T], /) -> _T:
        await asyncio.sleep(0)
        log.append(f"build {handler_type.__name__}")
        return handler_type()

    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
    run(Mediator(registry, resolve=resolve).publish(OrderPlaced(order_id=1)))
    assert log == ["build a", "build b", "a", "b"]


@every_setting
def test_when_building_a_handler_fails_no_handler_runs(make: MakeMediator) -> None:
    log: list[str] = []
    error = Boom("no database")

    class Unbuildable:
        def __init__(self) -> None:
            raise error

        async def handle(self, event: IEvent, /) -> None:
            log.append("unbuildable")

    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), Unbuildable])
    with pytest.raises(Boom) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value is error
    assert log == []


class RecordsBuilding:
    built: list[str] = []

    def __init__(self) -> None:
        RecordsBuilding.built.append(f"build {type(self).__name__}")


class BuildsInInit:
    def __init__(self) -> None:
        RecordsBuilding.built.append(f"build {type(self).__name__}")


class BuildsThroughMixin(EventHandler[IEvent], RecordsBuilding):
    """Its __init__ comes from a base after EventHandler in the MRO."""


class BuildsInNew:
    def __new__(cls) -> "BuildsInNew":
        RecordsBuilding.built.append(f"build {cls.__name__}")
        return super().__new__(cls)


class BuildingMeta(type):
    def __call__(cls) -> object:
        RecordsBuilding.built.append(f"build {cls.__name__}")
        return super().__call__()


class BuildsInMetaclass(metaclass=BuildingMeta):
    pass


@pytest.mark.parametrize(
    "base", [BuildsInInit, BuildsThroughMixin, BuildsInNew, BuildsInMetaclass]
)
@every_setting
def test_every_handler_is_built_before_the_first_runs(make: MakeMediator, base: type) -> None:
    """Whatever building a handler class runs, it runs for all of them before any handles."""
    log = RecordsBuilding.built
    log.clear()

    def handler_class(name: str) -> type[IEventHandler[IEvent]]:
        async def handle(self: object, event: IEvent, /) -> None:
            log.append(f"run {name}")

        built: type[IEventHandler[IEvent]] = unchecked(type(base)(name, (base,), {"handle": handle}))
        return built

    registry = EventRegistry().bind(OrderPlaced, [handler_class("A"), handler_class("B")])
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log[:2] == ["build A", "build B"]
    assert sorted(log[2:]) == ["run A", "run B"]


def test_a_custom_publisher_receives_built_handlers_and_the_event() -> None:
    seen: list[object] = []

    async def publisher(handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        seen.extend([len(handlers), event])

    event = OrderPlaced(order_id=1)
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a"), recording([], "b")])
    run(Mediator(registry, publisher=publisher).publish(event))
    assert seen == [2, event]


def test_mediator_rejects_a_publisher_class_in_place_of_an_instance() -> None:
    with pytest.raises(TypeError, match=r"publisher GroupEventPublisher is not an EventPublisher "
                       r"instance; pass GroupEventPublisher\(\)"):
        Mediator(EventRegistry(), publisher=unchecked(GroupEventPublisher))


def test_a_resolve_may_return_any_awaitable() -> None:
    log: list[str] = []

    @types.coroutine
    def generator_based(handler_type: type[_T], /) -> Generator[Any, Any, _T]:
        yield from asyncio.sleep(0).__await__()
        log.append(f"build {handler_type.__name__}")
        return handler_type()

    def resolve(handler_type: type[_T], /) -> Awaitable[_T]:
        return generator_based(handler_type)

    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
    run(Mediator(registry, resolve=resolve).publish(OrderPlaced(order_id=1)))
    assert log == ["build a", "build b", "a", "b"]


@every_setting
def test_every_handler_is_built_before_the_first_runs_even_after_a_class_is_patched(
    make: MakeMediator,
) -> None:
    log: list[str] = []

    class First:
        async def handle(self, event: IEvent, /) -> None:
            log.append("first ran")

    class Second:
        async def handle(self, event: IEvent, /) -> None:
            log.append("second ran")

    mediator = make(EventRegistry().bind(OrderPlaced, [First, Second]))
    run(mediator.publish(OrderPlaced(order_id=1)))
    log.clear()
    error = Boom("no database")
    with mock.patch.object(Second, "__init__", side_effect=error):
        with pytest.raises(Boom) as caught:
            run(mediator.publish(OrderPlaced(order_id=2)))
    assert caught.value is error
    assert log == []


def test_mediator_shows_its_parts() -> None:
    mediator = Mediator(EventRegistry(), publisher=GroupEventPublisher(3))
    assert repr(mediator) == (
        "Mediator(EventRegistry(event_types=0, handlers=0, middleware=0, frozen=False), "
        "publisher=GroupEventPublisher(max_concurrency=3, fail_fast=True), "
        "max_depth=32, max_follow_ups=10000)"
    )


def test_a_handler_that_needs_arguments_published_without_resolve_says_to_pass_resolve() -> None:
    class NeedsAMailer:
        def __init__(self, mailer: object) -> None:
            self.mailer = mailer

        async def handle(self, event: OrderPlaced, /) -> None:
            pass

    mediator = Mediator(EventRegistry().bind(OrderPlaced, [NeedsAMailer]))
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'mailer'") as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    name = NeedsAMailer.__qualname__
    assert caught.value.__notes__ == [
        f"Mediator builds {name} as {name}(); if it takes arguments, pass Mediator(resolve=...) "
        f"a function that builds it"
    ]


def test_a_type_error_raised_while_building_a_handler_keeps_its_own_message() -> None:
    class FailsToBuild:
        def __init__(self) -> None:
            raise TypeError("a bug in the constructor")

        async def handle(self, event: OrderPlaced, /) -> None:
            pass

    mediator = Mediator(EventRegistry().bind(OrderPlaced, [FailsToBuild]))
    with pytest.raises(TypeError) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    assert str(caught.value) == "a bug in the constructor"


def test_a_type_error_from_a_resolve_of_ones_own_gets_no_note_about_resolve() -> None:
    def resolve(cls: type[_T], /) -> _T:
        raise TypeError(f"the container cannot build {cls.__name__}")

    mediator = Mediator(EventRegistry().bind(OrderPlaced, [SendEmail]), resolve=resolve)
    with pytest.raises(TypeError) as caught:
        run(mediator.publish(OrderPlaced(order_id=1)))
    assert str(caught.value) == "the container cannot build SendEmail"
    assert not hasattr(caught.value, "__notes__")


# --- follow-up events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentTaken(DomainEvent):
    order_id: int


def leaving(
    log: list[str], name: str, *follow_ups: IEvent, sleeps: int = 0
) -> type[IEventHandler[IEvent]]:
    """A handler class that logs `name` with the event, sleeps, and leaves `follow_ups`."""

    class Leaves:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: IEvent, /) -> None:
            log.append(f"{name} {type(event).__name__}")
            for _ in range(sleeps):
                await asyncio.sleep(0)
            self.events.extend(follow_ups)

    Leaves.__name__ = Leaves.__qualname__ = name
    return Leaves


def bound(registry: EventRegistry, event_type: type, *handlers: type) -> EventRegistry:
    """`registry.bind(event_type, handlers)` for handler classes the checkers cannot follow."""
    return registry.bind(unchecked(event_type), unchecked(list(handlers)))


@every_setting
def test_follow_ups_are_published_before_publish_returns(make: MakeMediator) -> None:
    log: list[str] = []
    registry = bound(EventRegistry(), OrderPlaced, leaving(log, "pay", PaymentTaken(order_id=1)))
    bound(registry, PaymentTaken, leaving(log, "ship", OrderShipped(1)))
    bound(registry, OrderShipped, leaving(log, "notify"))

    async def caller() -> None:
        await make(registry).publish(OrderPlaced(order_id=1))
        log.append("returned")

    run(caller())
    assert log == ["pay OrderPlaced", "ship PaymentTaken", "notify OrderShipped", "returned"]


@every_setting
def test_follow_ups_come_after_every_handler_of_their_cause_and_its_audit(
    make: MakeMediator,
) -> None:
    log: list[str] = []
    registry = bound(
        EventRegistry(),
        OrderPlaced,
        leaving(log, "pay", PaymentTaken(order_id=1)),
        leaving(log, "slow", sleeps=3),
    )
    bound(registry, PaymentTaken, leaving(log, "ship"))
    bound(registry, IEvent, leaving(log, "audit"))
    run(make(registry).publish(OrderPlaced(order_id=1)))
    first_level = {"pay OrderPlaced", "slow OrderPlaced", "audit OrderPlaced"}
    assert set(log[:3]) == first_level
    assert log[3:] == ["ship PaymentTaken", "audit PaymentTaken"]


@dataclass(frozen=True)
class Level(IEvent):
    name: str


@every_setting
def test_follow_ups_go_breadth_first_in_the_bind_order_of_the_handlers_that_left_them(
    make: MakeMediator,
) -> None:
    log: list[str] = []

    class Record:
        async def handle(self, event: Level, /) -> None:
            log.append(event.name)

    class FirstBoundLastToFinish:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: OrderPlaced, /) -> None:
            for _ in range(5):
                await asyncio.sleep(0)
            self.events += [Level("b1"), Level("b2")]

    class SecondBoundFirstToFinish:
        events: tuple[IEvent, ...] = ()

        async def handle(self, event: OrderPlaced, /) -> None:
            self.events = (Level("c1"),)

    class LeavesTheNextLevel:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: Level, /) -> None:
            if len(event.name) == 2:
                self.events.append(Level(event.name + "-next"))

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [FirstBoundLastToFinish, SecondBoundFirstToFinish])
        .bind(Level, [Record, LeavesTheNextLevel])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == ["b1", "b2", "c1", "b1-next", "b2-next", "c1-next"]


def test_a_list_of_follow_ups_is_emptied_as_it_is_taken_so_a_reused_handler_never_repeats() -> None:
    log: list[str] = []

    class PaysTheFirstOrderOnly:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: OrderPlaced, /) -> None:
            log.append(f"placed {event.order_id}")
            if event.order_id == 1:
                self.events.append(PaymentTaken(order_id=1))

    shared = PaysTheFirstOrderOnly()

    def resolve(cls: type[_T], /) -> _T:
        reused: _T = shared if isinstance(shared, cls) else cls()
        return reused

    registry = EventRegistry().bind(OrderPlaced, [PaysTheFirstOrderOnly])
    bound(registry, PaymentTaken, leaving(log, "ship"))
    mediator = Mediator(registry, resolve=resolve)

    async def twice() -> None:
        await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(OrderPlaced(order_id=2))

    run(twice())
    assert log == ["placed 1", "ship PaymentTaken", "placed 2"]
    assert shared.events == []


def test_follow_ups_may_come_from_a_property_or_a_tuple() -> None:
    log: list[str] = []

    class FromProperty:
        def __init__(self) -> None:
            self._events: list[IEvent] = []

        @property
        def events(self) -> Sequence[IEvent]:
            return self._events

        async def handle(self, event: OrderPlaced, /) -> None:
            self._events.append(PaymentTaken(order_id=event.order_id))

    class FromTuple:
        events: tuple[IEvent, ...] = ()

        async def handle(self, event: OrderPlaced, /) -> None:
            self.events = (OrderShipped(event.order_id),)

    registry = EventRegistry().bind(OrderPlaced, [FromProperty, FromTuple])
    bound(registry, PaymentTaken, leaving(log, "paid"))
    bound(registry, OrderShipped, leaving(log, "shipped"))
    run(Mediator(registry).publish(OrderPlaced(order_id=1)))
    assert log == ["paid PaymentTaken", "shipped OrderShipped"]


def test_an_event_handler_has_a_list_of_follow_ups_of_its_own_empty_at_first() -> None:
    class Plain(EventHandler[OrderPlaced]):
        async def handle(self, event: OrderPlaced, /) -> None:
            pass

    first, second = Plain(), Plain()
    assert first.events == [] and second.events == []
    first.events.append(OrderShipped(1))
    assert second.events == []


def test_follow_ups_run_under_the_mediators_own_publisher_a_custom_one_included() -> None:
    log: list[str] = []
    seen: list[str] = []

    async def publisher(handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        seen.append(type(event).__name__)
        for handler in handlers:
            await handler.handle(event)

    registry = bound(EventRegistry(), OrderPlaced, leaving(log, "pay", PaymentTaken(order_id=1)))
    bound(registry, PaymentTaken, leaving(log, "ship"))
    run(Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=1)))
    assert seen == ["OrderPlaced", "PaymentTaken"]
    assert log == ["pay OrderPlaced", "ship PaymentTaken"]


@collecting
def test_an_event_with_a_failed_handler_publishes_no_follow_ups(make: MakeMediator) -> None:
    log: list[str] = []
    error = Boom("declined")
    registry = bound(
        EventRegistry(),
        OrderPlaced,
        leaving(log, "pay", PaymentTaken(order_id=1)),
        recording([], "fails", raises=error),
    )
    bound(registry, PaymentTaken, leaving(log, "ship"))
    with pytest.raises(ExceptionGroup) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert leaves(caught.value) == [error]
    assert log == ["pay OrderPlaced"]


@every_setting
def test_a_failed_handlers_follow_ups_are_discarded(make: MakeMediator) -> None:
    log: list[str] = []
    instances: list[Any] = []

    class LeavesThenFails:
        def __init__(self) -> None:
            self.events: list[IEvent] = []
            instances.append(self)

        async def handle(self, event: OrderPlaced, /) -> None:
            self.events.append(PaymentTaken(order_id=event.order_id))
            raise Boom("after leaving a follow-up")

    registry = EventRegistry().bind(OrderPlaced, [LeavesThenFails])
    bound(registry, PaymentTaken, leaving(log, "ship"))
    with pytest.raises((Boom, ExceptionGroup)):
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == []
    assert [instance.events for instance in instances] == [[]]


@every_setting
def test_a_follow_up_that_is_not_an_event_is_a_type_error_naming_the_handler(
    make: MakeMediator,
) -> None:
    class LeavesAClass:
        events = [PaymentTaken]

        async def handle(self, event: OrderPlaced, /) -> None:
            pass

    registry = EventRegistry().bind(OrderPlaced, [LeavesAClass])
    with pytest.raises((TypeError, ExceptionGroup)) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    [error] = leaves(caught.value)
    assert isinstance(error, TypeError)
    message = r"handler .*LeavesAClass left <class '.*PaymentTaken'> in its events, which is not an"
    assert re.match(message, str(error))


@dataclass(frozen=True)
class Ping(IEvent):
    hop: int


@dataclass(frozen=True)
class Pong(IEvent):
    hop: int


@every_setting
def test_a_cycle_of_follow_ups_stops_at_max_depth_naming_the_chain(make: MakeMediator) -> None:
    hops: list[int] = []

    class PingPong:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: Ping | Pong, /) -> None:
            hops.append(event.hop)
            reply = Pong(event.hop + 1) if isinstance(event, Ping) else Ping(event.hop + 1)
            self.events.append(reply)

    registry = bound(EventRegistry(), Ping, PingPong)
    bound(registry, Pong, PingPong)
    with pytest.raises(ChainLimitError) as caught:
        run(make(registry).publish(Ping(hop=1)))
    assert hops == list(range(1, 33))
    assert str(caught.value).startswith(
        "the chain of events Ping -> Pong -> Ping -> ... (28 more) -> Pong -> Ping is 33 long, "
        "past max_depth=32"
    )


@every_setting
def test_follow_ups_fanning_out_stop_at_max_follow_ups(make: MakeMediator) -> None:
    handled: list[int] = []

    class Doubles:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: Ping, /) -> None:
            handled.append(event.hop)
            self.events += [Ping(event.hop + 1), Ping(event.hop + 1)]

    mediator = make(bound(EventRegistry(), Ping, Doubles), max_depth=10, max_follow_ups=100)
    with pytest.raises(ChainLimitError, match=r"more than max_follow_ups=100 follow-up events"):
        run(mediator.publish(Ping(hop=0)))
    # 1 + 2 + 4 + 8 + 16 + 32 = 63 handled; the next level of 64 would pass 100, so none of it ran.
    assert len(handled) == 63


@every_setting
def test_endless_nested_publishing_stops_at_max_depth(make: MakeMediator) -> None:
    holder: list[Mediator] = []
    depth: list[int] = []

    class PublishesAgain:
        async def handle(self, event: Ping, /) -> None:
            depth.append(event.hop)
            await holder[0].publish(Ping(event.hop + 1))

    class Other:
        async def handle(self, event: Ping, /) -> None:
            pass

    holder.append(make(EventRegistry().bind(Ping, [PublishesAgain, Other])))

    with pytest.raises(ChainLimitError, match="is 33 long, past max_depth=32") as caught:
        run(holder[0].publish(Ping(hop=1)))
    assert "ChainLimitError: the chain of events Ping -> Ping" in "".join(
        traceback.format_exception(caught.value)
    )
    assert max(depth) == 32


@pytest.mark.parametrize(("name", "value"), [("max_depth", 0), ("max_follow_ups", -1)])
def test_limits_below_one_are_a_value_error(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"{name} must be at least 1; got {value}"):
        Mediator(EventRegistry(), **unchecked({name: value}))


@pytest.mark.parametrize("value", [True, "3", 1.5, None])
def test_limits_that_are_not_ints_are_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="max_depth must be a positive int; got"):
        Mediator(EventRegistry(), max_depth=unchecked(value))


@every_setting
def test_a_failed_call_publishes_no_follow_ups_even_when_a_layer_outside_catches_it(
    make: MakeMediator,
) -> None:
    """Retry outside a unit of work whose commit fails after the handler returned: one e-mail."""
    log: list[str] = []
    commits: list[int] = []

    class SendsEmail:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: OrderPlaced, /) -> None:
            self.events.append(PaymentTaken(order_id=event.order_id))

    class Retry:
        async def handle(self, event: IEvent, handler: object, call_next: CallNext, /) -> None:
            try:
                await call_next()
            except ConnectionError:
                await call_next()

    class CommitFailsOnce:
        async def handle(self, event: IEvent, handler: object, call_next: CallNext, /) -> None:
            await call_next()
            commits.append(len(commits) + 1)
            if len(commits) == 1:
                raise ConnectionError("commit lost")

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [SendsEmail])
        .bind(PaymentTaken, [recording(log, "email")])
        .bind_middleware(IEvent, [Retry])
        .bind_middleware(OrderPlaced, [CommitFailsOnce])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert commits == [1, 2]
    assert log == ["email"]


def test_a_strategy_that_logs_a_failure_and_goes_on_publishes_no_follow_ups_of_that_call() -> None:
    log: list[str] = []

    class LogsAndGoesOn:
        async def __call__(
            self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /
        ) -> None:
            for handler in handlers:
                try:
                    await handler.handle(event)
                except Boom:
                    log.append("logged")

    class FailsAfterTheHandler:
        async def handle(self, event: IEvent, handler: object, call_next: CallNext, /) -> None:
            await call_next()
            if type(handler).__name__ == "first":
                raise Boom("after the handler")

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [leaving(log, "first", OrderShipped(1)), leaving(log, "second", UserSignedUp(2))])
        .bind(OrderShipped, [recording(log, "shipped")])
        .bind(UserSignedUp, [recording(log, "signed up")])
        .bind_middleware(OrderPlaced, [FailsAfterTheHandler])
    )
    run(Mediator(registry, publisher=LogsAndGoesOn()).publish(OrderPlaced(order_id=1)))
    assert log == ["first OrderPlaced", "logged", "second OrderPlaced", "signed up"]


class RefusesReadsAfterAFailure:
    """A unit of work whose `events` refuses to be read once its transaction failed."""

    def __init__(self) -> None:
        self._failed = False

    @property
    def events(self) -> list[IEvent]:
        if self._failed:
            raise RuntimeError("the transaction failed; nothing to read")
        return []

    async def handle(self, event: OrderPlaced, /) -> None:
        self._failed = True
        await asyncio.sleep(0)
        raise Boom("the handler's own error")


@every_setting
def test_what_reading_a_failed_handlers_events_raises_never_replaces_its_error(
    make: MakeMediator,
) -> None:
    class FailsToo:
        async def handle(self, event: OrderPlaced, /) -> None:
            await asyncio.sleep(0)
            raise Boom("another handler's error")

    mediator = make(EventRegistry().bind(OrderPlaced, [RefusesReadsAfterAFailure, FailsToo]))

    async def caller() -> tuple[BaseException, int]:
        task = asyncio.current_task()
        assert task is not None
        try:
            await mediator.publish(OrderPlaced(order_id=1))
        except BaseException as error:
            return error, task.cancelling()
        raise AssertionError("the publish did not fail")

    error, cancelling = run(caller())
    assert cancelling == 0
    found = leaves(error)
    assert all(isinstance(leaf, Boom) for leaf in found), found
    assert "the handler's own error" in [str(leaf) for leaf in found]
    own = next(leaf for leaf in found if str(leaf) == "the handler's own error")
    assert own.__notes__ == [
        "emptying the events of RefusesReadsAfterAFailure raised "
        "RuntimeError('the transaction failed; nothing to read') too"
    ]
    if make in COLLECTING.values():
        assert sorted(str(leaf) for leaf in found) == [
            "another handler's error",
            "the handler's own error",
        ]


class Low(IEvent):
    def __init__(self, left: int) -> None:
        self.left = left


def remembering() -> Resolve:
    """A resolve that builds each class once and hands the same object out again, as a
    request-scoped DI container does within one request."""
    built: dict[type, object] = {}

    def resolve(cls: type[_T], /) -> _T:
        made = built.setdefault(cls, cls())
        assert isinstance(made, cls)
        return made

    return resolve


class KeepsATuple:
    """Leaves its follow-ups in a tuple attribute, as `self.events = (...)` does."""

    events: Sequence[IEvent] = ()

    async def handle(self, event: OrderPlaced | OrderShipped, /) -> None:
        if isinstance(event, OrderPlaced):
            self.events = (Low(left=1),)


class KeepsThemBehindASetter:
    """Leaves its follow-ups behind a property with a setter."""

    def __init__(self) -> None:
        self._events: tuple[IEvent, ...] = ()

    @property
    def events(self) -> tuple[IEvent, ...]:
        return self._events

    @events.setter
    def events(self, events: tuple[IEvent, ...]) -> None:
        self._events = events

    async def handle(self, event: OrderPlaced | OrderShipped, /) -> None:
        if isinstance(event, OrderPlaced):
            self.events = (Low(left=1),)


class RecordsLikePythonCqrs:
    """A read-only `events` that is not a list, reset at the start of each `handle`."""

    def __init__(self) -> None:
        self._recorded: list[IEvent] = []

    @property
    def events(self) -> tuple[IEvent, ...]:
        return tuple(self._recorded)

    async def handle(self, event: OrderPlaced | OrderShipped, /) -> None:
        self._recorded = []
        if isinstance(event, OrderPlaced):
            self._recorded.append(Low(left=1))


@pytest.mark.parametrize("handler", [KeepsATuple, KeepsThemBehindASetter, RecordsLikePythonCqrs])
@pytest.mark.parametrize(
    "publisher", [SequentialEventPublisher(), GroupEventPublisher(), InOrder()], ids=repr
)
@pytest.mark.parametrize("middleware", [False, True], ids=["plain", "middleware"])
def test_a_reused_handler_never_publishes_its_follow_ups_twice(
    handler: type[IEventHandler[IEvent]], publisher: EventPublisher, middleware: bool
) -> None:
    lows: list[int] = []

    class CountsLows:
        async def handle(self, event: Low, /) -> None:
            lows.append(event.left)

    registry = bound(EventRegistry(), OrderPlaced, handler)
    bound(registry, OrderShipped, handler).bind(Low, [CountsLows])
    if middleware:
        registry.bind_middleware(IEvent, [PassesThrough])
    mediator = Mediator(registry, publisher=publisher, resolve=remembering())

    async def one_request() -> None:
        await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(OrderShipped(1))
        await mediator.publish(OrderShipped(1))

    run(one_request())
    assert lows == [1]


@pytest.mark.parametrize("middleware", [False, True], ids=["plain", "middleware"])
def test_a_reused_handler_that_once_left_a_non_event_recovers(middleware: bool) -> None:
    log: list[str] = []

    class LeavesANumberOnce:
        def __init__(self) -> None:
            self.events: list[object] = []
            self.calls = 0

        async def handle(self, event: OrderPlaced, /) -> None:
            self.calls += 1
            if self.calls == 1:
                self.events.append(42)
            log.append(f"call {self.calls}")

    registry = bound(EventRegistry(), OrderPlaced, LeavesANumberOnce)
    if middleware:
        registry.bind_middleware(IEvent, [PassesThrough])
    mediator = Mediator(registry, resolve=remembering())

    async def one_request() -> None:
        with pytest.raises(TypeError, match="left 42 in its events, which is not an event"):
            await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(OrderPlaced(order_id=1))

    run(one_request())
    assert log == ["call 1", "call 2"]


@every_setting
def test_follow_ups_appended_to_an_event_handlers_own_list_are_published(
    make: MakeMediator,
) -> None:
    log: list[str] = []

    class Ships(EventHandler[OrderPlaced]):
        async def handle(self, event: OrderPlaced, /) -> None:
            self.events.append(OrderShipped(event.order_id))

    @dataclass
    class ShipsWithoutCallingInit(EventHandler[OrderPlaced]):
        """A dataclass: its `__init__` never calls EventHandler's."""

        order_offset: int = 0

        async def handle(self, event: OrderPlaced, /) -> None:
            self.events.append(OrderShipped(event.order_id + 10))

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [Ships, ShipsWithoutCallingInit])
        .bind(OrderShipped, [leaving(log, "shipped")])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == ["shipped OrderShipped", "shipped OrderShipped"]


@every_setting
def test_a_follow_up_that_nobody_handles_does_nothing(make: MakeMediator) -> None:
    log: list[str] = []
    registry = bound(
        EventRegistry(), OrderPlaced, leaving(log, "a", UserSignedUp(1), OrderShipped(1))
    ).bind(OrderShipped, [recording(log, "shipped")])
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == ["a OrderPlaced", "shipped"]


def test_a_short_chain_is_named_in_full_past_a_small_max_depth() -> None:
    class Again:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: Ping, /) -> None:
            self.events.append(Ping(event.hop + 1))

    mediator = Mediator(bound(EventRegistry(), Ping, Again), max_depth=3)
    with pytest.raises(ChainLimitError, match=r"^the chain of events Ping -> Ping -> Ping -> Ping is 4"):
        run(mediator.publish(Ping(hop=0)))


def test_a_strategy_that_shows_its_handlers_shows_the_handlers_themselves() -> None:
    shown: list[str] = []

    class Shows:
        async def __call__(self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
            shown.extend(repr(handler) for handler in handlers)

    class Named:
        def __repr__(self) -> str:
            return "Named()"

        async def handle(self, event: OrderPlaced, /) -> None:
            pass

    run(Mediator(EventRegistry().bind(OrderPlaced, [Named]), publisher=Shows()).publish(OrderPlaced(order_id=1)))
    assert shown == ["Named()"]


# --- middleware ----------------------------------------------------------------------------------




def wrapping(log: list[str], name: str) -> type[IEventMiddleware[IEvent]]:
    """A new middleware class that logs `name` before and after the rest of the chain."""

    class Wraps:
        async def handle(
            self, event: IEvent, handler: IEventHandler[Never], call_next: CallNext, /
        ) -> None:
            log.append(f"{name} >")
            await call_next()
            log.append(f"{name} <")

    Wraps.__name__ = Wraps.__qualname__ = name
    return Wraps


@every_setting
def test_middleware_wraps_each_handler_base_classes_outside_subclasses_in_bind_order(
    make: MakeMediator,
) -> None:
    log: list[str] = []
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [recording(log, "handler")])
        .bind_middleware(OrderPlaced, [wrapping(log, "placed")])
        .bind_middleware(IEvent, [wrapping(log, "outer"), wrapping(log, "second")])
        .bind_middleware(DomainEvent, [wrapping(log, "domain")])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == [
        "outer >", "second >", "domain >", "placed >", "handler",
        "placed <", "domain <", "second <", "outer <",
    ]
    assert [cls.__name__ for cls in registry.middleware_for(OrderPlaced)] == [
        "outer", "second", "domain", "placed"
    ]


@every_setting
def test_middleware_wraps_every_handler_of_a_publish_of_its_class_or_a_subclass(
    make: MakeMediator,
) -> None:
    wrapped: list[str] = []

    class Names:
        async def handle(
            self, event: DomainEvent, handler: IEventHandler[Never], call_next: CallNext, /
        ) -> None:
            wrapped.append(f"{type(event).__name__}: {type(handler).__name__}")
            await call_next()

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [recording([], "a"), recording([], "b")])
        .bind(UserSignedUp, [recording([], "c")])
        .bind_middleware(DomainEvent, [Names])
    )

    async def publish_both() -> None:
        mediator = make(registry)
        await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(UserSignedUp(user_id=1))

    run(publish_both())
    assert sorted(wrapped) == ["OrderPlaced: a", "OrderPlaced: b"]


@pytest.mark.parametrize("make", GROUP.values(), ids=GROUP.keys())
def test_under_the_group_publisher_each_chain_runs_in_its_handlers_own_task(
    make: MakeMediator,
) -> None:
    tasks: dict[str, set[asyncio.Task[Any] | None]] = {}

    class SeesTask:
        async def handle(
            self, event: IEvent, handler: IEventHandler[Never], call_next: CallNext, /
        ) -> None:
            tasks.setdefault(type(handler).__name__, set()).add(asyncio.current_task())
            await call_next()

    class RecordsTask:
        async def handle(self, event: IEvent, /) -> None:
            tasks.setdefault(type(self).__name__, set()).add(asyncio.current_task())

    class RecordsTaskToo(RecordsTask):
        pass

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [RecordsTask, RecordsTaskToo])
        .bind_middleware(IEvent, [SeesTask])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert tasks == {"RecordsTask": tasks["RecordsTask"], "RecordsTaskToo": tasks["RecordsTaskToo"]}
    assert all(len(seen) == 1 for seen in tasks.values())


@every_setting
def test_an_exception_from_middleware_is_its_handlers_failure(make: MakeMediator) -> None:
    log: list[str] = []
    error = Boom("middleware")

    class FailsAfter:
        async def handle(
            self, event: IEvent, handler: IEventHandler[Never], call_next: CallNext, /
        ) -> None:
            await call_next()
            raise error

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [leaving(log, "pay", PaymentTaken(order_id=1))])
        .bind_middleware(OrderPlaced, [FailsAfter])
    )
    bound(registry, PaymentTaken, leaving(log, "ship"))
    with pytest.raises((Boom, ExceptionGroup)) as caught:
        run(make(registry).publish(OrderPlaced(order_id=1)))
    assert leaves(caught.value) == [error]
    assert log == ["pay OrderPlaced"]


@every_setting
def test_middleware_that_catches_the_handlers_exception_makes_the_call_a_success(
    make: MakeMediator,
) -> None:
    caught: list[BaseException] = []

    class LogAndGoOn:
        async def handle(
            self, event: IEvent, handler: IEventHandler[Never], call_next: CallNext, /
        ) -> None:
            try:
                await call_next()
            except Exception as error:
                caught.append(error)

    error = Boom("isolated")
    log: list[str] = []
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [recording(log, "fails", raises=error), recording(log, "other")])
        .bind_middleware(IEvent, [LogAndGoOn])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught == [error]
    assert sorted(log) == ["fails", "other"]


@every_setting
def test_middleware_that_never_calls_call_next_skips_the_handler(make: MakeMediator) -> None:
    log: list[str] = []

    class SkipsB:
        async def handle(
            self, event: IEvent, handler: IEventHandler[Never], call_next: CallNext, /
        ) -> None:
            if type(handler).__name__ != "b":
                await call_next()

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [recording(log, "a"), recording(log, "b"), recording(log, "c")])
        .bind_middleware(OrderPlaced, [SkipsB])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert sorted(log) == ["a", "c"]


def test_middleware_is_built_through_resolve_once_per_publish_before_any_handler_runs() -> None:
    log: list[str] = []

    def resolve(cls: type[_T], /) -> _T:
        log.append(f"build {cls.__name__}")
        return cls()

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
        .bind_middleware(IEvent, [wrapping(log, "m")])
    )
    mediator = Mediator(registry, resolve=resolve)

    async def twice() -> None:
        await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(OrderPlaced(order_id=2))

    run(twice())
    once = ["build a", "build b", "build m", "m >", "a", "m <", "m >", "b", "m <"]
    assert log == once + once


@every_setting
def test_a_retry_middleware_runs_the_handler_again_and_keeps_only_its_last_follow_ups(
    make: MakeMediator,
) -> None:
    attempts: list[int] = []
    log: list[str] = []

    class FailsOnce:
        def __init__(self) -> None:
            self.events: list[IEvent] = []

        async def handle(self, event: OrderPlaced, /) -> None:
            attempts.append(len(attempts) + 1)
            self.events.append(PaymentTaken(order_id=len(attempts)))
            if len(attempts) == 1:
                raise Boom("flaky")

    class Retry:
        async def handle(
            self, event: IEvent, handler: IEventHandler[Never], call_next: CallNext, /
        ) -> None:
            for attempt in (1, 2, 3):
                try:
                    await call_next()
                    return
                except Boom:
                    if attempt == 3:
                        raise

    class Paid:
        async def handle(self, event: PaymentTaken, /) -> None:
            log.append(f"paid {event.order_id}")

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [FailsOnce])
        .bind(PaymentTaken, [Paid])
        .bind_middleware(OrderPlaced, [Retry])
    )
    run(make(registry).publish(OrderPlaced(order_id=1)))
    assert attempts == [1, 2]
    assert log == ["paid 2"]


def test_a_cancellation_that_a_custom_publishers_handler_swallowed_still_reaches_the_caller() -> None:
    log: list[str] = []

    async def publisher(handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        for handler in handlers:
            await handler.handle(event)

    registry = EventRegistry().bind(
        OrderPlaced, [blocks_until_cancelled(log, "swallows", reaction="swallows")]
    )

    async def caller() -> None:
        publishing = asyncio.create_task(
            Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=1))
        )
        await when_started(log, "swallows started")
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing
        assert publishing.cancelled()

    run(caller())
    assert log == ["swallows started", "swallows cancelled"]


def test_a_custom_publisher_gets_handlers_wrapped_in_their_middleware() -> None:
    log: list[str] = []

    async def publisher(handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        for handler in handlers:
            await handler.handle(event)

    registry = (
        EventRegistry()
        .bind(OrderPlaced, [recording(log, "a")])
        .bind_middleware(IEvent, [wrapping(log, "m")])
    )
    run(Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=1)))
    assert log == ["m >", "a", "m <"]


def test_bind_middleware_checks_like_bind_and_changes_nothing_on_error() -> None:
    registry = EventRegistry().bind_middleware(IEvent, [wrapping([], "m")])
    first = registry.middleware_bindings[IEvent][0]
    with pytest.raises(DuplicateHandlerError, match="middleware m is bound to IEvent twice"):
        registry.bind_middleware(IEvent, [wrapping([], "n"), unchecked(first)])
    with pytest.raises(TypeError, match=r"middleware 'm' bound to IEvent is not a class"):
        registry.bind_middleware(IEvent, [unchecked("m")])
    with pytest.raises(TypeError, match="bind_middleware takes a list of middleware classes"):
        registry.bind_middleware(IEvent, unchecked(first))
    with pytest.raises(TypeError, match="middleware SyncHandle bound to IEvent has a handle that"):
        registry.bind_middleware(IEvent, [unchecked(SyncHandle)])
    assert registry.middleware_bindings[IEvent] == (first,)
    registry.freeze()
    with pytest.raises(RegistryFrozenError, match="cannot bind_middleware"):
        registry.bind_middleware(OrderPlaced, [wrapping([], "late")])


def test_merge_appends_middleware_and_refuses_a_class_bound_twice() -> None:
    outer, inner = wrapping([], "outer"), wrapping([], "inner")
    first = EventRegistry().bind_middleware(IEvent, [outer])
    second = EventRegistry().bind_middleware(IEvent, [inner])
    merged = EventRegistry().merge(first, second)
    assert merged.middleware_for(OrderPlaced) == (outer, inner)
    with pytest.raises(DuplicateHandlerError, match="middleware outer is bound to IEvent twice"):
        EventRegistry().merge(first, EventRegistry().bind_middleware(IEvent, [outer]))


# --- events of any class -------------------------------------------------------------------------


class ForeignBase:
    """A base of one's own that declares the marker instead of inheriting IEvent."""

    __mediator_event__: ClassVar[Literal[True]] = True


class ForeignPlaced(ForeignBase):
    def __init__(self, order_id: int) -> None:
        self.order_id = order_id


def pydantic_placed() -> IEvent:
    try:
        import pydantic
    except ImportError:
        pytest.skip("needs pydantic: pip install -e '.[test]'")

    class PydanticEvent(pydantic.BaseModel):
        __mediator_event__: ClassVar[Literal[True]] = True

    class PydanticPlaced(PydanticEvent):
        order_id: int

    return PydanticPlaced(order_id=7)


def msgspec_placed() -> IEvent:
    try:
        import msgspec
    except ImportError:
        pytest.skip("needs msgspec: pip install -e '.[test]'")

    class MsgspecEvent(msgspec.Struct, frozen=True):
        __mediator_event__: ClassVar[Literal[True]] = True

    class MsgspecPlaced(MsgspecEvent, frozen=True):
        order_id: int

    return MsgspecPlaced(order_id=7)


def attrs_placed() -> IEvent:
    try:
        import attrs
    except ImportError:
        pytest.skip("needs attrs: pip install -e '.[test]'")

    @attrs.frozen
    class AttrsEvent:
        __mediator_event__: ClassVar[Literal[True]] = True

    @attrs.frozen
    class AttrsPlaced(AttrsEvent):
        order_id: int

    return AttrsPlaced(order_id=7)


# An event of each kind of class that declares the marker; those of a library skip without it.
MARKED: dict[str, Callable[[], IEvent]] = {
    "plain class": lambda: ForeignPlaced(order_id=7),
    "pydantic": pydantic_placed,
    "msgspec": msgspec_placed,
    "attrs": attrs_placed,
}


@pytest.mark.parametrize("new_event", MARKED.values(), ids=MARKED.keys())
@every_setting
def test_a_class_that_declares_the_marker_is_an_event_that_ievent_bindings_reach(
    make: MakeMediator, new_event: Callable[[], IEvent]
) -> None:
    log: list[str] = []
    event = new_event()
    registry = (
        EventRegistry()
        .bind(type(event), [recording(log, "own")])
        .bind(unchecked(type(event).__mro__[1]), [recording(log, "base")])
        .bind(IEvent, [recording(log, "audit")])
        .bind_middleware(IEvent, [wrapping(log, "m")])
    )
    run(make(registry).publish(event))
    assert sorted(log) == ["audit", "base", "m <", "m <", "m <", "m >", "m >", "m >", "own"]
    assert [cls.__name__ for cls in registry.handlers_for(type(event))] == ["own", "base", "audit"]


NOT_EVENTS: list[tuple[Callable[[], object], str]] = [
    (lambda: {"order_id": 1}, r"got \{'order_id': 1\}, whose class dict is not an event class"),
    (lambda: 42, "got 42, whose class int is not an event class"),
    (lambda: None, "got None, whose class NoneType is not an event class"),
    (lambda: "OrderPlaced", "got 'OrderPlaced', whose class str is not an event class"),
    (lambda: not_marked()(order_id=1), "got NotMarked.*, whose class .*NotMarked is not an event"),
    (lambda: OrderPlaced, r"got the class OrderPlaced; publish OrderPlaced\(\.\.\.\)"),
]


@pytest.mark.parametrize(
    ("given", "message"), NOT_EVENTS, ids=["dict", "int", "None", "str", "model", "class"]
)
@every_setting
def test_publishing_what_is_not_an_event_is_a_type_error_naming_it(
    make: MakeMediator, given: Callable[[], object], message: str
) -> None:
    """Even with handlers bound to IEvent, which would otherwise take anything."""
    not_event = given()
    log: list[str] = []
    mediator = make(EventRegistry().bind(IEvent, [recording(log, "audit")]))
    with pytest.raises(TypeError, match=message) as caught:
        run(mediator.publish(unchecked(not_event)))
    assert "subclass IEvent, or declare `__mediator_event__" in str(caught.value) or (
        isinstance(not_event, type)
    )
    with pytest.raises(TypeError, match=message):
        run(RecordingPublisher().publish(unchecked(not_event)))
    assert log == []


# --- recording -----------------------------------------------------------------------------------


async def checkout(order_id: int, publisher: IPublisher) -> None:
    """Code under test: it publishes through whatever IPublisher it is given."""
    await publisher.publish(OrderPlaced(order_id=order_id))
    await publisher.publish(OrderShipped(order_id))


def test_a_recording_publisher_records_every_event_in_order() -> None:
    recorder = RecordingPublisher()
    run(checkout(7, recorder))
    assert recorder.published == (OrderPlaced(order_id=7), OrderShipped(7))
    assert repr(recorder) == "RecordingPublisher(forward=None, published=2)"


def test_a_recording_publisher_forwards_after_recording_even_when_handlers_fail() -> None:
    log: list[str] = []
    error = Boom("declined")
    mediator = Mediator(EventRegistry().bind(OrderPlaced, [recording(log, "a", raises=error)]))
    recorder = RecordingPublisher(mediator)
    with pytest.raises(Boom):
        run(checkout(7, recorder))
    assert recorder.published == (OrderPlaced(order_id=7),)
    assert log == ["a"]


def test_a_recording_publisher_hands_out_a_copy_and_refuses_a_class() -> None:
    recorder = RecordingPublisher()
    snapshot = recorder.published
    run(recorder.publish(OrderPlaced(order_id=1)))
    assert snapshot == () and len(recorder.published) == 1
    with pytest.raises(TypeError, match="got the class OrderPlaced"):
        run(recorder.publish(unchecked(OrderPlaced)))
    with pytest.raises(TypeError, match="RecordingPublisher forwards to an IPublisher; got 42"):
        RecordingPublisher(unchecked(42))


def test_a_recording_publisher_takes_its_forward_by_keyword_as_the_readme_writes_it() -> None:
    log: list[str] = []
    recorder = RecordingPublisher(
        forward=Mediator(EventRegistry().bind(OrderPlaced, [recording(log, "a")]))
    )
    run(recorder.publish(OrderPlaced(order_id=1)))
    assert log == ["a"]
    assert repr(recorder).startswith("RecordingPublisher(forward=Mediator(")


# --- properties ----------------------------------------------------------------------------------
# Random handler sets, failures at random suspension points and the caller's cancellation at a
# random loop turn, checked against a small model of the contract.


@dataclass(frozen=True)
class Script:
    """What one handler does: `awaits` loop turns, then `end`; `on_cancel` if cancelled first."""

    awaits: int
    end: str  # "return", "raise" (Boom), "abort" (a BaseException) or "own-cancel"
    on_cancel: str  # "propagate", "swallow" or "fail" (raises Boom instead)


ENDINGS: dict[str, Callable[[int], BaseException] | None] = {
    "return": None,
    "raise": lambda index: Boom(f"handler {index}"),
    "abort": lambda index: Abort(f"handler {index}"),
    "own-cancel": lambda index: asyncio.CancelledError(f"handler {index}"),
}
scripts = st.builds(
    Script,
    awaits=st.integers(0, 3),
    end=st.sampled_from(sorted(ENDINGS)),
    on_cancel=st.sampled_from(["propagate", "swallow", "fail"]),
)


def scripted(index: int, script: Script, log: list[tuple[Any, ...]]) -> type[IEventHandler[IEvent]]:
    class Scripted:
        async def handle(self, event: IEvent, /) -> None:
            log.append(("start", index))
            try:
                for _ in range(script.awaits):
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                log.append(("cancelled", index))
                if script.on_cancel == "swallow":
                    return
                if script.on_cancel == "fail":
                    failure = Boom(f"handler {index}, on cancel")
                    log.append(("raise", index, failure))
                    raise failure from None
                raise
            ending = ENDINGS[script.end]
            if ending is not None:
                error = ending(index)
                log.append(("raise", index, error))
                raise error

    Scripted.__name__ = Scripted.__qualname__ = f"Scripted{index}"
    return Scripted


def everything_in(error: BaseException | None) -> list[BaseException]:
    """`error`, the members of every group in it and every exception chained as a cause."""
    if error is None:
        return []
    found = [error]
    for member in members(error):
        found += everything_in(member)
    return found + everything_in(error.__cause__)


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    setting=st.sampled_from(sorted(ALL)),
    plan=st.lists(scripts, min_size=1, max_size=5),
    cancel_at=st.none() | st.integers(0, 8),
)
def test_publish_keeps_the_contract_whatever_fails_and_whenever_the_caller_is_cancelled(
    setting: str, plan: list[Script], cancel_at: int | None
) -> None:
    log: list[tuple[Any, ...]] = []
    handlers = [scripted(index, script, log) for index, script in enumerate(plan)]
    mediator = ALL[setting](EventRegistry().bind(OrderPlaced, handlers))
    outcome: list[BaseException | None] = []
    after: list[tuple[int, set[asyncio.Task[Any]]]] = []
    tasks: list[asyncio.Task[Any] | None] = []

    async def caller() -> None:
        log.append(("calling",))
        try:
            await mediator.publish(OrderPlaced(order_id=1))
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)
        task = asyncio.current_task()
        assert task is not None
        after.append((task.cancelling(), asyncio.all_tasks() - {task, *tasks}))

    async def main() -> bool:
        tasks.append(asyncio.current_task())
        calling = asyncio.create_task(caller())
        await when_started(log, ("calling",))
        cancelled = False
        if cancel_at is not None:
            for _ in range(cancel_at):
                await asyncio.sleep(0)
            if not outcome:
                log.append(("caller cancelled",))
                calling.cancel()
                cancelled = True
        await calling
        return cancelled

    cancelled = run(main())
    [result] = outcome
    [(cancelling, left_behind)] = after
    assert left_behind == set(), "no task outlives the publish"

    starts = [entry[1] for entry in log if entry[0] == "start"]
    raised = [entry[2] for entry in log if entry[0] == "raise"]
    assert starts == sorted(starts), "handlers start in bind order"
    if cancelled:
        later = log[log.index(("caller cancelled",)) :]
        assert not [entry for entry in later if entry[0] == "start"], log
    fail_fast = not setting.startswith("collecting")
    for position, entry in enumerate(log):
        if entry[0] == "raise" and (fail_fast or not isinstance(entry[2], Exception)):
            assert not [later for later in log[position:] if later[0] == "start"], log

    found = everything_in(result)
    missing = [error for error in raised if not any(error is seen for seen in found)]
    assert missing == [], f"errors dropped: {missing}; log: {log}"
    leaves_found = [error for error in found if not isinstance(error, BaseExceptionGroup)]
    invented = [
        error
        for error in leaves_found
        if not any(error is seen for seen in raised)
        and not (cancelled and isinstance(error, asyncio.CancelledError))
    ]
    assert invented == [], f"errors invented: {invented}; log: {log}"

    if cancelled:
        assert isinstance(result, asyncio.CancelledError), (result, log)
        assert cancelling == 1
        return
    assert cancelling == 0
    if not raised:
        assert result is None, (result, log)
        return
    ending = [error for error in raised if not isinstance(error, Exception)]
    if setting in SEQUENTIAL:
        assert result is raised[0] and len(raised) == 1
    elif setting == "collecting-sequential":
        if ending:
            assert result is ending[0]
        else:
            grouped = members(result)
            assert isinstance(result, ExceptionGroup) and list(grouped) == raised
    else:
        own = [error for error in raised if isinstance(error, asyncio.CancelledError)]
        if own:
            assert result is own[0]
        else:
            grouped = members(result)
            assert isinstance(result, BaseExceptionGroup)
            by_handler = sorted(raised, key=lambda error: int(str(error).split()[1].strip(",")))
            assert list(grouped) == by_handler


# --- the module ----------------------------------------------------------------------------------


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(mediator).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "mediator") == "mediator"
    }
    assert isinstance(mediator.__all__, tuple)
    assert set(mediator.__all__) == public
    assert len(mediator.__all__) == len(public)


def test_the_module_docstring_states_the_version() -> None:
    assert mediator.__doc__ is not None
    assert f"Version {mediator.__version__} (`__version__`)" in mediator.__doc__


def test_mediator_imports_only_the_standard_library() -> None:
    imported = set(re.findall(r"^(?:from|import) (\w+)", (ROOT / "mediator.py").read_text(), re.M))
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


# --- typing --------------------------------------------------------------------------------------

TYPING_CASES = '''\
# What users write: each line marked "rejected" is a type error, and no other line is.

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Never, TypeVar, assert_type

import attrs
import msgspec
import pydantic

from mediator import (
    EventHandler,
    EventPublisher,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    IEventHandler,
    IEventMiddleware,
    IPublisher,
    Mediator,
    RecordingPublisher,
    Resolve,
    SequentialEventPublisher,
)

T = TypeVar("T")
E = TypeVar("E", bound=IEvent)


class DomainEvent(IEvent):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced(DomainEvent):
    order_id: int


@dataclass(frozen=True)
class OrderShipped(DomainEvent):
    order_id: int


class OnOrderPlaced(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderPlaced) -> None:
        print(event.order_id)


class OnOrderShipped:
    async def handle(self, shipped: OrderShipped) -> None:
        print(shipped.order_id)


class OnDomainEvent:
    async def handle(self, event: DomainEvent, /) -> None:
        print(event)


class AuditLog:
    async def handle(self, event: IEvent) -> None:
        print(event)


class NotAsync:
    def handle(self, event: OrderPlaced) -> None:
        print(event)


class ReturnsValue:
    async def handle(self, event: OrderPlaced) -> int:
        return event.order_id


class InOrder:
    async def __call__(self, handlers: Sequence[IEventHandler[E]], event: E, /) -> None:
        for handler in handlers:
            await handler.handle(event)


class NotAStrategy:
    async def __call__(self, handlers: Sequence[IEventHandler[OrderPlaced]]) -> None:
        print(handlers)


def build(handler_type: type[T]) -> T:
    return handler_type()


async def build_async(handler_type: type[T]) -> T:
    return handler_type()


CallNext = Callable[[], Awaitable[None]]


class Timing:
    async def handle(self, event: IEvent, handler: IEventHandler[Never], call_next: CallNext, /) -> None:
        await call_next()


class AroundPlaced:
    async def handle(self, event: OrderPlaced, handler: object, call_next: CallNext, /) -> None:
        await call_next()


class AroundShipped:
    async def handle(self, event: OrderShipped, handler: object, call_next: CallNext, /) -> None:
        await call_next()


class ShipsWhenPlaced(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderPlaced) -> None:
        self.events.append(OrderShipped(event.order_id))
        self.events = [OrderShipped(event.order_id)]


class PydanticEvent(pydantic.BaseModel):
    __mediator_event__: ClassVar[Literal[True]] = True


class PydanticPlaced(PydanticEvent):
    order_id: int


class MsgspecEvent(msgspec.Struct, frozen=True):
    __mediator_event__: ClassVar[Literal[True]] = True


class MsgspecPlaced(MsgspecEvent, frozen=True):
    order_id: int


@attrs.frozen
class AttrsEvent:
    __mediator_event__: ClassVar[Literal[True]] = True


@attrs.frozen
class AttrsPlaced(AttrsEvent):
    order_id: int


class NotAnEventModel(pydantic.BaseModel):
    order_id: int


class OnPydanticPlaced:
    async def handle(self, event: PydanticPlaced) -> None:
        print(event.order_id)


class OnMsgspecPlaced:
    async def handle(self, event: MsgspecPlaced) -> None:
        print(event.order_id)


class OnAttrsPlaced:
    async def handle(self, event: AttrsPlaced) -> None:
        print(event.order_id)


# Accepted: contravariant handlers, chained binds, merge, freeze, handlers_for.
registry = (
    EventRegistry()
    .bind(OrderPlaced, [OnOrderPlaced, OnDomainEvent, AuditLog])
    .bind(OrderShipped, [OnOrderShipped])
    .bind(DomainEvent, [OnDomainEvent])
    .bind(IEvent, [AuditLog])
)
registry.merge(EventRegistry().bind(OrderShipped, [AuditLog])).freeze()
assert_type(registry, EventRegistry)
assert_type(registry.handlers_for(OrderPlaced), tuple[type[IEventHandler[OrderPlaced]], ...])
assert_type(registry.frozen, bool)

# Accepted: both publishers and a strategy of one's own; both kinds of resolve.
mediator = Mediator(registry, publisher=GroupEventPublisher(max_concurrency=4), resolve=build)
Mediator(registry, publisher=SequentialEventPublisher(fail_fast=False), resolve=build_async)
Mediator(registry, publisher=InOrder())
publisher: IPublisher = mediator
strategies: list[EventPublisher] = [SequentialEventPublisher(), GroupEventPublisher(), InOrder()]
handler: IEventHandler[OrderPlaced] = OnDomainEvent()
any_event_handler: IEventHandler[OrderShipped] = AuditLog()


async def publish_events() -> None:
    await publisher.publish(OrderPlaced(order_id=1))
    await mediator.publish(OrderShipped(2))


# Accepted: middleware, follow-ups, events of any class, the recorder, the registry's views.
registry.bind_middleware(IEvent, [Timing]).bind_middleware(OrderPlaced, [Timing, AroundPlaced])
registry.bind(OrderPlaced, [ShipsWhenPlaced])
registry.bind(PydanticPlaced, [OnPydanticPlaced, AuditLog]).bind(PydanticEvent, [AuditLog])
registry.bind(MsgspecPlaced, [OnMsgspecPlaced, AuditLog]).bind(AttrsPlaced, [OnAttrsPlaced])
registry.bind_middleware(AttrsEvent, [Timing])
resolve: Resolve = build
resolve_async: Resolve = build_async
recorder = RecordingPublisher(mediator)
recording: IPublisher = recorder
assert_type(recorder.published, tuple[IEvent, ...])
assert_type(registry.bindings, Mapping[type, tuple[type[IEventHandler[Never]], ...]])
assert_type(registry.middleware_for(OrderPlaced), tuple[type[IEventMiddleware[OrderPlaced]], ...])
assert_type(registry.classes, tuple[type, ...])
assert_type(registry.plan_for(OrderPlaced)[0], tuple[type[IEventHandler[OrderPlaced]], ...])
middleware: IEventMiddleware[OrderPlaced] = Timing()


async def publish_any_class() -> None:
    await mediator.publish(PydanticPlaced(order_id=1))
    await mediator.publish(MsgspecPlaced(order_id=2))
    await recorder.publish(AttrsPlaced(order_id=3))


# Rejected: handlers of the wrong event, of a subclass, not async, returning a value, no list.
registry.bind(OrderPlaced, [OnOrderShipped])  # rejected
registry.bind(DomainEvent, [OnOrderPlaced])  # rejected
chained = (
    EventRegistry()
    .bind(OrderPlaced, [OnOrderPlaced])
    .bind(OrderShipped, [OnOrderPlaced])  # rejected
)
registry.bind(OrderPlaced, [NotAsync])  # rejected
registry.bind(OrderPlaced, [ReturnsValue])  # rejected
registry.bind(OrderPlaced, OnOrderPlaced)  # rejected
registry.bind(int, [])  # rejected


class WrongOverride(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderShipped) -> None:  # rejected
        print(event)


def takes_handler_of_int(handler: EventHandler[int]) -> None:  # rejected
    print(handler)


async def publish_non_events() -> None:
    await mediator.publish(42)  # rejected
    await mediator.publish("OrderPlaced")  # rejected
    await mediator.publish(OrderPlaced)  # rejected


wrong_handler: IEventHandler[OrderPlaced] = OnOrderShipped()  # rejected
Mediator(registry, publisher=SequentialEventPublisher)  # rejected
Mediator(registry, publisher=NotAStrategy())  # rejected
GroupEventPublisher(max_concurrency="3")  # rejected
registry.bind_middleware(OrderPlaced, [AroundShipped])  # rejected
registry.bind_middleware(DomainEvent, [AroundPlaced])  # rejected
Mediator(registry, max_depth="32")  # rejected
wrong_middleware: IEventMiddleware[OrderPlaced] = AroundShipped()  # rejected


class LeavesANonEvent(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderPlaced) -> None:
        self.events = [event.order_id]  # rejected


async def publish_a_model_that_is_no_event() -> None:
    await mediator.publish(NotAnEventModel(order_id=1))  # rejected
'''

# mypy and pyright come with the test extra; the others run where they are installed.
CHECKERS = ("mypy", "pyright", "basedpyright", "pyrefly", "ty")
REQUIRED = {"mypy", "pyright"}
STRICT_PYRIGHT = {
    "typeCheckingMode": "strict",
    "pythonVersion": "3.11",
    "reportUnnecessaryTypeIgnoreComment": "error",
}


@dataclass
class Report:
    """What one checker said about the files it was given: error lines per file name."""

    checker: str
    output: str
    errors: dict[str, set[int]] = field(default_factory=dict[str, set[int]])

    def lines(self, file: str) -> set[int]:
        return self.errors.get(file, set())


def checker_command(checker: str, files: list[str]) -> list[str]:
    """The command that runs `checker` in its strict mode on `files`, or skips the test."""
    if checker == "mypy":
        mypy = [sys.executable, "-m", "mypy", "--strict", "--warn-unused-ignores"]
        mypy += ["--explicit-package-bases"]  # files in packages are named by their path
        return [*mypy, "--python-version", "3.11", "--no-error-summary", *files]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    executable = shutil.which(checker, path=path)
    if executable is None:
        if checker in REQUIRED:
            pytest.fail(f"{checker} is not installed: pip install -e '.[test]'")
        pytest.skip(f"{checker} is not installed; pip install {checker} to run this check")
    if checker in ("pyright", "basedpyright"):
        return [executable, "--outputjson", "--pythonpath", sys.executable, *files]
    if checker == "pyrefly":
        options = ["--preset", "strict", "--python-version", "3.11", "--output-format", "min-text"]
        return [executable, "check", *options, "--python-interpreter-path", sys.executable, *files]
    options = ["--python-version", "3.11", "--output-format", "concise", "--python", sys.executable]
    return [executable, "check", *options, *files]


def parse_errors(checker: str, output: str) -> dict[str, set[int]]:
    errors: dict[str, set[int]] = {}
    if checker in ("pyright", "basedpyright"):
        diagnostics: list[dict[str, Any]] = json.loads(output)["generalDiagnostics"]
        for diagnostic in diagnostics:
            if diagnostic["severity"] == "error":
                line = diagnostic["range"]["start"]["line"] + 1
                errors.setdefault(Path(diagnostic["file"]).name, set()).add(line)
        return errors
    pattern = {
        "mypy": r"^(?P<file>[\w./-]+):(?P<line>\d+): error:",
        "pyrefly": r"^ERROR (?P<file>[\w./-]+):(?P<line>\d+):",
        "ty": r"^(?P<file>[\w./-]+):(?P<line>\d+):\d+: error",
    }[checker]
    for match in re.finditer(pattern, output, re.M):
        errors.setdefault(Path(match["file"]).name, set()).add(int(match["line"]))
    return errors


@pytest.fixture(scope="session", params=CHECKERS)
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Runs one checker, once, on the module, its tests, the typing cases, the README's code
    and the examples, all copied into one folder as a user who vendored the module has them."""
    if MODELS_MISSING:  # the code checked uses them
        pytest.skip(f"needs {', '.join(MODELS_MISSING)}: pip install -e '.[test]'")
    checker: str = request.param
    folder = tmp_path_factory.mktemp(checker)
    for name in ("mediator.py", "test_mediator.py"):
        shutil.copy(ROOT / name, folder / name)
    # The examples that need nothing beyond the test extra; `pytest examples` checks the rest.
    shutil.copy(ROOT / "examples" / "orders.py", folder / "orders.py")
    (folder / "typing_cases.py").write_text(TYPING_CASES)
    (folder / "readme_blocks.py").write_text(readme_program())
    (folder / "pyrightconfig.json").write_text(json.dumps(STRICT_PYRIGHT))
    files = sorted(path.name for path in folder.glob("*.py"))
    command = checker_command(checker, files)
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    return Report(checker, output, parse_errors(checker, done.stdout))


@pytest.mark.checkers
def test_checker_finds_no_error_in_the_module_or_its_tests(report: Report) -> None:
    for file in ("mediator.py", "test_mediator.py"):
        assert report.lines(file) == set(), f"{report.checker} on {file}:\n{report.output}"


@pytest.mark.checkers
def test_checker_reports_exactly_the_rejected_lines_of_user_code(report: Report) -> None:
    lines = TYPING_CASES.splitlines()
    rejected = {number for number, line in enumerate(lines, 1) if line.endswith("# rejected")}
    assert len(rejected) == 22
    assert report.lines("typing_cases.py") == rejected, report.output


@pytest.mark.checkers
def test_checker_finds_no_error_in_the_readme_or_the_quick_start_example(report: Report) -> None:
    for file in ["readme_blocks.py", "orders.py"]:
        assert report.lines(file) == set(), f"{report.checker} on {file}:\n{report.output}"


INSTALLED_USER = """\
import asyncio
from dataclasses import dataclass
from typing import assert_type

from mediator import EventRegistry, IEvent, IEventHandler, Mediator


@dataclass(frozen=True)
class OrderPlaced(IEvent):
    order_id: int


class SendReceipt:
    async def handle(self, event: OrderPlaced) -> None:
        print(event.order_id)


registry = EventRegistry().bind(OrderPlaced, [SendReceipt])
assert_type(registry.handlers_for(OrderPlaced), tuple[type[IEventHandler[OrderPlaced]], ...])
asyncio.run(Mediator(registry).publish(OrderPlaced(order_id=1)))
asyncio.run(Mediator(registry).publish(42))  # rejected
"""


@pytest.mark.checkers
@pytest.mark.parametrize("artifact", ["wheel", "sdist"])
def test_an_installed_copy_type_checks_as_the_vendored_file(artifact: str, tmp_path: Path) -> None:
    """`pip install` of the wheel, or of the sdist, gives mypy and pyright a typed module."""
    dist, venv, user = tmp_path / "dist", tmp_path / "venv", tmp_path / "user"

    def call(*command: str | Path, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)

    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist)]
    if artifact == "wheel":
        built = call(*build, "--wheel", ROOT)
    else:
        # What pip does with an sdist, offline: build the wheel from the unpacked sdist.
        built = call(*build, "--sdist", ROOT)
        [sdist] = dist.glob("*.tar.gz")
        shutil.unpack_archive(sdist, tmp_path / "unpacked")
        [unpacked] = (tmp_path / "unpacked").iterdir()
        built = call(*build, "--wheel", unpacked)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = dist.glob("*.whl")
    assert wheel.name.startswith("typed_event_mediator-")
    assert call(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    installed = call(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    user.mkdir()
    (user / "app.py").write_text(INSTALLED_USER)
    (user / "pyrightconfig.json").write_text(json.dumps(STRICT_PYRIGHT))
    rejected = {len(INSTALLED_USER.splitlines())}
    mypy = call(
        sys.executable, "-m", "mypy", "--strict", "--python-executable", python, "app.py", cwd=user
    )
    assert parse_errors("mypy", mypy.stdout) == {"app.py": rejected}, mypy.stdout
    pyright = shutil.which("pyright", path=str(Path(sys.executable).parent))
    assert pyright is not None
    checked = call(pyright, "--outputjson", "--pythonpath", python, "app.py", cwd=user)
    assert parse_errors("pyright", checked.stdout) == {"app.py": rejected}, checked.stdout


@pytest.mark.checkers
def test_basedpyright_in_its_default_mode_finds_no_error_in_the_module(tmp_path: Path) -> None:
    """A vendored copy meets basedpyright with no configuration at all, not only in strict."""
    shutil.copy(ROOT / "mediator.py", tmp_path / "mediator.py")
    done = subprocess.run(
        checker_command("basedpyright", ["mediator.py"]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert parse_errors("basedpyright", done.stdout) == {}, done.stdout + done.stderr
    assert json.loads(done.stdout)["summary"]["filesAnalyzed"] == 1


def test_the_module_escapes_no_checker() -> None:
    source = (ROOT / "mediator.py").read_text()
    assert not re.search(r"type:\s*ignore|pyright:\s*ignore|\bcast\(", source)


def test_no_public_signature_mentions_any() -> None:
    tree = ast.parse((ROOT / "mediator.py").read_text())
    public = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    public = [node for node in public if node.name in mediator.__all__]
    checked = 0
    for cls in public:
        for function in cls.body:
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if function.name.startswith("_") and function.name not in ("__init__", "__call__"):
                continue
            annotations = [arg.annotation for arg in function.args.posonlyargs]
            annotations += [arg.annotation for arg in function.args.args]
            annotations += [arg.annotation for arg in function.args.kwonlyargs]
            annotations.append(function.returns)
            text = " ".join(ast.unparse(node) for node in annotations if node is not None)
            assert "Any" not in text, f"{cls.name}.{function.name}: {text}"
            checked += 1
    assert checked >= 15


# --- README --------------------------------------------------------------------------------------


def readme_blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(rf"^```{language}\n(.*?)^```$", readme, re.M | re.S)


# A block that opens with this line quotes an example, which `pytest examples` runs and checks.
QUOTE = re.compile(r"^# From (examples/[\w/]+\.py)\n")


def readme_program() -> str:
    """The README's Python blocks, in order, as the one program they make together."""
    return "\n".join(block for block in readme_blocks("python") if not QUOTE.match(block))


def test_readme_quotes_of_the_examples_are_their_own_lines() -> None:
    quotes = [block for block in readme_blocks("python") if QUOTE.match(block)]
    assert len(quotes) >= 3
    for quote in quotes:
        match = QUOTE.match(quote)
        assert match is not None
        source = (ROOT / match[1]).read_text()
        assert quote[match.end() :] in source, f"not a verbatim quote of {match[1]}:\n{quote}"


@needs_models
def test_readme_python_blocks_run_and_print_what_they_say(tmp_path: Path) -> None:
    shutil.copy(ROOT / "mediator.py", tmp_path / "mediator.py")
    program = readme_program()
    (tmp_path / "readme_blocks.py").write_text(program)
    done = subprocess.run(
        [sys.executable, "readme_blocks.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == re.findall(r"^# (.*)$", program, re.M)


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick_start, re.S)
    assert block is not None
    commands = [line.strip() for line in block[1].splitlines() if line.strip()]
    assert commands == ["python -m examples.orders", "pip install -e '.[test]' && pytest"]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_quick_start_example_shows_both_publishers_and_the_declined_card() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.orders"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "order 2 failed: card 0000 0000 declined for order 2" in done.stdout
    assert "order 2: 1 of 3 handlers of OrderPlaced failed: card 0000 0000 declined" in done.stdout
    assert done.stdout.count("reserved the stock of order 1") == 2


# --- benchmark -----------------------------------------------------------------------------------


def test_benchmark_checks_its_work_in_a_smoke_run() -> None:
    """The benchmark runs and its handlers ran as often as they should; no timing is judged."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_mediator.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sequential, 10 handlers" in done.stdout and "group, 10 handlers" in done.stdout

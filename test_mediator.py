"""The contract of mediator.py, section by section, with plain asyncio and pytest."""

import ast
import asyncio
import contextvars
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import mediator
from mediator import (
    DuplicateHandlerError,
    EventHandler,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    IEventHandler,
    Mediator,
    MediatorError,
    RegistryFrozenError,
    SequentialEventPublisher,
)

ROOT = Path(__file__).resolve().parent
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


def unchecked(value: object) -> Any:
    """`value`, hidden from the type checkers, to test what the runtime does with misuse."""
    return value


def build(handler_type: type[_T], /) -> _T:
    return handler_type()


async def build_async(handler_type: type[_T], /) -> _T:
    await asyncio.sleep(0)
    return handler_type()


MakeMediator = Callable[[EventRegistry], Mediator]

# Every way a mediator runs handlers: the inline default loop, the same loop behind the strategy
# (a resolve given), both resolvers, and the group publisher on each of its paths.
SEQUENTIAL: dict[str, MakeMediator] = {
    "default": lambda registry: Mediator(registry),
    "strategy": lambda registry: Mediator(registry, resolve=build),
    "async-resolve": lambda registry: Mediator(registry, resolve=build_async),
}
GROUP: dict[str, MakeMediator] = {
    "group": lambda registry: Mediator(registry, publisher=GroupEventPublisher()),
    "group-bounded": lambda registry: Mediator(
        registry, publisher=GroupEventPublisher(max_concurrency=2)
    ),
    "group-one-at-a-time": lambda registry: Mediator(
        registry, publisher=GroupEventPublisher(max_concurrency=1)
    ),
}
EVERY = SEQUENTIAL | GROUP
COLLECTING: dict[str, MakeMediator] = {
    "collecting-sequential": lambda registry: Mediator(
        registry, publisher=SequentialEventPublisher(fail_fast=False)
    ),
    "collecting-group": lambda registry: Mediator(
        registry, publisher=GroupEventPublisher(fail_fast=False)
    ),
    "collecting-group-bounded": lambda registry: Mediator(
        registry, publisher=GroupEventPublisher(2, fail_fast=False)
    ),
    "collecting-group-one-at-a-time": lambda registry: Mediator(
        registry, publisher=GroupEventPublisher(1, fail_fast=False)
    ),
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
    asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    assert sorted(log) == ["mail", "receipt", "stock"]


@sequential
def test_sequential_publisher_runs_handlers_in_bind_order(make: MakeMediator) -> None:
    log: list[str] = []
    handlers = [recording(log, name) for name in "abcdef"]
    registry = EventRegistry().bind(OrderPlaced, handlers[:3]).bind(OrderPlaced, handlers[3:])
    asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == list("abcdef")


@group
def test_group_publisher_starts_handlers_in_bind_order(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, name) for name in "abcd"])
    asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log == list("abcd")


@every
def test_publishing_an_event_nobody_handles_does_nothing(make: MakeMediator) -> None:
    built: list[type] = []

    def resolve(handler_type: type[_T], /) -> _T:
        built.append(handler_type)
        return handler_type()

    log: list[str] = []
    registry = EventRegistry().bind(OrderShipped, [recording(log, "shipped")])
    asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    asyncio.run(Mediator(registry, resolve=resolve).publish(UserSignedUp(user_id=1)))
    assert log == [] and built == []


def test_publish_with_no_handlers_never_calls_the_publisher() -> None:
    calls: list[object] = []

    async def publisher(handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        calls.append(event)

    asyncio.run(Mediator(EventRegistry(), publisher=publisher).publish(OrderPlaced(order_id=1)))
    assert calls == []


@every
def test_publish_rejects_an_event_class_instead_of_an_instance(make: MakeMediator) -> None:
    mediator = make(EventRegistry().bind(OrderPlaced, [recording([], "a")]))
    with pytest.raises(TypeError, match=r"got the class OrderPlaced; publish OrderPlaced\(\.\.\.\)"):
        asyncio.run(mediator.publish(unchecked(OrderPlaced)))


def test_publish_rejects_an_event_class_even_after_its_metaclass_was_looked_up() -> None:
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a")])
    with pytest.raises(TypeError, match="is a metaclass"):
        registry.handlers_for(unchecked(type(OrderPlaced)))
    with pytest.raises(TypeError, match="got the class OrderPlaced"):
        asyncio.run(Mediator(registry).publish(unchecked(OrderPlaced)))


def test_default_resolve_builds_handlers_afresh_for_every_publish() -> None:
    instances: list[object] = []

    class Remember:
        async def handle(self, event: OrderPlaced, /) -> None:
            instances.append(self)

    mediator = Mediator(EventRegistry().bind(OrderPlaced, [Remember]))

    async def twice() -> None:
        await mediator.publish(OrderPlaced(order_id=1))
        await mediator.publish(OrderPlaced(order_id=2))

    asyncio.run(twice())
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

    asyncio.run(request())
    assert seen == ["req-42", "req-42"]


@every
def test_publish_leaves_no_task_behind(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a")])

    async def caller() -> None:
        await make(registry).publish(OrderPlaced(order_id=1))
        assert len(asyncio.all_tasks()) == 1

    asyncio.run(caller())
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
    asyncio.run(holder[0].publish(OrderPlaced(order_id=1)))
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

    asyncio.run(many())
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

    before, after = asyncio.run(measure())
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
        asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value is error
    assert log == ["a", "b"]


def test_sequential_publisher_propagates_a_lone_handlers_error_unchanged() -> None:
    error = Boom("only one")
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a", raises=error)])
    with pytest.raises(Boom) as caught:
        asyncio.run(Mediator(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value is error


@group
def test_group_publisher_raises_an_exception_group_even_for_one_handler(
    make: MakeMediator,
) -> None:
    error = Boom("only one")
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a", raises=error)])
    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
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

    asyncio.run(caller())
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
        asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
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
        asyncio.run(mediator.publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (first, second)


@collecting
def test_collecting_publishers_return_normally_when_nothing_failed(make: MakeMediator) -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
    asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
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
        asyncio.run(caller())
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

    asyncio.run(caller())
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
        asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value is error
    assert log == ["a"]


@pytest.mark.parametrize(
    "make", [*GROUP.values(), *list(COLLECTING.values())[1:]], ids=[*GROUP, *list(COLLECTING)[1:]]
)
def test_group_publisher_groups_other_base_exceptions(make: MakeMediator) -> None:
    error = Abort()
    registry = EventRegistry().bind(
        OrderPlaced, [recording([], "a"), recording([], "b", raises=error)]
    )
    with pytest.raises(BaseExceptionGroup) as caught:
        asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
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
        asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)


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

    asyncio.run(caller())


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
    asyncio.run(mediator.publish(OrderPlaced(order_id=1)))
    assert len(peaks) == 20
    assert max(handlers for handlers, _ in peaks) == limit
    # The caller's task runs one worker itself, so k workers make k - 1 tasks besides it.
    assert max(tasks for _, tasks in peaks) <= limit


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

    asyncio.run(caller())
    assert log == ["inner", "outer", "inner", "outer"]


@pytest.mark.parametrize("value", [0, -1])
def test_max_concurrency_below_one_is_a_value_error(value: int) -> None:
    with pytest.raises(ValueError, match=f"got {value}; pass None for no limit"):
        GroupEventPublisher(max_concurrency=value)


@pytest.mark.parametrize("value", [True, "3", 1.5])
def test_max_concurrency_that_is_not_an_int_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="max_concurrency must be a positive int or None"):
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


def test_group_publisher_starts_every_handler_even_when_the_first_fails_at_once() -> None:
    log: list[str] = []

    class WaitsForever:
        async def handle(self, event: IEvent, /) -> None:
            log.append(f"{type(self).__name__} started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                log.append(f"{type(self).__name__} cancelled")
                raise

    class Second(WaitsForever):
        pass

    class Third(WaitsForever):
        pass

    error = Boom("fails before its first await")
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "first", raises=error), Second, Third])
    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(Mediator(registry, publisher=GroupEventPublisher()).publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)
    assert log[:3] == ["first", "Second started", "Third started"]
    assert sorted(log[3:]) == ["Second cancelled", "Third cancelled"]


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
        asyncio.run(mediator.publish(OrderPlaced(order_id=1)))
    assert caught.value.exceptions == (error,)
    assert log == ["waits", "fails", "waits cancelled"]


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
        asyncio.run(mediator.publish(OrderPlaced(order_id=1)))
    assert set(caught.value.exceptions) == {converted, error}


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
        asyncio.run(mediator.publish(OrderPlaced(order_id=1)))
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

    asyncio.run(caller())
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

    asyncio.run(caller())


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
    asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
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
    asyncio.run(Mediator(registry).publish(OrderPlaced(order_id=1)))
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

    asyncio.run(publish_all())
    assert log == ["forward", "forward"]


def test_a_bind_after_publishing_takes_effect_on_the_next_publish() -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "first")])
    mediator = Mediator(registry)
    asyncio.run(mediator.publish(OrderPlaced(order_id=1)))
    registry.bind(DomainEvent, [recording(log, "base")])
    asyncio.run(mediator.publish(OrderPlaced(order_id=2)))
    registry.merge(EventRegistry().bind(OrderPlaced, [recording(log, "merged")]))
    asyncio.run(mediator.publish(OrderPlaced(order_id=3)))
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
    assert repr(registry) == "EventRegistry(event_types=2, handlers=3, frozen=False)"


def test_a_frozen_registry_refuses_bind_and_merge_and_keeps_dispatching() -> None:
    log: list[str] = []
    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a")]).freeze()
    assert registry.frozen
    with pytest.raises(RegistryFrozenError, match="is frozen and cannot bind"):
        registry.bind(UserSignedUp, [recording(log, "b")])
    with pytest.raises(RegistryFrozenError, match="is frozen and cannot merge"):
        registry.merge(EventRegistry())
    asyncio.run(Mediator(registry).publish(OrderPlaced(order_id=1)))
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
    with pytest.raises(DuplicateHandlerError, match="handler a is already bound to OrderPlaced"):
        registry.bind(OrderPlaced, [a, a])
    assert registry.handlers_for(OrderPlaced) == ()


def test_binding_a_handler_twice_in_later_calls_is_a_duplicate_and_changes_nothing() -> None:
    a, b = recording([], "a"), recording([], "b")
    registry = EventRegistry().bind(OrderPlaced, [a])
    with pytest.raises(DuplicateHandlerError, match="handler a is already bound to OrderPlaced"):
        registry.bind(OrderPlaced, [b, a])
    assert registry.handlers_for(OrderPlaced) == (a,)


def test_merging_a_handler_bound_twice_is_a_duplicate_and_changes_nothing() -> None:
    a, b = recording([], "a"), recording([], "b")
    registry = EventRegistry().bind(OrderPlaced, [a])
    other = EventRegistry().bind(UserSignedUp, [b]).bind(OrderPlaced, [a])
    with pytest.raises(
        DuplicateHandlerError, match="handler a is bound to OrderPlaced in more than one"
    ):
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
    with pytest.raises(TypeError, match="publisher 3 is not callable"):
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


BAD_HANDLERS: list[tuple[object, str]] = [
    (SendEmail(), r"handler <.*SendEmail object at .*> bound to OrderPlaced is an instance; "
     r"bind the class SendEmail instead"),
    (send_email, r"handler <function send_email at .*> bound to OrderPlaced is not a class"),
    ("SendEmail", r"handler 'SendEmail' bound to OrderPlaced is not a class"),
    (NoHandle, r"handler NoHandle bound to OrderPlaced has no handle method"),
    (SyncHandle, r"handler SyncHandle bound to OrderPlaced has a handle that is not `async def`"),
    (Abstract, r"handler Abstract bound to OrderPlaced is abstract; implement handle"),
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

    asyncio.run(
        Mediator(EventRegistry().bind(OrderPlaced, [Plain, Inherits])).publish(
            OrderPlaced(order_id=5)
        )
    )
    assert log == ["plain 5", "inherits 5"]


@pytest.mark.parametrize(("bad", "shown"), [(42, "42"), ([], r"\[\]")])
def test_handlers_for_rejects_what_is_not_a_class(bad: object, shown: str) -> None:
    with pytest.raises(TypeError, match=f"event type {shown} is not a class"):
        EventRegistry().handlers_for(unchecked(bad))


# --- resolution ----------------------------------------------------------------------------------


def test_a_plain_resolve_builds_every_handler_before_the_first_runs() -> None:
    log: list[str] = []

    def resolve(handler_type: type[_T], /) -> _T:
        log.append(f"build {handler_type.__name__}")
        return handler_type()

    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
    asyncio.run(Mediator(registry, resolve=resolve).publish(OrderPlaced(order_id=1)))
    assert log == ["build a", "build b", "a", "b"]


def test_an_async_resolve_is_awaited_for_every_handler_before_the_first_runs() -> None:
    log: list[str] = []

    async def resolve(handler_type: type[_T], /) -> _T:
        await asyncio.sleep(0)
        log.append(f"build {handler_type.__name__}")
        return handler_type()

    registry = EventRegistry().bind(OrderPlaced, [recording(log, "a"), recording(log, "b")])
    asyncio.run(Mediator(registry, resolve=resolve).publish(OrderPlaced(order_id=1)))
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
        asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
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
    asyncio.run(make(registry).publish(OrderPlaced(order_id=1)))
    assert log[:2] == ["build A", "build B"]
    assert sorted(log[2:]) == ["run A", "run B"]


def test_a_custom_publisher_receives_built_handlers_and_the_event() -> None:
    seen: list[object] = []

    async def publisher(handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        seen.extend([len(handlers), event])

    event = OrderPlaced(order_id=1)
    registry = EventRegistry().bind(OrderPlaced, [recording([], "a"), recording([], "b")])
    asyncio.run(Mediator(registry, publisher=publisher).publish(event))
    assert seen == [2, event]


def test_mediator_shows_its_parts() -> None:
    mediator = Mediator(EventRegistry(), publisher=GroupEventPublisher(3))
    assert repr(mediator) == (
        "Mediator(EventRegistry(event_types=0, handlers=0, frozen=False), "
        "publisher=GroupEventPublisher(max_concurrency=3, fail_fast=True), resolve=None)"
    )


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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar, assert_type

from mediator import (
    EventHandler,
    EventPublisher,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    IEventHandler,
    IPublisher,
    Mediator,
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


# Rejected: handlers of the wrong event, of a subclass, not async, returning a value, no list.
registry.bind(OrderPlaced, [OnOrderShipped])  # rejected
registry.bind(DomainEvent, [OnOrderPlaced])  # rejected
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
        "mypy": r"^(?P<file>[\w.]+):(?P<line>\d+): error:",
        "pyrefly": r"^ERROR (?P<file>[\w.]+):(?P<line>\d+):",
        "ty": r"^(?P<file>[\w.]+):(?P<line>\d+):\d+: error",
    }[checker]
    for match in re.finditer(pattern, output, re.M):
        errors.setdefault(match["file"], set()).add(int(match["line"]))
    return errors


@pytest.fixture(scope="session", params=CHECKERS)
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Runs one checker, once, on the module, its tests, the typing cases, the README's code
    and the examples, all copied into one folder as a user who vendored the module has them."""
    checker: str = request.param
    folder = tmp_path_factory.mktemp(checker)
    for name in ("mediator.py", "test_mediator.py"):
        shutil.copy(ROOT / name, folder / name)
    for example in sorted((ROOT / "examples").glob("*.py")):
        shutil.copy(example, folder / example.name)
    (folder / "typing_cases.py").write_text(TYPING_CASES)
    (folder / "readme_blocks.py").write_text(readme_program())
    (folder / "pyrightconfig.json").write_text(json.dumps(STRICT_PYRIGHT))
    files = sorted(path.name for path in folder.glob("*.py"))
    command = checker_command(checker, files)
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    return Report(checker, output, parse_errors(checker, done.stdout))


def test_checker_finds_no_error_in_the_module_or_its_tests(report: Report) -> None:
    for file in ("mediator.py", "test_mediator.py"):
        assert report.lines(file) == set(), f"{report.checker} on {file}:\n{report.output}"


def test_checker_reports_exactly_the_rejected_lines_of_user_code(report: Report) -> None:
    lines = TYPING_CASES.splitlines()
    rejected = {number for number, line in enumerate(lines, 1) if line.endswith("# rejected")}
    assert len(rejected) == 15
    assert report.lines("typing_cases.py") == rejected, report.output


def test_checker_finds_no_error_in_the_readme_or_the_examples(report: Report) -> None:
    examples = [path.name for path in (ROOT / "examples").glob("*.py")]
    for file in ["readme_blocks.py", *examples]:
        assert report.lines(file) == set(), f"{report.checker} on {file}:\n{report.output}"


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


def readme_program() -> str:
    """The README's Python blocks, in order, as the one program they make together."""
    return "\n".join(readme_blocks("python"))


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

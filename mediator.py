"""An in-process asyncio event mediator in one file.

An event is something that already happened; it has zero or more handlers. Bind event types to
lists of handler classes in an `EventRegistry`, then `await Mediator(registry).publish(event)`:
the handlers run in the caller's task and context, and their errors reach the caller.

    registry = EventRegistry().bind(OrderPlaced, [SendReceipt, ReserveStock])
    await Mediator(registry).publish(OrderPlaced(order_id=7))

Vendoring: copy this file into your project and import from it. It needs Python 3.11 or newer
and nothing outside the standard library. Licence: MIT. Version 1.0.0 (`__version__`).
"""

__version__ = "1.0.0"

__all__ = (
    "IEvent",
    "IEventHandler",
    "IPublisher",
    "EventPublisher",
    "EventHandler",
    "MediatorError",
    "DuplicateHandlerError",
    "RegistryFrozenError",
    "EventRegistry",
    "SequentialEventPublisher",
    "GroupEventPublisher",
    "Mediator",
)

import abc
import asyncio
import inspect
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar, final

_EventT = TypeVar("_EventT", bound="IEvent")
_EventT_contra = TypeVar("_EventT_contra", bound="IEvent", contravariant=True)
_HandlerT = TypeVar("_HandlerT")


class IEvent(Protocol):
    """Marker for event types: subclass it, directly or through a base class of your own.

        @dataclass(frozen=True, slots=True, kw_only=True)
        class OrderPlaced(IEvent):
            order_id: int

    A handler bound to `IEvent` receives every event published whose class derives from it.
    """

    __slots__ = ()

    # An empty protocol would match every object, so `publish(42)` would type-check. This class
    # variable is the marker that makes "is an event" mean something to a type checker; a class
    # object cannot match a ClassVar member, so `publish(OrderPlaced)` is rejected too.
    __mediator_event__: ClassVar[Literal[True]] = True


class IEventHandler(Protocol[_EventT_contra]):
    """A handler of events of type `_EventT_contra`: any class with a matching async `handle`.

    Contravariant: a handler of `DomainEvent` is a handler of every subclass of `DomainEvent`.
    Handlers need not inherit anything, and may name the event parameter as they like.
    """

    __slots__ = ()

    async def handle(self, event: _EventT_contra, /) -> None:
        """React to `event`; an exception reaches the code that published it."""


class IPublisher(Protocol):
    """What code that only broadcasts events needs: `Mediator` implements it."""

    __slots__ = ()

    async def publish(self, event: IEvent, /) -> None:
        """Run every handler of `event`, as the mediator's publisher decides."""


class EventPublisher(Protocol):
    """The strategy that runs the built handlers of one event: write your own or use ours.

    `handlers` is never empty; the mediator calls the strategy only when there is work.
    """

    __slots__ = ()

    async def __call__(self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        """Run `handlers` on `event` and let their failures reach the caller."""


class EventHandler(IEventHandler[_EventT_contra], abc.ABC):
    """Base class for handlers that want it: subclass `EventHandler[OrderPlaced]`, write `handle`.

    Inheriting is optional: any class with a matching async `handle` is an `IEventHandler`.
    """

    __slots__ = ()

    @abc.abstractmethod
    async def handle(self, event: _EventT_contra, /) -> None:
        """React to `event`; an exception reaches the code that published it."""


class MediatorError(Exception):
    """Base class of the errors that this module raises for misuse of a registry."""


class DuplicateHandlerError(MediatorError, ValueError):
    """A handler class was bound a second time to the same event type."""


class RegistryFrozenError(MediatorError, RuntimeError):
    """A frozen registry was asked to bind or merge."""


@final
class _NoEvent:
    # mypy refuses a protocol class, IEvent itself included, where a plain `type[X]` parameter
    # is expected ("Only concrete class can be given", mypy issue 4717), yet binding to IEvent
    # or to a protocol base is how one handler reaches many events. A union turns that check
    # off; its other member is this class, which no caller can name, so nothing else gets in.
    __slots__ = ()


class _Dispatch:
    # The handlers resolved per event type, shared by a registry and its mediators so that
    # publish reads them with one dict lookup. Both classes derive from this one because type
    # checkers let a subclass of the declaring class, and no other class, read `_resolved`.
    __slots__ = ("_resolved",)

    _resolved: dict[type, tuple[type[IEventHandler[Any]], ...]]


@final
class _BuildFirst(tuple[type[IEventHandler[Any]], ...]):
    # Handler classes of which one at least runs code of its own when built: the default
    # publish builds them all before the first runs, as it promises. When building only
    # allocates, building each just before it runs cannot be told apart, and saves a list.
    # The mark is on the rarer lists: the common ones stay plain tuples, which index faster.
    __slots__ = ()


def _builds_trivially(handler_type: type, /) -> bool:
    # Protocol classes get a placeholder __init__ that becomes object's on first use.
    placeholder = vars(IEventHandler).get("__init__", object.__init__)
    return type(handler_type).__call__ is type.__call__ and all(
        vars(cls).get("__new__", object.__new__) is object.__new__
        and vars(cls).get("__init__", object.__init__) in (object.__init__, placeholder)
        for cls in handler_type.__mro__
    )


def _check_event_type(event_type: object, /) -> None:
    if not isinstance(event_type, type):
        raise TypeError(
            f"event type {event_type!r} is not a class; "
            f"pass the event class, such as type(event)"
        )
    if issubclass(event_type, type):
        raise TypeError(
            f"event type {event_type.__qualname__} is a metaclass, whose instances are classes; "
            f"pass the event class itself"
        )


@final
class EventRegistry(_Dispatch):
    """Binds event types to lists of handler classes; modules' registries merge at start-up.

        registry = EventRegistry().bind(OrderPlaced, [SendReceipt]).bind(IEvent, [AuditLog])

    A publish of an event runs the handlers bound to its class, then those bound to each base
    class along the MRO; a handler class bound at several levels runs once, at its first place.
    `bind` and `merge` check everything before they change anything: on error nothing changed.
    """

    __slots__ = ("_bindings", "_frozen")

    def __init__(self) -> None:
        # The handlers' event types are erased in storage; `bind` checks them, and every lookup
        # goes through a class that the handlers were bound to or one of its subclasses.
        self._bindings: dict[type, list[type[IEventHandler[Any]]]] = {}
        # Cleared in place, never replaced: every `Mediator` of this registry reads this dict.
        self._resolved = {}
        self._frozen = False

    def __repr__(self) -> str:
        handlers = sum(map(len, self._bindings.values()))
        return (
            f"EventRegistry(event_types={len(self._bindings)}, handlers={handlers}, "
            f"frozen={self._frozen})"
        )

    @property
    def frozen(self) -> bool:
        """Whether `freeze` was called: a frozen registry refuses `bind` and `merge`."""
        return self._frozen

    def bind(
        self,
        event_type: type[_EventT] | type[_NoEvent],
        handler_types: Sequence[type[IEventHandler[_EventT]]],
        /,
    ) -> Self:
        """Append `handler_types` to the handlers of `event_type`, in order; return the registry.

        Raises `TypeError` for an event type that is not a class and for a handler that is not
        a concrete class with an `async def handle`; `DuplicateHandlerError` for a handler class
        already bound to `event_type`; `RegistryFrozenError` once frozen.
        """
        self._check_not_frozen("bind")
        _check_event_type(event_type)
        if isinstance(handler_types, (type, str)):
            raise TypeError(
                f"bind takes a list of handler classes; got {handler_types!r} for "
                f"{event_type.__qualname__}; write [{getattr(handler_types, '__qualname__', '...')}]"
            )
        bound: list[type[IEventHandler[Any]]] = self._bindings.get(event_type, [])
        seen = set(bound)
        added: list[type[IEventHandler[Any]]] = []
        for handler_type in handler_types:
            _check_handler_type(handler_type, event_type)
            if handler_type in seen:
                raise DuplicateHandlerError(
                    f"handler {handler_type.__qualname__} is already bound to "
                    f"{event_type.__qualname__}; bind each handler class once per event type"
                )
            seen.add(handler_type)
            added.append(handler_type)
        if added:
            self._bindings[event_type] = [*bound, *added]
            self._resolved.clear()
        return self

    def merge(self, *others: "EventRegistry") -> Self:
        """Append the bindings of `others` after this registry's own, per event type, in order.

        Raises `TypeError` for an argument that is not an `EventRegistry`,
        `DuplicateHandlerError` when the result would bind a handler class twice to one event
        type, and `RegistryFrozenError` once frozen. The others are left as they were.
        """
        self._check_not_frozen("merge")
        merged = {event_type: list(bound) for event_type, bound in self._bindings.items()}
        for other in others:
            _check_registry(other, "merge")
            for event_type, handler_types in other._bindings.items():
                bound = merged.setdefault(event_type, [])
                for handler_type in handler_types:
                    if handler_type in bound:
                        raise DuplicateHandlerError(
                            f"handler {handler_type.__qualname__} is bound to "
                            f"{event_type.__qualname__} in more than one merged registry; "
                            f"bind it in one of them only"
                        )
                    bound.append(handler_type)
        self._bindings = merged
        self._resolved.clear()
        return self

    def freeze(self) -> Self:
        """Refuse every later `bind` and `merge`; publishing goes on. Return the registry."""
        self._frozen = True
        return self

    def handlers_for(
        self, event_type: type[_EventT] | type[_NoEvent], /
    ) -> tuple[type[IEventHandler[_EventT]], ...]:
        """The handler classes that a publish of an instance of exactly `event_type` runs.

        In the order they run: those bound to `event_type`, then those bound to each base class
        along its MRO, each once. An empty tuple when there are none.
        """
        _check_event_type(event_type)
        try:
            return self._resolved[event_type]
        except KeyError:
            pass
        bindings = self._bindings
        resolved = tuple(
            dict.fromkeys(
                handler_type
                for cls in event_type.__mro__
                for handler_type in bindings.get(cls, ())
            )
        )
        if not all(map(_builds_trivially, resolved)):
            resolved = _BuildFirst(resolved)
        self._resolved[event_type] = resolved
        return resolved

    def _check_not_frozen(self, method: str, /) -> None:
        if self._frozen:
            raise RegistryFrozenError(
                f"{self!r} is frozen and cannot {method}; "
                f"bind and merge everything before calling freeze()"
            )


def _check_registry(registry: object, taker: str, /) -> None:
    if not isinstance(registry, EventRegistry):
        raise TypeError(
            f"{taker} takes an EventRegistry; got {registry!r}; "
            f"build one with EventRegistry().bind(...)"
        )


def _check_handler_type(handler_type: object, event_type: type, /) -> None:
    where = f"bound to {event_type.__qualname__}"
    if not isinstance(handler_type, type):
        if callable(getattr(handler_type, "handle", None)):
            fix = f"bind the class {type(handler_type).__qualname__} instead"
            raise TypeError(f"handler {handler_type!r} {where} is an instance; {fix}")
        fix = "bind a class that has an `async def handle(self, event)` method"
        raise TypeError(f"handler {handler_type!r} {where} is not a class; {fix}")
    name = handler_type.__qualname__
    handle = getattr(handler_type, "handle", None)
    if handle is None:
        raise TypeError(
            f"handler {name} {where} has no handle method; "
            f"define `async def handle(self, event)` on it"
        )
    if not inspect.iscoroutinefunction(handle):
        raise TypeError(
            f"handler {name} {where} has a handle that is not `async def`; "
            f"make it `async def handle(self, event)`"
        )
    if inspect.isabstract(handler_type):
        missing = ", ".join(sorted(getattr(handler_type, "__abstractmethods__", ())))
        raise TypeError(f"handler {name} {where} is abstract; implement {missing}")


def _failures(
    event: IEvent, errors: Sequence[BaseException], handlers: int, /
) -> BaseExceptionGroup[BaseException]:
    # BaseExceptionGroup(...) makes an ExceptionGroup when every error is an Exception.
    event_type = type(event).__qualname__
    return BaseExceptionGroup(f"{len(errors)} of {handlers} handlers of {event_type} failed", errors)


def _check_fail_fast(fail_fast: object, /) -> None:
    if not isinstance(fail_fast, bool):
        raise TypeError(f"fail_fast must be True or False; got {fail_fast!r}")


@final
class SequentialEventPublisher:
    """Runs the handlers one after another, in order, in the caller's task: the default.

    With `fail_fast=True` the first exception propagates unchanged and the handlers after it do
    not run. With `fail_fast=False` every handler runs; then, if any raised an `Exception`, one
    `ExceptionGroup` holds those exceptions in handler order. Cancellation and other
    `BaseException`s propagate at once under both settings, and no later handler runs.
    """

    __slots__ = ("_fail_fast",)

    def __init__(self, *, fail_fast: bool = True) -> None:
        _check_fail_fast(fail_fast)
        self._fail_fast = fail_fast

    def __repr__(self) -> str:
        return f"SequentialEventPublisher(fail_fast={self._fail_fast})"

    @property
    def fail_fast(self) -> bool:
        """Whether the first failure stops the handlers after it."""
        return self._fail_fast

    async def __call__(self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        """Run `handlers` on `event`, one after another."""
        if self._fail_fast:
            for handler in handlers:
                await handler.handle(event)
            return
        errors: list[Exception] = []
        for handler in handlers:
            try:
                await handler.handle(event)
            except Exception as error:
                errors.append(error)
        if errors:
            raise _failures(event, errors, len(handlers))


@final
class GroupEventPublisher:
    """Runs the handlers concurrently in an `asyncio.TaskGroup`, at most `max_concurrency` at once.

        publisher = GroupEventPublisher(max_concurrency=8, fail_fast=False)

    Handlers start in bind order. With `fail_fast=True` the first failure cancels the others;
    with `fail_fast=False` every handler runs to its end. Failures then propagate as one
    exception group, even a single failure, so that `except*` always works: an `ExceptionGroup`
    (a `BaseExceptionGroup` if a `BaseException` is among them), in handler order when
    `fail_fast=False`. `CancelledError`, `KeyboardInterrupt` and `SystemExit` propagate bare; a
    handler's own `CancelledError` raised in a child task does so once the others finished.
    Cancelling the caller cancels every running handler, and no task started outlives the call.

    The first handler runs in the caller's task, the others in child tasks that each get a copy
    of the caller's context, as TaskGroup gives them: do not count on a `ContextVar` that one
    handler sets being seen by another or by the caller. With `max_concurrency=k`, k workers
    (the caller's task and k - 1 child tasks) take the handlers one after another, in bind
    order; with `fail_fast=True`, once a handler failed no worker starts another.
    """

    __slots__ = ("_max_concurrency", "_fail_fast")

    def __init__(self, max_concurrency: int | None = None, *, fail_fast: bool = True) -> None:
        _check_max_concurrency(max_concurrency)
        _check_fail_fast(fail_fast)
        self._max_concurrency = max_concurrency
        self._fail_fast = fail_fast

    def __repr__(self) -> str:
        return (
            f"GroupEventPublisher(max_concurrency={self._max_concurrency}, "
            f"fail_fast={self._fail_fast})"
        )

    @property
    def max_concurrency(self) -> int | None:
        """How many handlers of one publish may run at once; `None` for no limit."""
        return self._max_concurrency

    @property
    def fail_fast(self) -> bool:
        """Whether the first failure cancels the other handlers."""
        return self._fail_fast

    async def __call__(self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        """Run `handlers` on `event` concurrently."""
        count = len(handlers)
        workers = count if self._max_concurrency is None else min(self._max_concurrency, count)
        errors: list[tuple[int, Exception]] | None = None if self._fail_fast else []
        if workers <= 1:
            # One worker needs no task: running it here saves a task and a loop iteration.
            try:
                await _drain(enumerate(handlers), event, errors)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:
                raise _failures(event, [error], count) from None
        else:
            try:
                async with asyncio.TaskGroup() as group:
                    if errors is None and workers == count:
                        # Measured: a task per handler with no worker around it, and the first
                        # handler in the caller's task, beat a hand-written TaskGroup.
                        tasks = [group.create_task(h.handle(event)) for h in handlers[1:]]
                        try:
                            await handlers[0].handle(event)
                        except Exception as error:
                            _fail_after_the_others_start(group, error)
                    else:
                        pending = enumerate(handlers)
                        tasks = [
                            group.create_task(_drain(pending, event, errors))
                            for _ in range(workers - 1)
                        ]
                        await _drain(pending, event, errors)
            except BaseExceptionGroup as group_error:
                raise _failures(event, list(group_error.exceptions), count) from None
            for task in tasks:
                if task.cancelled():
                    # A TaskGroup takes a cancelled child for done; as no one cancelled it, a
                    # handler raised CancelledError itself, and that must reach the caller.
                    raise asyncio.CancelledError(f"a handler of {type(event).__qualname__}")
        if errors:
            raise _failures(event, [error for _, error in sorted(errors)], count)


def _check_max_concurrency(max_concurrency: object, /) -> None:
    if max_concurrency is None:
        return
    # bool is an int subclass, but `max_concurrency=True` is a mistake, never a limit.
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise TypeError(f"max_concurrency must be a positive int or None; got {max_concurrency!r}")
    if max_concurrency < 1:
        raise ValueError(
            f"max_concurrency must be at least 1; got {max_concurrency!r}; pass None for no limit"
        )


async def _drain(
    pending: Iterator[tuple[int, IEventHandler[_EventT]]],
    event: _EventT,
    errors: list[tuple[int, Exception]] | None,
    /,
) -> None:
    # Workers share one iterator, so each handler runs once and a worker that finishes early
    # takes the next handler.
    for index, handler in pending:
        try:
            await handler.handle(event)
        except Exception as error:
            if errors is None:
                # Failing fast: once a handler failed, no worker may start another one.
                for _ in pending:
                    pass
                raise
            errors.append((index, error))


def _fail_after_the_others_start(group: asyncio.TaskGroup, error: Exception, /) -> None:
    # In a TaskGroup every handler starts before a failure cancels the others. The first handler
    # runs in the caller's task, before the others' tasks had their first step, so its failure
    # goes to the group from a task created after theirs, which keeps that true.
    task = asyncio.current_task()
    assert task is not None, "a TaskGroup runs in a task"
    if task.cancelling():
        # The group is already aborting and refuses new tasks; the error joins it from here.
        raise error

    async def fail() -> None:
        raise error

    group.create_task(fail())


class _Resolve(Protocol):
    # What `resolve` may be: a plain or async function from a handler class to a handler.
    __slots__ = ()

    def __call__(self, handler_type: type[_HandlerT], /) -> _HandlerT | Awaitable[_HandlerT]: ...


@final
class Mediator(_Dispatch):
    """Publishes events to the handlers that a registry binds to them.

        mediator = Mediator(registry, publisher=GroupEventPublisher(max_concurrency=8))
        await mediator.publish(OrderPlaced(order_id=7))

    `resolve(handler_type)` builds each handler, plain or `async def` (a DI container's `get`);
    the default calls `handler_type()` afresh on every publish. A later `bind` or `merge` on the
    registry takes effect on the next publish.
    """

    __slots__ = ("_registry", "_publisher", "_resolve", "_inline")

    def __init__(
        self,
        registry: EventRegistry,
        /,
        *,
        publisher: EventPublisher = SequentialEventPublisher(),
        resolve: _Resolve | None = None,
    ) -> None:
        _check_registry(registry, "Mediator")
        if not callable(publisher):
            raise TypeError(
                f"publisher {publisher!r} is not callable; pass an EventPublisher such as "
                f"SequentialEventPublisher() or GroupEventPublisher()"
            )
        if resolve is not None and not callable(resolve):
            raise TypeError(
                f"resolve {resolve!r} is not callable; pass a function that takes a handler "
                f"class and returns (or awaits to) a handler"
            )
        self._registry = registry
        self._resolved = registry._resolved
        self._publisher = publisher
        self._resolve = resolve
        self._inline = (
            resolve is None and type(publisher) is SequentialEventPublisher and publisher.fail_fast
        )

    def __repr__(self) -> str:
        return (
            f"Mediator({self._registry!r}, publisher={self._publisher!r}, "
            f"resolve={self._resolve!r})"
        )

    async def publish(self, event: IEvent, /) -> None:
        """Build every handler of `event`, then run them with the publisher.

        If building a handler raises, no handler runs and the error propagates. With no
        handlers it returns at once. Raises `TypeError` for an event class instead of an event.
        """
        handler_types = self._resolved.get(type(event))
        if handler_types is None:
            if isinstance(event, type):
                raise TypeError(
                    f"publish takes an event instance; got the class {event.__qualname__}; "
                    f"publish {event.__qualname__}(...) instead"
                )
            handler_types = self._registry.handlers_for(type(event))
        if not handler_types:
            return
        if self._inline:
            # Measured: the default publisher's loop, run here rather than behind a call that
            # costs a coroutine, and no list where building the handlers one at a time is the
            # same as building them all first, keep publish at the cost of a hand-written
            # `for cls in handlers: await cls().handle(event)`.
            if len(handler_types) == 1:
                await handler_types[0]().handle(event)
                return
            if type(handler_types) is not _BuildFirst:
                for handler_type in handler_types:
                    await handler_type().handle(event)
                return
        resolve = self._resolve
        handlers: list[IEventHandler[Any]]
        if resolve is None:
            handlers = [handler_type() for handler_type in handler_types]
        else:
            handlers = []
            for handler_type in handler_types:
                built = resolve(handler_type)
                handlers.append(await built if isinstance(built, Awaitable) else built)
        if self._inline:
            for handler in handlers:
                await handler.handle(event)
        else:
            await self._publisher(handlers, event)

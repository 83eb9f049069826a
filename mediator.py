"""An in-process asyncio event mediator in one file.

An event is something that already happened; it has zero or more handlers. Bind event types to
lists of handler classes in an `EventRegistry`, then `await Mediator(registry).publish(event)`:
the handlers run in the caller's task and context, their errors reach the caller, and the
follow-up events they leave in their `events` are published before `publish` returns.

    registry = EventRegistry().bind(OrderPlaced, [SendReceipt, ReserveStock])
    await Mediator(registry).publish(OrderPlaced(order_id=7))

Vendoring: copy this file into your project and import from it. It needs Python 3.11 or newer
and nothing outside the standard library. Licence: MIT. Version 2.0.0 (`__version__`).
"""

__version__ = "2.0.0"

__all__ = (
    "IEvent",
    "IEventHandler",
    "IEventMiddleware",
    "IPublisher",
    "EventPublisher",
    "Resolve",
    "EventHandler",
    "MediatorError",
    "DuplicateHandlerError",
    "RegistryFrozenError",
    "ChainLimitError",
    "EventRegistry",
    "SequentialEventPublisher",
    "GroupEventPublisher",
    "RecordingPublisher",
    "Mediator",
)

import abc
import asyncio
import contextvars
import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Never, Protocol, Self, TypeVar, final

_EventT = TypeVar("_EventT", bound="IEvent")
_EventT_contra = TypeVar("_EventT_contra", bound="IEvent", contravariant=True)
_T = TypeVar("_T")


class IEvent(Protocol):
    """Marker for event types: subclass it, directly or through a base class of your own.

        @dataclass(frozen=True, slots=True, kw_only=True)
        class OrderPlaced(IEvent):
            order_id: int

    A base whose metaclass conflicts with `Protocol`'s (pydantic, msgspec, attrs) declares the
    marker instead of inheriting it: `__mediator_event__: ClassVar[Literal[True]] = True`. Either
    way, handlers and middleware bound to `IEvent` reach every event.
    """

    __slots__ = ()

    # An empty protocol would match every object, so `publish(42)` would type-check. This class
    # variable is the marker that makes "is an event" mean something to a type checker; a class
    # object cannot match a ClassVar member, so `publish(OrderPlaced)` is rejected too.
    __mediator_event__: ClassVar[Literal[True]] = True


class IEventHandler(Protocol[_EventT_contra]):
    """A handler of events of type `_EventT_contra`: any class with a matching async `handle`.

    Contravariant: a handler of `DomainEvent` is a handler of every subclass of `DomainEvent`.
    Handlers need not inherit anything, and may name the event parameter as they like. A handler
    may leave follow-up events in an `events` attribute or property; see `Mediator.publish`.
    """

    __slots__ = ()

    async def handle(self, event: _EventT_contra, /) -> None:
        """React to `event`; an exception reaches the code that published it."""


class IEventMiddleware(Protocol[_EventT_contra]):
    """Code around each handler of events of type `_EventT_contra`: timing, tracing, retries.

        class Timing:
            async def handle(self, event: IEvent, handler: object, call_next: CallNext, /) -> None:
                start = time.perf_counter()
                await call_next()
                print(type(handler).__name__, time.perf_counter() - start)

    `call_next()` runs the rest of the chain, then the handler. An exception from `handle` is
    that handler's failure; catching the handler's exception makes the call a success; not
    calling `call_next` skips the handler. `handler` is the handler being wrapped, typed as a
    handler of some event: name it, but run it only through `call_next`. Contravariant, like
    `IEventHandler`: middleware of `IEvent` can wrap every handler.
    """

    __slots__ = ()

    async def handle(
        self,
        event: _EventT_contra,
        handler: IEventHandler[Never],
        call_next: Callable[[], Awaitable[None]],
        /,
    ) -> None:
        """Do what comes before and after the handler, and await `call_next()` to run it."""


class IPublisher(Protocol):
    """What code that only broadcasts events needs: `Mediator` and `RecordingPublisher` are ones."""

    __slots__ = ()

    async def publish(self, event: IEvent, /) -> None:
        """Run every handler of `event`, as the mediator's publisher decides."""


class EventPublisher(Protocol):
    """The strategy that runs the built handlers of one event: write your own or use ours.

    `handlers` is never empty; the mediator calls the strategy only when there is work. The
    handlers it gets come wrapped in their middleware, and their follow-ups are taken as each
    `handle` returns (a call that failed leaves none), so a strategy of your own needs to do
    nothing for either.
    """

    __slots__ = ()

    async def __call__(self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, /) -> None:
        """Run `handlers` on `event` and let their failures reach the caller."""


class Resolve(Protocol):
    """What `Mediator(resolve=...)` takes: from a class, an instance of it or an awaitable of one.

    A DI container's `get`, plain or async, is one: `Mediator(registry, resolve=container.get)`.
    """

    __slots__ = ()

    def __call__(self, cls: type[_T], /) -> _T | Awaitable[_T]:
        """Build an instance of `cls`, or return an awaitable that does."""
        ...


class EventHandler(IEventHandler[_EventT_contra], abc.ABC):
    """Base class for handlers that want it: subclass `EventHandler[OrderPlaced]`, write `handle`.

    `events` holds the follow-up events of the last `handle`, none by default; assign it there:
    `self.events = [OrderShipped(order_id=event.order_id)]` (a subclass with `__slots__` lists
    "events" in them). Inheriting is optional: any class with a matching async `handle` is an
    `IEventHandler`.
    """

    __slots__ = ()

    events: Sequence[IEvent] = ()

    @abc.abstractmethod
    async def handle(self, event: _EventT_contra, /) -> None:
        """React to `event`; an exception reaches the code that published it."""


class MediatorError(Exception):
    """Base class of the errors that this module raises for misuse of a registry or mediator."""


class DuplicateHandlerError(MediatorError, ValueError):
    """A handler or middleware class was bound a second time to the same event type."""


class RegistryFrozenError(MediatorError, RuntimeError):
    """A frozen registry was asked to bind or merge."""


class ChainLimitError(MediatorError, RuntimeError):
    """A chain of follow-up or nested events went past `max_depth`, or `max_follow_ups` ran out."""


@final
class _NoEvent:
    # mypy refuses a protocol class, IEvent itself included, where a plain `type[X]` parameter
    # is expected ("Only concrete class can be given", mypy issue 4717), yet binding to IEvent
    # or to a protocol base is how one handler reaches many events. A union turns that check
    # off; its other member is this class, which no caller can name, so nothing else gets in.
    __slots__ = ()


# What a publish of one event type runs: its handler classes in run order, and its middleware
# classes from the outermost in. The types of the events they take are erased in storage; `bind`
# checked them, and every lookup goes through a class they were bound to or a subclass of it.
_Plan = tuple[tuple[type[IEventHandler[Any]], ...], tuple[type[IEventMiddleware[Any]], ...]]


class _Plans:
    # The plans per event type, shared by a registry and its mediators so that publish finds
    # its plan with one dict lookup. Both classes derive from this one because type checkers
    # let a subclass of the declaring class, and no other class, read `_plans`.
    __slots__ = ("_plans",)

    def __init__(self, plans: dict[type, _Plan], /) -> None:
        self._plans = plans


def _check_event_type(event_type: object, /) -> None:
    if not isinstance(event_type, type):
        raise TypeError(
            f"event type {event_type!r} is not a class; pass the event class, such as type(event)"
        )
    if issubclass(event_type, type):
        raise TypeError(
            f"event type {event_type.__qualname__} is a metaclass, whose instances are classes; "
            f"pass the event class itself"
        )


def _is_protocol(cls: type, /) -> bool:
    # typing.is_protocol came in 3.13; before it, this attribute is how typing itself tells.
    return getattr(cls, "_is_protocol", False) is True


def _check_bound_class(bound: object, kind: str, event_type: type, /) -> None:
    where = f"{kind} {{}} bound to {event_type.__qualname__}"
    origin = typing.get_origin(bound)
    if isinstance(origin, type):
        raise TypeError(
            f"{where.format(repr(bound))} is a parametrised generic; bind {origin.__qualname__} "
            f"itself: the event type it is bound to decides its type parameter"
        )
    if not isinstance(bound, type):
        if callable(getattr(bound, "handle", None)):
            fix = f"bind the class {type(bound).__qualname__} instead"
            raise TypeError(f"{where.format(repr(bound))} is an instance; {fix}")
        raise TypeError(
            f"{where.format(repr(bound))} is not a class; "
            f"bind a class that has an `async def handle(self, event...)` method"
        )
    name = bound.__qualname__
    if _is_protocol(bound):
        raise TypeError(
            f"{where.format(name)} is a protocol class, which cannot be built; "
            f"bind a class that implements it"
        )
    handle = getattr(bound, "handle", None)
    if handle is None:
        raise TypeError(f"{where.format(name)} has no handle method; define `async def handle`")
    if not inspect.iscoroutinefunction(handle):
        raise TypeError(
            f"{where.format(name)} has a handle that is not `async def`; make it `async def handle`"
        )
    owner = next(cls for cls in bound.__mro__ if "handle" in vars(cls))
    if _is_protocol(owner):
        raise TypeError(
            f"{where.format(name)} has only the empty handle of the protocol "
            f"{owner.__qualname__}; define `async def handle(self, event)` on {name}"
        )
    if inspect.isabstract(bound):
        missing = ", ".join(sorted(getattr(bound, "__abstractmethods__", ())))
        raise TypeError(f"{where.format(name)} is abstract; implement {missing}")


def _check_registry(registry: object, taker: str, /) -> None:
    if not isinstance(registry, EventRegistry):
        raise TypeError(
            f"{taker} takes an EventRegistry; got {registry!r}; "
            f"build one with EventRegistry().bind(...)"
        )


@final
class EventRegistry(_Plans):
    """Binds event types to handler and middleware classes; modules' registries merge at start-up.

        registry = EventRegistry().bind(OrderPlaced, [SendReceipt]).bind(IEvent, [AuditLog])

    A publish of an event runs the handlers bound to its class, then those bound to each base
    class along the MRO; a handler class bound at several levels runs once, at its first place.
    Middleware bound to a class wraps every handler that a publish of it or of a subclass runs,
    those bound to base classes outside those bound to subclasses. `bind`, `bind_middleware` and
    `merge` check everything before they change anything: on error nothing changed.
    """

    __slots__ = ("_handlers", "_middleware", "_classes", "_frozen")

    def __init__(self) -> None:
        # Cleared in place, never replaced: every `Mediator` of this registry reads this dict.
        super().__init__({})
        self._handlers: dict[type, tuple[type[IEventHandler[Any]], ...]] = {}
        self._middleware: dict[type, tuple[type[IEventMiddleware[Any]], ...]] = {}
        self._classes: dict[type, None] = {}
        self._frozen = False

    def __repr__(self) -> str:
        handlers = sum(map(len, self._handlers.values()))
        middleware = sum(map(len, self._middleware.values()))
        event_types = len(self._handlers.keys() | self._middleware.keys())
        return (
            f"EventRegistry(event_types={event_types}, handlers={handlers}, "
            f"middleware={middleware}, frozen={self._frozen})"
        )

    def __bool__(self) -> bool:
        """Whether anything is bound: an empty registry is falsy."""
        return bool(self._classes)

    @property
    def frozen(self) -> bool:
        """Whether `freeze` was called: a frozen registry refuses `bind` and `merge`."""
        return self._frozen

    @property
    def bindings(self) -> Mapping[type, tuple[type[IEventHandler[Never]], ...]]:
        """Each event type and the handler classes bound to exactly it, in bind order; read-only."""
        return types.MappingProxyType(self._handlers)

    @property
    def middleware_bindings(self) -> Mapping[type, tuple[type[IEventMiddleware[Never]], ...]]:
        """Each event type and the middleware classes bound to exactly it, in bind order."""
        return types.MappingProxyType(self._middleware)

    @property
    def classes(self) -> tuple[type, ...]:
        """Every handler and middleware class bound, once each, in bind order.

        What to register in a DI container, or to build once at start-up to check that each can.
        """
        return tuple(self._classes)

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
        self._handlers = self._add(self._handlers, event_type, handler_types, "handler", "bind")
        return self

    def bind_middleware(
        self,
        event_type: type[_EventT] | type[_NoEvent],
        middleware_types: Sequence[type[IEventMiddleware[_EventT]]],
        /,
    ) -> Self:
        """Append `middleware_types` to the middleware of `event_type`, the first outermost.

        Raises as `bind` does, for middleware classes.
        """
        self._middleware = self._add(
            self._middleware, event_type, middleware_types, "middleware", "bind_middleware"
        )
        return self

    def _add(
        self,
        table: dict[type, tuple[type[_T], ...]],
        event_type: type,
        added: Sequence[type[_T]],
        kind: str,
        method: str,
        /,
    ) -> dict[type, tuple[type[_T], ...]]:
        # A new table: `added` appended to the classes of `event_type`, once all are checked.
        self._check_not_frozen(method)
        _check_event_type(event_type)
        if isinstance(added, (type, str)):
            shown = getattr(added, "__qualname__", "...")
            raise TypeError(
                f"{method} takes a list of {kind} classes; got {added!r} for "
                f"{event_type.__qualname__}; write [{shown}]"
            )
        bound = table.get(event_type, ())
        seen = set(bound)
        new: list[type[_T]] = []
        for cls in added:
            _check_bound_class(cls, kind, event_type)
            if cls in seen:
                raise DuplicateHandlerError(
                    f"{kind} {cls.__qualname__} is already bound to {event_type.__qualname__}; "
                    f"bind each {kind} class once per event type"
                )
            seen.add(cls)
            new.append(cls)
        if not new:
            return table
        self._classes.update(dict.fromkeys(new))
        self._plans.clear()
        return {**table, event_type: (*bound, *new)}

    def merge(self, *others: "EventRegistry") -> Self:
        """Append the bindings of `others` after this registry's own, per event type, in order.

        Raises `TypeError` for an argument that is not an `EventRegistry`,
        `DuplicateHandlerError` when the result would bind a class twice to one event type, and
        `RegistryFrozenError` once frozen. The others are left as they were.
        """
        self._check_not_frozen("merge")
        handlers = dict(self._handlers)
        middleware = dict(self._middleware)
        classes = dict(self._classes)
        for other in others:
            _check_registry(other, "merge")
            _merge_into(handlers, other._handlers, "handler")
            _merge_into(middleware, other._middleware, "middleware")
            classes.update(other._classes)
        self._handlers, self._middleware, self._classes = handlers, middleware, classes
        self._plans.clear()
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
        along its MRO (`IEvent` last, also for a class that only declares the marker), each
        once. An empty tuple when there are none.
        """
        return self._plan(event_type)[0]

    def middleware_for(
        self, event_type: type[_EventT] | type[_NoEvent], /
    ) -> tuple[type[IEventMiddleware[_EventT]], ...]:
        """The middleware classes around each handler of a publish of exactly `event_type`.

        From the outermost in: those bound to `IEvent`, then along the MRO towards
        `event_type`, each level in bind order; each class once, at its outermost place.
        """
        return self._plan(event_type)[1]

    def _plan(self, event_type: type, /) -> _Plan:
        _check_event_type(event_type)
        try:
            return self._plans[event_type]
        except KeyError:
            pass
        mro = event_type.__mro__
        if IEvent not in mro and getattr(event_type, "__mediator_event__", None) is True:
            mro = (*mro[:-1], IEvent, object)
        handlers, middleware = self._handlers, self._middleware
        plan = (
            tuple(dict.fromkeys(h for cls in mro for h in handlers.get(cls, ()))),
            tuple(dict.fromkeys(m for cls in reversed(mro) for m in middleware.get(cls, ()))),
        )
        self._plans[event_type] = plan
        return plan

    def _check_not_frozen(self, method: str, /) -> None:
        if self._frozen:
            raise RegistryFrozenError(
                f"{self!r} is frozen and cannot {method}; "
                f"bind and merge everything before calling freeze()"
            )


def _merge_into(
    table: dict[type, tuple[type[_T], ...]],
    other: dict[type, tuple[type[_T], ...]],
    kind: str,
    /,
) -> None:
    for event_type, added in other.items():
        bound = table.get(event_type, ())
        seen = set(bound)
        for cls in added:
            if cls in seen:
                raise DuplicateHandlerError(
                    f"{kind} {cls.__qualname__} is bound to {event_type.__qualname__} in more "
                    f"than one merged registry; bind it in one of them only"
                )
        table[event_type] = (*bound, *added)


def _check_count(name: str, value: object, /, *, or_none: bool = False) -> None:
    # bool is an int subclass, but `max_depth=True` is a mistake, never a limit.
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "a positive int or None" if or_none else "a positive int"
        raise TypeError(f"{name} must be {expected}; got {value!r}")
    if value < 1:
        fix = "; pass None for no limit" if or_none else ""
        raise ValueError(f"{name} must be at least 1; got {value!r}{fix}")


def _check_fail_fast(fail_fast: object, /) -> None:
    if not isinstance(fail_fast, bool):
        raise TypeError(f"fail_fast must be True or False; got {fail_fast!r}")


# The chain of event types that led to the publish running in this context, the newest last: the
# follow-ups of a handler and the events it publishes itself extend it; `max_depth` bounds it.
_chain: contextvars.ContextVar[tuple[type, ...]] = contextvars.ContextVar(
    "mediator_chain", default=()
)


def _current_task() -> "asyncio.Task[Any]":
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("publish runs in an asyncio task; await it from a coroutine asyncio runs")
    return task


def _take(handler: object, events: Any, /) -> list[IEvent]:
    # The follow-ups that a handler left in `events`, taken right after its `handle` returned.
    # A list is emptied, so that a handler object used again never has one published twice.
    taken: list[IEvent] = list(events)
    for event in taken:
        if getattr(type(event), "__mediator_event__", None) is not True:
            raise TypeError(
                f"handler {type(handler).__qualname__} left {event!r} in its events, which is not "
                f"an event; leave instances of event classes there"
            )
    if isinstance(events, list):
        events.clear()
    return taken


def _discard(handler: object, /) -> None:
    # A failed handler's follow-ups are never published; a list is emptied for its next call.
    events = getattr(handler, "events", None)
    if isinstance(events, list):
        events.clear()


def _failures(
    event: object, errors: Sequence[BaseException], count: int, /
) -> BaseExceptionGroup[BaseException]:
    # BaseExceptionGroup(...) makes an ExceptionGroup when every error is an Exception.
    event_type = type(event).__qualname__
    return BaseExceptionGroup(f"{len(errors)} of {count} handlers of {event_type} failed", errors)


def _outcome(
    event: object, count: int, errors: Sequence[BaseException], bare: BaseException | None, /
) -> BaseException:
    # What a failed publish raises: `bare` itself, the other errors chained to it as its cause,
    # or, with nothing to raise bare, every error in one group.
    others = [error for error in errors if error is not bare]
    if bare is None:
        return _failures(event, others, count)
    if others:
        group = _failures(event, others, count)
        # A cause that `bare` already had stays reachable, as the cause of the group.
        group.__cause__, bare.__cause__ = bare.__cause__, group
    return bare


def _ends(error: BaseException, /) -> bool:
    # Whether a handler's error ends the publish even when the others should run on: anything
    # that is not an Exception, and a chain that went past its limits.
    return not isinstance(error, Exception) or isinstance(error, ChainLimitError)


async def _landed(event: object, /) -> asyncio.CancelledError:
    # The caller was cancelled, yet no CancelledError came out of the handlers: one of them
    # swallowed it, or it is still pending. One loop turn lands a pending one; else it is made.
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError as cancelled:
        return cancelled
    return asyncio.CancelledError(
        f"the caller was cancelled while a handler of {type(event).__qualname__} swallowed it"
    )


async def _run_in_order(
    handlers: Sequence[IEventHandler[_EventT]],
    event: _EventT,
    fail_fast: bool,
    follow_ups: list[IEvent] | None,
    task: "asyncio.Task[Any]",
    before: int,
    /,
) -> None:
    # What SequentialEventPublisher does in `task`, the caller's, whose cancelling() count was
    # `before` when the publish began; follow-ups are taken into `follow_ups` when it is a list.
    errors: list[BaseException] = []
    bare: BaseException | None = None
    try:
        for handler in handlers:
            try:
                await handler.handle(event)
                if follow_ups is not None and (events := getattr(handler, "events", None)):
                    follow_ups += _take(handler, events)
            except BaseException as error:
                _discard(handler)
                errors.append(error)
                if fail_fast or _ends(error):
                    bare = error
            if task.cancelling() > before:
                if not isinstance(bare, asyncio.CancelledError):
                    bare = await _landed(event)
                break
            if bare is not None:
                break
        if errors or bare is not None:
            raise _outcome(event, len(handlers), errors, bare)
    finally:
        # Each error's traceback holds this frame: keeping them here would make a cycle.
        errors.clear()
        bare = None


@final
class SequentialEventPublisher:
    """Runs the handlers one after another, in bind order, in the caller's task: the default.

    With `fail_fast=True` the first exception propagates unchanged and no later handler runs.
    With `fail_fast=False` every handler runs; then, if any raised an `Exception`, one
    `ExceptionGroup` holds those exceptions in handler order. What is not an `Exception`
    (`CancelledError`, `KeyboardInterrupt`, `SystemExit`...), and a `ChainLimitError`, ends the
    publish at once under both settings and propagates bare, with the exceptions collected
    before it chained as its `__cause__`. Once the caller is cancelled no further handler
    starts, and a `CancelledError` reaches the caller even when a handler swallowed the
    cancellation or raised something else instead (chained as its cause).
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
        task = _current_task()
        await _run_in_order(handlers, event, self._fail_fast, None, task, task.cancelling())


# What a group publisher raises bare rather than in a group: asyncio and the interpreter act on
# the first three, which a group would hide from them, and a ChainLimitError is about the whole
# chain: bare at every level of it, it is what the caller sees, however deep the chain.
_BARE = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, ChainLimitError)


@final
class _Group:
    # One publish under GroupEventPublisher: the handler that comes next, what failed, and whom
    # to cancel when the publish ends early. Child tasks never fail, so the TaskGroup never
    # cancels the caller: it only starts, cancels and awaits the children.
    __slots__ = (
        "_handlers",
        "_event",
        "_fail_fast",
        "_taken",
        "_next",
        "_stopped",
        "_errors",
        "_tasks",
        "_caller",
        "_before",
        "_caller_busy",
        "_caller_cancelled",
    )

    def __init__(
        self,
        handlers: Sequence[IEventHandler[_EventT]],
        event: _EventT,
        fail_fast: bool,
        take: bool,
        caller: "asyncio.Task[Any]",
        before: int,
        /,
    ) -> None:
        self._handlers: Sequence[IEventHandler[Any]] = handlers
        self._event: IEvent = event
        self._fail_fast = fail_fast
        # The follow-ups taken, by the index of the handler that left them; None: take none.
        self._taken: list[tuple[int, list[IEvent]]] | None = [] if take else None
        self._next = 0
        self._stopped = False
        self._errors: list[tuple[int, BaseException]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._caller = caller
        self._before = before
        self._caller_busy = False
        self._caller_cancelled = False

    async def run(self, max_concurrency: int | None, /) -> list[IEvent] | None:
        # Run the handlers; raise what failed, or return the follow-ups in handler order.
        count = len(self._handlers)
        workers = count if max_concurrency is None else min(max_concurrency, count)
        cancelled: asyncio.CancelledError | None = None
        ordered: list[BaseException] = []
        try:
            try:
                if workers == 1:
                    await self._work_in_caller()
                else:
                    async with asyncio.TaskGroup() as group:
                        if max_concurrency is None:
                            for index in range(count):
                                self._tasks.append(group.create_task(self._run_one(index)))
                        else:
                            for _ in range(workers - 1):
                                self._tasks.append(group.create_task(self._work()))
                            await self._work_in_caller()
            except asyncio.CancelledError as error:
                cancelled = error
            if cancelled is None and self._caller.cancelling() > self._before:
                cancelled = await _landed(self._event)
            if cancelled is None and not self._errors:
                if not self._taken:
                    return None
                by_handler = sorted(self._taken, key=lambda pair: pair[0])
                return [event for _, taken in by_handler for event in taken]
            if cancelled is None:
                cancelled_or_bare = next(
                    (error for _, error in self._errors if isinstance(error, _BARE)), None
                )
            else:
                cancelled_or_bare = cancelled
            ordered += [error for _, error in sorted(self._errors, key=lambda pair: pair[0])]
            raise _outcome(self._event, count, ordered, cancelled_or_bare)
        finally:
            # The errors' tracebacks hold this frame, and frames that hold this object: keeping
            # them in either would make a cycle.
            self._errors.clear()
            self._tasks.clear()
            ordered.clear()
            cancelled = cancelled_or_bare = None

    async def _run_one(self, index: int, /) -> None:
        # Run handler `index` in a child task, if no failure or cancellation of the caller came
        # first. A CancelledError while this task is cancelled is the cancellation (the
        # caller's, or one that a failure sent), not a failure.
        if self._stopped or self._caller.cancelling() > self._before:
            return
        handler = self._handlers[index]
        try:
            await handler.handle(self._event)
            if self._taken is not None and (events := getattr(handler, "events", None)):
                self._taken.append((index, _take(handler, events)))
        except BaseException as error:
            _discard(handler)
            if not (isinstance(error, asyncio.CancelledError) and _current_task().cancelling()):
                self._fail(index, error)

    async def _work(self) -> None:
        # A child worker under max_concurrency: handlers one after another, until it is
        # cancelled or none is left.
        task = _current_task()
        while self._next < len(self._handlers) and not task.cancelling():
            index = self._next
            self._next += 1
            await self._run_one(index)

    async def _work_in_caller(self) -> None:
        # The caller's share of the handlers, run in its own task. A failure elsewhere cancels
        # the handler running here by cancelling the caller, and takes that back once it ends.
        caller, before = self._caller, self._before
        failure: BaseException | None = None
        try:
            while self._next < len(self._handlers) and not self._stopped:
                index = self._next
                self._next += 1
                handler = self._handlers[index]
                self._caller_busy = True
                try:
                    await handler.handle(self._event)
                    if self._taken is not None and (events := getattr(handler, "events", None)):
                        self._taken.append((index, _take(handler, events)))
                except BaseException as error:
                    _discard(handler)
                    failure = error
                finally:
                    self._caller_busy = False
                sent = self._caller_cancelled
                if sent:
                    self._caller_cancelled = False
                    caller.uncancel()
                if caller.cancelling() > before:
                    if failure is not None and not isinstance(failure, asyncio.CancelledError):
                        self._fail(index, failure)
                        failure = None
                    raise failure or await _landed(self._event)
                if failure is not None and not (sent and isinstance(failure, asyncio.CancelledError)):
                    self._fail(index, failure)
                failure = None
        finally:
            failure = None

    def _fail(self, index: int, error: BaseException, /) -> None:
        self._errors.append((index, error))
        if self._fail_fast or _ends(error):
            self._stop()

    def _stop(self) -> None:
        # End the publish early: no handler starts any more, and the running ones are cancelled.
        if self._stopped:
            return
        self._stopped = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._caller_busy and current is not self._caller:
            self._caller_cancelled = True
            self._caller.cancel()


@final
class GroupEventPublisher:
    """Runs the handlers concurrently in an `asyncio.TaskGroup`, at most `max_concurrency` at once.

        publisher = GroupEventPublisher(max_concurrency=8, fail_fast=False)

    Handlers start in bind order, each in a child task with a copy of the caller's context. With
    `fail_fast=True` the first failure cancels the running handlers and no other starts; with
    `fail_fast=False` every handler runs to its end, unless one raises what is not an
    `Exception`, or a `ChainLimitError`, which ends the publish as a failure does. Failures then
    propagate as one exception group, even a single one, so that `except*` always works: an
    `ExceptionGroup` (a `BaseExceptionGroup` if a `BaseException` is among them), in handler
    order. A `CancelledError` (the caller's, or a handler's own), `KeyboardInterrupt`,
    `SystemExit` and `ChainLimitError` propagate bare instead, the other failures chained as
    their `__cause__`. Cancelling the caller cancels every running handler and starts no other;
    no task started outlives the call, and the caller's `cancelling()` is left as it was.

    The caller's task runs handlers itself only as a worker: for a lone handler, and under
    `max_concurrency=k`, where k workers (the caller's task and k - 1 child tasks) take the
    handlers one after another, in bind order. The handlers it runs see and set the caller's
    context, as under the sequential publisher.
    """

    __slots__ = ("_max_concurrency", "_fail_fast")

    def __init__(self, max_concurrency: int | None = None, *, fail_fast: bool = True) -> None:
        if max_concurrency is not None:
            _check_count("max_concurrency", max_concurrency, or_none=True)
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
        task = _current_task()
        group = _Group(handlers, event, self._fail_fast, False, task, task.cancelling())
        await group.run(self._max_concurrency)


def _refuse_a_class(event: object, /) -> None:
    if isinstance(event, type):
        raise TypeError(
            f"publish takes an event instance; got the class {event.__qualname__}; "
            f"publish {event.__qualname__}(...) instead"
        )


@final
class RecordingPublisher:
    """An `IPublisher` for tests: records every event published through it, in order.

        recorder = RecordingPublisher()
        await checkout(cart, publisher=recorder)
        assert recorder.published == (OrderPlaced(order_id=7),)

    Given a publisher, a `Mediator` say, it forwards each event there after recording it, so
    that the handlers run too; an event stays recorded whatever its handlers raised.
    """

    __slots__ = ("_forward", "_published")

    def __init__(self, forward: IPublisher | None = None, /) -> None:
        if forward is not None and not callable(getattr(forward, "publish", None)):
            raise TypeError(
                f"RecordingPublisher forwards to an IPublisher; got {forward!r}, which has no "
                f"publish method; pass a Mediator, or nothing to record only"
            )
        self._forward = forward
        self._published: list[IEvent] = []

    def __repr__(self) -> str:
        return f"RecordingPublisher({self._forward!r}, published={len(self._published)})"

    @property
    def published(self) -> tuple[IEvent, ...]:
        """Every event published through this recorder so far, the oldest first."""
        return tuple(self._published)

    async def publish(self, event: IEvent, /) -> None:
        """Record `event`, then publish it through the publisher given, if any."""
        _refuse_a_class(event)
        self._published.append(event)
        if self._forward is not None:
            await self._forward.publish(event)


@final
class _Chained:
    # A handler inside its middleware chain, which publishers run like any handler. Its `events`
    # gathers the handler's follow-ups from each call of it that succeeded.
    __slots__ = ("_handler", "_middleware", "events")

    def __init__(
        self, handler: IEventHandler[Any], middleware: Sequence[IEventMiddleware[Any]], /
    ) -> None:
        self._handler = handler
        self._middleware = middleware
        self.events: list[IEvent] = []

    def __repr__(self) -> str:
        return f"{self._handler!r} in {len(self._middleware)} middleware"

    async def handle(self, event: IEvent, position: int = 0, /) -> None:
        # The chain from middleware `position` in: a publisher calls it with the event alone.
        if position < len(self._middleware):
            await self._middleware[position].handle(
                event, self._handler, lambda: self.handle(event, position + 1)
            )
            return
        handler = self._handler
        try:
            await handler.handle(event)
        except BaseException:
            _discard(handler)
            raise
        if events := getattr(handler, "events", None):
            self.events += _take(handler, events)


@final
class Mediator(_Plans):
    """Publishes events to the handlers that a registry binds to them.

        mediator = Mediator(registry, publisher=GroupEventPublisher(max_concurrency=8))
        await mediator.publish(OrderPlaced(order_id=7))

    `resolve(cls)` builds each handler and middleware, plain or `async def` (a DI container's
    `get`); the default calls `cls()` afresh on every publish. A later `bind` or `merge` on the
    registry takes effect on the next publish. `max_depth` bounds a chain of events, each a
    follow-up of the one before or published by one of its handlers; `max_follow_ups` bounds
    the follow-ups of one publish. Both stop a cycle with `ChainLimitError` before anything
    past the limit runs. A chain of 32 reactions is a workflow engine's job, and nested
    publishes that deep stay far from the interpreter's recursion limit; 10,000 follow-ups of
    one event are a batch job's.
    """

    __slots__ = ("_registry", "_publisher", "_resolve", "_max_depth", "_max_follow_ups", "_inline")

    def __init__(
        self,
        registry: EventRegistry,
        /,
        *,
        publisher: EventPublisher = SequentialEventPublisher(),
        resolve: Resolve | None = None,
        max_depth: int = 32,
        max_follow_ups: int = 10_000,
    ) -> None:
        _check_registry(registry, "Mediator")
        if isinstance(publisher, type):
            name = publisher.__qualname__
            raise TypeError(f"publisher {name} is a class; pass an instance such as {name}()")
        if not callable(publisher):
            raise TypeError(
                f"publisher {publisher!r} is not callable; pass an EventPublisher such as "
                f"SequentialEventPublisher() or GroupEventPublisher()"
            )
        if resolve is not None and not callable(resolve):
            raise TypeError(
                f"resolve {resolve!r} is not callable; pass a function that takes a class and "
                f"returns (or awaits to) an instance of it"
            )
        _check_count("max_depth", max_depth)
        _check_count("max_follow_ups", max_follow_ups)
        super().__init__(registry._plans)
        self._registry = registry
        self._publisher = publisher
        self._resolve = resolve
        self._max_depth = max_depth
        self._max_follow_ups = max_follow_ups
        self._inline = (
            resolve is None and type(publisher) is SequentialEventPublisher and publisher.fail_fast
        )

    def __repr__(self) -> str:
        return (
            f"Mediator({self._registry!r}, publisher={self._publisher!r}, "
            f"resolve={self._resolve!r}, max_depth={self._max_depth}, "
            f"max_follow_ups={self._max_follow_ups})"
        )

    async def publish(self, event: IEvent, /) -> None:
        """Build every handler of `event`, run them with the publisher, then the follow-ups.

        If building a handler raises, no handler runs and the error propagates. With no handlers
        it returns at once. Follow-ups are the events that handlers leave in their `events`,
        taken as each `handle` returns: once every handler of an event succeeded, its follow-ups
        are published, breadth first, in the order of the handlers that left them; a failure
        publishes none and ends the publish. `ChainLimitError` when a chain goes past the
        limits; `TypeError` for an event class instead of an event.
        """
        plan = self._plans.get(type(event))
        if plan is None:
            plan = self._plan_of(event)
        handler_types, middleware_types = plan
        if not handler_types:
            return
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("publish runs in an asyncio task; await it from a coroutine")
        before = task.cancelling()
        try:
            if self._inline and not middleware_types:
                # Measured: the default publisher's loop, run here rather than behind a call
                # that costs a coroutine, keeps publish near a hand-written loop's cost. It
                # leaves the chain as it is: its errors propagate unchanged, and a handler that
                # publishes again recurses on this task's own stack, whose limit stops it.
                follow_ups: list[IEvent] | None = None
                handlers = [handler_type() for handler_type in handler_types]
                for handler in handlers:
                    try:
                        await handler.handle(event)
                        if events := getattr(handler, "events", None):
                            follow_ups = (follow_ups or []) + _take(handler, events)
                    except BaseException:
                        _discard(handler)
                        raise
                    if task.cancelling() > before:
                        raise await _landed(event)
                if follow_ups:
                    chain = (*_chain.get(), type(event))
                    await self._publish_follow_ups(follow_ups, chain, task, before)
            else:
                chain = (*_chain.get(), type(event))
                if len(chain) > self._max_depth:
                    raise self._too_deep(chain)
                follow_ups = await self._run(event, plan, chain, task, before)
                if follow_ups:
                    await self._publish_follow_ups(follow_ups, chain, task, before)
        except BaseException as error:
            if task.cancelling() > before and not isinstance(error, asyncio.CancelledError):
                raise await _landed(event) from error
            raise
        if task.cancelling() > before:
            raise await _landed(event)

    def _plan_of(self, event: IEvent, /) -> _Plan:
        _refuse_a_class(event)
        self._registry.handlers_for(type(event))
        return self._plans[type(event)]

    async def _run(
        self,
        event: IEvent,
        plan: _Plan,
        chain: tuple[type, ...],
        task: "asyncio.Task[Any]",
        before: int,
        /,
    ) -> list[IEvent] | None:
        # Build the handlers and middleware of one event, run them, and return its follow-ups.
        handler_types, middleware_types = plan
        follow_ups: list[IEvent] = []
        if self._inline and not middleware_types:
            # The default publisher's loop, as in publish, where it says why it needs no chain.
            built = [handler_type() for handler_type in handler_types]
            await _run_in_order(built, event, True, follow_ups, task, before)
            return follow_ups
        token = _chain.set(chain)
        try:
            resolve = self._resolve
            if resolve is None:
                handlers: list[IEventHandler[Any]] = [cls() for cls in handler_types]
                middleware: list[IEventMiddleware[Any]] = [cls() for cls in middleware_types]
            else:
                handlers = await _resolved(resolve, handler_types)
                middleware = await _resolved(resolve, middleware_types)
            if middleware:
                handlers = [_Chained(handler, middleware) for handler in handlers]
            publisher = self._publisher
            if type(publisher) is SequentialEventPublisher:
                await _run_in_order(handlers, event, publisher.fail_fast, follow_ups, task, before)
                return follow_ups
            if type(publisher) is GroupEventPublisher:
                group = _Group(handlers, event, publisher.fail_fast, True, task, before)
                return await group.run(publisher.max_concurrency)
            chained = [
                handler if isinstance(handler, _Chained) else _Chained(handler, ())
                for handler in handlers
            ]
            await publisher(chained, event)
            return [follow_up for each in chained for follow_up in each.events]
        finally:
            _chain.reset(token)

    async def _publish_follow_ups(
        self,
        follow_ups: list[IEvent],
        chain: tuple[type, ...],
        task: "asyncio.Task[Any]",
        before: int,
        /,
    ) -> None:
        # Breadth first: every follow-up of one level before any of the next, each level in the
        # order of the handlers that left them, and each checked against the limits before it runs.
        level = [(follow_up, chain) for follow_up in follow_ups]
        published = 0
        while level:
            published += len(level)
            if published > self._max_follow_ups:
                raise ChainLimitError(
                    f"a publish of {chain[-1].__qualname__} led to more than "
                    f"max_follow_ups={self._max_follow_ups} follow-up events, the newest along "
                    f"{_names((*level[-1][1], type(level[-1][0])))}; break the cycle, or pass "
                    f"a larger max_follow_ups to Mediator"
                )
            next_level: list[tuple[IEvent, tuple[type, ...]]] = []
            for event, cause in level:
                event_chain = (*cause, type(event))
                if len(event_chain) > self._max_depth:
                    raise self._too_deep(event_chain)
                plan = self._plans.get(type(event))
                if plan is None:
                    plan = self._plan_of(event)
                if not plan[0]:
                    continue
                taken = await self._run(event, plan, event_chain, task, before)
                if taken:
                    next_level += [(follow_up, event_chain) for follow_up in taken]
                if task.cancelling() > before:
                    raise await _landed(event)
            level = next_level

    def _too_deep(self, chain: tuple[type, ...], /) -> ChainLimitError:
        return ChainLimitError(
            f"the chain of events {_names(chain)} is {len(chain)} long, past "
            f"max_depth={self._max_depth}: each is a follow-up of the one before or published "
            f"by one of its handlers; break the cycle, or pass a larger max_depth to Mediator"
        )


async def _resolved(resolve: Resolve, classes: Sequence[type[_T]], /) -> list[_T]:
    # An instance of each class, built by `resolve` one after another: plain, or awaited.
    built: list[_T] = []
    for cls in classes:
        made = resolve(cls)
        if inspect.isawaitable(made):
            built.append(await made)
        else:
            built.append(made)
    return built


def _names(chain: tuple[type, ...], /) -> str:
    return " -> ".join(event_type.__qualname__ for event_type in chain)

"""An in-process asyncio event mediator in one file.

An event is something that already happened; it has zero or more handlers. Bind event types to
lists of handler classes in an `EventRegistry`, then `await Mediator(registry).publish(event)`:
the handlers run in the caller's task and context, and their errors reach the caller.

    registry = EventRegistry().bind(OrderPlaced, [SendReceipt, ReserveStock])
    await Mediator(registry).publish(OrderPlaced(order_id=7))

Vendoring: copy this file into your project and import from it. It needs Python 3.11 or newer
and nothing outside the standard library. Licence: MIT. Version 3.0.0 (`__version__`).
"""

__version__ = "3.0.0"

__all__ = (
    # What users implement and type against.
    "IEvent", "IEventHandler", "IEventMiddleware", "IPublisher", "EventPublisher", "Resolve",
    "EventHandler",
    # What misuse raises.
    "MediatorError", "DuplicateHandlerError", "RegistryFrozenError", "ChainLimitError",
    # What publishes.
    "EventRegistry", "SequentialEventPublisher", "GroupEventPublisher", "RecordingPublisher",
    "Mediator",
)

import abc
import asyncio
import contextvars
import functools
import inspect
import itertools
import operator
import reprlib
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, Literal, Never, Protocol, Self, TypeGuard, TypeVar, final

_EventT = TypeVar("_EventT", bound="IEvent")
_EventT_contra = TypeVar("_EventT_contra", bound="IEvent", contravariant=True)
_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class IEvent(Protocol):
    """Marker for event types: subclass it, directly or through a base class of your own.

        @dataclass(frozen=True, slots=True, kw_only=True)
        class OrderPlaced(IEvent):
            order_id: int

    A base whose metaclass conflicts with `Protocol`'s (pydantic, msgspec, attrs) declares the
    marker instead: `__mediator_event__: ClassVar[Literal[True]] = True`.
    """

    __slots__ = ()

    # The marker that makes "is an event" mean something, to a type checker and at run time: an
    # empty protocol would match `42`, and a class object cannot match a ClassVar member.
    __mediator_event__: ClassVar[Literal[True]] = True


class IEventHandler(Protocol[_EventT_contra]):
    """A handler of events of type `_EventT_contra`: any class with a matching async `handle`.

    Contravariant: a handler of `DomainEvent` handles every subclass of it. It need not inherit
    anything, may name its parameter as it likes, and may leave follow-ups in `events`.
    """

    __slots__ = ()

    async def handle(self, event: _EventT_contra, /) -> None:
        """React to `event`; an exception reaches the code that published it."""


class IEventMiddleware(Protocol[_EventT_contra]):
    """Code around each handler of events of type `_EventT_contra`: timing, tracing, retries.

    `call_next()` runs the rest of the chain, then the handler: not calling it skips the handler.
    An exception from `handle` is the handler's failure; catching the handler's makes the call a
    success. Follow-ups count only from a call whose every layer returned, even when a layer
    outside catches what left one inside. Run `handler` only through `call_next`.
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

    `handlers` is never empty, and each is wrapped: its `handle` starts nothing once the caller
    is cancelled, runs the middleware and keeps the follow-ups. What propagates reaches the caller.
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

        class ShipWhenPaid(EventHandler[PaymentReceived]):
            async def handle(self, event: PaymentReceived) -> None:
                self.events.append(OrderShipped(order_id=event.order_id))

    `events` is this handler's own list of follow-ups; the mediator empties it as it takes them,
    so that a handler object used again never has one published twice. Without this base,
    `events` may be any sequence in an attribute or a property with a setter, which the mediator
    resets to `()`; a read-only one that is not a list is the handler's to reset in `handle`.
    """

    __slots__ = ("events",)  # so that a subclass with `__slots__` of its own need not list it
    events: list[IEvent]

    # `__new__`, not `__init__`: every instance gets its own list, also one whose `__init__` does
    # not call this one (a dataclass), and a mixin's `__init__` after this class still runs.
    def __new__(cls, *args: object, **kwargs: object) -> Self:
        handler = super().__new__(cls)
        handler.events = []
        return handler

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
class _Unnameable(Generic[_T_co]):
    # The other member of two unions that mypy alone needs; no caller can name it. In
    # `_EventType[E]` it lets IEvent and protocol bases in, which mypy refuses as `type[X]` (mypy
    # issue 4717). In `_Handlers[E]` the Callable makes mypy take E from the event type first, so
    # that a wrong handler is named on its own line, not "cannot infer" atop a chain of binds.
    __slots__ = ()


_EventType = type[_EventT] | type[_Unnameable[None]]
_Handlers = Sequence[type[IEventHandler[_EventT]]] | _Unnameable[Callable[[_EventT], None]]
_Middleware = Sequence[type[IEventMiddleware[_EventT]]] | _Unnameable[Callable[[_EventT], None]]
# What a publish of one event type runs: its handler classes in order, then its middleware from
# the outermost in. Stored with the event types they take erased: `bind` checked them.
_PlanOf = tuple[
    tuple[type[IEventHandler[_EventT]], ...], tuple[type[IEventMiddleware[_EventT]], ...]
]
_Plan = _PlanOf[Any]
_Table = dict[type, tuple[type[Any], ...]]
_Additions = Iterable[tuple[type, Iterable[object] | _Unnameable[Any]]]
_MAKE_IT_ONE = "subclass IEvent, or declare `__mediator_event__: ClassVar[Literal[True]] = True`"


def _is_event(value: object, /) -> TypeGuard[IEvent]:
    return getattr(type(value), "__mediator_event__", None) is True


def _not_an_event(event: object, /) -> TypeError:
    if isinstance(event, type):
        name = event.__qualname__
        return TypeError(f"publish takes an event; got the class {name}; publish {name}(...)")
    return TypeError(
        f"publish takes an event; got {reprlib.repr(event)}, whose class "
        f"{type(event).__qualname__} is not an event class; {_MAKE_IT_ONE}"
    )


def _check_event_type(event_type: object, /) -> type:
    if not isinstance(event_type, type):
        raise TypeError(f"event type {reprlib.repr(event_type)} is not a class; pass type(event)")
    if getattr(event_type, "__mediator_event__", None) is not True:
        raise TypeError(f"{event_type.__qualname__} is not an event class; {_MAKE_IT_ONE}")
    return event_type


def _check_bound(bound: object, where: str, parameters: str, /) -> type[Any]:
    # That `bound().handle(parameters...)` can be awaited; `where` names it, with {}.
    if isinstance(origin := typing.get_origin(bound), type):
        raise TypeError(
            f"{where.format(repr(bound))} is a parametrised generic; bind {origin.__qualname__}: "
            f"the event type it is bound to decides its type parameter"
        )
    if not isinstance(bound, type):
        fix = f"an instance; bind the class {type(bound).__qualname__} instead"
        fix = fix if hasattr(bound, "handle") else "not a class; bind a class with a handle"
        raise TypeError(f"{where.format(repr(bound))} is {fix}")
    where, wanted = where.format(bound.__qualname__), f"`async def handle(self, {parameters})`"
    # typing.is_protocol came in 3.13; before it, this attribute is how typing itself tells.
    if getattr(bound, "_is_protocol", False) is True:
        raise TypeError(f"{where} is a protocol class; bind a class that implements it")
    handle = getattr(bound, "handle", None)
    stubs = (vars(IEventHandler)["handle"], vars(IEventMiddleware)["handle"])
    if handle is None or handle in stubs:
        owner = next((base for base in bound.__mro__ if "handle" in vars(base)), None)
        has = f"only the empty handle of {owner.__name__}" if owner else "no handle method"
        raise TypeError(f"{where} has {has}; define {wanted} on {bound.__qualname__}")
    if not inspect.iscoroutinefunction(handle):
        raise TypeError(f"{where} has a handle that is not `async def`; define {wanted}")
    if inspect.isabstract(bound):
        missing = ", ".join(sorted(getattr(bound, "__abstractmethods__", ())))
        raise TypeError(f"{where} is abstract; implement {missing}")
    # A plain function in the class takes the instance too; a static or class method does not.
    receiver = [None] if inspect.isfunction(inspect.getattr_static(bound, "handle")) else []
    try:
        inspect.signature(handle).bind(*receiver, *parameters.split(", "))
    except TypeError:
        shown = f"handle{inspect.signature(handle)}"
        raise TypeError(f"{where} has {shown}, not handle({parameters}); define {wanted}") from None
    return bound


def _appended(table: _Table, additions: _Additions, kind: str, method: str, /) -> _Table:
    # A new table: `table` with each (event type, classes) appended, once each class is checked.
    new = dict(table)
    parameters = "event, handler, call_next" if kind == "middleware" else "event"
    for event_type, given in additions:
        name = _check_event_type(event_type).__qualname__
        if isinstance(given, (str, type)) or not isinstance(given, Sequence):
            shown = given.__qualname__ if isinstance(given, type) else "..."
            raise TypeError(
                f"{method} takes a list of {kind} classes for {name}, in the order they run; "
                f"got {reprlib.repr(given)}; write [{shown}]"
            )
        bound = list(new.get(event_type, ()))
        for each in given:
            cls = _check_bound(each, f"{kind} {{}} bound to {name}", parameters)
            if cls in bound:
                raise DuplicateHandlerError(
                    f"{kind} {cls.__qualname__} is bound to {name} twice; bind each {kind} class "
                    f"once per event type, in one registry"
                )
            bound.append(cls)
        if bound:
            new[event_type] = tuple(bound)
    return new


def _check_registry(registry: object, taker: str, /) -> None:
    if not isinstance(registry, EventRegistry):
        raise TypeError(f"{taker} takes an EventRegistry; got {reprlib.repr(registry)}")


@final
class EventRegistry:
    """Binds event types to handler and middleware classes; modules' registries merge at start-up.

        registry = EventRegistry().bind(OrderPlaced, [SendReceipt]).bind(IEvent, [AuditLog])

    A publish runs the handlers bound to the event's class, then to each base class along the
    MRO, each once; middleware bound to base classes wraps that bound to subclasses. `bind`,
    `bind_middleware` and `merge` check everything first: on error nothing changed. A change is
    seen by the next lookup, in any thread; bind from one thread at a time.
    """

    __slots__ = ("_handlers", "_middleware", "_classes", "_plans", "_frozen")

    def __init__(self) -> None:
        self._handlers: _Table = {}
        self._middleware: _Table = {}
        self._classes: dict[type, None] = {}
        # Replaced, never cleared, after the bindings change: a lookup that read the old bindings
        # stores its plan in the dict dropped, so the next lookup, in any thread, sees the change.
        self._plans: dict[type, _Plan] = {}
        self._frozen = False

    def __repr__(self) -> str:
        handlers, middleware = self._handlers, self._middleware
        return (
            f"EventRegistry(event_types={len(handlers.keys() | middleware.keys())}, handlers="
            f"{sum(map(len, handlers.values()))}, middleware={sum(map(len, middleware.values()))}"
            f", frozen={self._frozen})"
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
        """Every class bound, once each, in bind order: what a DI container is to provide."""
        return tuple(self._classes)

    def bind(
        self,
        event_type: _EventType[_EventT],
        handler_types: _Handlers[_EventT],
        /,
    ) -> Self:
        """Append `handler_types` to the handlers of `event_type`, in order; return the registry.

        `TypeError` unless an event class, a list (not a set) and concrete classes whose `async def
        handle` takes the event; `DuplicateHandlerError`, `RegistryFrozenError` as they say.
        """
        return self._append("bind", [(event_type, handler_types)], [])

    def bind_middleware(
        self,
        event_type: _EventType[_EventT],
        middleware_types: _Middleware[_EventT],
        /,
    ) -> Self:
        """Append `middleware_types` to the middleware of `event_type`, the first outermost."""
        return self._append("bind_middleware", [], [(event_type, middleware_types)])

    def merge(self, *others: "EventRegistry") -> Self:
        """Append the bindings of `others` after this registry's own; raise as `bind` does."""
        for other in others:
            _check_registry(other, "merge")
        handlers = [binding for other in others for binding in other.bindings.items()]
        middleware = [binding for other in others for binding in other.middleware_bindings.items()]
        return self._append("merge", handlers, middleware)

    def _append(self, method: str, handlers: _Additions, middleware: _Additions, /) -> Self:
        # The one way bindings change: all checked first, then stored, the plans dropped last.
        if self._frozen:
            raise RegistryFrozenError(f"{self!r} is frozen and cannot {method}; do it before")
        new_handlers = _appended(self._handlers, handlers, "handler", method)
        new_middleware = _appended(self._middleware, middleware, "middleware", method)
        rows = [*new_handlers.values(), *new_middleware.values()]
        self._classes = {**self._classes, **dict.fromkeys(cls for row in rows for cls in row)}
        self._handlers, self._middleware = new_handlers, new_middleware
        self._plans = {}
        return self

    def freeze(self) -> Self:
        """Refuse every later `bind` and `merge`; publishing goes on. Return the registry."""
        self._frozen = True
        return self

    def handlers_for(
        self, event_type: _EventType[_EventT], /
    ) -> tuple[type[IEventHandler[_EventT]], ...]:
        """The handler classes that a publish of exactly `event_type` runs, in order."""
        return self.plan_for(event_type)[0]

    def middleware_for(
        self, event_type: _EventType[_EventT], /
    ) -> tuple[type[IEventMiddleware[_EventT]], ...]:
        """The middleware around each handler of a publish of `event_type`, `IEvent`'s outermost."""
        return self.plan_for(event_type)[1]

    def plan_for(self, event_type: _EventType[_EventT], /) -> _PlanOf[_EventT]:
        """`(handlers_for(event_type), middleware_for(event_type))`, from one cached lookup."""
        plans = self._plans
        try:
            return plans[event_type]
        except (KeyError, TypeError):  # TypeError: unhashable, which _check_event_type names
            pass
        mro = _check_event_type(event_type).__mro__
        if IEvent not in mro:  # a class that declares the marker: IEvent's bindings reach it too
            mro = (*mro[:-1], IEvent, object)
        handlers, middleware = self._handlers, self._middleware
        plan = plans[event_type] = (
            tuple(dict.fromkeys(cls for base in mro for cls in handlers.get(base, ()))),
            tuple(dict.fromkeys(cls for base in reversed(mro) for cls in middleware.get(base, ()))),
        )
        return plan


def _check_fail_fast(fail_fast: object, /) -> None:
    if not isinstance(fail_fast, bool):
        raise TypeError(f"fail_fast must be True or False; got {reprlib.repr(fail_fast)}")


def _check_count(name: str, value: object, fix: str = "", /) -> None:
    # bool is an int subclass, but `max_depth=True` is a mistake, never a limit.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int; got {reprlib.repr(value)}{fix}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1; got {value!r}{fix}")


def _ends(error: BaseException, /) -> bool:
    # Whether a handler's error ends the publish even when the others should run on: anything
    # that is not an Exception, and a chain that went past its limits.
    return not isinstance(error, Exception) or isinstance(error, ChainLimitError)


def _outcome(
    event: object, count: int, errors: Sequence[BaseException], bare: BaseException | None, /
) -> BaseException:
    # What a failed publish raises: `bare` itself, with the other errors in a group as its cause,
    # or, with nothing to raise bare, that group (an ExceptionGroup if all are Exceptions).
    others = [error for error in errors if error is not bare]
    if not others and bare is not None:
        return bare
    message = f"{len(others)} of {count} handlers of {type(event).__qualname__} failed"
    group = BaseExceptionGroup(message, others)
    if bare is None:
        return group
    # A cause that `bare` already had stays reachable, as the cause of the group.
    group.__cause__, bare.__cause__ = bare.__cause__, group
    return bare


@final
class SequentialEventPublisher:
    """Runs the handlers one after another, in bind order, in the caller's task: the default.

    With `fail_fast=True` the first exception propagates unchanged and no later handler runs;
    with `fail_fast=False` every handler runs, then one `ExceptionGroup` holds the exceptions in
    handler order. What is not an `Exception`, and a `ChainLimitError`, ends the publish at once
    and propagates bare, the exceptions collected before it chained as its `__cause__`.
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
        errors: list[BaseException] | None = None
        for handler in handlers:
            try:
                await handler.handle(event)
            except BaseException as error:
                if self._fail_fast:
                    raise
                errors = [*(errors or ()), error]
                if _ends(error):
                    break
        if errors:
            try:
                bare = errors[-1] if _ends(errors[-1]) else None
                raise _outcome(event, len(handlers), errors, bare)
            finally:
                errors.clear()  # each error's traceback holds this frame: a cycle otherwise
                bare = None


# Raised bare by a group publisher: asyncio and the interpreter act on the first three, which a
# group would hide, and a ChainLimitError is about the whole chain.
_BARE = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, ChainLimitError)


@final
class _Group:
    # One call of GroupEventPublisher. Workers keep errors here and never fail, so that the
    # TaskGroup never cancels the caller (which 3.11's then leaves cancelled).
    __slots__ = ("_event", "_fail_fast", "_pending", "_errors", "_workers", "_stopped")

    def __init__(
        self, handlers: Sequence[IEventHandler[Any]], event: IEvent, fail_fast: bool, /
    ) -> None:
        self._event = event
        self._fail_fast = fail_fast
        # Shared by the workers, so that each handler starts once, in bind order.
        self._pending: Iterator[tuple[int, IEventHandler[Any]]] = iter(enumerate(handlers))
        self._errors: list[tuple[int, BaseException]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._stopped = False

    async def run(self, count: int, workers: int, /) -> None:
        try:
            try:
                if workers == 1:
                    await self._work(count)  # no sibling can need to cancel it: the caller's task
                else:
                    # As many workers as handlers take one each, so that each has a context of
                    # its own even when it never suspends; fewer take turns.
                    turns = 1 if workers == count else count
                    async with asyncio.TaskGroup() as group:
                        for _ in range(workers):
                            self._workers.append(group.create_task(self._work(turns)))
            except asyncio.CancelledError as cancelled:
                raise self._failure(count, cancelled)
            if self._errors:
                raise self._failure(count, None)
        finally:
            self._errors.clear()  # their tracebacks hold the workers' frames, which hold this
            self._workers.clear()

    def _failure(self, count: int, cancelled: asyncio.CancelledError | None, /) -> BaseException:
        errors = [error for _, error in sorted(self._errors, key=lambda pair: pair[0])]
        bare = cancelled or next((error for error in errors if isinstance(error, _BARE)), None)
        return _outcome(self._event, count, errors, bare)

    async def _work(self, turns: int, /) -> None:
        # Start up to `turns` handlers, one after another, until a failure ends the call.
        for index, handler in itertools.islice(self._pending, turns):
            if self._stopped:
                return
            try:
                await handler.handle(self._event)
            except asyncio.CancelledError as error:
                if _task_cancelled():
                    raise  # this worker was cancelled, by the caller's cancellation or a failure
                self._fail(index, error)
            except BaseException as error:
                self._fail(index, error)

    def _fail(self, index: int, error: BaseException, /) -> None:
        self._errors.append((index, error))
        if (self._fail_fast or _ends(error)) and not self._stopped:
            self._stopped = True
            current = asyncio.current_task()
            for worker in self._workers:
                if worker is not current:
                    worker.cancel()


def _task_cancelled() -> bool:
    # Asked by a worker, whose frame must not hold its task: the task keeps the CancelledError
    # it ends with, whose traceback holds the frame, and a cycle would keep both alive.
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@final
class GroupEventPublisher:
    """Runs the handlers concurrently in an `asyncio.TaskGroup`, at most `max_concurrency` at once.

        publisher = GroupEventPublisher(max_concurrency=8, fail_fast=False)

    Handlers start in bind order: each in a child task of its own with no limit, in k child
    tasks that take turns under `max_concurrency=k`, in the caller's task when it runs alone.
    With `fail_fast=True` the first failure cancels the running handlers and no other starts;
    with `fail_fast=False` each runs to its end, unless one raises what is not an `Exception`,
    or a `ChainLimitError`. Failures propagate as one exception group, in handler order, even a
    single one; a `CancelledError`, `KeyboardInterrupt`, `SystemExit` or `ChainLimitError` bare,
    the others chained as its `__cause__`. Cancelling the caller cancels every handler; no task
    outlives the call, and the caller's task is never cancelled or uncancelled by it.
    """

    __slots__ = ("_max_concurrency", "_fail_fast")

    def __init__(self, max_concurrency: int | None = None, *, fail_fast: bool = True) -> None:
        if max_concurrency is not None:
            _check_count("max_concurrency", max_concurrency, "; pass None for no limit")
        _check_fail_fast(fail_fast)
        self._max_concurrency = max_concurrency
        self._fail_fast = fail_fast

    def __repr__(self) -> str:
        limit = self._max_concurrency
        return f"GroupEventPublisher(max_concurrency={limit}, fail_fast={self._fail_fast})"

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
        workers = min(count, self._max_concurrency or count)
        await _Group(handlers, event, self._fail_fast).run(count, workers)


@final
class RecordingPublisher:
    """An `IPublisher` for tests: records every event published through it, in order.

        recorder = RecordingPublisher()
        await checkout(cart, publisher=recorder)
        assert recorder.published == (OrderPlaced(order_id=7),)

    Given a publisher to `forward` to, a `Mediator` say, it publishes each event there too.
    """

    __slots__ = ("_forward", "_published")

    def __init__(self, forward: IPublisher | None = None) -> None:
        if forward is not None and not callable(getattr(forward, "publish", None)):
            raise TypeError(
                f"RecordingPublisher forwards to an IPublisher; got {reprlib.repr(forward)}, "
                f"which has no publish method; pass a Mediator, or nothing to record only"
            )
        self._forward = forward
        self._published: list[IEvent] = []

    def __repr__(self) -> str:
        return f"RecordingPublisher(forward={self._forward!r}, published={len(self._published)})"

    @property
    def published(self) -> tuple[IEvent, ...]:
        """Every event published through this recorder so far, the oldest first."""
        return tuple(self._published)

    async def publish(self, event: IEvent, /) -> None:
        """Record `event`, then publish it through the publisher given, if any."""
        if not _is_event(event):
            raise _not_an_event(event)
        self._published.append(event)
        if self._forward is not None:
            await self._forward.publish(event)


# The chain of event types that led to the handlers running in this context, the newest last: a
# follow-up and an event that a handler publishes extend their cause's. `max_depth` bounds it.
_chain: contextvars.ContextVar[tuple[type, ...]] = contextvars.ContextVar("chain", default=())


@final
class _Caller:
    # The task that awaits a publish, and how many cancellations it had pending when the publish
    # began: read once, so that every later check tells one during the publish from one before.
    __slots__ = ("_task", "_cancelling")

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("publish runs in an asyncio task; await it from a coroutine")
        self._task = task
        self._cancelling = task.cancelling()

    def cancelled(self) -> bool:
        return self._task.cancelling() > self._cancelling

    async def cancellation(self, event: object, /) -> asyncio.CancelledError:
        # The caller was cancelled, yet no CancelledError came out of the handlers: one of them
        # swallowed it, or it is still pending. One loop turn lands a pending one; else it is made.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as pending:
            return pending
        swallowed = f"a handler of {type(event).__qualname__} swallowed the caller's cancellation"
        return asyncio.CancelledError(swallowed)


def _take(handler: object, /) -> tuple[IEvent, ...]:
    # The follow-ups in the handler's `events`, emptied so that none is published twice: a list
    # is cleared, a sequence set to () where it can be; a read-only one is the handler's to reset.
    events = getattr(handler, "events", None)
    if not events:
        return ()
    taken = tuple(events)
    if isinstance(events, list):
        events.clear()
    else:
        try:
            setattr(handler, "events", ())
        except AttributeError:
            pass
    follow_ups = tuple(filter(_is_event, taken))
    if len(follow_ups) < len(taken):
        stray = next(itertools.filterfalse(_is_event, taken))
        raise TypeError(f"handler {type(handler).__qualname__} left {reprlib.repr(stray)} in its "
                        f"events, which is not an event; leave only events there")
    return follow_ups


@final
class _Call:
    # A handler as its strategy runs it, and the one place that calls a user's `handle`: it starts
    # nothing once the caller is cancelled, and keeps the follow-ups of calls that succeeded.
    __slots__ = ("_handler", "_middleware", "_caller", "follow_ups")

    def __init__(
        self, handler: IEventHandler[Any], middleware: list[IEventMiddleware[Any]], caller: _Caller
    ) -> None:
        self._handler = handler
        self._middleware = middleware
        self._caller = caller
        self.follow_ups: tuple[IEvent, ...] = ()

    def __repr__(self) -> str:
        return repr(self._handler)

    async def handle(self, event: IEvent, layer: int = 0, /) -> None:
        # Middleware `layer`, the rest of the chain as its `call_next`; past the last, the handler.
        if layer == 0 and self._caller.cancelled():
            return  # the mediator raises the cancellation once the strategy returns
        if layer < len(self._middleware):
            kept = self.follow_ups
            try:
                call_next = functools.partial(self.handle, event, layer + 1)
                await self._middleware[layer].handle(event, self._handler, call_next)
            except BaseException:
                self.follow_ups = kept  # drop what the layers inside gathered
                raise
            return
        handler = self._handler
        try:
            await handler.handle(event)
        except BaseException as error:
            try:
                _take(handler)  # a failed call's follow-ups are dropped, for a clean next call
            except Exception as problem:
                name = type(handler).__qualname__
                error.add_note(f"emptying the events of {name} raised {problem!r} too")
            raise
        if getattr(handler, "events", None):
            self.follow_ups += _take(handler)


def _names(chain: tuple[type, ...], /) -> str:
    names = [event_type.__qualname__ for event_type in chain]
    if len(names) > 6:
        names[3:-2] = [f"... ({len(names) - 5} more)"]
    return " -> ".join(names)


@final
class Mediator:
    """Publishes events to the handlers that a registry binds to them.

        mediator = Mediator(registry, publisher=GroupEventPublisher(max_concurrency=8))
        await mediator.publish(OrderPlaced(order_id=7))

    `resolve(cls)` builds each handler and middleware, plain or `async def` (a DI container's
    `get`); the default calls `cls()` on every publish. `max_depth` bounds a chain of events,
    each a follow-up of the one before or published by one of its handlers; `max_follow_ups`
    bounds the follow-ups of one publish. Past either, `ChainLimitError` stops a cycle before it
    runs: 32 reactions in a chain, or 10,000 follow-ups, are a workflow engine's job.
    """

    __slots__ = ("_registry", "_publisher", "_resolve", "_max_depth", "_max_follow_ups")

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
        name = publisher.__qualname__ if isinstance(publisher, type) else None
        if name or not callable(publisher):
            got, such = (name, f"{name}()") if name else (reprlib.repr(publisher), "a publisher")
            raise TypeError(f"publisher {got} is not an EventPublisher instance; pass {such}")
        if not callable(resolve or operator.call):
            raise TypeError(f"resolve {reprlib.repr(resolve)} is not callable; pass a function")
        _check_count("max_depth", max_depth)
        _check_count("max_follow_ups", max_follow_ups)
        self._registry, self._publisher = registry, publisher
        # `cls()`, with no frame of ours around it: it runs for every handler of every publish.
        self._resolve: Callable[[type[Any]], object] = operator.call if resolve is None else resolve
        self._max_depth, self._max_follow_ups = max_depth, max_follow_ups

    def __repr__(self) -> str:
        resolve = "" if self._resolve is operator.call else f", resolve={self._resolve!r}"
        return (
            f"Mediator({self._registry!r}, publisher={self._publisher!r}{resolve}, "
            f"max_depth={self._max_depth}, max_follow_ups={self._max_follow_ups})"
        )

    async def publish(self, event: IEvent, /) -> None:
        """Build every handler of `event`, run them with the publisher, then the follow-ups.

        Every handler is built before any runs. Once all of an event's handlers succeeded, the
        follow-ups they left are published, breadth first, in handler order. Once the caller is
        cancelled no handler starts, and a `CancelledError` reaches it even if a handler
        swallowed it. `TypeError` for what is not an event.
        """
        try:
            plan = self._registry.plan_for(type(event))
        except TypeError:
            raise _not_an_event(event) from None
        if not plan[0]:
            return
        caller = _Caller()
        chain = _chain.get() + (type(event),)
        follow_ups = await self._publish_one(event, plan, chain, caller)
        if follow_ups:
            await self._publish_follow_ups(follow_ups, chain, caller)

    async def _publish_one(
        self, event: IEvent, plan: _Plan, chain: tuple[type, ...], caller: _Caller, /
    ) -> tuple[IEvent, ...]:
        # Build an event's handlers and middleware, run them, and return their follow-ups.
        if len(chain) > self._max_depth:
            raise ChainLimitError(
                f"the chain of events {_names(chain)} is {len(chain)} long, past max_depth="
                f"{self._max_depth}; break the cycle, or pass Mediator a larger max_depth"
            )
        resolve, count = self._resolve, len(plan[0])
        built: list[Any] = []
        for cls in plan[0] + plan[1]:  # every one, before any runs
            try:
                made = resolve(cls)
            except TypeError as error:
                if resolve is operator.call:  # `cls()` failed: if for want of arguments, say how
                    name = cls.__qualname__
                    error.add_note(f"Mediator builds {name} as {name}(); if it takes arguments, "
                                   f"pass Mediator(resolve=...) a function that builds it")
                raise
            if type(made) is not cls and inspect.isawaitable(made):  # cheaper than inspect alone
                made = await made
            built.append(made)
        middleware = built[count:]
        calls = [_Call(handler, middleware, caller) for handler in built[:count]]
        token = _chain.set(chain)
        try:
            await self._publisher(calls, event)
        except BaseException as error:
            if caller.cancelled() and not isinstance(error, asyncio.CancelledError):
                raise await caller.cancellation(event) from error
            raise
        finally:
            _chain.reset(token)
        if caller.cancelled():
            raise await caller.cancellation(event)
        follow_ups: tuple[IEvent, ...] = ()
        for call in calls:
            follow_ups += call.follow_ups
        return follow_ups

    async def _publish_follow_ups(
        self, follow_ups: tuple[IEvent, ...], chain: tuple[type, ...], caller: _Caller, /
    ) -> None:
        # Breadth first: each level of follow-ups in the order of the handlers that left them.
        level = [(follow_up, chain) for follow_up in follow_ups]
        published = len(level)
        while level:
            if published > self._max_follow_ups:
                newest, cause = level[-1]
                raise ChainLimitError(
                    f"a publish led to more than max_follow_ups={self._max_follow_ups} follow-up "
                    f"events, the newest along {_names((*cause, type(newest)))}; break the cycle, "
                    f"or pass Mediator a larger max_follow_ups"
                )
            next_level: list[tuple[IEvent, tuple[type, ...]]] = []
            for event, cause in level:
                plan = self._registry.plan_for(type(event))
                if plan[0]:
                    event_chain = (*cause, type(event))
                    taken = await self._publish_one(event, plan, event_chain, caller)
                    next_level += [(follow_up, event_chain) for follow_up in taken]
            published += len(next_level)
            level = next_level

"""An in-process asyncio event mediator in one file.

An event is something that already happened; it has zero or more handlers. Bind event types to
lists of handler classes in an `EventRegistry`, then `await Mediator(registry).publish(event)`:
the handlers run in the caller's task and context, their errors reach the caller, and the
follow-up events they leave in their `events` are published before `publish` returns.

    registry = EventRegistry().bind(OrderPlaced, [SendReceipt, ReserveStock])
    await Mediator(registry).publish(OrderPlaced(order_id=7))

Vendoring: copy this file into your project and import from it. It needs Python 3.11 or newer
and nothing outside the standard library. Licence: MIT. Version 3.0.0 (`__version__`).
"""

__version__ = "3.0.0"

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
import functools
import inspect
import itertools
import operator
import reprlib
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, Never, Protocol, Self, TypeGuard, TypeVar, final

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
    # variable is the marker that makes "is an event" mean something to a type checker and at run
    # time; a class object cannot match a ClassVar member, so `publish(OrderPlaced)` is rejected.
    __mediator_event__: ClassVar[Literal[True]] = True


class IEventHandler(Protocol[_EventT_contra]):
    """A handler of events of type `_EventT_contra`: any class with a matching async `handle`.

    Contravariant: a handler of `DomainEvent` is a handler of every subclass of `DomainEvent`.
    Handlers need not inherit anything, and may name the event parameter as they like. A handler
    may leave follow-up events in an `events` attribute or property; see `EventHandler`.
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
    calling `call_next` skips the handler. The follow-ups of a call count only if every layer
    returned: an exception that leaves a layer drops those gathered inside it, even when a layer
    outside catches it. `handler` is the handler being wrapped, typed as a handler of some event:
    name it, but run it only through `call_next`. Contravariant, like `IEventHandler`.
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

    The mediator calls it only when there is work, so `handlers` is never empty. Each handler it
    gets is wrapped: its `handle` starts nothing once the caller of `publish` is cancelled, runs
    the handler's middleware, and keeps its follow-ups. A strategy of one's own needs to do
    nothing for any of these; whatever it lets propagate reaches the caller.
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

    `events` is this handler's own list of follow-up events: `handle` appends to it or assigns a
    new list, and the mediator empties it as it takes them, so a handler object used again never
    has one published twice. Any class with a matching async `handle` is an `IEventHandler` too;
    its `events`, if any, may be a list, or any sequence in an attribute or a property with a
    setter, which the mediator resets to `()`. A read-only property that is not a list cannot be
    emptied: such a handler resets what it returns at the start of each `handle`.
    """

    # A slot, so that a subclass with `__slots__` of its own need not list it.
    __slots__ = ("events",)

    events: list[IEvent]

    # `__new__`, not `__init__`: every instance gets a list of its own, also one whose class
    # defines an `__init__` that does not call this one (a dataclass, a handler built by a DI
    # container), and the `__init__` of a mixin after this class in the MRO still runs.
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
_Table = dict[type, tuple[type, ...]]


def _check_event_type(event_type: object, /) -> type:
    if not isinstance(event_type, type):
        raise TypeError(
            f"event type {reprlib.repr(event_type)} is not a class; pass an event class, "
            f"such as type(event)"
        )
    if getattr(event_type, "__mediator_event__", None) is not True:
        raise TypeError(
            f"{event_type.__qualname__} is not an event class; subclass IEvent, or declare "
            f"`__mediator_event__: ClassVar[Literal[True]] = True` on a base class of it"
        )
    return event_type


def _is_event(value: object, /) -> TypeGuard[IEvent]:
    return getattr(type(value), "__mediator_event__", None) is True


def _not_an_event(event: object, /) -> TypeError:
    if isinstance(event, type):
        name = event.__qualname__
        return TypeError(f"publish takes an event; got the class {name}; publish {name}(...)")
    return TypeError(
        f"publish takes an event; got {reprlib.repr(event)}, whose class "
        f"{type(event).__qualname__} is not an event class; subclass IEvent, or declare "
        f"`__mediator_event__: ClassVar[Literal[True]] = True` on a base class of it"
    )


def _is_protocol(cls: type, /) -> bool:
    # typing.is_protocol came in 3.13; before it, this attribute is how typing itself tells.
    return getattr(cls, "_is_protocol", False) is True


def _check_class(bound: object, where: str, /) -> type:
    # `where` reads "handler {} bound to OrderPlaced"; the braces take the offending object.
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
    if _is_protocol(bound):
        raise TypeError(
            f"{where.format(bound.__qualname__)} is a protocol class, which cannot be built; "
            f"bind a class that implements it"
        )
    if inspect.isabstract(bound):
        missing = ", ".join(sorted(getattr(bound, "__abstractmethods__", ())))
        raise TypeError(f"{where.format(bound.__qualname__)} is abstract; implement {missing}")
    return bound


def _check_handle(cls: type, where: str, parameters: str, /) -> None:
    # That `cls().handle(...)` can be awaited with `parameters`, "event" for a handler and
    # "event, handler, call_next" for middleware, passed positionally.
    where = where.format(cls.__qualname__)
    wanted = f"`async def handle(self, {parameters})`"
    handle = getattr(cls, "handle", None)
    if handle is None:
        raise TypeError(f"{where} has no handle method; define {wanted}")
    if handle in (vars(IEventHandler)["handle"], vars(IEventMiddleware)["handle"]):
        owner = next(base for base in cls.__mro__ if "handle" in vars(base))
        raise TypeError(
            f"{where} has only the empty handle of the protocol {owner.__qualname__}; "
            f"define {wanted} on {cls.__qualname__}"
        )
    if not inspect.iscoroutinefunction(handle):
        raise TypeError(f"{where} has a handle that is not `async def`; make it `async def handle`")
    # A plain function in the class takes the instance too; a static or class method does not.
    receiver = 1 if inspect.isfunction(inspect.getattr_static(cls, "handle")) else 0
    signature = inspect.signature(handle)
    try:
        signature.bind(*[None] * (receiver + len(parameters.split(", "))))
    except TypeError:
        raise TypeError(
            f"{where} has handle{signature}, which cannot be called as handle({parameters}); "
            f"define {wanted}"
        ) from None


def _appended(
    table: _Table, additions: Iterable[tuple[type, Iterable[object]]], kind: str, method: str, /
) -> _Table:
    # A new table: `table` with each (event type, classes) of `additions` appended, in order, once
    # every class is checked. `table` itself is left as it was.
    new = dict(table)
    parameters = "event, handler, call_next" if kind == "middleware" else "event"
    for given_type, given in additions:
        event_type = _check_event_type(given_type)
        if isinstance(given, (str, type)) or not isinstance(given, Sequence):
            shown = given.__qualname__ if isinstance(given, type) else "..."
            raise TypeError(
                f"{method} takes a list of {kind} classes for {event_type.__qualname__}, in the "
                f"order they run; got {reprlib.repr(given)}; write [{shown}]"
            )
        bound = list(new.get(event_type, ()))
        for each in given:
            where = f"{kind} {{}} bound to {event_type.__qualname__}"
            cls = _check_class(each, where)
            _check_handle(cls, where, parameters)
            if cls in bound:
                raise DuplicateHandlerError(
                    f"{kind} {cls.__qualname__} is bound to {event_type.__qualname__} twice; "
                    f"bind each {kind} class once per event type, in one registry"
                )
            bound.append(cls)
        if bound:
            new[event_type] = tuple(bound)
    return new


@final
class EventRegistry:
    """Binds event types to handler and middleware classes; modules' registries merge at start-up.

        registry = EventRegistry().bind(OrderPlaced, [SendReceipt]).bind(IEvent, [AuditLog])

    A publish of an event runs the handlers bound to its class, then those bound to each base
    class along the MRO; a handler class bound at several levels runs once, at its first place.
    Middleware bound to a class wraps every handler that a publish of it or of a subclass runs,
    those bound to base classes outside those bound to subclasses. `bind`, `bind_middleware` and
    `merge` check everything before they change anything: on error nothing changed. A change is
    seen by the next lookup in any thread; bind from one thread at a time.
    """

    __slots__ = ("_handlers", "_middleware", "_classes", "_plans", "_frozen")

    def __init__(self) -> None:
        self._handlers: _Table = {}
        self._middleware: _Table = {}
        self._classes: dict[type, None] = {}
        # The plans looked up so far. Every change replaces this dict after the bindings, never
        # clears it: a lookup that read the bindings before the change stores its plan in the
        # dict that the change dropped, so the next lookup, in any thread, sees the change.
        self._plans: dict[type, _Plan] = {}
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
        """Every handler and middleware class bound, once each, in the order they were bound.

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

        Raises `TypeError` for an event type that is not an event class, for a collection with
        no order (a set), and for a handler that is not a concrete class whose `async def handle`
        takes the event; `DuplicateHandlerError` for a handler class already bound to
        `event_type`; `RegistryFrozenError` once frozen.
        """
        return self._append("bind", [(event_type, handler_types)], [])

    def bind_middleware(
        self,
        event_type: type[_EventT] | type[_NoEvent],
        middleware_types: Sequence[type[IEventMiddleware[_EventT]]],
        /,
    ) -> Self:
        """Append `middleware_types` to the middleware of `event_type`, the first outermost.

        Raises as `bind` does, for middleware classes.
        """
        return self._append("bind_middleware", [], [(event_type, middleware_types)])

    def merge(self, *others: "EventRegistry") -> Self:
        """Append the bindings of `others` after this registry's own, per event type, in order.

        Raises `TypeError` for an argument that is not an `EventRegistry`,
        `DuplicateHandlerError` when the result would bind a class twice to one event type, and
        `RegistryFrozenError` once frozen. The others are left as they were.
        """
        for other in others:
            _check_registry(other, "merge")
        handlers = [binding for other in others for binding in other.bindings.items()]
        middleware = [binding for other in others for binding in other.middleware_bindings.items()]
        return self._append("merge", handlers, middleware)

    def _append(
        self,
        method: str,
        handlers: Iterable[tuple[type, Iterable[object]]],
        middleware: Iterable[tuple[type, Iterable[object]]],
        /,
    ) -> Self:
        # The one way bindings change: all checked first, then stored, the plans dropped last.
        if self._frozen:
            raise RegistryFrozenError(
                f"{self!r} is frozen and cannot {method}; "
                f"bind and merge everything before calling freeze()"
            )
        new_handlers = _appended(self._handlers, handlers, "handler", method)
        new_middleware = _appended(self._middleware, middleware, "middleware", method)
        added = [*new_handlers.values(), *new_middleware.values()]
        self._classes = {**self._classes, **dict.fromkeys(cls for row in added for cls in row)}
        self._handlers, self._middleware = new_handlers, new_middleware
        self._plans = {}
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
        once. An empty tuple when there are none; `TypeError` for a class that is not an event.
        """
        return self.plan_for(event_type)[0]

    def middleware_for(
        self, event_type: type[_EventT] | type[_NoEvent], /
    ) -> tuple[type[IEventMiddleware[_EventT]], ...]:
        """The middleware classes around each handler of a publish of exactly `event_type`.

        From the outermost in: those bound to `IEvent`, then along the MRO towards
        `event_type`, each level in bind order; each class once, at its outermost place.
        """
        return self.plan_for(event_type)[1]

    def plan_for(
        self, event_type: type[_EventT] | type[_NoEvent], /
    ) -> tuple[tuple[type[IEventHandler[_EventT]], ...], tuple[type[IEventMiddleware[_EventT]], ...]]:
        """`handlers_for(event_type)` and `middleware_for(event_type)`, from one lookup.

        What `Mediator.publish` asks for each event; computed once per event type and change.
        """
        plans = self._plans
        try:
            return plans[event_type]
        except (KeyError, TypeError):  # TypeError: an unhashable object, which _check_event_type names
            pass
        plan = plans[event_type] = self._plan(_check_event_type(event_type))
        return plan

    def _plan(self, event_type: type, /) -> _Plan:
        mro = event_type.__mro__
        if IEvent not in mro:  # a class that declares the marker: IEvent's bindings reach it too
            mro = (*mro[:-1], IEvent, object)
        handlers, middleware = self._handlers, self._middleware
        return (
            tuple(dict.fromkeys(cls for base in mro for cls in handlers.get(base, ()))),
            tuple(dict.fromkeys(cls for base in reversed(mro) for cls in middleware.get(base, ()))),
        )


def _check_registry(registry: object, taker: str, /) -> None:
    if not isinstance(registry, EventRegistry):
        raise TypeError(
            f"{taker} takes an EventRegistry; got {reprlib.repr(registry)}; "
            f"build one with EventRegistry().bind(...)"
        )


def _check_count(name: str, value: object, /, *, fix: str = "") -> None:
    # bool is an int subclass, but `max_depth=True` is a mistake, never a limit.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int; got {reprlib.repr(value)}{fix}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1; got {value!r}{fix}")


def _check_fail_fast(fail_fast: object, /) -> None:
    if not isinstance(fail_fast, bool):
        raise TypeError(f"fail_fast must be True or False; got {reprlib.repr(fail_fast)}")


def _ends(error: BaseException, /) -> bool:
    # Whether a handler's error ends the publish even when the others should run on: anything
    # that is not an Exception, and a chain that went past its limits.
    return not isinstance(error, Exception) or isinstance(error, ChainLimitError)


def _outcome(
    event: object, count: int, errors: Sequence[BaseException], bare: BaseException | None, /
) -> BaseException:
    # What a failed publish raises: `bare` itself, the other errors chained to it as its cause,
    # or, with nothing to raise bare, every error in one group (BaseExceptionGroup(...) makes an
    # ExceptionGroup when every error is an Exception).
    others = [error for error in errors if error is not bare]
    if not others and bare is not None:
        return bare
    group = BaseExceptionGroup(f"{len(errors)} of {count} handlers of {type(event).__qualname__} failed", others)
    if bare is None:
        return group
    # A cause that `bare` already had stays reachable, as the cause of the group.
    group.__cause__, bare.__cause__ = bare.__cause__, group
    return bare


@final
class SequentialEventPublisher:
    """Runs the handlers one after another, in bind order, in the caller's task: the default.

    With `fail_fast=True` the first exception propagates unchanged and no later handler runs.
    With `fail_fast=False` every handler runs; then, if any raised an `Exception`, one
    `ExceptionGroup` holds those exceptions in handler order. What is not an `Exception`
    (`CancelledError`, `KeyboardInterrupt`, `SystemExit`...), and a `ChainLimitError`, ends the
    publish at once under both settings and propagates bare, with the exceptions collected
    before it chained as its `__cause__`.
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
        errors: list[BaseException] = []
        for handler in handlers:
            try:
                await handler.handle(event)
            except BaseException as error:
                if self._fail_fast:
                    raise
                errors.append(error)
                if _ends(error):
                    break
        if errors:
            try:
                raise _outcome(event, len(handlers), errors, errors[-1] if _ends(errors[-1]) else None)
            finally:
                errors.clear()  # each error's traceback holds this frame: keeping them makes a cycle


# What a group publisher raises bare rather than in a group: asyncio and the interpreter act on
# the first three, which a group would hide from them, and a ChainLimitError is about the whole
# chain: bare at every level of it, it is what the caller sees, however deep the chain.
_BARE = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, ChainLimitError)


@final
class _Group:
    # One call of GroupEventPublisher: the handlers not yet started, what failed, and the workers
    # to cancel when a failure ends the call early. Workers keep their handlers' errors here and
    # never fail, so the TaskGroup never cancels the caller (which 3.11's then leaves cancelled).
    __slots__ = ("_event", "_fail_fast", "_pending", "_errors", "_workers", "_stopped")

    def __init__(self, handlers: Sequence[IEventHandler[_EventT]], event: _EventT, fail_fast: bool, /) -> None:
        self._event: IEvent = event
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
            # The errors' tracebacks hold the workers' frames, which hold this object.
            self._errors.clear()
            self._workers.clear()

    def _failure(self, count: int, cancelled: asyncio.CancelledError | None, /) -> BaseException:
        errors = [error for _, error in sorted(self._errors, key=lambda pair: pair[0])]
        bare = cancelled or next((error for error in errors if isinstance(error, _BARE)), None)
        return _outcome(self._event, count, errors, bare)

    async def _work(self, turns: int, /) -> None:
        # Start up to `turns` handlers one after another, until none is left or a failure ended
        # the call.
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

    k workers take the handlers one after another, in bind order: a child task per handler with
    no limit, k child tasks under `max_concurrency=k`; the caller's own task is the one worker
    when there is one handler or `max_concurrency=1`. With `fail_fast=True` the first failure
    cancels the running handlers and no other starts; with `fail_fast=False` every handler runs
    to its end, unless one raises what is not an `Exception`, or a `ChainLimitError`, which ends
    the call as a failure does. Failures propagate as one exception group, even a single one,
    so that `except*` always works, in handler order; a `CancelledError`, `KeyboardInterrupt`,
    `SystemExit` and `ChainLimitError` propagate bare instead, the other failures chained as
    their `__cause__`. Cancelling the caller cancels every running handler; no task started
    outlives the call, and the caller's task is never cancelled or uncancelled by it.
    """

    __slots__ = ("_max_concurrency", "_fail_fast")

    def __init__(self, max_concurrency: int | None = None, *, fail_fast: bool = True) -> None:
        if max_concurrency is not None:
            _check_count("max_concurrency", max_concurrency, fix="; pass None for no limit")
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
        workers = min(count, self._max_concurrency or count)
        await _Group(handlers, event, self._fail_fast).run(count, workers)


@final
class RecordingPublisher:
    """An `IPublisher` for tests: records every event published through it, in order.

        recorder = RecordingPublisher()
        await checkout(cart, publisher=recorder)
        assert recorder.published == (OrderPlaced(order_id=7),)

    Given a publisher to `forward` to, a `Mediator` say, it publishes each event there after
    recording it, so that the handlers run too; an event stays recorded whatever they raised.
    """

    __slots__ = ("_forward", "_published")

    def __init__(self, forward: IPublisher | None = None) -> None:
        if forward is not None and not callable(getattr(forward, "publish", None)):
            raise TypeError(
                f"RecordingPublisher forwards to an IPublisher; got {reprlib.repr(forward)}, which "
                f"has no publish method; pass a Mediator, or nothing to record only"
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
# follow-up, and an event that a handler publishes itself, extend the chain of the event that
# caused it. `max_depth` bounds its length.
_chain: contextvars.ContextVar[tuple[type, ...]] = contextvars.ContextVar(
    "mediator_chain", default=()
)


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
        return asyncio.CancelledError(
            f"the caller was cancelled while a handler of {type(event).__qualname__} swallowed it"
        )


def _take(handler: object, /) -> tuple[IEvent, ...]:
    # The follow-ups in the handler's `events`, emptied as they are taken so that a handler
    # object used again never has one published twice: a list is cleared, another sequence is
    # replaced by () where `events` can be set; a read-only one is the handler's to reset.
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
    follow_ups = tuple(each for each in taken if _is_event(each))
    if len(follow_ups) < len(taken):
        stray = next(each for each in taken if not _is_event(each))
        raise TypeError(
            f"handler {type(handler).__qualname__} left {reprlib.repr(stray)} in its events, "
            f"which is not an event; leave instances of event classes there"
        )
    return follow_ups


@final
class _Call:
    # A handler as its publisher strategy runs it: `handle` starts nothing once the caller is
    # cancelled, runs the middleware around the handler, and keeps in `follow_ups` what each
    # call whose every layer returned left. The one place that calls a user's `handle`.
    __slots__ = ("_handler", "_middleware", "_caller", "follow_ups")

    def __init__(
        self, handler: IEventHandler[Any], middleware: Sequence[IEventMiddleware[Any]], caller: _Caller, /
    ) -> None:
        self._handler = handler
        self._middleware = middleware
        self._caller = caller
        self.follow_ups: tuple[IEvent, ...] = ()

    def __repr__(self) -> str:
        return repr(self._handler)

    async def handle(self, event: IEvent, layer: int = 0, /) -> None:
        # Middleware `layer`, with those inside it and the handler as its `call_next`; past the
        # last layer, the handler itself. A strategy calls it with the event alone.
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
                error.add_note(f"emptying the events of {type(handler).__qualname__} raised {problem!r} too")
            raise
        if getattr(handler, "events", None):
            self.follow_ups += _take(handler)


def _needs_arguments(cls: type, /) -> bool:
    try:
        inspect.signature(cls).bind()
    except (TypeError, ValueError):  # ValueError: no signature to read, which may well need some
        return True
    return False


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
    `get`); the default calls `cls()` afresh on every publish. A later `bind` or `merge` on the
    registry takes effect on the next publish. `max_depth` bounds a chain of events, each a
    follow-up of the one before or published by one of its handlers; `max_follow_ups` bounds
    the follow-ups of one publish. Both stop a cycle with `ChainLimitError` before anything
    past the limit runs. A chain of 32 reactions is a workflow engine's job, and nested
    publishes that deep stay far from the interpreter's recursion limit; 10,000 follow-ups of
    one event are a batch job's.
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
        if isinstance(publisher, type):
            name = publisher.__qualname__
            raise TypeError(f"publisher {name} is a class; pass an instance such as {name}()")
        if not callable(publisher):
            raise TypeError(
                f"publisher {reprlib.repr(publisher)} is not callable; pass an EventPublisher "
                f"such as SequentialEventPublisher() or GroupEventPublisher()"
            )
        if resolve is not None and not callable(resolve):
            raise TypeError(
                f"resolve {reprlib.repr(resolve)} is not callable; pass a function that takes a "
                f"class and returns (or awaits to) an instance of it"
            )
        _check_count("max_depth", max_depth)
        _check_count("max_follow_ups", max_follow_ups)
        self._registry = registry
        self._publisher = publisher
        # `cls()`, without a frame of ours around it: it runs for every handler of every publish.
        self._resolve: Resolve = operator.call if resolve is None else resolve
        self._max_depth = max_depth
        self._max_follow_ups = max_follow_ups

    def __repr__(self) -> str:
        resolve = "" if self._resolve is operator.call else f", resolve={self._resolve!r}"
        return (
            f"Mediator({self._registry!r}, publisher={self._publisher!r}{resolve}, "
            f"max_depth={self._max_depth}, max_follow_ups={self._max_follow_ups})"
        )

    async def publish(self, event: IEvent, /) -> None:
        """Build every handler of `event`, run them with the publisher, then the follow-ups.

        If building a handler raises, no handler runs and the error propagates. With no handlers
        it returns at once. Follow-ups are the events that handlers leave in their `events`:
        once every handler of an event succeeded, its follow-ups are published, breadth first,
        in the order of the handlers that left them; a failure publishes none and ends the
        publish. Once the caller is cancelled no handler starts, and a `CancelledError` reaches
        the caller even if a handler swallowed it. `ChainLimitError` when a chain goes past the
        limits; `TypeError` for what is not an event.
        """
        try:
            plan = self._registry.plan_for(type(event))
        except TypeError:
            raise _not_an_event(event) from None
        if not plan[0]:
            return
        caller = _Caller()
        chain = (*_chain.get(), type(event))
        follow_ups = await self._publish_one(event, plan, chain, caller)
        if follow_ups:
            await self._publish_follow_ups(follow_ups, chain, caller)

    async def _publish_one(
        self, event: IEvent, plan: _Plan, chain: tuple[type, ...], caller: _Caller, /
    ) -> tuple[IEvent, ...]:
        # Build the handlers and middleware of one event, run them under the publisher with the
        # chain that led to them, and return their follow-ups.
        if len(chain) > self._max_depth:
            raise ChainLimitError(
                f"the chain of events {_names(chain)} is {len(chain)} long, past "
                f"max_depth={self._max_depth}: each is a follow-up of the one before or published "
                f"by one of its handlers; break the cycle, or pass a larger max_depth to Mediator"
            )
        handler_types, middleware_types = plan
        resolve = self._resolve
        built: list[Any] = []
        for cls in (*handler_types, *middleware_types):  # all of them, before any runs
            try:
                made = resolve(cls)
            except TypeError as error:
                if resolve is operator.call and _needs_arguments(cls):
                    name = cls.__qualname__
                    error.add_note(
                        f"Mediator builds {name} as {name}(); pass Mediator(resolve=...) a "
                        f"function that builds it with its arguments, such as a DI container's get"
                    )
                raise
            # An instance of `cls` is not awaitable; asking inspect costs more than the handler.
            built.append(await made if type(made) is not cls and inspect.isawaitable(made) else made)
        middleware: list[IEventMiddleware[Any]] = built[len(handler_types) :]
        calls: list[_Call] = []
        for handler in built[: len(handler_types)]:
            calls.append(_Call(handler, middleware, caller))
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
        # Breadth first: every follow-up of one level before any of the next, each level in the
        # order of the handlers that left them.
        level = [(follow_up, chain) for follow_up in follow_ups]
        published = len(level)
        while level:
            if published > self._max_follow_ups:
                newest, cause = level[-1]
                raise ChainLimitError(
                    f"a publish of {chain[-1].__qualname__} led to more than "
                    f"max_follow_ups={self._max_follow_ups} follow-up events, the newest along "
                    f"{_names((*cause, type(newest)))}; break the cycle, or pass a larger "
                    f"max_follow_ups to Mediator"
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

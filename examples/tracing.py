"""OpenTelemetry for the mediator: a span around each handler, and one around each publish.

    registry.bind_middleware(IEvent, [Traced])
    publisher = TracedPublisher(Mediator(registry, resolve=container.get), tracer)

`Traced` is middleware: bound to `IEvent`, it wraps every handler of every event in a span named
after the event and the handler, which records a failure (the exception, and the status ERROR)
before the failure goes on. `TracedPublisher` opens a span around a whole publish; follow-up
events are published within it, so the spans of their handlers nest under it too. Middleware is
built through `resolve`, so the container that builds it gives it its tracer.
"""

from collections.abc import Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import Tracer

from mediator import IEvent, IPublisher


class Traced:
    """A span around each handler, as middleware."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer("mediator")

    async def handle(
        self, event: IEvent, handler: object, call_next: Callable[[], Awaitable[None]], /
    ) -> None:
        event_name, handler_name = type(event).__qualname__, type(handler).__qualname__
        attributes = {"mediator.event": event_name, "mediator.handler": handler_name}
        # start_as_current_span records an exception on the span and sets its status to ERROR.
        with self._tracer.start_as_current_span(f"{event_name} {handler_name}", attributes=attributes):
            await call_next()


class TracedPublisher:
    """An `IPublisher` that opens a span around each publish, follow-ups included."""

    def __init__(self, publisher: IPublisher, tracer: Tracer) -> None:
        self._publisher = publisher
        self._tracer = tracer

    async def publish(self, event: IEvent, /) -> None:
        event_name = type(event).__qualname__
        attributes = {"mediator.event": event_name}
        with self._tracer.start_as_current_span(f"publish {event_name}", attributes=attributes):
            await self._publisher.publish(event)

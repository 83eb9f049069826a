"""The OpenTelemetry middleware, against the SDK and its in-memory exporter."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

from examples.tracing import Traced, TracedPublisher
from mediator import EventPublisher, EventRegistry, GroupEventPublisher, IEvent, Mediator
from mediator import SequentialEventPublisher

T = TypeVar("T")


@dataclass(frozen=True)
class OrderPlaced(IEvent):
    order_id: int


@dataclass(frozen=True)
class OrderShipped(IEvent):
    order_id: int


class Declined(Exception):
    pass


class ChargeCard:
    async def handle(self, event: OrderPlaced) -> None:
        if event.order_id < 0:
            raise Declined(f"order {event.order_id}")


class ShipOrder:
    def __init__(self) -> None:
        self.events: list[IEvent] = []

    async def handle(self, event: OrderPlaced) -> None:
        self.events.append(OrderShipped(event.order_id))


class NotifyShipped:
    async def handle(self, event: OrderShipped) -> None:
        pass


@dataclass
class Tracing:
    """A tracer of its own, whose spans an in-memory exporter keeps, and a mediator traced by it."""

    publisher: EventPublisher
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)

    def __post_init__(self) -> None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = provider.get_tracer("tests")

    def resolve(self, cls: type[T], /) -> T:
        """Builds what a publish needs, as a DI container would: Traced gets the tracer."""
        factories: dict[type, Callable[[], object]] = {Traced: lambda: Traced(self.tracer)}
        built = factories.get(cls, cls)()
        assert isinstance(built, cls)
        return built

    def traced(self) -> TracedPublisher:
        registry = (
            EventRegistry()
            .bind(OrderPlaced, [ChargeCard, ShipOrder])
            .bind(OrderShipped, [NotifyShipped])
            .bind_middleware(IEvent, [Traced])
        )
        mediator = Mediator(registry, publisher=self.publisher, resolve=self.resolve)
        return TracedPublisher(mediator, self.tracer)

    def spans(self) -> dict[str, ReadableSpan]:
        return {span.name: span for span in self.exporter.get_finished_spans()}


publishers = pytest.mark.parametrize(
    "publisher",
    [SequentialEventPublisher(), GroupEventPublisher()],
    ids=["sequential", "group"],
)


@publishers
def test_each_handler_has_a_span_named_after_the_event_and_the_handler(
    publisher: EventPublisher,
) -> None:
    tracing = Tracing(publisher)
    asyncio.run(tracing.traced().publish(OrderPlaced(order_id=1)))
    spans = tracing.spans()
    assert set(spans) == {
        "publish OrderPlaced",
        "OrderPlaced ChargeCard",
        "OrderPlaced ShipOrder",
        "OrderShipped NotifyShipped",
    }
    attributes = spans["OrderPlaced ChargeCard"].attributes
    assert attributes is not None
    assert dict(attributes) == {"mediator.event": "OrderPlaced", "mediator.handler": "ChargeCard"}
    assert all(span.status.status_code is StatusCode.UNSET for span in spans.values())


@publishers
def test_a_failing_handlers_span_records_the_failure_with_an_error_status(
    publisher: EventPublisher,
) -> None:
    tracing = Tracing(publisher)
    with pytest.raises((Declined, ExceptionGroup)):
        asyncio.run(tracing.traced().publish(OrderPlaced(order_id=-1)))
    failed = tracing.spans()["OrderPlaced ChargeCard"]
    assert failed.status.status_code is StatusCode.ERROR
    [recorded] = [event for event in failed.events if event.name == "exception"]
    assert recorded.attributes is not None
    assert str(recorded.attributes["exception.type"]).endswith("Declined")
    assert tracing.spans()["publish OrderPlaced"].status.status_code is StatusCode.ERROR


@publishers
def test_follow_ups_spans_nest_under_the_publish_of_their_cause(publisher: EventPublisher) -> None:
    tracing = Tracing(publisher)
    asyncio.run(tracing.traced().publish(OrderPlaced(order_id=2)))
    spans = tracing.spans()
    cause = spans["publish OrderPlaced"]
    for name in ["OrderPlaced ChargeCard", "OrderPlaced ShipOrder", "OrderShipped NotifyShipped"]:
        parent = spans[name].parent
        assert parent is not None and cause.context is not None
        assert (parent.trace_id, parent.span_id) == (cause.context.trace_id, cause.context.span_id)

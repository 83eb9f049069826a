"""Notification events from an order service to a billing service, through an outbox and Redis.

- `orders`: placing an order writes it and its notification events to an outbox table, in one
  SQLite transaction; one binding on `NotificationEvent` does the writing, through the mediator.
- `relay`: moves outbox rows to a Redis Stream, then marks them sent.
- `billing`: reads the stream with a consumer group, publishes each event into its own
  `Mediator`, and acknowledges it once its handlers succeeded; it handles each event once.

Run each process with `python -m examples.outbox.relay --help` and the like.
"""

"""Notification events from an order service to a billing service, through an outbox and Redis.

- `orders`: placing an order writes it and its notification events to an outbox table, in one
  SQLite transaction; one binding on `NotificationEvent` does the writing, through the mediator.
- `relay`: moves outbox rows to a Redis Stream, then marks them sent.
- `billing`: reads the stream with a consumer group, publishes each event into its own
  `Mediator`, and acknowledges it once its handlers succeeded; it handles each event once.
- `service`: what the relay and billing share as processes: Redis outages, SIGINT and SIGTERM.
- `end_to_end`: a redis-server, the relay and billing as processes, and orders placed through
  them; `python -m examples.outbox` and the outbox benchmark run it.

`python -m examples.outbox` runs it all; `--help` on it and on each service says how.
"""

import signal
import sys
from types import FrameType

# The end of each service's --help.
RUN_ALONE = """\
Each service runs alone, beside a Redis and the others, each in a terminal of its own:

  redis-server --appendonly yes    # port 6379; apt-get install redis-server, or brew install redis
  python -m examples.outbox.relay orders.db redis://127.0.0.1:6379/0
  python -m examples.outbox.billing billing.db redis://127.0.0.1:6379/0
  python -m examples.outbox.orders orders.db --count 10

or all of it in one command, with a redis-server of its own: python -m examples.outbox
"""


def _interrupted_as_it_starts(signum: int, frame: FrameType | None) -> None:
    print("interrupted as it started, before it did anything", file=sys.stderr)
    raise SystemExit(128 + signum)


# `python -m examples.outbox` (or .relay, .billing, .orders) imports this package first, while
# sys.argv[0] is still "-m": from here until the command handles signals its own way, Ctrl-C
# ends it in that one line, not in a traceback from the middle of the imports of redis and
# pydantic. Imported any other way, the package leaves signals alone.
if sys.argv[:1] == ["-m"]:
    signal.signal(signal.SIGINT, _interrupted_as_it_starts)

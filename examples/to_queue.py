"""Hand each message to a queue, and say 250 only once the queue has it.

    python examples/to_queue.py [--port 2525] [--queue mail.jsonl]

`FileQueue` stands in for a broker (RabbitMQ, Kafka, Redis Streams, SQS...): ``publish``
appends one JSON line per message and returns once it is on disk, as a broker's publish
returns once the broker confirmed it. Each line holds the envelope (which never travels
inside the message: it is where Bcc recipients live) and the message, base64-encoded, exactly
as received::

    {"id": "...", "received_at": "...", "mail_from": "a@example.org",
     "rcpt_to": ["b@example.org"], "remote_ip": "127.0.0.1", "helo": "client.example.org",
     "message": "U3ViamVjdDogSGkNCg0KLi4u"}

If publishing fails the client gets ``451 4.3.0`` and retries later: a message is never
acknowledged and then lost. (Real brokers: ``amqp:`` and ``redis:`` handler specs of
``smtpcore serve`` do this with publisher confirms and XADD.)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transports import Handler, Session, Smtp451Error
from transports.asyncio import Server
from transports.handlers.stored import new_message_id


class FileQueue:
    """A queue stand-in: one JSON object per line, appended and fsync'ed under a lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def publish(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as queue:
            queue.write(line)
            queue.flush()
            os.fsync(queue.fileno())  # "confirmed": on disk before we answer 250

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text("utf-8").splitlines()]


class ToQueue(Handler):
    """Publishes every message; a failed publish answers 451 so the client retries."""

    def __init__(self, queue: FileQueue) -> None:
        self.queue = queue

    async def on_message(self, ctx: Session) -> None:
        record = {
            "id": new_message_id(),
            "received_at": datetime.now(UTC).isoformat(),
            "mail_from": ctx.sender,  # "" for the null sender <>
            "rcpt_to": list(ctx.recipients),
            "remote_ip": ctx.remote_ip,
            "helo": ctx.helo,
            "message": base64.b64encode(ctx.message.as_bytes()).decode("ascii"),
        }
        try:
            # A blocking client runs in a worker thread, so other sessions go on meanwhile.
            await asyncio.to_thread(self.queue.publish, record)
        except OSError as exc:
            raise Smtp451Error("Queue unavailable, try again later") from exc


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--queue", default="mail.jsonl", help="the file the queue appends to")
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(ToQueue(FileQueue(arguments.queue)), arguments.port))

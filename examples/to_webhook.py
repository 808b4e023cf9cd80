"""POST each message to a web application as JSON; answer 250 only if it said 2xx.

    python examples/to_webhook.py [--url http://127.0.0.1:8000/mail] [--port 2525] [--builtin]

`ToWebhook` does it with nothing but the standard library: ``urllib.request`` in a worker
thread (so the event loop keeps serving other sessions while the web application thinks).
The JSON it posts::

    {"mail_from": "a@example.org", "rcpt_to": ["b@example.org"], "subject": "Hi",
     "remote_ip": "127.0.0.1", "message": "<the message as received, base64>"}

Anything but a 2xx (another status, a redirect, a refused connection, a timeout) answers
``451``, so the client keeps the message and retries. ``--builtin`` uses the ready-made
`WebhookHandler` instead (``smtpcore serve --handler webhook:URL``), whose payload also
carries the message id, the session and the main header fields.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from transports import Handler, Session, SmtpError
from transports.asyncio import Server
from transports.handlers import WebhookHandler


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with a GET, losing the body: treat it as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ToWebhook(Handler):
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects())

    async def on_message(self, ctx: Session) -> None:
        payload = {
            "mail_from": ctx.sender,
            "rcpt_to": list(ctx.recipients),
            "subject": ctx.message.email["subject"],
            "remote_ip": ctx.remote_ip,
            "message": base64.b64encode(ctx.message.as_bytes()).decode("ascii"),
        }
        status = await asyncio.to_thread(self.post, json.dumps(payload).encode("utf-8"))
        if not 200 <= status < 300:
            raise SmtpError(451, f"Webhook answered HTTP {status}, try again later", "4.3.0")

    def post(self, body: bytes) -> int:
        """POST ``body``; returns the HTTP status (raises 451 when there is none)."""
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:  # non-2xx answers (and refused redirects)
            exc.close()
            return exc.code
        except OSError as exc:  # refused, unreachable, timed out
            raise SmtpError(451, "Webhook unreachable, try again later", "4.4.1") from exc


def make_handler(url: str, builtin: bool = False) -> Handler:
    return WebhookHandler(url) if builtin else ToWebhook(url)


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000/mail", help="where to POST, http:// or https://"
    )
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--builtin", action="store_true", help="use WebhookHandler")
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(make_handler(arguments.url, arguments.builtin), arguments.port))

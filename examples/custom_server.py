"""A complete SMTP server built directly on the sans-IO core: plain sockets, a thread per
client, no `transports` at all. The loop in `serve_client` is all a transport has to do.

    python examples/custom_server.py [--port 2525]
"""

from __future__ import annotations

import argparse
import contextlib
import email
import socket
import threading
from collections.abc import Callable

import smtpcore as core

Deliver = Callable[[str, tuple[str, ...], bytes], None]  # sender, recipients, content


def serve_client(sock: socket.socket, config: core.SmtpConfig, deliver: Deliver) -> None:
    conn = core.SmtpConnection(config)
    content = bytearray()
    sock.settimeout(300)  # RFC 5321 §4.5.3.2.7: five minutes of silence at most
    with sock:
        while True:
            event = conn.next_event()
            if event is core.NEED_DATA:
                try:
                    sock.sendall(conn.data_to_send())  # every reply so far, in order
                    conn.receive_data(sock.recv(65536))  # b"" when the client closed
                except TimeoutError:
                    conn.timed_out()  # queues 421 4.4.2; ConnectionClosed comes next
                except OSError:
                    conn.receive_data(b"")
            elif isinstance(event, core.ConnectionClosed):
                with contextlib.suppress(OSError):
                    sock.sendall(conn.data_to_send())  # 221 after QUIT, or a 421
                return
            elif isinstance(event, core.MessageStart):
                content.clear()
                conn.accept(event)  # 354 for DATA
            elif isinstance(event, core.DataChunk):  # dot-unstuffed pieces of the message
                content += event.data
            elif isinstance(event, core.MessageComplete):
                deliver(event.envelope.sender or "", event.envelope.recipients, bytes(content))
                conn.accept(event)  # 250; conn.reject(event, core.Reply(...)) refuses
            elif isinstance(event, core.Greeting | core.Helo | core.MailFrom | core.RcptTo):
                conn.accept(event)  # 220, 250...: yes to everyone and every address
            elif isinstance(event, core.Event) and event.needs_reply:
                conn.reject(event)  # its default refusal: 500 for an unknown command


def serve_forever(listener: socket.socket, config: core.SmtpConfig, deliver: Deliver) -> None:
    """Accept clients until ``listener`` is shut down, each in its own thread."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # the listener was shut down or closed
            return
        args = (client, config, deliver)
        threading.Thread(target=serve_client, args=args, daemon=True).start()


def print_message(sender: str, recipients: tuple[str, ...], content: bytes) -> None:
    subject = email.message_from_bytes(content)["subject"]
    print(f"<{sender}> -> {', '.join(recipients)}: {subject}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    port = parser.parse_args().port
    with socket.create_server(("127.0.0.1", port)) as listener:
        print("Listening on {}:{}, Ctrl-C stops".format(*listener.getsockname()), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            serve_forever(listener, core.SmtpConfig(hostname="localhost"), print_message)

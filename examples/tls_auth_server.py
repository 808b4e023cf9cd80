"""A submission-style server: STARTTLS required, then AUTH required, users from a dict.

    python examples/tls_auth_server.py [--port 2587]

A self-signed certificate for localhost and 127.0.0.1 is made at start-up, and its path is
printed so a client can trust it instead of turning verification off, e.g.:

    swaks --server 127.0.0.1:2587 --tls --tls-verify --tls-ca-path CA_PATH \\
          --auth PLAIN --auth-user alice --auth-password wonderland --to bob@example.org

Before STARTTLS every command but EHLO/HELO/NOOP/RSET/QUIT/STARTTLS gets ``530 5.7.0 Must
issue a STARTTLS command first``, and AUTH is not even offered (passwords never cross the
network in clear); after it, MAIL needs a successful AUTH (``530 5.7.0 Authentication
required``). Use a real certificate (``make_server_context(cert_path=...)``) in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections.abc import Mapping
from pathlib import Path

from smtpcore import AuthMode, SmtpConfig, TlsMode
from transports import Handler, ServerOptions, Session
from transports.asyncio import Server
from transports.auth import AuthenticatingHandler, Credentials
from transports.tls import generate_self_signed, make_server_context

USERS = {"alice": "wonderland", "bob": "builder"}
"""Clear passwords keep the example short; see `smtpcore hash-password` for scrypt hashes."""


class Submissions(Handler):
    """Prints who sent what: by now the session is encrypted and authenticated."""

    def on_message(self, ctx: Session) -> None:
        tls = ctx.tls.version if ctx.tls is not None else "none"
        print(
            f"{ctx.authentication_id} ({tls}) sent <{ctx.sender}> -> {', '.join(ctx.recipients)}: "
            f"{ctx.message.email['subject']}",
            flush=True,
        )


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """Write a self-signed certificate: the server's PEM (key and certificate) and the
    certificate alone, which clients trust as their CA. Returns both paths."""
    cert, key = generate_self_signed("localhost", [host])
    server_pem, ca_pem = directory / "server.pem", directory / "ca.pem"
    server_pem.touch(mode=0o600)
    server_pem.write_bytes(key + cert)
    ca_pem.write_bytes(cert)
    return server_pem, ca_pem


def build(
    directory: Path, host: str = "127.0.0.1", port: int = 2587, users: Mapping[str, str] = USERS
) -> tuple[Handler, ServerOptions, Path]:
    """The handler, the server options and the CA file clients should trust."""
    server_pem, ca_pem = self_signed(directory, host)
    options = ServerOptions.build(
        host=host,
        port=port,
        config=SmtpConfig(
            hostname="localhost",
            tls_mode=TlsMode.REQUIRED,  # STARTTLS before anything else
            auth_mode=AuthMode.REQUIRED,  # then AUTH before MAIL
            auth_mechanisms=("PLAIN", "LOGIN"),
        ),
        tls_context=make_server_context(cert_path=server_pem, hostname="localhost"),
    )
    handler = AuthenticatingHandler(Credentials(passwords=users), Submissions())
    return handler, options, ca_pem


async def serve(port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="smtpcore-example-") as directory:
        handler, options, ca_pem = build(Path(directory), port=port)
        async with Server(handler, options) as server:
            where = "{}:{}".format(*server.addresses[0])
            print(f"Listening on {where}; clients trust {ca_pem}; Ctrl-C stops", flush=True)
            await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2587)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parser.parse_args().port))

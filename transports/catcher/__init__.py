"""A mail catcher for developers: a web page and a Mailpit-like JSON API beside the SMTP server.

    mail = MemoryHandler()
    with ServerThread("trio", mail, port=2525), Catcher(mail, "127.0.0.1", 8025) as web:
        ...  # mail sent to 127.0.0.1:2525 shows up at web.url

``smtpcore serve --handler memory --http 127.0.0.1:8025`` does the same from the command line.
See docs/mail-catcher.md for the API.
"""

from __future__ import annotations

from .catcher import Catcher

__all__ = ["Catcher"]

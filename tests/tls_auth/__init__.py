"""TLS and AUTH end to end: every transport against smtplib, swaks, openssl and gnutls-cli."""

# smtpcore in a container: `smtpcore serve` as a non-root user, health-checked on /livez.
#
#   docker build -t smtpcore .
#   docker run -p 2525:2525 -p 9025:9025 smtpcore                      # debug handler
#   docker run -p 2525:2525 -v mail:/var/lib/smtpcore/mail smtpcore \
#       --host 0.0.0.0 --metrics-port 9025 --handler maildir:/var/lib/smtpcore/mail --workers 2
#
# Arguments given to `docker run` replace CMD (keep --host 0.0.0.0 and --metrics-port 9025:
# the HEALTHCHECK below needs the ops endpoint). See docs/deployment.md.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY smtpcore ./smtpcore
COPY transports ./transports
RUN pip install ".[metrics,tls]" \
    && rm -rf /src \
    && useradd --system --uid 10025 --user-group --home-dir /var/lib/smtpcore --create-home \
        --shell /usr/sbin/nologin smtpcore

USER smtpcore
WORKDIR /var/lib/smtpcore

# SMTP (unprivileged port: map 25 -> 2525 outside) and the ops endpoint.
EXPOSE 2525 9025

# SIGTERM (docker stop, Kubernetes) drains transactions for --grace seconds, then 421.
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9025/livez', timeout=2).status != 200)"]

ENTRYPOINT ["smtpcore", "serve"]
CMD ["--host", "0.0.0.0", "--port", "2525", "--metrics-port", "9025", "--handler", "debug"]

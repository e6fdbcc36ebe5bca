# The mcpmeter collector: ingest API, usage API, dashboard and /metrics.
#   docker build -f deploy/collector.Dockerfile -t mcpmeter .
#   docker run -p 8890:8890 -v mcpmeter-data:/data mcpmeter
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[server,otlp]" \
 && useradd --system --uid 10001 --home-dir /data mcpmeter \
 && mkdir -p /data && chown mcpmeter /data

USER mcpmeter
WORKDIR /data
# Listen on every interface inside the container; requests from outside it are not loopback,
# so they need API keys (MCPMETER_API_KEY_<NAME> registers ingest keys at start).
ENV MCPMETER_HOME=/data \
    MCPMETER_DB=/data/mcpmeter.db \
    MCPMETER_HOST=0.0.0.0 \
    MCPMETER_PORT=8890 \
    MCPMETER_METRICS_PORT=9465 \
    MCPMETER_LOCAL_TRUST=false

EXPOSE 8890 9465
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8890/health', timeout=4)"]
CMD ["mcpmeter", "serve"]

"""Serve the collector app on its port and, optionally, on a metrics port too.

One uvicorn server listens on both sockets, with the connection rules of ``server/connections.py``; requests that arrive on the metrics port get only
``/metrics`` and ``/health`` (``RequestMetrics`` answers anything else 404), so a Prometheus
on a private network can scrape the gateway's usual port (9465) without reaching the API.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from ...exceptions import ConfigError
from .. import connections


def run(app: Any, host: str, port: int, metrics_port: int | None, log_level: str) -> None:
    level = log_level if log_level != "info" else "warning"
    guarded = connections.options()  # idle and slow connections timed out, a cap per address; beyond the cap: 503
    if metrics_port is None:
        uvicorn.run(app, host=host, port=port, log_level=level, access_log=False, lifespan="on", **guarded)
        return
    if metrics_port == port:
        raise ConfigError(f"--metrics-port {metrics_port} is the collector's own port",
                          hint="pick another port (the gateway's metrics port is 9465), or leave it out: /metrics is on the main port too")
    config = uvicorn.Config(app, host=host, port=port, log_level=level, access_log=False, lifespan="on", **guarded)
    metrics = uvicorn.Config(app, host=host, port=metrics_port, log_level=level)
    uvicorn.Server(config).run(sockets=[config.bind_socket(), metrics.bind_socket()])

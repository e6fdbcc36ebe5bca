"""The collector: an ASGI app that ingests events and answers usage questions."""

from .app import CollectorConfig, create_app

__all__ = ["CollectorConfig", "create_app"]

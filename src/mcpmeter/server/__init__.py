"""Everything that serves over HTTP (Starlette, uvicorn, httpx): the collector, its dashboard,
/metrics and OTLP export, and sign-in. Imported only by the commands that serve."""

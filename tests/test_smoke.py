import httpx


def test_collector_process_is_ready(collector):
    assert httpx.get(collector.url + "/health").json() == {"status": "ok"}

"""An SDK process for the fault tests: records EVENTS tool calls over SECONDS through a Meter
configured by the environment (MCPMETER_URL, MCPMETER_API_KEY, MCPMETER_HOME), then keeps
flushing until everything it recorded was delivered (sent, or spooled and replayed) or the
deadline passes, and prints its counts as JSON on stdout."""

from __future__ import annotations

import json
import sys
import time

from mcpmeter import Meter
from mcpmeter.sdk.sinks import HttpSink

HttpSink.REPLAY_EVERY = 0.5  # replay the spool soon after the collector is back (5 s by default)


def main() -> None:
    name, events, seconds, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    meter = Meter(server=name, batch_size=20, flush_interval=0.1)

    @meter.tool
    def work(i: int) -> int:
        return i

    start = time.monotonic()
    for i in range(events):
        work(i)
        pause = start + seconds * (i + 1) / events - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the load's pace, not synchronisation
    stop = time.monotonic() + deadline
    stats = meter.stats
    while time.monotonic() < stop:
        meter.flush(5)
        if stats.recorded == events and stats.sent + stats.replayed == events and stats.spooled == stats.replayed:
            break
        time.sleep(0.2)
    meter.shutdown(10)
    print(json.dumps({"recorded": stats.recorded, "sent": stats.sent, "spooled": stats.spooled,
                      "replayed": stats.replayed, "dropped": dict(stats.dropped)}), flush=True)


if __name__ == "__main__":
    main()

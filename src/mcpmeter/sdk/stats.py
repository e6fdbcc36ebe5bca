"""What the recorder did: sent, spooled, replayed, held, and dropped by reason.

``held`` counts events spooled because the collector refused the key they were sent with
(401/403/404): they stay in the spool under that key's identity, never sent with another.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    recorded: int = 0
    sent: int = 0
    spooled: int = 0
    replayed: int = 0
    held: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    reported: Counter[str] = field(default_factory=Counter)  # drops already sent as sdk.dropped events

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def as_dict(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "sent": self.sent, "spooled": self.spooled,
                "replayed": self.replayed, "held": self.held, "dropped": dict(self.dropped)}

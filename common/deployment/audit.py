"""The audit log both sides keep: who asked for what, when, and what was decided.

One JSON line per decision in <state>/audit.jsonl, readable by the service user only. The
coordinator's SuperLink records every Control API action (start or stop a run, register or
unregister a center key) with the operator who asked and the address it came from; a center
records every round it accepted or refused, with the operator, method and budget the round
asked for. Lines are only ever appended; a line cut short by a crash costs that line only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddel.common.io import append_json_line, read_json_lines

AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class AuditLog:
    path: Path

    @classmethod
    def in_folder(cls, state: str | Path) -> AuditLog:
        return cls(Path(state) / AUDIT_FILE)

    def append(self, action: str, *, actor: str, outcome: str, **details: Any) -> None:
        """Record one decision: `outcome` is "allowed", "refused" or what happened."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        entry = {"time": now, "action": action, "actor": actor, "outcome": outcome, **details}
        append_json_line(self.path, entry)

    def entries(self) -> list[dict[str, Any]]:
        """Every readable entry, oldest first."""
        return read_json_lines(self.path)[0]

"""The audit log both sides keep (common/deployment/audit.py)."""

import datetime
import stat

from feddel.common.deployment.audit import AUDIT_FILE, AuditLog


def test_entries_come_back_in_order_with_time_actor_and_details(tmp_path):
    audit = AuditLog.in_folder(tmp_path / "state")
    audit.append("start-run", actor="alice", outcome="allowed", peer="127.0.0.1", method="feddel")
    audit.append("round", actor="bob", outcome="refused", reason="method 'random' not allowed")
    entries = audit.entries()
    assert [(e["action"], e["actor"], e["outcome"]) for e in entries] == [
        ("start-run", "alice", "allowed"), ("round", "bob", "refused"),
    ]  # fmt: skip
    assert entries[0]["method"] == "feddel" and entries[1]["reason"].startswith("method")
    when = datetime.datetime.fromisoformat(entries[0]["time"])
    assert when.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60


def test_the_log_is_private_to_the_service_user_and_survives_a_cut_line(tmp_path):
    audit = AuditLog.in_folder(tmp_path)
    audit.append("connect", actor="unknown key", outcome="refused")
    assert stat.S_IMODE((tmp_path / AUDIT_FILE).stat().st_mode) == 0o600
    with open(tmp_path / AUDIT_FILE, "ab") as handle:
        handle.write(b'{"action": "stop-run", "act')  # power lost mid-line
    audit.append("stop-run", actor="alice", outcome="allowed", run_id=7)
    assert [e["action"] for e in audit.entries()] == ["connect", "stop-run"]
    assert AuditLog.in_folder(tmp_path / "none").entries() == []

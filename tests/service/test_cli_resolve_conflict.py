"""``fhir-alliance resolve-conflict RECORD_ID --overwrite|--keep-remote``: a person's decision on a
conflict the conflict policy ``flag`` held for them, audited as decided by ``cli``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir_alliance_service.store import SyncState
from fhir_alliance_service.store.interface import SentResource, Store
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON

from fhir_alliance.cli import main

pytestmark = pytest.mark.usefixtures("root_logging_restored")

CLINIC = Path(__file__).resolve().parents[2] / "examples" / "demo" / "clinic"
THEIRS = SentResource("Consent", "c-1", "4")


def _flag_one(store: Store, theirs: SentResource = THEIRS) -> str:
    """Hold the oldest queued item for a person the way the worker's policy flag does."""
    now = datetime.now(UTC)
    (item,) = store.claim("w", limit=1, lease_seconds=60, now=now)
    assert store.mark_held(
        item.item_id,
        "w",
        reason=CONFLICT_HELD_REASON,
        audit=[],
        at=now,
        conflict="flagged",
        conflict_versions=[theirs],
    )
    return item.record_id


def test_overwrite_queues_the_record_again_audited_by_cli(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--overwrite` (by record id or identifier) queues it, saying which server version it was
    decided against; the AuditEvent names `cli`."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    record_id = _flag_one(opened)
    record = opened.get_record(record_id)
    assert record is not None
    capsys.readouterr()
    assert main(["resolve-conflict", record.identifier, "--overwrite"]) == 0
    assert "overwrite decided against Consent/c-1/_history/4; queued" in capsys.readouterr().out
    status = opened.sync_status(record_id)
    assert status is not None
    assert (status.state, status.conflict) == (SyncState.QUEUED, "decided-overwrite")
    [event] = [a for a in opened.list_audit(record_id=record_id) if a.action == "conflict-decision"]
    assert event.resource["agent"][0]["who"]["identifier"]["value"] == "cli"
    assert json.dumps(event.resource).count(record.identifier) == 0  # no identifier, no name


def test_keep_remote_records_the_server_version(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--keep-remote`: sent at the server's version, nothing queued."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    record_id = _flag_one(opened)
    assert main(["resolve-conflict", record_id, "--keep-remote"]) == 0
    status = opened.sync_status(record_id)
    assert status is not None
    assert (status.state, status.sent) == (SyncState.SENT, (THEIRS,))


def test_a_record_without_a_flagged_conflict_exits_1_and_changes_nothing(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A queued record, an unknown one, and no decision given."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    [first] = opened.list_records(limit=1)
    before = opened.sync_status(first.record_id)
    capsys.readouterr()
    assert main(["resolve-conflict", first.record_id, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "is queued, with no conflict flagged" in err and err[-1] == "\n"
    assert opened.sync_status(first.record_id) == before
    assert main(["resolve-conflict", "00000000-0000-0000-0000-000000000000", "--overwrite"]) == 1
    assert "no such record" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["resolve-conflict", first.record_id])


def test_against_decides_only_the_conflict_it_names(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--against` the version printed before: the record, decided and flagged again against
    version 5 meanwhile, is not decided (exit 1, one line naming version 5); against version 5
    it is. A malformed `--against` is a usage error."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    record_id = _flag_one(opened)
    capsys.readouterr()
    assert main(["resolve-conflict", record_id, "--overwrite"]) == 0
    assert "against Consent/c-1/_history/4;" in capsys.readouterr().out
    assert _flag_one(opened, SentResource("Consent", "c-1", "5")) == record_id
    before = opened.sync_status(record_id)

    stale = ["resolve-conflict", record_id, "--keep-remote", "--against", "Consent/c-1/_history/4"]
    assert main(stale) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "now against Consent/c-1/_history/5" in err
    assert opened.sync_status(record_id) == before

    assert main([*stale[:-1], "Consent/c-1/_history/5"]) == 0
    status = opened.sync_status(record_id)
    assert status is not None
    assert (status.state, status.sent) == (SyncState.SENT, (SentResource("Consent", "c-1", "5"),))
    with pytest.raises(SystemExit) as usage:
        main(["resolve-conflict", record_id, "--overwrite", "--against", "version 4"])
    assert usage.value.code == 2


def test_record_version_must_be_the_one_flagged(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--record-version` other than the version flagged (a person looked at another version
    of the record): not decided, exit 1, one line naming the version flagged; nothing changed."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    record_id = _flag_one(opened)
    before = opened.sync_status(record_id)
    assert before is not None
    capsys.readouterr()
    other = str(before.record_version + 1)
    assert main(["resolve-conflict", record_id, "--overwrite", "--record-version", other]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"on record version {before.record_version}" in err
    assert opened.sync_status(record_id) == before
    flagged = str(before.record_version)
    assert main(["resolve-conflict", record_id, "--overwrite", "--record-version", flagged]) == 0

"""Patient keys in canonical form: one patient, one key, however its identifier's system is spelt.

Before, a patient named only by identifier was filed under ``system|value`` exactly as written:
``urn:oid:2.16.840.1.113883.4.1|123`` and ``http://hl7.org/fhir/sid/us-ssn|123`` (or
``URN:OID:…`` and ``urn:oid:…``, or a host in upper and lower case) were two patients, and an
opt-out filed under one spelling did not hold the records filed under another (fail open). The
code now files and looks up every identifier key as
``fhir_alliance.terminology.canonical_identifier`` spells it (``usecases/consents.py``:
``patient_key``, ``canonical_patient_key``). This migration rewrites the keys stored before it
the same way. The rule is copied here as it is at this revision (migrations do not import the
code they outlive; a test checks that the two agree). Literal references (``Patient/123``, no
``|``) are left as they are. Nothing is written when no stored key changes.

What happens in each table that holds a patient key:

* ``records``, ``record_heads``, ``outbox``, ``audit``, ``pulled_resources`` (``patient``): the key
  is rewritten in place; no row is dropped. Spellings of one patient now share one key, so their
  consents are read together (deny overrides) and their outbox items wait in one patient order.
  The AuditEvents and pulled resources themselves are history and keep the spelling they had.
* ``patient_tokens``: the rows of rewritten keys are replaced by one row per canonical key, its
  token computed under the installation's secret as ``store/patient_tokens.py`` does (as in 0008).
  A console URL of a spelling that was merged away stops working: the patient has one id now.
* ``patient_aliases`` (``alias`` the primary key): ``alias`` and ``patient`` are rewritten. An alias
  that now equals its patient is dropped. Where rewritten rows now meet (one alias naming two
  patients, or an alias that is now another row's patient), every key linked by them is one
  patient: the keys were linked to one another through spellings of one identifier, which the
  consent engine already equates. The group is filed flat, as the store keeps it: under the
  patient of its oldest row (``created_at``, then the keys), every other key an alias of it,
  dated by the oldest row it was in. **Two keys once linked stay linked**: a consent filed under
  any of them keeps counting for all of them, so no consent stops counting for a patient.
* ``remote_patients`` (primary key ``(server, patient)``): where spellings linked on one server
  merge, the oldest link (``created_at``, then ``remote``) stays the patient's link. Every other
  link's server patient is still pulled: the link is filed under its remote reference itself
  (``Patient/<id>``, as the pull names a patient known here by reference), and that reference is
  made an alias of the patient unless it is a key of the patient already. A link whose reference
  is a key of another patient (the pull had refused to alias it) or is linked on its own already
  is dropped (counted in the log line).

Held records: every HELD item that a change of consents would release (not a conflict, draft or
unsigned note waiting for a person) of every patient whose keys changed (every key of its alias
group) is queued again, as ``Store.release_held`` does when consents change, so the gate decides
it under the merged consents. What was sent already is checked by the retraction pass as after
any change of consents made while no worker ran: at a worker's first full pass, or at once with
``fhir-alliance pull``.

Logs carry counts only. Large stores: keys are collected with one ``DISTINCT`` read per column,
changes are written through a temporary table (one ``UPDATE`` per table, not one per key) and
rows are inserted in batches of 1,000.

Downgrading changes nothing and cannot undo the merge: which spelling each row had is not kept.
The keys stay canonical, which the code at 0008 reads like any other key (it would have filed a
record posted in that spelling under it); re-queued items stay queued.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

log = logging.getLogger("fhir_alliance_service.store.migrations")

_BATCH: Final = 1_000

# -- the rule at this revision (fhir_alliance/terminology.py: canonical_identifier) --------------
_BARE_OID: Final = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_IDENTIFIER_SYSTEM_ALIASES: Final = {
    "urn:oid:2.16.840.1.113883.4.6": "http://hl7.org/fhir/sid/us-npi",
    "urn:oid:2.16.840.1.113883.4.1": "http://hl7.org/fhir/sid/us-ssn",
}
_URI_IDENTIFIER_SYSTEM: Final = "urn:ietf:rfc:3986"


def _uri_form(uri: str) -> str:
    lower = uri[:8].casefold()
    if lower == "urn:oid:":
        return "urn:oid:" + uri[8:]
    if _BARE_OID.fullmatch(uri):
        return "urn:oid:" + uri
    for scheme in ("http://", "https://"):
        if lower.startswith(scheme):
            host, slash, path = uri[len(scheme) :].partition("/")
            return scheme + host.casefold() + slash + path
    return uri


def canonical_key(key: str) -> str:
    """``key`` as the code at this revision files it (``canonical_patient_key``)."""
    system, sep, value = key.partition("|")
    if not sep:
        return key
    form = _uri_form(system)
    form = _IDENTIFIER_SYSTEM_ALIASES.get(form, form)
    if form == _URI_IDENTIFIER_SYSTEM:
        value = _uri_form(value)
    return f"{form}|{value}"


# -- what the store says at this revision -------------------------------------------------------
#: ``store/patient_tokens.py``: the meta entry of the tokens' secret.
_META_TOKEN_KEY: Final = "console.patient_token_key"  # noqa: S105 (a name, not the secret)
#: ``store/sql.py``: held reasons that wait for a person, not for the patient's consents.
HELD_FOR_A_PERSON: Final = (
    "changed on the FHIR server by someone else since our last send: a person must decide",
    "a draft note is not sent before the therapist signs it",
    "a note nobody signed is not sent, and the server holds nothing of it to correct",
)
#: Columns holding a patient key without a constraint on it: rewritten in place.
_PLAIN: Final = (
    ("records", "patient"),
    ("record_heads", "patient"),
    ("outbox", "patient"),
    ("audit", "patient"),
    ("pulled_resources", "patient"),
)
_KEYED: Final = (
    *_PLAIN,
    ("remote_patients", "patient"),
    ("patient_aliases", "alias"),
    ("patient_aliases", "patient"),
    ("patient_tokens", "patient"),
)

_CHANGES: Final = "patient_key_changes"  # temporary: spelt → canonical
_REGATED: Final = "patient_keys_regated"  # temporary: keys whose held items go again

_meta = sa.table("meta", sa.column("name", sa.String), sa.column("value", sa.Text))
_tokens = sa.table("patient_tokens", sa.column("token", sa.String), sa.column("patient", sa.Text))
_aliases = sa.table(
    "patient_aliases",
    sa.column("alias", sa.Text),
    sa.column("patient", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_remote = sa.table(
    "remote_patients",
    sa.column("server", sa.Text),
    sa.column("patient", sa.Text),
    sa.column("remote", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_outbox = sa.table(
    "outbox",
    sa.column("patient", sa.Text),
    sa.column("state", sa.String),
    sa.column("held_reason", sa.Text),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
_changes = sa.table(_CHANGES, sa.column("spelt", sa.Text), sa.column("canonical", sa.Text))
_regated = sa.table(_REGATED, sa.column("patient", sa.Text))


def _batches(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


def _insert(connection: sa.Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    for batch in _batches(rows):
        connection.execute(table.insert(), list(batch))


def _token(secret: str, patient: str) -> str:
    """``store/patient_tokens.py: patient_token`` at this revision."""
    digest = bytearray(
        hmac.new(secret.encode("utf-8"), patient.encode("utf-8"), hashlib.sha256).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class _Groups:
    """Union-find over patient keys: the keys linked by alias rows."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, one: str, other: str) -> None:
        self.parent[self.find(one)] = self.find(other)


def _stored_keys(connection: sa.Connection) -> set[str]:
    """Every identifier key (``system|value``) stored in any column holding patient keys."""
    keys: set[str] = set()
    for table, column in _KEYED:
        query = sa.text(
            f"SELECT DISTINCT {column} FROM {table} WHERE {column} LIKE '%|%'"  # noqa: S608 (names are ours)
        )
        keys.update(connection.execute(query).scalars())
    return keys


def _rewrite_plain(connection: sa.Connection) -> None:
    for table, column in _PLAIN:
        connection.execute(
            sa.text(
                f"UPDATE {table} SET {column} = "  # noqa: S608 (names are ours)
                f"(SELECT c.canonical FROM {_CHANGES} AS c WHERE c.spelt = {table}.{column}) "
                f"WHERE {column} IN (SELECT spelt FROM {_CHANGES})"
            )
        )


def _rewrite_tokens(connection: sa.Connection, changes: dict[str, str]) -> None:
    """Replace the token rows of rewritten keys by one row per canonical key."""
    in_changes = _tokens.c.patient.in_(sa.select(_changes.c.spelt))
    spelt = connection.execute(sa.select(_tokens.c.patient).where(in_changes)).scalars().all()
    if not spelt:
        return
    connection.execute(_tokens.delete().where(in_changes))
    query = sa.select(_meta.c.value).where(_meta.c.name == _META_TOKEN_KEY)
    secret = connection.execute(query).scalar_one_or_none()
    if secret is None:  # 0008 made it; a store without one gets one, as 0008 would have
        secret = secrets.token_urlsafe(32)
        connection.execute(_meta.insert().values(name=_META_TOKEN_KEY, value=secret))
    wanted = {_token(secret, key): key for key in sorted({changes[p] for p in spelt})}
    present: set[str] = set()
    for batch in _batches(sorted(wanted)):
        query = sa.select(_tokens.c.token).where(_tokens.c.token.in_(list(batch)))
        present.update(connection.execute(query).scalars())
    rows = [{"token": t, "patient": p} for t, p in sorted(wanted.items()) if t not in present]
    _insert(connection, _tokens, rows)


def _regroup_aliases(
    rows: list[tuple[str, str, Any]], changes: dict[str, str]
) -> tuple[dict[str, tuple[str, Any]], set[str]]:
    """The alias rows after the rewrite (alias → (patient, created_at)) and the keys of the
    groups that changed. ``rows``: every stored (alias, patient, created_at)."""
    groups = _Groups()
    for alias, patient, _ in rows:
        groups.union(canonical_key(alias), canonical_key(patient))
    touched = {
        groups.find(canonical_key(alias))
        for alias, patient, _ in rows
        if alias in changes or patient in changes
    }
    kept: dict[str, tuple[str, Any]] = {}
    members: dict[str, list[tuple[Any, str, str]]] = {}  # group → its rows, canonical
    for alias, patient, created_at in rows:
        group = groups.find(canonical_key(alias))
        if group not in touched:
            kept[alias] = (patient, created_at)
        else:
            members.setdefault(group, []).append(
                (created_at, canonical_key(alias), canonical_key(patient))
            )
    changed: set[str] = set()
    for group_rows in members.values():
        group_rows.sort()
        root = group_rows[0][2]  # the patient of the oldest row
        first_seen: dict[str, Any] = {}
        for created_at, alias, patient in group_rows:
            for key in (alias, patient):
                first_seen.setdefault(key, created_at)
        changed.update(first_seen)
        for key, created_at in first_seen.items():
            if key != root:
                kept[key] = (root, created_at)
    return kept, changed


def _age(link: Any) -> tuple[Any, str]:
    return (link.created_at, link.remote)


def _relink_remote(
    connection: sa.Connection,
    changes: dict[str, str],
    aliases: dict[str, tuple[str, Any]],
    now: Any,
) -> tuple[list[dict[str, Any]], set[str], int]:
    """Rewrite the ``remote_patients`` rows of rewritten keys (module docstring); the rows to
    insert, the keys given an alias here, and how many links were dropped."""
    in_changes = _remote.c.patient.in_(sa.select(_changes.c.spelt))
    spelt = connection.execute(sa.select(_remote).where(in_changes)).all()
    if not spelt:
        return [], set(), 0
    servers = sorted({row.server for row in spelt})
    existing: dict[tuple[str, str], Any] = {}
    for server in servers:
        query = sa.select(_remote).where(_remote.c.server == server)
        for row in connection.execute(query):
            existing[(row.server, row.patient)] = row
    connection.execute(_remote.delete().where(in_changes))
    for row in spelt:
        del existing[(row.server, row.patient)]

    def root_of(key: str) -> str:
        found = aliases.get(key)
        return found[0] if found is not None else key

    def is_key(key: str) -> bool:
        return key in aliases or any(patient == key for patient, _ in aliases.values())

    by_pair: dict[tuple[str, str], list[Any]] = {}
    for row in spelt:
        by_pair.setdefault((row.server, changes[row.patient]), []).append(row)
    inserted: list[dict[str, Any]] = []
    aliased: set[str] = set()
    dropped = 0
    for (server, patient), links in sorted(by_pair.items()):
        standing = existing.get((server, patient))  # a link filed under the canonical key
        ordered = sorted([*links, *([standing] if standing is not None else [])], key=_age)
        winner, losers = ordered[0], ordered[1:]
        if standing is None:
            inserted.append(
                {
                    "server": server,
                    "patient": patient,
                    "remote": winner.remote,
                    "created_at": winner.created_at,
                }
            )
        elif winner is not standing:  # the merged spelling's link is older: it is the link now
            connection.execute(
                _remote.update()
                .where(_remote.c.server == server, _remote.c.patient == patient)
                .values(remote=winner.remote, created_at=winner.created_at)
            )
        existing[(server, patient)] = winner
        for loser in losers:
            remote = loser.remote
            if remote == winner.remote:
                continue  # the same server patient: one link
            if (server, remote) in existing or "|" in remote:
                dropped += 1
                continue
            if not is_key(remote):
                aliases[remote] = (root_of(patient), now)
                aliased.add(remote)
            elif root_of(remote) != root_of(patient):
                dropped += 1  # a key of another patient: the pull had refused to alias it
                continue
            inserted.append(
                {
                    "server": server,
                    "patient": remote,
                    "remote": remote,
                    "created_at": loser.created_at,
                }
            )
            existing[(server, remote)] = loser
    return inserted, aliased, dropped


def _groups_of(keys: Iterable[str], aliases: dict[str, tuple[str, Any]]) -> set[str]:
    """``keys`` and every key of their alias groups."""
    root_of = {alias: patient for alias, (patient, _) in aliases.items()}
    members: dict[str, set[str]] = {}
    for alias, patient in root_of.items():
        members.setdefault(patient, {patient}).add(alias)
    found: set[str] = set()
    for key in keys:
        root = root_of.get(key, key)
        found.add(key)
        found.update(members.get(root, {root}))
    return found


def upgrade() -> None:
    connection = op.get_bind()
    changes = {key: canonical_key(key) for key in _stored_keys(connection)}
    changes = {spelt: canonical for spelt, canonical in changes.items() if spelt != canonical}
    if not changes:
        return
    now = datetime.now(UTC)
    if connection.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # stored as naive UTC text, as the store writes it
    connection.execute(
        sa.text(f"CREATE TEMPORARY TABLE {_CHANGES} (spelt TEXT PRIMARY KEY, canonical TEXT)")
    )
    _insert(connection, _changes, [{"spelt": s, "canonical": c} for s, c in changes.items()])

    _rewrite_plain(connection)
    _rewrite_tokens(connection, changes)

    stored_aliases = [
        (row.alias, row.patient, row.created_at) for row in connection.execute(sa.select(_aliases))
    ]
    aliases, regrouped = _regroup_aliases(stored_aliases, changes)
    links, aliased, dropped = _relink_remote(connection, changes, aliases, now)
    before = {alias: (patient, created_at) for alias, patient, created_at in stored_aliases}
    if aliases != before:
        gone = sorted(alias for alias in before if aliases.get(alias) != before[alias])
        for batch in _batches(gone):
            connection.execute(_aliases.delete().where(_aliases.c.alias.in_(list(batch))))
        added = [
            {"alias": alias, "patient": patient, "created_at": created_at}
            for alias, (patient, created_at) in sorted(aliases.items())
            if before.get(alias) != (patient, created_at)
        ]
        _insert(connection, _aliases, added)
    _insert(connection, _remote, links)

    # Held items of every patient whose keys changed go to the gate again.
    regated = _groups_of({*changes.values(), *regrouped, *aliased}, aliases)
    connection.execute(sa.text(f"CREATE TEMPORARY TABLE {_REGATED} (patient TEXT PRIMARY KEY)"))
    _insert(connection, _regated, [{"patient": key} for key in sorted(regated)])
    released = connection.execute(
        _outbox.update()
        .where(
            _outbox.c.state == "held",
            sa.or_(
                _outbox.c.held_reason.is_(None), _outbox.c.held_reason.not_in(HELD_FOR_A_PERSON)
            ),
            _outbox.c.patient.in_(sa.select(_regated.c.patient)),
        )
        .values(state="queued", held_reason=None, updated_at=now)
    ).rowcount
    connection.execute(sa.text(f"DROP TABLE {_REGATED}"))
    connection.execute(sa.text(f"DROP TABLE {_CHANGES}"))
    log.info(
        "patient keys made canonical: %d spelling(s) rewritten, %d held item(s) queued again, "
        "%d extra server link(s) dropped",
        len(changes),
        released,
        dropped,
    )


def downgrade() -> None:
    """Nothing: the merge cannot be undone (module docstring)."""

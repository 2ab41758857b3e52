"""A patient's stored consents as a compiled decision engine, for the gate, the consult and the API.

Two rules every part of the service shares:

* **The patient key** (:func:`patient_key`): records are filed under the patient's literal
  reference exactly as posted (``Patient/123``) when the record gives one, else under the
  identifier token ``system|value`` in the form identifiers are compared in
  (:func:`canonical_patient_key`: ``URN:OID:…`` and a bare OID as ``urn:oid:…``, an http(s) host in
  lower case, the OIDs of the US NPI and SSN as their FHIR URIs; see
  :func:`fhir_alliance.terminology.canonical_identifier`). The gate, the consult, the decision
  endpoint and every other lookup by patient build the key the same way, so a record and a
  consent that name the patient the same way, or by spellings of one identifier, meet: a deny
  filed under ``urn:oid:2.16.840.1.113883.4.1|123`` holds the records of
  ``http://hl7.org/fhir/sid/us-ssn|123``. Literal references are not equated with anything else
  (``Patient/1`` and an absolute URL naming it are two keys). A consent that names the patient
  by identifier only is filed apart from observations that name them by reference, and a consent
  giving both is filed under the reference, so a consult that knows only the identifier (LEAP's
  ``patientId``) does not find it: the answer is then "no consent", never a permit. Name the
  patient the same way everywhere, or register the other keys as **aliases**
  (``store.add_patient_alias``, ``POST /v1/patients/aliases``): a patient known by reference and
  by identifiers is then one patient. Their consents are read under every key, and the engine
  is given a directory linking the references to the identifiers, so a consult by identifier finds
  consents filed under ``Patient/<id>`` and the other way round.
* **Unreadable means held, never "no consent"**: a stored consent that no longer loads, or that the
  engine refuses to compile, is listed in :attr:`PatientConsents.unreadable`; the gate holds every
  record of that patient while the list is not empty. So are two consents posted here whose
  identifiers are spellings of one (compared as URIs, as ``decide`` compares them:
  :func:`fhir_alliance.consent.identity.consent_identifier`) and that say otherwise: two versions
  of one consent, and nothing says which counts (the same consent twice is read once). So are a
  consent posted here and one pulled from the FHIR server with one identifier that say otherwise,
  while the pulled one's copy stands on the server; and two pulled ones with one identifier that
  say otherwise while both copies stand (the pull compares what it reads, but not pairs merged
  before it compared identifiers, nor those filed under two keys of one patient), unless none of
  them is active (none can permit).

Compiled engines are cached per process (bounded LRU) under ``(store, patient,
store.patient_consents_stamp(patient))``: one read transaction per call (the patient's keys and
the stamp of the consents under all of them), and a new compile only after an alias was added or
the patient's consents changed. The cache is keyed by the canonical key like everything else, so
spellings of one identifier share one entry (and processes start afresh after ``db upgrade``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_alliance.consent import ConsentEngine
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.consent.identity import consent_identifier, says_the_same
from fhir_alliance.errors import FhirAllianceError, InputError, Issue
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from fhir_alliance.model.common import Identifier, Ref
from fhir_alliance.model.consent import ConsentRecord, ConsentRevocation, ConsentStatus
from fhir_alliance.schemas.consent import RECORD_KIND_REVOCATION
from fhir_alliance.terminology import canonical_identifier
from fhir_alliance_service.store.interface import Store, StoredRecord
from fhir_alliance_service.usecases.references import (
    IDENTIFIER_MESSAGE,
    identifier_issues,
    patient_issues,
    valid_literal_reference,
)

__all__ = [
    "ENGINE_CACHE_SIZE",
    "AlreadyRevoked",
    "PatientConsents",
    "canonical_patient_key",
    "clear_engine_cache",
    "engine_for_patient",
    "engine_for_patients",
    "load_patient_consents",
    "patient_key",
    "register_patient_alias",
    "revoke_stored_consent",
]

log = logging.getLogger(__name__)

#: In the body of a pulled consent that could not be read and was then deleted on the server
#: (``sync/pull.py``): skipped.
PULLED_DELETED_MARK = "pulled_deleted"

#: States of a pulled row (``sync/pull.py``) whose Consent no longer stands on the server as a
#: consent of its patient: deleted there, moved to a patient not ours (``ignored``), a copy of a
#: consent of ours (``copy-of-ours``). The record kept for it is no version of a consent.
PULLED_GONE_STATES = frozenset({"deleted", "ignored", "copy-of-ours"})

#: How many compiled patient engines one process keeps (least recently used go first).
ENGINE_CACHE_SIZE = 4096


def patient_key(ref: Ref) -> str:
    """The key a patient's records and consents are filed under: the literal reference when the
    record gives one (``Patient/123``), else the identifier token ``system|value`` in its
    canonical form (:func:`canonical_patient_key`)."""
    if ref.reference is not None:
        return ref.reference
    assert ref.identifier is not None  # a Ref always has one or the other
    system, value = canonical_identifier(ref.identifier.system, ref.identifier.value)
    return f"{system}|{value}"


def canonical_patient_key(key: str) -> str:
    """``key`` as patients are filed (a pure function, no query): an identifier token
    ``system|value`` as :func:`~fhir_alliance.terminology.canonical_identifier` spells it, so
    that every spelling of one identifier is one key; a literal reference (no ``|``) as it is.
    For keys that come in as text (a URL path, an alias, a command's argument). Migration 0009
    rewrote the keys stored before it the same way (it carries its own copy of the rule)."""
    system, sep, value = key.partition("|")
    if not sep:
        return key
    system, value = canonical_identifier(system, value)
    return f"{system}|{value}"


@dataclass(frozen=True, slots=True)
class PatientConsents:
    """A patient's stored consents: the readable ones compiled into ``engine``; ``unreadable`` the
    record ids of stored consents that could not be loaded or compiled (hold, never permit)."""

    patient: str
    stamp: str
    engine: ConsentEngine
    records: tuple[ConsentRecord, ...]
    unreadable: tuple[str, ...] = ()


def _compiles(record: ConsentRecord) -> bool:
    try:
        ConsentEngine([record])
    except FhirAllianceError:
        return False
    return True


def _load(store: Store, stored: list[StoredRecord]) -> tuple[list[ConsentRecord], list[str]]:
    readable: list[tuple[str, ConsentRecord]] = []
    unreadable: list[str] = []
    for row in stored:
        if row.body.get(PULLED_DELETED_MARK):
            continue  # pulled, unreadable, then deleted on the server: holds nothing any more
        try:
            record = CONSENT_MAPPER.load(row.body)
        except (FhirAllianceError, ValueError, TypeError):
            unreadable.append(row.record_id)
            continue
        if isinstance(record, ConsentRecord) and _compiles(record):
            readable.append((row.record_id, record))
        else:  # a stored revocation or a consent the engine refuses: never silently dropped
            unreadable.append(row.record_id)
    kept, conflicting = _one_version_each(store, readable)
    return kept, unreadable + conflicting


def _one_version_each(
    store: Store, readable: list[tuple[str, ConsentRecord]]
) -> tuple[list[ConsentRecord], list[str]]:
    """``readable`` (record id, consent) read as ``decide`` reads consents: records whose
    identifiers are spellings of one (compared as URIs: :func:`consent_identifier`) are one
    consent. The same consent stored twice is read once; two that say otherwise are two versions
    of it, and which one counts is not for the loader to guess (an older, active version beside
    the newer, revoked one let the permit answer): each of them is returned as unreadable (the
    gate holds). Returns the consents to compile and those record ids.

    A consent posted here is filed under the record id its identifier gives (``resource_id``);
    pulled consents are not. Pulled ones are versions only while their copies stand on the
    server they came from: the pull's own revoked copy of a consent deleted there (or moved to a
    patient not ours, or a copy of one of ours: :data:`PULLED_GONE_STATES`) is no version of it
    and is read as it is. A pulled one with the identifier of one posted here is compared with
    it: the same consent is read once (the one posted here); one that says otherwise (the EHR's
    active consent pulled, its revoked version posted by the clinic's app) makes both unreadable
    while its copy stands. Two pulled ones with one identifier are the pull's to compare when it
    reads them (it stores the second as a placeholder that holds), but two may stand side by
    side all the same: merged before the pull compared identifiers, or filed under two keys of
    one patient (the pull compares under the key a consent is filed under). The same consent is
    then read once; two that say otherwise are both unreadable while both copies stand, unless
    none of them is active (withdrawn here by the pull, as those pulled under an old base URL
    are: none can permit, and no pull reads them again to settle it). Only such a pair costs a
    query (the pulled rows' states, for those records alone)."""
    local = [resource_id(record.id) == record_id for record_id, record in readable]
    keys = [consent_identifier(record.id) for _, record in readable]
    posted: dict[Identifier, list[int]] = {}
    pulled: dict[Identifier, list[int]] = {}
    for n, (key, is_local) in enumerate(zip(keys, local, strict=True)):
        (posted if is_local else pulled).setdefault(key, []).append(n)

    def same(a: int, b: int) -> bool:
        return says_the_same(readable[a][1], readable[b][1])

    # Pulled copies whose pulled rows' states tell whether they still stand on the server: those
    # that say otherwise than the first consent posted here with their identifier; with none
    # posted here, every copy of an identifier whose pulled copies say otherwise than each other.
    asked: list[int] = []
    for key, copies in pulled.items():
        if key in posted:
            asked.extend(n for n in copies if not same(posted[key][0], n))
        elif any(not same(copies[0], n) for n in copies[1:]):
            asked.extend(copies)
    gone: set[int] = set()
    server: dict[int, str] = {}  # the server each copy asked about was pulled from
    if asked:
        states = store.pulled_states_of_records([readable[n][0] for n in asked])
        for n in asked:
            state, server[n] = states.get(readable[n][0], ("", ""))
            if state in PULLED_GONE_STATES:
                gone.add(n)
    read: set[int] = set(gone)  # no version on the server any more: read as they are
    held: set[int] = set()
    for key in dict.fromkeys(keys):
        mine = posted.get(key, [])
        theirs = [n for n in pulled.get(key, []) if n not in gone]
        if mine:
            differing = [n for n in theirs if n in asked]
            if differing or any(not same(mine[0], n) for n in mine[1:]):
                held.update(mine, differing)
                # pulled, says what the first one posted here says: held by the others
                read.update(n for n in theirs if n not in asked)
            else:  # the same consent stored twice, here or pulled: read once
                read.add(mine[0])
        elif not theirs:
            continue
        elif all(same(theirs[0], n) for n in theirs[1:]):
            read.add(theirs[0])  # one pulled copy, or the same consent pulled twice: read once
        else:
            for group in _by_server(theirs, server):
                if all(same(group[0], n) for n in group[1:]):
                    read.add(group[0])
                elif any(readable[n][1].status is ConsentStatus.ACTIVE for n in group):
                    held.update(group)
                else:  # none in force: none can permit
                    read.update(group)
    kept = [record for n, (_, record) in enumerate(readable) if n in read]
    conflicting = [readable[n][0] for n in sorted(held)]
    if conflicting:
        log.warning("consents stored under one identifier that say otherwise: %d", len(conflicting))
    return kept, conflicting


def _by_server(copies: list[int], server: Mapping[int, str]) -> list[list[int]]:
    """``copies`` (pulled, one identifier) grouped by the server each was pulled from: versions
    of one consent on one server are compared with each other. Copies from two servers are not:
    one pulled under an old ``FHIR_BASE_URL`` (the same server named another way) was withdrawn
    by the pull when the new URL's copy was read (``sync/pull.py``), and stays beside it. A copy
    whose server is unknown (no pulled row) is compared with every group."""
    unknown = [n for n in copies if not server.get(n)]
    groups: dict[str, list[int]] = {}
    for n in copies:
        if server.get(n):
            groups.setdefault(server[n], []).append(n)
    if not groups:
        return [unknown]
    return [sorted(group + unknown) for group in groups.values()]


def _directory(keys: list[str]) -> ActorDirectory | None:
    """Every reference of the patient linked to every identifier of the patient."""
    references = [key for key in keys if "|" not in key]
    identifiers: list[Identifier] = []
    for key in keys:
        if "|" in key:
            try:
                identifiers.append(Identifier.parse(key, path="patient"))
            except FhirAllianceError:
                continue
    if not references or not identifiers:
        return None
    return ActorDirectory([(reference, identifiers) for reference in references])


def load_patient_consents(
    store: Store, patient: str, *, stamp: str = "", keys: list[str] | None = None
) -> PatientConsents:
    """Load and compile ``patient``'s consents now (under every key of the patient), without the
    cache."""
    keys = store.patient_keys(patient) if keys is None else keys
    stored = [row for key in keys for row in store.consents_for_patient(key)]
    readable, unreadable = _load(store, stored)
    return PatientConsents(
        patient=patient,
        stamp=stamp,
        engine=ConsentEngine(readable, directory=_directory(keys)),
        records=tuple(readable),
        unreadable=tuple(sorted(unreadable)),
    )


class _EngineCache:
    """A bounded LRU of compiled engines per store object; entries of a store that is garbage
    collected are dropped with it (so a new store at a recycled address never sees them)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        # One entry per (store, patient): the newest compile, which carries its stamp.
        self._entries: OrderedDict[tuple[int, str], PatientConsents] = OrderedDict()
        self._watched: set[int] = set()

    def get(self, store: Store, patient: str, stamp: str) -> PatientConsents | None:
        key = (id(store), patient)
        with self._lock:
            found = self._entries.get(key)
            if found is None or found.stamp != stamp:
                return None
            self._entries.move_to_end(key)
            return found

    def put(self, store: Store, value: PatientConsents) -> None:
        store_id = id(store)
        with self._lock:
            if store_id not in self._watched:
                try:
                    weakref.finalize(store, self._forget, store_id)
                except TypeError:  # not weak-referenceable: do not cache rather than risk reuse
                    return
                self._watched.add(store_id)
            key = (store_id, value.patient)
            self._entries[key] = value  # replaces a compile of an older stamp
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def _forget(self, store_id: int) -> None:
        with self._lock:
            self._watched.discard(store_id)
            for key in [k for k in self._entries if k[0] == store_id]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_CACHE = _EngineCache(ENGINE_CACHE_SIZE)


def engine_for_patient(store: Store, patient: str) -> PatientConsents:
    """``patient``'s consents compiled, from the process cache when they have not changed since."""
    # The stamp is read before the consents: a change in between is compiled under the older
    # stamp and recompiled on the next call, never the other way round (stale under a new stamp).
    keys, stamp = store.patient_consents_stamp(patient)
    found = _CACHE.get(store, patient, stamp)
    if found is not None:
        return found
    compiled = load_patient_consents(store, patient, stamp=stamp, keys=keys)
    _CACHE.put(store, compiled)
    return compiled


def engine_for_patients(store: Store, patients: list[str]) -> PatientConsents:
    """The consents of one patient that the caller names by several keys (a CDS hook's
    ``patientId`` list), compiled together with a directory linking every reference of the
    patient to every identifier, as for one key and its aliases. Merged without that
    directory, a consent filed under an aliased reference no longer matched a request naming
    the patient by identifier: a restriction dropped out and another consent's permit answered."""
    distinct = list(dict.fromkeys(patients))
    if len(distinct) == 1:
        return engine_for_patient(store, distinct[0])
    keys: list[str] = []
    for patient in distinct:
        keys.extend(key for key in store.patient_keys(patient) if key not in keys)
    return load_patient_consents(store, distinct[0], keys=keys)


def clear_engine_cache() -> None:
    """Forget every compiled engine (tests; a process that changed consents behind the store)."""
    _CACHE.clear()


def register_patient_alias(store: Store, patient: str, alias: str, *, at: datetime) -> list[str]:
    """File ``alias`` as another key of ``patient`` (each ``Patient/<id>`` or ``system|value``,
    filed in canonical form: :func:`canonical_patient_key`); the patient's held records are
    re-evaluated with their consents under every key. Returns the patient's keys. An alias that
    is another spelling of the patient's own identifier is that key already: nothing is filed.
    Raises :class:`InputError` naming ``patient`` or ``alias``."""
    issues: list[Issue] = []
    for path, key in (("patient", patient), ("alias", alias)):
        issues += _key_issues(key, path)
    if not issues and patient == alias:
        issues.append(Issue(path="alias", message="an alias must differ from the patient key"))
    if issues:
        raise InputError(f"invalid input at {', '.join(i.path for i in issues)}", issues=issues)
    patient, alias = canonical_patient_key(patient), canonical_patient_key(alias)
    if patient == alias:  # two spellings of one identifier: one key, one patient already
        return store.patient_keys(patient)
    try:
        store.add_patient_alias(patient, alias, at=at)
    except ValueError as exc:
        raise InputError(
            "invalid input at alias", issues=[Issue(path="alias", message=str(exc))]
        ) from None
    store.release_held(patient, at=at)
    return store.patient_keys(patient)


def _key_issues(key: object, path: str) -> list[Issue]:
    if not isinstance(key, str) or not key:
        return [Issue(path=path, message="expected Patient/<id> or system|value")]
    if "|" in key:
        try:
            identifier = Identifier.parse(key, path=path)
        except InputError:
            return [Issue(path=path, message=IDENTIFIER_MESSAGE)]
        return identifier_issues(identifier, path)
    if not valid_literal_reference(key) or patient_issues(Ref(reference=key), path):
        return [Issue(path=path, message="expected Patient/<id> or system|value")]
    return []


class AlreadyRevoked(ValueError):
    """The consent is revoked already, by another revocation than the one asked for (409)."""


def _same_revocation_stored(row: StoredRecord, revocation: ConsentRevocation) -> bool:
    """``True`` when ``row`` is revoked by exactly ``revocation`` (same ``at``, ``by`` and
    ``reason``): a retry, nothing to do. ``False`` when ``row`` is not revoked (or cannot be
    read: intake decides). Raises :class:`AlreadyRevoked` when it is revoked by another one."""
    try:
        record = CONSENT_MAPPER.load(row.body)
    except (FhirAllianceError, ValueError, TypeError):
        return False
    if not isinstance(record, ConsentRecord) or record.status is not ConsentStatus.REVOKED:
        return False
    changes = [c for c in record.history if c.status is ConsentStatus.REVOKED]
    if not changes:
        raise AlreadyRevoked("the consent is already revoked")
    last = changes[-1]
    if (last.at, last.by, last.reason) == (revocation.at, revocation.by, revocation.reason):
        return True
    raise AlreadyRevoked(
        f"the consent is already revoked (at {last.at.isoformat()}); only the same revocation "
        "(the same at, by and reason) may be posted again"
    )


def revoke_stored_consent(
    store: Store, row: StoredRecord, body: Mapping[str, Any], *, at: datetime
) -> bool:
    """Revoke the stored consent ``row`` with the revoke ``body`` (``at``, ``by``?, ``reason``?):
    ``True`` when a new version was stored (queued, audited; the patient's held records are
    re-evaluated). Idempotent: when the consent is already revoked by exactly this revocation
    (a retry after a lost answer) nothing is stored and the answer is ``False``. Raises
    :class:`AlreadyRevoked` when it was revoked by another revocation, :class:`InputError` for a
    bad body or a consent that cannot be revoked."""
    from fhir_alliance_service.usecases.intake import intake_records  # intake imports this module

    payload = {**body, "kind": RECORD_KIND_REVOCATION, "consent": row.identifier}
    revocation = CONSENT_MAPPER.load(payload)
    if not isinstance(revocation, ConsentRevocation):  # pragma: no cover - the kind says so
        raise TypeError("expected a consent revocation")
    if _same_revocation_stored(row, revocation):
        return False
    try:
        intake_records(store, [payload], at=at, labels=[""])
    except InputError:
        # A concurrent revoke may have stored its version since ``row`` was read.
        current = store.get_record(row.record_id)
        if current is None or current.version == row.version:
            raise
        if not _same_revocation_stored(current, revocation):
            raise
        return False
    return True

"""Which modes and owners of a secret file the settings accept: owner-only always; group-readable
only as a Kubernetes secret volume under ``fsGroup`` lays it out (root's file, the group may read
and nothing more, a group this process is in); readable by others never. Real files, real
``chmod``; ``chown`` and ``setgroups`` only where the tests run as root (else those are skipped)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir_alliance_service.config import ConfigError, load_settings

TOKEN = "ehr-bearer-s3cret-41d9"
AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="chown to root needs root")
#: A group the test process is not in (Debian's ``nogroup``), and another user than root.
OUTSIDER = 65534


def _token_file(tmp_path: Path, mode: int, owner: tuple[int, int] | None = None) -> Path:
    path = tmp_path / "fhir-token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(mode)
    return path


def _load(token_file: Path) -> str | None:
    return load_settings(
        {
            "FHIR_ALLIANCE_FHIR_BASE_URL": "https://ehr.clinic.example/fhir",
            "FHIR_ALLIANCE_FHIR_AUTH": "bearer",
            "FHIR_ALLIANCE_FHIR_TOKEN_FILE": str(token_file),
        }
    ).fhir_token


def _refusal(token_file: Path) -> str:
    with pytest.raises(ConfigError) as refused:
        _load(token_file)
    message = str(refused.value)
    assert message.startswith("FHIR_ALLIANCE_FHIR_TOKEN_FILE: "), message
    assert TOKEN not in message and "\n" not in message
    return message


@pytest.fixture
def supplementary_group() -> Iterator[int]:
    """A gid made a supplementary group of this (root) process for the test, as kubelet makes a
    pod's ``fsGroup`` one of its processes' groups; the groups are restored afterwards."""
    before = os.getgroups()
    gid = 2468
    os.setgroups([*before, gid])
    try:
        yield gid
    finally:
        os.setgroups(before)


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=["0600", "0400"])
def test_an_owner_only_secret_file_is_accepted(tmp_path: Path, mode: int) -> None:
    """Owner-only modes load, whoever owns the file (as before)."""
    assert _load(_token_file(tmp_path, mode)) == TOKEN


@needs_root
def test_a_kubernetes_fsgroup_secret_volume_file_is_accepted(
    tmp_path: Path, supplementary_group: int
) -> None:
    """kubelet gives a secret volume's files of a pod with ``securityContext.fsGroup`` owner root,
    group the fsGroup and mode ``defaultMode | 0440``: with ``defaultMode: 0400`` that is 0440,
    which was refused as "may be read by group or others", so such a pod could not start."""
    token_file = _token_file(tmp_path, 0o440, owner=(0, supplementary_group))
    assert _load(token_file) == TOKEN


@needs_root
def test_a_root_owned_file_of_the_process_group_may_be_read_by_it_up_to_0640(
    tmp_path: Path,
) -> None:
    """PostgreSQL's rule for a root-owned ``ssl_key_file``: up to 0640."""
    token_file = _token_file(tmp_path, 0o640, owner=(0, os.getegid()))
    assert _load(token_file) == TOKEN


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o444], ids=["0644", "0604", "0444"])
def test_a_secret_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    """Readable by others is never accepted, whoever owns the file; the line names the mode."""
    owner = (0, os.getegid()) if AS_ROOT else None
    message = _refusal(_token_file(tmp_path, mode, owner=owner))
    assert f"may be read by others (mode {mode:04o})" in message, message
    assert "chmod 600" in message


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o602, "others"), (0o620, "its group"), (0o622, "others"), (0o660, "its group")],
    ids=["0602", "0620", "0622", "0660"],
)
def test_a_secret_file_another_user_may_change_is_refused(
    tmp_path: Path, mode: int, who: str
) -> None:
    """A file only its owner reads but others (or its group) may write: someone else could put a
    secret of theirs in it (a token of their choosing). Refused whoever owns it, naming the mode."""
    owner = (0, os.getegid()) if AS_ROOT else None
    message = _refusal(_token_file(tmp_path, mode, owner=owner))
    assert f"may be changed by {who} (mode {mode:04o})" in message, message
    assert "chmod 600" in message


def test_a_group_readable_file_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    """0640 of an ordinary user (the test's own file when it is not root; another user's when it
    is): the group read is not how this process gets at the file, so it only widens who can."""
    owner = (OUTSIDER, os.getegid()) if AS_ROOT else None
    token_file = _token_file(tmp_path, 0o640, owner=owner)
    message = _refusal(token_file)
    uid = token_file.stat().st_uid
    assert f"may be read by its group (mode 0640, owner uid {uid}," in message, message
    assert "chmod 600" in message


@needs_root
@pytest.mark.parametrize("mode", [0o460, 0o450, 0o441, 0o442], ids=["0460", "0450", "0441", "0442"])
def test_a_root_owned_group_readable_file_that_allows_more_is_refused(
    tmp_path: Path, mode: int
) -> None:
    """Group write or execute, or any access by others, next to the group read: refused even when
    root owns the file and the group is the process's own."""
    message = _refusal(_token_file(tmp_path, mode, owner=(0, os.getegid())))
    assert f"(mode {mode:04o}" in message, message


@needs_root
def test_a_root_owned_file_of_a_group_the_process_is_not_in_is_refused(tmp_path: Path) -> None:
    """The group read must be what lets this process read the file: of another group, it serves
    only others."""
    assert os.getegid() != OUTSIDER and OUTSIDER not in os.getgroups()
    message = _refusal(_token_file(tmp_path, 0o440, owner=(0, OUTSIDER)))
    assert f"group gid {OUTSIDER})" in message, message


@needs_root
def test_the_smart_key_and_a_settings_file_follow_the_same_rule(
    tmp_path: Path, supplementary_group: int
) -> None:
    """The rule is one: the SMART private key file and a TOML settings file holding a secret load
    from an fsGroup secret volume too."""
    key = tmp_path / "smart-key.pem"
    key.write_text("not parsed when settings load", encoding="utf-8")
    os.chown(key, 0, supplementary_group)
    key.chmod(0o440)
    config = tmp_path / "fhir-alliance.toml"
    config.write_text(
        'fhir_base_url = "https://ehr.clinic.example/fhir"\nfhir_auth = "smart"\n'
        f'smart_client_id = "sync"\nsmart_key_id = "k1"\nsmart_private_key_file = "{key}"\n'
        f'database_url = "postgresql+psycopg://app:s3cret-pw@db/fa"\n',
        encoding="utf-8",
    )
    os.chown(config, 0, supplementary_group)
    config.chmod(0o440)
    settings = load_settings({"FHIR_ALLIANCE_CONFIG_FILE": str(config)})
    assert settings.smart_private_key_file == str(key)

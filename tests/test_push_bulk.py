"""``fhir-alliance push --bulk``: export --bulk files to a FHIR server by ``$import`` where the
server advertises it, else by transaction Bundles; the files and manifest are checked first.

The server tests run against the suite's real FHIR server (or FHIR_ALLIANCE_TEST_BASE_URL) and
take whichever path it advertises; pytest-httpserver stands in only for faults.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer

from fhir_alliance.cli import main
from fhir_alliance.client.bulk_import import serve_files
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.mapping.bulk import MANIFEST, export_bulk
from fhir_alliance.schemas.consent import load_consent
from tests.fhir_server.plugin import FhirTestServer

ROOT = Path(__file__).resolve().parents[1]
SHARING = ROOT / "examples" / "consent" / "sharing.json"
AT = datetime(2025, 6, 1, tzinfo=UTC)
RECORDS = 3


def _record(run: str, n: int) -> dict[str, Any]:
    form = json.loads((ROOT / "examples" / "observations" / "srs-administration.json").read_text())
    form["id"] = f"https://bench.example/records|push-{run}-{n}"
    form["patient"] = {"reference": "Patient/p1"}
    form["effective"] = "2025-05-01T10:00:00+00:00"
    return form


def export_dir(directory: Path, run: str, tag: dict[str, str] | None = None) -> Path:
    """What ``export --bulk`` writes for three records, each resource carrying ``tag``."""
    engine = ConsentEngine([load_consent(json.loads(SHARING.read_text()))])
    items = [(f"in:{n}", _record(run, n)) for n in range(RECORDS)]
    result = export_bulk(
        items,
        directory,
        engine=engine,
        recipient="Organization/ehr-clinic",
        purposes=["TREAT"],
        at=AT,
    )
    assert result.counts and not result.held
    if tag:
        for path in directory.glob("*.ndjson"):
            lines = []
            for line in path.read_text().splitlines():
                resource = json.loads(line)
                resource.setdefault("meta", {}).setdefault("tag", []).append(tag)
                lines.append(json.dumps(resource))
            path.write_text("\n".join(lines) + "\n")
    return directory


def _resources(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.ndjson"))
        for line in path.read_text().splitlines()
    ]


def _push(*args: str) -> list[str]:
    return ["push", "--bulk", *args]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _advertises_import(server: FhirTestServer) -> bool:
    statement = server.http.get(server.url("metadata")).json()
    from fhir_alliance.client import ServerCapabilities

    return ServerCapabilities.from_capability_statement(statement).supports_operation("import")


def _tagged_total(server: FhirTestServer, resource_type: str) -> int:
    answer = server.http.get(
        server.url(resource_type),
        params={"_tag": server.run_tag_param, "_summary": "count"},
    )
    answer.raise_for_status()
    return int(answer.json()["total"])


def _assert_on_server(server: FhirTestServer, directory: Path) -> None:
    """Every exported resource is on the server at its id, with the same content."""
    for sent in _resources(directory):
        answer = server.http.get(server.url(f"{sent['resourceType']}/{sent['id']}"))
        assert answer.status_code == 200, (sent["resourceType"], answer.status_code)
        stored = answer.json()
        for key in ("identifier", "code", "subject", "status", "component", "valueInteger"):
            assert stored.get(key) == sent.get(key)


# ---------------------------------------------------------------------------- the real server


def test_push_takes_the_path_the_server_advertises(
    fhir_server: FhirTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``$import`` when the CapabilityStatement declares it, else transaction Bundles (said on
    stderr); either way every resource arrives at its id and the report counts them."""
    advertised = _advertises_import(fhir_server)
    if advertised and not fhir_server.is_local:
        pytest.skip("the remote server cannot fetch files served on this machine's loopback")
    directory = export_dir(tmp_path / "bulk", fhir_server.run_tag["code"], fhir_server.run_tag)
    code, out, err = _run(
        capsys, _push(str(directory), "--base-url", fhir_server.base_url, "--json")
    )
    report = json.loads(out)
    assert code == 0 and report["ok"] is True, report
    total = len(_resources(directory))
    assert sum(report["expected"].values()) == total
    if advertised:
        assert report["mode"] == "import" and "does not advertise" not in err
        assert report["import"]["filesFetched"] == len(report["files"])
        assert report["imported"] == report["expected"]
    else:
        assert report["mode"] == "transaction"
        assert "does not advertise $import" in err
        assert sum(report["created"].values()) + sum(report["updated"].values()) == total
    _assert_on_server(fhir_server, directory)
    assert _tagged_total(fhir_server, "Observation") == report["expected"]["Observation"]


def test_transactions_are_idempotent(
    fhir_server: FhirTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Transaction Bundles of PUTs to the resources' ids: a second push updates, never
    duplicates; Bundles hold at most --bundle-size resources."""
    directory = export_dir(tmp_path / "bulk", fhir_server.run_tag["code"], fhir_server.run_tag)
    total = len(_resources(directory))
    argv = _push(str(directory), "--base-url", fhir_server.base_url, "--no-import", "--json")
    code, out, _ = _run(capsys, [*argv, "--bundle-size", "5"])
    first = json.loads(out)
    assert code == 0 and first["mode"] == "transaction"
    assert sum(first["created"].values()) == total and first["updated"] == {}
    assert first["bundles"] == -(-total // 5)
    code, out, _ = _run(capsys, argv)
    second = json.loads(out)
    assert code == 0 and second["created"] == {} and sum(second["updated"].values()) == total
    assert _tagged_total(fhir_server, "Observation") == total
    _assert_on_server(fhir_server, directory)


def test_a_rejected_bundle_is_reported_and_the_others_still_sent(
    fhir_server: FhirTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resource the server rejects fails its whole transaction Bundle (file and lines named,
    exit 1, no diagnostics); the other Bundles are written."""
    directory = export_dir(tmp_path / "bulk", fhir_server.run_tag["code"], fhir_server.run_tag)
    path = directory / "Observation.ndjson"
    lines = path.read_text().splitlines()
    broken = json.loads(lines[6])
    broken["status"] = "finished"  # not in the required binding: the server answers 400
    broken["note"] = [{"text": "secret free text"}]
    lines[6] = json.dumps(broken)
    path.write_text("\n".join(lines) + "\n")
    code, out, err = _run(
        capsys,
        _push(
            str(directory), "--base-url", fhir_server.base_url, "--no-import", "--bundle-size", "5"
        ),
    )
    assert code == 1
    assert "failed: 5 Observation" in out
    assert "Observation.ndjson lines 6-10: server rejected the request (HTTP 400)" in out
    assert f"{len(lines) - 5} Observation written of {len(lines)}" in out
    assert "secret free text" not in out + err and "finished" not in out + err
    assert _tagged_total(fhir_server, "Observation") == len(lines) - 5


def test_no_fallback_where_import_is_missing(
    fhir_server: FhirTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--no-fallback: without $import the command says so and writes nothing; with it, the
    import runs."""
    advertised = _advertises_import(fhir_server)
    if advertised and not fhir_server.is_local:
        pytest.skip("the remote server cannot fetch files served on this machine's loopback")
    directory = export_dir(tmp_path / "bulk", fhir_server.run_tag["code"], fhir_server.run_tag)
    code, out, err = _run(
        capsys, _push(str(directory), "--base-url", fhir_server.base_url, "--no-fallback")
    )
    if advertised:
        assert code == 0 and out.startswith("$import:")
    else:
        assert code == 1 and out == ""
        assert err.strip().splitlines() == [
            "error: the server does not advertise $import in its CapabilityStatement "
            "(--no-fallback: no transaction Bundles sent)"
        ]
        assert _tagged_total(fhir_server, "Observation") == 0


# ---------------------------------------------------------------------------- checks before sending


@pytest.fixture
def bulk_dir(tmp_path: Path) -> Path:
    return export_dir(tmp_path / "bulk", "offline")


def _manifest(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    return data


def _write_manifest(directory: Path, data: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(data))


def _broken_count(d: Path) -> None:
    m = _manifest(d)
    m["output"][0]["count"] += 1
    _write_manifest(d, m)


def _escaping_url(d: Path) -> None:
    (d.parent / "secret.ndjson").write_text("{}\n")
    m = _manifest(d)
    m["output"][0]["url"] = "file:///elsewhere/..%2Fsecret.ndjson"
    _write_manifest(d, m)


def _type_with_a_newline(d: Path) -> None:
    """``re.match`` with ``$`` lets a trailing newline through: ``"Observation\\n"``."""
    m = _manifest(d)
    m["output"][0]["type"] += "\n"
    _write_manifest(d, m)


def _file_name_with_a_newline(d: Path) -> None:
    """The same for the file name the URL ends in (``%0A``, decoded after the URL is split)."""
    m = _manifest(d)
    m["output"][0]["url"] += "%0A"
    _write_manifest(d, m)


def _symlink_out(d: Path) -> None:
    (d.parent / "Outside.ndjson").write_text((d / "Observation.ndjson").read_text())
    (d / "Observation.ndjson").unlink()
    (d / "Observation.ndjson").symlink_to(d.parent / "Outside.ndjson")


def _wrong_type_line(d: Path) -> None:
    with (d / "Observation.ndjson").open("a") as handle:
        handle.write(json.dumps({"resourceType": "Patient", "id": "x", "name": [{"text": "N"}]}))
        handle.write("\n")


def _not_json(d: Path) -> None:
    with (d / "Observation.ndjson").open("a") as handle:
        handle.write("{not json\n")


def _no_id(d: Path) -> None:
    path = d / "Observation.ndjson"
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    del first["id"]
    lines[0] = json.dumps(first)
    path.write_text("\n".join(lines) + "\n")


def _missing_file(d: Path) -> None:
    (d / "Observation.ndjson").unlink()


def _no_manifest(d: Path) -> None:
    (d / MANIFEST).unlink()


def _not_a_manifest(d: Path) -> None:
    (d / MANIFEST).write_text('{"resourceType": "Bundle"}')


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_no_manifest, "--bulk: no manifest.json in the directory"),
        (_not_a_manifest, "manifest.json.output: missing or not a list"),
        (_missing_file, "manifest.json.output[0].url: Observation.ndjson is missing"),
        (_escaping_url, "manifest.json.output[0].url: does not end in a plain file name"),
        (_type_with_a_newline, "manifest.json.output[0].type: not a resource type"),
        (_file_name_with_a_newline, "manifest.json.output[0].url: does not end in a plain file"),
        (_symlink_out, "manifest.json.output[0].url: the file lies outside the directory"),
        (_broken_count, "Observation.ndjson: holds 18 resources, the manifest says 19"),
        (_wrong_type_line, "Observation.ndjson:19: not a Observation"),
        (_not_json, "Observation.ndjson:19: not JSON"),
        (_no_id, "Observation.ndjson:1: no id"),
    ],
)
def test_bad_files_are_refused_before_anything_is_sent(
    bulk_dir: Path,
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
    spoil: Any,
    message: str,
) -> None:
    """A missing or broken manifest, a file missing, outside DIR, miscounted or holding a line
    that is not a resource of its type with an id: exit 1, the place named, no request sent,
    no content echoed."""
    spoil(bulk_dir)
    code, out, err = _run(
        capsys, _push(str(bulk_dir), "--base-url", httpserver.url_for("/fhir"), "--no-import")
    )
    assert code == 1 and out == ""
    assert message in err, err
    assert httpserver.log == []
    assert '"N"' not in err and "text" not in err


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("10.1.2.3:0", "plain http"),
        ("0.0.0.0:8765", "not a wildcard"),
        ("[::]:0", "wildcard"),
        # A superscript passes str.isdigit() but not int(): a traceback, not this line.
        ("127.0.0.1:\u00b2", "expected HOST:PORT"),
    ],
)
def test_serving_on_the_network_is_refused_up_front(
    bulk_dir: Path,
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
    address: str,
    why: str,
) -> None:
    """--serve-on a non-loopback address needs --allow-insecure-http, and a wildcard address is
    never one the FHIR server could be told to fetch from: refused before any request."""
    code, _, err = _run(
        capsys,
        _push(str(bulk_dir), "--base-url", httpserver.url_for("/fhir"), "--serve-on", address),
    )
    assert code == 1 and "--serve-on" in err and why in err
    assert httpserver.log == []


def test_the_file_server_serves_only_the_named_files(tmp_path: Path) -> None:
    """Only the registered files, under their random path: no listing, nothing else in or
    outside the directory, no writes; GET and HEAD of a served file work."""
    directory = tmp_path / "bulk"
    directory.mkdir()
    (directory / "Observation.ndjson").write_text('{"resourceType":"Observation"}\n')
    (directory / "other.ndjson").write_text("{}\n")
    (tmp_path / "outside.txt").write_text("secret")
    with serve_files({"Observation.ndjson": directory / "Observation.ndjson"}) as served:
        url = served.urls["Observation.ndjson"]
        prefix = url.rsplit("/", 1)[0]
        answer = requests.get(url, timeout=5)
        assert answer.status_code == 200 and answer.text == '{"resourceType":"Observation"}\n'
        assert answer.headers["Content-Type"] == "application/fhir+ndjson"
        assert requests.head(url, timeout=5).status_code == 200
        for path in (
            f"{prefix}/",
            f"{prefix}/other.ndjson",
            f"{prefix}/../outside.txt",
            f"{prefix}/%2e%2e/outside.txt",
            f"{served.origin}/Observation.ndjson",
            f"{served.origin}/",
        ):
            assert requests.get(path, timeout=5).status_code == 404, path
        assert requests.post(url, data=b"x", timeout=5).status_code == 501
        assert requests.put(url, data=b"x", timeout=5).status_code == 501
        assert served.fetched == {"Observation.ndjson": 1}
    assert (directory / "Observation.ndjson").read_text() == '{"resourceType":"Observation"}\n'


# ---------------------------------------------------------------------------- $import faults

STATEMENT_WITH_IMPORT = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "mode": "server",
            "interaction": [{"code": "transaction"}],
            "operation": [{"name": "import", "definition": "http://hl7.org/fhir/uv/bulkdata"}],
        }
    ],
}


@pytest.mark.parametrize("no_fallback", [True, False])
def test_without_import_or_transactions_nothing_is_sent(
    bulk_dir: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str], no_fallback: bool
) -> None:
    """A server declaring neither $import nor transactions: the command says that $import is
    missing, then fails with one line (--no-fallback, or no transaction to fall back to) after
    reading /metadata only."""
    statement = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": []}
    httpserver.expect_request("/fhir/metadata").respond_with_json(statement)
    argv = _push(str(bulk_dir), "--base-url", httpserver.url_for("/fhir"))
    code, out, err = _run(capsys, [*argv, "--no-fallback"] if no_fallback else argv)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    if no_fallback:
        assert lines == [
            "error: the server does not advertise $import in its CapabilityStatement "
            "(--no-fallback: no transaction Bundles sent)"
        ]
    else:
        assert lines == [
            "the server does not advertise $import in its CapabilityStatement; "
            "sending transaction Bundles of PUTs instead",
            "error: the server declares no transaction interaction: nothing sent "
            "(neither $import nor transaction Bundles are offered)",
        ]
    assert [r.path for r, _ in httpserver.log] == ["/fhir/metadata"]


def test_500_while_polling_fails_the_command_with_one_line(
    bulk_dir: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """$import accepted (202), then its status URL answers 500: exit 1 with the client's one-line
    error, after the client's retries, saying whether the job was cancelled (here the DELETE is
    refused too); no transaction Bundle is sent instead."""
    httpserver.expect_request("/fhir/metadata").respond_with_json(STATEMENT_WITH_IMPORT)
    httpserver.expect_request("/fhir/$import", method="POST").respond_with_data(
        "", status=202, headers={"Content-Location": httpserver.url_for("/fhir/status/1")}
    )
    httpserver.expect_request("/fhir/status/1").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "exception"}]},
        status=500,
    )
    code, out, err = _run(
        capsys,
        _push(
            str(bulk_dir),
            "--base-url",
            httpserver.url_for("/fhir"),
            "--files-url",
            "https://files.example/bulk",
            "--deadline",
            "5",
        ),
    )
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "error: server is unavailable or busy (HTTP 500); "
        "cancelling the import failed: the server may still import the files"
    ]
    sent = json.loads(httpserver.log[1][0].get_data())
    urls = [p["part"][1]["valueUrl"] for p in sent["parameter"] if p["name"] == "input"]
    assert urls == ["https://files.example/bulk/Observation.ndjson"]
    assert [r.method for r, _ in httpserver.log].count("POST") == 1


def test_import_error_entries_make_the_command_fail(
    bulk_dir: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A completed import that lists errors: the report counts them and the exit status is 1."""
    httpserver.expect_request("/fhir/metadata").respond_with_json(STATEMENT_WITH_IMPORT)
    httpserver.expect_request("/fhir/$import", method="POST").respond_with_data(
        "", status=202, headers={"Content-Location": "status/1"}
    )
    files_url = "https://files.example/bulk/Observation.ndjson"
    httpserver.expect_request("/fhir/status/1").respond_with_json(
        {
            "transactionTime": "2026-12-06T20:00:00Z",
            "request": "x",
            "output": [{"type": "OperationOutcome", "count": 16, "inputUrl": files_url}],
            "error": [{"type": "OperationOutcome", "count": 2, "inputUrl": files_url, "url": "e"}],
        }
    )
    code, out, _ = _run(
        capsys,
        _push(
            str(bulk_dir),
            "--base-url",
            httpserver.url_for("/fhir"),
            "--files-url",
            "https://files.example/bulk/",
            "--json",
        ),
    )
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["mode"] == "import"
    assert report["imported"] == {"Observation": 16} and report["failed"] == {"Observation": 2}
    assert "error files" in report["errors"][0]["message"]


def test_the_module_is_not_imported_by_help() -> None:
    """``fhir-alliance --help`` lists push without importing its module (start-up stays fast)."""
    import subprocess
    import sys

    code = (
        "from fhir_alliance.cli import build_parser\nbuild_parser(['--help']).format_help()\n"
        "import sys\nprint('fhir_alliance.bulk_push' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert out.stdout.strip() == "False"

"""``fhir-alliance check``: capability gaps, the tagged round trip, cleanup, report and exit status."""

import argparse
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance import cli
from fhir_alliance.check import (
    CA_BUNDLE_ENV,
    RUN_TAG_SYSTEM,
    check_resources,
    register,
    run_check,
)
from fhir_alliance.client import FhirClient, RetryPolicy
from fhir_alliance.terminology import CANONICAL_BASE, LABEL_TEST_DATA
from tests.client.tls import self_signed_https_server
from tests.fhir_server import plugin
from tests.fhir_server.plugin import FhirTestServer


def tagged_count(server: FhirTestServer, run_id: str) -> int:
    total = 0
    for rtype in ("Observation", "Consent", "Provenance"):
        bundle = server.http.get(
            server.url(rtype), params={"_tag": f"{RUN_TAG_SYSTEM}|{run_id}", "_summary": "count"}
        ).json()
        total += bundle.get("total", 0)
    return total


def test_run_tag_matches_the_test_server_plugin() -> None:
    """The check's run-tag system is the one the test-server plugin cleans up by."""
    assert RUN_TAG_SYSTEM == plugin.RUN_TAG_SYSTEM == f"{CANONICAL_BASE}/CodeSystem/test-run"


def test_check_resources_come_from_our_mappers_and_are_tagged() -> None:
    """An Observation and a Consent, each claiming our profile, tagged with the run id and HTEST."""
    resources = check_resources("run-1")
    assert [r["resourceType"] for r in resources] == ["Observation", "Consent"]
    for resource in resources:
        assert resource["meta"]["profile"][0].startswith(f"{CANONICAL_BASE}/StructureDefinition/")
        assert {"system": RUN_TAG_SYSTEM, "code": "run-1"} in resource["meta"]["tag"]
        assert {"system": LABEL_TEST_DATA[0], "code": LABEL_TEST_DATA[1]} in resource["meta"][
            "security"
        ]
        assert resource["identifier"]
    r5 = check_resources("run-1", version="5.0.0")
    assert r5[1] != resources[1]  # R5 Consent differs from R4


def test_check_command_end_to_end(
    fhir_server: FhirTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fhir-alliance check --json` passes every step, exits 0 and leaves nothing tagged behind."""
    code = cli.main(["check", "--base-url", fhir_server.base_url, "--json"])
    report = json.loads(capsys.readouterr().out)
    failed = [s for s in report["steps"] if not s["ok"]]
    assert failed == [] and report["fatal"] is None
    assert code == 0 and report["ok"] is True
    names = [(s["resource_type"], s["name"]) for s in report["steps"]]
    for rtype in ("Observation", "Consent"):
        for step in (
            "create",
            "search by identifier",
            "update with If-Match",
            "stale If-Match",
            "delete",
        ):
            assert (rtype, step) in names
    assert report["capabilities"]["release"] in ("R4", "R5")
    assert tagged_count(fhir_server, report["run_id"]) == 0


def minimal_resources(run_id: str, version: str) -> list[dict[str, Any]]:
    """Base-FHIR resources (no profile claims) for testing the check's own logic."""
    meta = {
        "tag": [{"system": RUN_TAG_SYSTEM, "code": run_id}],
        "security": [{"system": LABEL_TEST_DATA[0], "code": LABEL_TEST_DATA[1]}],
    }
    return [
        {
            "resourceType": "Observation",
            "meta": meta,
            "identifier": [{"system": "urn:check", "value": f"{run_id}-obs"}],
            "status": "final",
            "code": {"text": "check"},
        }
    ]


def test_text_report_and_cleanup_on_a_real_server(fhir_server: FhirTestServer) -> None:
    """The readable report lists the steps and PASS; the run's resources are gone afterwards."""
    with FhirClient(fhir_server.base_url) as client:
        report = run_check(client, resources=minimal_resources)
    text = report.to_text()
    assert report.ok, text
    assert "[ok] Observation stale If-Match" in text and "RESULT: PASS" in text
    assert tagged_count(fhir_server, report.run_id) == 0


def test_server_ignoring_if_match_fails_the_check(httpserver: HTTPServer) -> None:
    """A server that accepts a stale If-Match makes the check fail (exit 1) and still cleans up."""
    state: dict[str, Any] = {"version": 0, "deleted": False, "run_id": "r"}
    obs_url = "/fhir/Observation/o1"

    def metadata(request: Request) -> Response:
        return Response(
            json.dumps(
                {
                    "resourceType": "CapabilityStatement",
                    "fhirVersion": "4.0.1",
                    "rest": [
                        {
                            "mode": "server",
                            "resource": [
                                {
                                    "type": "Observation",
                                    "interaction": [{"code": "create"}, {"code": "search-type"}],
                                    "searchParam": [{"name": "identifier"}],
                                }
                            ],
                        }
                    ],
                }
            ),
            content_type="application/fhir+json",
        )

    def resource() -> dict[str, Any]:
        base = minimal_resources(state["run_id"], "4.0.1")[0]
        return base | {"id": "o1", "meta": base["meta"] | {"versionId": str(state["version"])}}

    def observation(request: Request) -> Response:
        if request.method == "DELETE":
            state["deleted"] = True
            return Response("", status=204)
        if state["deleted"]:
            return Response("", status=410)
        if request.method == "PUT":  # ignores If-Match: the bug the check must catch
            state["version"] += 1
        return Response(
            json.dumps(resource()),
            headers={"ETag": f'W/"{state["version"]}"'},
            content_type="application/fhir+json",
        )

    def create(request: Request) -> Response:
        state["version"] = 1
        state["run_id"] = json.loads(request.get_data())["meta"]["tag"][0]["code"]
        return Response(
            json.dumps(resource()),
            status=201,
            headers={"Location": httpserver.url_for(obs_url) + "/_history/1"},
            content_type="application/fhir+json",
        )

    def search(request: Request) -> Response:
        entries = (
            []
            if state["deleted"] or state["version"] == 0
            else [{"resource": resource(), "search": {"mode": "match"}}]
        )
        return Response(
            json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries}),
            content_type="application/fhir+json",
        )

    httpserver.expect_request("/fhir/metadata").respond_with_handler(metadata)
    httpserver.expect_request("/fhir/Observation", method="POST").respond_with_handler(create)
    httpserver.expect_request("/fhir/Observation", method="GET").respond_with_handler(search)
    httpserver.expect_request(obs_url).respond_with_handler(observation)
    with FhirClient(httpserver.url_for("/fhir"), retry=RetryPolicy(max_attempts=1)) as client:
        report = run_check(client, resources=minimal_resources)
    assert not report.ok
    stale = [s for s in report.steps if s.name == "stale If-Match"]
    assert stale and not stale[0].ok and "accepted a stale If-Match" in stale[0].detail
    assert state["deleted"] is True
    assert any("Consent: not listed" in g for g in report.gaps)


def test_unreachable_server_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """No server at the URL: a readable FAIL report and exit 1, not a traceback."""
    code = cli.main(["check", "--base-url", "http://127.0.0.1:9/fhir", "--timeout", "1"])
    out = capsys.readouterr().out
    assert code == 1 and "could not read the CapabilityStatement" in out and "RESULT: FAIL" in out


def test_missing_secret_names_the_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--auth bearer with an empty token variable is an input error naming --token-env."""
    monkeypatch.delenv("FHIR_ALLIANCE_TOKEN", raising=False)
    code = cli.main(["check", "--base-url", "https://ehr.example.org/fhir", "--auth", "bearer"])
    assert code == 1 and "--token-env" in capsys.readouterr().err


def test_smart_options_are_required_together(capsys: pytest.CaptureFixture[str]) -> None:
    """--auth smart without client id, key and kid names each missing option."""
    code = cli.main(["check", "--base-url", "https://ehr.example.org/fhir", "--auth", "smart"])
    err = capsys.readouterr().err
    assert code == 1
    for option in ("--client-id", "--private-key", "--key-id"):
        assert option in err


CAPABILITIES = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "format": ["json"],
    "rest": [{"mode": "server", "resource": []}],
}

NOT_FOUND = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "not-found"}],
}


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[HTTPServer, Path]]:
    """An https FHIR stub with a self-signed certificate: it serves /metadata, all else is 404."""
    with self_signed_https_server(tmp_path) as (server, cert):
        server.expect_request("/fhir/metadata").respond_with_json(CAPABILITIES)
        server.expect_request(re.compile("/fhir/.*")).respond_with_json(NOT_FOUND, status=404)
        yield server, cert


def check_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = cli.main(["check", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def no_ca_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CA_BUNDLE_ENV:
        monkeypatch.delenv(name, raising=False)


def test_untrusted_certificate_is_named_with_the_fix(
    tls_server: tuple[HTTPServer, Path],
    capsys: pytest.CaptureFixture[str],
    no_ca_environment: None,
) -> None:
    """A self-signed server: the report names the certificate failure and --ca-bundle."""
    server, _ = tls_server
    code, report = check_json(["--base-url", server.url_for("/fhir")], capsys)
    assert code == 1
    assert "certificate verification failed" in report["fatal"]
    assert "--ca-bundle" in report["fatal"]
    assert server.log == []


@pytest.mark.parametrize("source", ["option", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_ca_bundle_from_option_or_environment_is_trusted(
    tls_server: tuple[HTTPServer, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_ca_environment: None,
    source: str,
) -> None:
    """--ca-bundle, or else $REQUESTS_CA_BUNDLE or $SSL_CERT_FILE, makes the server trusted."""
    server, cert = tls_server
    argv = ["--base-url", server.url_for("/fhir")]
    if source == "option":
        argv += ["--ca-bundle", str(cert)]
    else:
        monkeypatch.setenv(source, str(cert))
    _, report = check_json(argv, capsys)
    assert report["fatal"] is None or "certificate" not in report["fatal"]
    assert report["capabilities"]["fhirVersion"] == "4.0.1"
    assert any(request.path == "/fhir/metadata" for request, _ in server.log)


def test_missing_ca_bundle_file_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--ca-bundle naming no file is an input error naming --ca-bundle."""
    code = cli.main(
        ["check", "--base-url", "https://ehr.example.org/fhir", "--ca-bundle", "/no/such.pem"]
    )
    assert code == 1 and "--ca-bundle" in capsys.readouterr().err


def test_refused_and_unknown_host_are_told_apart_from_timeouts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listening → 'connection refused'; a name that does not resolve → 'host not found'."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, refused = check_json(["--base-url", f"http://127.0.0.1:{port}/fhir"], capsys)
    _, unknown = check_json(["--base-url", "http://no-such-host.invalid/fhir"], capsys)
    assert "connection refused" in refused["fatal"] and "timed out" not in refused["fatal"]
    assert "host not found" in unknown["fatal"] and "timed out" not in unknown["fatal"]


def test_every_option_has_help_with_its_default() -> None:
    """`check --help` explains every option and gives each default (and the CA variables)."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    check = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "check"
    ]
    text = check.format_help()
    for action in check._actions:
        assert action.help, f"{action.option_strings} has no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest
    for variable in (*CA_BUNDLE_ENV, "FHIR_ALLIANCE_TOKEN", "FHIR_ALLIANCE_PASSWORD"):
        assert variable in text


def test_deadline_and_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    """--deadline 0 is refused by argparse with the option named."""
    with pytest.raises(SystemExit):
        cli.main(["check", "--base-url", "https://ehr.example.org/fhir", "--deadline", "0"])
    assert "--deadline" in capsys.readouterr().err

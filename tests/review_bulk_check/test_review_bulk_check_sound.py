"""Promises of ``check`` the review found kept: leftovers after a failing delete are listed by id
with a failing result, credentials are not sent over plain http to another host, and a run's
cleanup (on a server honouring ``_tag``) leaves a parallel run's resources alone."""

from __future__ import annotations

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance import cli
from fhir_alliance.check import run_check
from fhir_alliance.client import FhirClient, RetryPolicy
from tests.review_bulk_check.stub_fhir import StubFhir, tagged_observation


def test_a_server_error_on_delete_is_listed_by_id_and_fails(httpserver: HTTPServer) -> None:
    """DELETE answers 500 in the round trip and in the cleanup: the report fails and names the
    resource left behind."""
    stub = StubFhir(httpserver, fail_deletes=True)
    with FhirClient(stub.base_url, retry=RetryPolicy(max_attempts=1)) as client:
        report = run_check(client, resources=tagged_observation)
    assert not report.ok
    assert report.cleanup_remaining == [f"Observation/check-{report.run_id}"]
    assert f"NOT deleted: Observation/check-{report.run_id}" in report.to_text()


def test_a_parallel_runs_resources_are_left_alone(httpserver: HTTPServer) -> None:
    """Two runs get different run tags; the second's cleanup does not delete the first's."""
    stub = StubFhir(httpserver)
    other = tagged_observation("other-run")[0]
    other["meta"]["versionId"] = "1"
    stub.store["check-other-run"] = other
    with FhirClient(stub.base_url, retry=RetryPolicy(max_attempts=1)) as client:
        first = run_check(client, resources=tagged_observation)
        second = run_check(client, resources=tagged_observation)
    assert first.ok and second.ok and first.run_id != second.run_id
    assert "check-other-run" in stub.store and "check-other-run" not in stub.deleted


@pytest.mark.parametrize("auth", ["bearer", "basic"])
def test_credentials_over_plain_http_to_another_host_are_refused(
    auth: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``http://`` to a non-loopback host with a token or password: exit 1 before any request."""
    monkeypatch.setenv("FHIR_ALLIANCE_TOKEN", "t0ken")
    monkeypatch.setenv("FHIR_ALLIANCE_PASSWORD", "pw")
    code = cli.main(["check", "--base-url", "http://fhir.example.org/fhir", "--auth", auth,
                     "--username", "u"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "credentials would travel unencrypted" in err

"""Which server links the client follows: only those inside the configured base."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_alliance.client.links import BaseUrl, is_loopback_host, path_template
from fhir_alliance.errors import InputError, UnsafeLinkError

BASE = BaseUrl.parse("https://ehr.example.org/fhir/R4")


@pytest.mark.parametrize(
    "link",
    [
        "https://ehr.example.org/fhir/R4/Observation?_offset=20",
        "https://EHR.example.org:443/fhir/R4/Observation?page=2",
        "https://ehr.example.org/fhir/R4?_getpages=abc&_getpagesoffset=20",
        "https://ehr.example.org/fhir/R4/",
        "Observation?_offset=40",
    ],
)
def test_links_inside_the_base_are_followed(link: str) -> None:
    """Same scheme, host, normalised port and path prefix (HAPI's [base]?_getpages too) pass."""
    absolute = BASE.check_link(link)
    assert absolute.lower().startswith("https://ehr.example.org")


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        ("https://evil.example.org/fhir/R4/Observation", "host"),
        ("https://ehr.example.org.evil.net/fhir/R4/Observation", "host"),
        ("https://ehr.example.org:8443/fhir/R4/Observation", "port"),
        ("http://ehr.example.org/fhir/R4/Observation", "scheme"),
        ("https://evil.example/?x=https://ehr.example.org/fhir/R4", "host"),
        ("https://ehr.example.org/fhir/R4-evil/Observation", "path"),
        ("https://ehr.example.org/fhir/R/Observation", "path"),
        ("https://ehr.example.org/fhir/R4/../admin", "dot"),
        ("Observation/../Patient/p1", "dot"),
        ("https://ehr.example.org/fhir/R4/..%2Fadmin", "encoded"),
        ("https://ehr.example.org/fhir/R4/%2e%2e/admin", "dot"),
        ("https://ehr.example.org/fhir/R4/a%5cb", "encoded"),
        ("https://user@ehr.example.org/fhir/R4/Observation", "credentials"),
        ("//evil.example.org/fhir/R4/Observation", "host"),
    ],
)
def test_links_outside_the_base_are_refused(link: str, reason: str) -> None:
    """Other host, port, scheme, path prefix (segment-wise), dot segments or userinfo: refused."""
    with pytest.raises(UnsafeLinkError) as caught:
        BASE.check_link(link)
    assert reason in caught.value.message
    assert "evil" not in caught.value.message  # the link itself is never echoed


def test_explicit_default_port_in_the_base_is_normalised() -> None:
    """A base written with :443 accepts links without it, and the reverse."""
    base = BaseUrl.parse("https://ehr.example.org:443/fhir")
    assert base.url == "https://ehr.example.org/fhir"
    assert base.check_link("https://ehr.example.org/fhir/Consent?page=2")
    assert BaseUrl.parse("http://h/fhir").check_link("http://h:80/fhir?_getpages=1")


@pytest.mark.parametrize(
    "url", ["ftp://h/fhir", "https:///fhir", "https://u:p@h/fhir", "https://h/fhir?x=1", "nope"]
)
def test_bad_base_urls_are_input_errors(url: str) -> None:
    """A base URL that is not http(s) with a host, or has credentials or a query, names the field."""
    with pytest.raises(InputError) as caught:
        BaseUrl.parse(url)
    assert caught.value.issues[0].path == "base_url"


def test_path_template_hides_ids_and_query_values() -> None:
    """Logged paths keep resource types and operations, never ids, versions or query values."""
    base = BaseUrl.parse("http://127.0.0.1:8080/fhir")
    assert (
        path_template(base, "http://127.0.0.1:8080/fhir/Observation/abc-123") == "Observation/{id}"
    )
    assert (
        path_template(base, "http://127.0.0.1:8080/fhir/Observation/x/_history/7")
        == "Observation/{id}/_history/{vid}"
    )
    assert path_template(base, "http://127.0.0.1:8080/fhir/Consent?identifier=urn:mrn|123") == (
        "Consent?…"
    )
    assert path_template(base, "http://127.0.0.1:8080/fhir") == "[base]"
    assert path_template(base, "http://127.0.0.1:8080/fhir/metadata") == "metadata"


def test_client_settings_are_checked() -> None:
    """Non-positive timeouts and bounds are InputErrors naming each field."""
    from fhir_alliance.client import FhirClient

    with pytest.raises(InputError) as caught:
        FhirClient("https://h/fhir", timeout=(0, 5), max_pages=0, connect_retries=-1)
    assert {i.path for i in caught.value.issues} == {
        "timeout.connect",
        "max_pages",
        "connect_retries",
    }


_PIECES = st.sampled_from(
    [
        "https://",
        "http://",
        "ehr.example.org",
        "EHR.example.org",
        "evil.example",
        ":443",
        ":8443",
        ":",
        "@",
        "/",
        "//",
        "/fhir",
        "/R4",
        "/fhir/R4",
        "-evil",
        "..",
        "%2F",
        "%2f",
        "?",
        "#",
        "=",
        "\\",
        "[",
        "]",
        "Observation",
        "_getpages=1",
        " ",
        "\t",
        "%00",
        "user:pw@",
    ]
)


@given(st.lists(_PIECES, max_size=8).map("".join) | st.text(max_size=40))
def test_any_link_is_either_refused_or_inside(link: str) -> None:
    """Whatever a server sends, a link is refused with UnsafeLinkError or lies inside the base."""
    from urllib.parse import unquote, urlsplit

    try:
        absolute = BASE.check_link(link)
    except UnsafeLinkError:
        return
    parts = urlsplit(absolute)
    assert parts.scheme == "https"
    assert parts.hostname == "ehr.example.org"
    assert (parts.port or 443) == 443
    assert parts.username is None and parts.password is None
    segments = [s for s in parts.path.split("/") if s]
    assert segments[:2] == ["fhir", "R4"]
    assert not any(unquote(s) in (".", "..") or "/" in unquote(s) for s in segments)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("127.attacker.example", False),
        ("127.0.0.1.nip.io", False),
        ("127.0.0.1.attacker.example", False),
        ("ehr.example.org", False),
        ("10.0.0.1", False),
    ],
)
def test_only_a_loopback_address_or_localhost_is_loopback(host: str, loopback: bool) -> None:
    """Plain http may carry credentials only to this machine. A DNS name that merely starts with
    ``127.`` resolves wherever its owner says. Found: ``127.attacker.example`` counted as
    loopback, so a bearer token or SMART assertion went there over plain http."""
    assert is_loopback_host(host) is loopback
    assert BaseUrl.parse(f"http://{host if ':' not in host else f'[{host}]'}/fhir").is_loopback is (
        loopback
    )

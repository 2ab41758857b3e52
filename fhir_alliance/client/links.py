"""Which URLs the client may follow: only those inside the configured base (scheme, host, port, path).

Paging links come from the server and are untrusted input (OWASP API7, SSRF): a link that leaves the
base is refused *before* any request is made, so the token is never sent anywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from fhir_alliance.errors import InputError, Issue, UnsafeLinkError

__all__ = [
    "FHIR_ID",
    "BaseUrl",
    "is_fhir_id",
    "is_loopback_host",
    "is_resource_type",
    "path_template",
    "unsafe_segment",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
#: FHIR's id datatype: 1 to 64 of ``A-Z a-z 0-9 - .`` (R4 and R5).
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_fhir_id(value: object) -> bool:
    """Whether ``value`` is a FHIR id that is safe as one path segment: FHIR's id syntax, and not
    ``.`` or ``..`` (which the syntax allows but a URL resolves upwards)."""
    return (
        isinstance(value, str) and FHIR_ID.fullmatch(value) is not None and value not in (".", "..")
    )


def is_resource_type(value: object) -> bool:
    """Whether ``value`` looks like a FHIR resource type name (``Observation``), safe in a path."""
    return isinstance(value, str) and _RESOURCE_TYPE.fullmatch(value) is not None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's host name, lower case) is this machine's loopback: the one place
    plain http may carry credentials. ``localhost`` or a loopback address (``127.0.0.0/8``,
    ``::1``); a DNS name that only starts with ``127.`` resolves wherever its owner says."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s)


@dataclass(frozen=True, slots=True)
class BaseUrl:
    """A FHIR base URL, normalised: lower-case scheme and host, explicit port, path as segments."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, url: str, *, field: str = "base_url") -> BaseUrl:
        """Parse and check a configured base URL (http or https, a host, no query or credentials)."""

        def bad(why: str) -> InputError:
            return InputError(f"invalid base URL: {why}", issues=[Issue(path=field, message=why)])

        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise bad("not a URL with a valid port") from exc
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise bad("scheme must be http or https")
        if not parts.hostname:
            raise bad("missing host")
        if parts.username is not None or parts.password is not None:
            raise bad("credentials in the URL are not allowed; use the auth options")
        if parts.query or parts.fragment:
            raise bad("a base URL has no query or fragment")
        segments = _segments(parts.path)
        if any(s in (".", "..") for s in segments):
            raise bad("dot segments are not allowed in the path")
        return cls(
            scheme=scheme,
            host=parts.hostname.lower(),
            port=port if port is not None else _DEFAULT_PORTS[scheme],
            segments=segments,
        )

    @property
    def url(self) -> str:
        """The base as a string without a trailing slash, default port omitted."""
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        if self.port != _DEFAULT_PORTS[self.scheme]:
            netloc = f"{netloc}:{self.port}"
        path = "".join(f"/{s}" for s in self.segments)
        return f"{self.scheme}://{netloc}{path}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def join(self, relative: str) -> str:
        """``Observation/1`` → ``{base}/Observation/1`` (``relative`` is our own, not a server link)."""
        return f"{self.url}/{relative.lstrip('/')}" if relative else self.url

    def check_link(self, link: str, *, relative_to: str | None = None) -> str:
        """Return ``link`` as an absolute URL if it lies inside this base; else raise UnsafeLinkError.

        Inside means: same scheme, same host, same port once default ports are made explicit, and
        the base's path segments are a prefix of the link's (segment-wise: ``/fhir-evil`` is not
        inside ``/fhir``). ``[base]?_getpages=…`` (HAPI) is inside. The link itself never appears in
        the error message: its query can carry identifiers.
        """
        raw_path = link.strip().split("?", 1)[0].split("#", 1)[0]
        if any(unsafe_segment(s) for s in raw_path.split("/")):
            # Checked before joining too: urljoin resolves a relative link's dot segments, and
            # ``Observation/../Patient/p1`` would pass as ``Patient/p1``.
            raise UnsafeLinkError("server link refused: dot or encoded-slash path segments")
        try:
            absolute = urljoin(relative_to or self.url + "/", link.strip())
            parts = urlsplit(absolute)
            port = parts.port
        except ValueError as exc:
            raise UnsafeLinkError("server link refused: not a valid URL") from exc
        scheme = parts.scheme.lower()
        if scheme != self.scheme:
            raise UnsafeLinkError("server link refused: different scheme from the base URL")
        if parts.username is not None or parts.password is not None:
            raise UnsafeLinkError("server link refused: it carries credentials")
        if (parts.hostname or "").lower() != self.host:
            raise UnsafeLinkError("server link refused: different host from the base URL")
        if (port if port is not None else _DEFAULT_PORTS[scheme]) != self.port:
            raise UnsafeLinkError("server link refused: different port from the base URL")
        segments = _segments(parts.path)
        if any(unsafe_segment(s) for s in segments):
            raise UnsafeLinkError("server link refused: dot or encoded-slash path segments")
        if segments[: len(self.segments)] != self.segments:
            raise UnsafeLinkError("server link refused: path outside the base URL")
        return parts._replace(fragment="").geturl()


def unsafe_segment(segment: str) -> bool:
    """A segment that a server could resolve upwards or split: ``..``, ``%2e%2e``, ``a%2fb``."""
    decoded = unquote(segment)
    return decoded in (".", "..") or "/" in decoded or "\\" in decoded


def path_template(base: BaseUrl, url: str) -> str:
    """What may be logged of a request URL: resource type and interaction, never ids or query values.

    ``{base}/Observation/abc/_history/2?x=1`` → ``Observation/{id}/_history/{vid}?…``.
    """
    parts = urlsplit(url)
    segments = _segments(parts.path)[len(base.segments) :]
    out: list[str] = []
    for i, seg in enumerate(segments):
        if (
            (i == 0 and (_RESOURCE_TYPE.match(seg) or seg in ("metadata", ".well-known")))
            or seg.startswith(("$", "_"))
            or (i == 1 and segments[0] == ".well-known")
        ):
            out.append(seg)
        elif out and out[-1] == "_history":
            out.append("{vid}")
        else:
            out.append("{id}")
    template = "/".join(out) or "[base]"
    return template + ("?…" if parts.query else "")

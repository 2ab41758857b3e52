"""Start-up of the ``fhir-alliance`` command and of ``import fhir_alliance``: heavy modules are
imported only where used, and the lazily listed commands say what their modules register."""

import subprocess
import sys

import pytest

from fhir_alliance import cli

HEAVY = (
    "fhir.resources",
    "requests",
    "jwt",
    "fhir_alliance.client",
    "fhir_alliance.consent.engine",
)


def _imported_after(code: str) -> set[str]:
    """Module names imported by a fresh interpreter running ``code``."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_loads_no_heavy_module() -> None:
    """``import fhir_alliance`` imports none of the FHIR client, JWT, fhir.resources, the engine."""
    loaded = _imported_after("import fhir_alliance")
    assert not [m for m in HEAVY if m in loaded]


def test_public_names_resolve_on_first_use() -> None:
    """Every name in ``__all__`` is there when asked for, and unknown names are an AttributeError."""
    import fhir_alliance

    assert all(getattr(fhir_alliance, name) is not None for name in fhir_alliance.__all__)
    with pytest.raises(AttributeError):
        _ = fhir_alliance.NoSuchThing  # type: ignore[attr-defined]


def test_top_level_help_loads_no_builtin_command_module() -> None:
    """``fhir-alliance --help`` lists the built-in commands without importing their modules."""
    loaded = _imported_after(
        "from fhir_alliance.cli import build_parser\nbuild_parser(['--help']).format_help()"
    )
    assert not [m for m in HEAVY if m in loaded]
    assert "fhir_alliance.mapping.cli" not in loaded


@pytest.mark.parametrize("name", sorted(cli._BUILTIN_COMMANDS))
def test_listed_help_is_what_the_module_registers(name: str) -> None:
    """The help listed without loading a command equals the help its module registers."""
    listed = cli.build_parser(["--help"])._subparsers._group_actions[0]  # type: ignore[union-attr]
    full = cli.build_parser(None)._subparsers._group_actions[0]  # type: ignore[union-attr]

    def helps(action: object) -> dict[str, str]:
        return {c.dest: c.help for c in action._choices_actions}  # type: ignore[attr-defined]

    assert helps(listed)[name] == helps(full)[name]


def test_a_named_command_is_loaded_fully() -> None:
    """``fhir-alliance map …`` parses map's own options (its module is loaded for it)."""
    args = cli.build_parser(["map", "x.json", "--ndjson"]).parse_args(["map", "x.json", "--ndjson"])
    assert args.ndjson is True and callable(args.handler)

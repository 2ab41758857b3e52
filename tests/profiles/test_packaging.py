"""The wheel ships the profiles package, py.typed and the service under its own import name; an
installed copy (wheel or editable) imports from outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "profiles" / "fsh-generated" / "resources"

pytestmark = pytest.mark.slow

# Run inside the fresh environment, from a directory outside the repository.
PROBE = """
import importlib.util, json, pathlib
import fhir_alliance, fhir_alliance_service
from fhir_alliance import profiles, terminology
package = pathlib.Path(fhir_alliance.__file__).parent
print(json.dumps({
    "fhir_alliance": fhir_alliance.__file__,
    "fhir_alliance_service": fhir_alliance_service.__file__,
    "py_typed": (package / "py.typed").is_file(),
    "location": profiles.package_location(),
    "origin": profiles.package_info().origin,
    "package_id": profiles.package_info().package_id,
    "resources": len(profiles.all_resources()),
    "canonical": terminology.CANONICAL_BASE,
    "service_module": importlib.util.find_spec("service") is not None,
}))
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _fresh_venv(root: Path) -> Path:
    """A new venv without our package; the running environment's installed dependencies are
    appended to its path by a .pth file (its own .pth hooks, e.g. an editable install of this
    project, are not run), so nothing is downloaded."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent)
    python = root / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root
    ).strip()
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "_fhir_alliance_test_deps.pth").write_text("\n".join(paths) + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", *args],
        cwd=python.parent,
    )


def _probe(python: Path, cwd: Path) -> dict[str, Any]:
    output = _run([str(python), "-c", PROBE], cwd=cwd)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist, then the wheel built from that sdist (the release path), without build isolation."""
    out = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)], cwd=out
    )
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    """The wheel built from the sdist."""
    (built,) = dist.glob("fhir_alliance-*.whl")
    return built


def test_sdist_can_rebuild_the_profiles(dist: Path) -> None:
    """The sdist carries what `make profiles` needs (FSH, config, lockfile, build script, the npm
    placeholder for hl7.fhir.r4.core) and the generated JSON, but no node_modules or FHIR cache."""
    (sdist,) = dist.glob("fhir_alliance-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "profiles/sushi-config.yaml",
        "profiles/package.json",
        "profiles/package-lock.json",
        "profiles/tools/build.mjs",
        "profiles/tools/r4-core-placeholder/package.json",
        "profiles/input/fsh/common-aliases.fsh",
        "service/fhir_alliance_service/__init__.py",
    ):
        assert needed in names
    generated = {n for n in names if n.startswith("profiles/fsh-generated/resources/")}
    assert {n.rsplit("/", 1)[1] for n in generated} == {p.name for p in COMMITTED.glob("*.json")}
    assert not [n for n in names if "node_modules" in n or ".fhir-cache" in n]


def test_wheel_contents(wheel: Path) -> None:
    """The wheel holds py.typed (library and service), the committed profiles JSON under
    fhir_alliance/_profiles, and only the top-level packages fhir_alliance and
    fhir_alliance_service (no `service`)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {name.split("/", 1)[0] for name in names}
        shipped = {
            name.rsplit("/", 1)[1]: archive.read(name)
            for name in names
            if name.startswith("fhir_alliance/_profiles/")
        }
    assert "fhir_alliance/py.typed" in names
    assert "fhir_alliance_service/py.typed" in names
    assert "fhir_alliance_service/__init__.py" in names
    assert {t for t in top_level if not t.endswith(".dist-info")} == {
        "fhir_alliance",
        "fhir_alliance_service",
    }
    committed = {p.name: p.read_bytes() for p in COMMITTED.glob("*.json")}
    assert committed
    assert shipped == committed


def test_installed_wheel_reads_profiles_from_site_packages(wheel: Path, tmp_path: Path) -> None:
    """Installed from the wheel and imported outside the repo, fhir_alliance.profiles reads
    fhir_alliance/_profiles in site-packages, not the repository copy."""
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "--no-index", str(wheel))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = _probe(python, outside)
    site = tmp_path / "venv"
    assert Path(probe["fhir_alliance"]).is_relative_to(site)
    assert Path(probe["fhir_alliance_service"]).is_relative_to(site)
    assert probe["py_typed"] is True
    assert probe["origin"] == "installed"
    assert Path(probe["location"]).is_relative_to(site)
    assert Path(probe["location"]).name == "_profiles"
    assert probe["package_id"] == "fhir-alliance.profiles"
    assert probe["resources"] == len(list(COMMITTED.glob("*.json")))
    assert probe["service_module"] is False


def test_editable_install_imports_both_packages(tmp_path: Path) -> None:
    """`pip install -e` also gives `fhir_alliance_service`, and profiles come live from the checkout."""
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "--no-build-isolation", "-e", str(REPO))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = _probe(python, outside)
    assert Path(probe["fhir_alliance"]) == REPO / "fhir_alliance" / "__init__.py"
    assert Path(probe["fhir_alliance_service"]) == (
        REPO / "service" / "fhir_alliance_service" / "__init__.py"
    )
    assert probe["origin"] == "source"
    assert Path(probe["location"]) == COMMITTED


def test_wheel_carries_the_data_files_the_code_reads(wheel: Path) -> None:
    """Every file the installed code opens at run time is in the wheel: the compiled validators'
    JSON schemas, the Alembic migrations (``db upgrade``; no alembic.ini), the console's templates
    and stylesheet; and tests, examples or node_modules are not."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    needed = {
        "fhir_alliance/mapping/data/fhir-r4-observation.schema.json",
        "fhir_alliance/mapping/data/fhir-r5-observation.schema.json",
        "fhir_alliance_service/store/migrations/env.py",
        "fhir_alliance_service/store/migrations/script.py.mako",
        "fhir_alliance_service/console/static/console.css",
    }
    service = REPO / "service"
    for folder in ("store/migrations/versions", "console/templates"):
        files = (service / "fhir_alliance_service" / folder).rglob("*")
        needed |= {p.relative_to(service).as_posix() for p in files if p.suffix in {".py", ".html"}}
    assert needed - names == set()
    assert not [n for n in names if n.startswith(("tests/", "examples/")) or "node_modules" in n]


def test_wheel_and_sdist_carry_the_whole_licence(dist: Path) -> None:
    """Apache-2.0 asks that recipients get a copy of the licence: its full text (not a pointer to
    it) is in the wheel's metadata and the sdist, with the NOTICE naming the copyright holder."""
    (wheel,) = dist.glob("fhir_alliance-*.whl")
    (sdist,) = dist.glob("fhir_alliance-*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        licences = {
            n.rsplit("/", 1)[1]: archive.read(n).decode()
            for n in archive.namelist()
            if ".dist-info/licenses/" in n
        }
    with tarfile.open(sdist) as archive:
        root = archive.getnames()[0].split("/", 1)[0]
        member = archive.extractfile(f"{root}/LICENSE")
        assert member is not None
        sdist_licence = member.read().decode()
    assert set(licences) == {"LICENSE", "NOTICE"}
    for text in (licences["LICENSE"], sdist_licence):
        assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
        assert "END OF TERMS AND CONDITIONS" in text
    assert "fhir-alliance contributors" in licences["NOTICE"]

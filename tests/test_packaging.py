"""Packaging: one version number in one place, licence and citation files, shipped assets."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

import spikemask

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_single_sourced() -> None:
    project = _pyproject()["project"]
    assert "version" not in project, "pyproject.toml must not repeat the version number"
    assert "version" in project["dynamic"]
    dynamic = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "spikemask.__version__"}
    # the installed metadata was read from spikemask.__version__
    assert importlib.metadata.version("spikemask") == spikemask.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", spikemask.__version__)


def test_version_number_appears_in_no_other_file() -> None:
    # spikemask's own version assigned anywhere (another package's equal pin, e.g.
    # ibl-bwb-eval's in export/bwb.py, is not spikemask's version)
    literal = re.compile(
        r"(?<![A-Za-z_])(__version__|version)\s*[=:]\s*[\"']?" + re.escape(spikemask.__version__)
    )
    holders = [
        str(p.relative_to(ROOT))
        for p in [ROOT / "pyproject.toml", ROOT / "CITATION.cff", *ROOT.glob("src/**/*.py")]
        if literal.search(p.read_text())
    ]
    assert holders == ["src/spikemask/__init__.py"]
    assert "\nversion:" not in (ROOT / "CITATION.cff").read_text()


def test_changelog_names_the_current_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{spikemask.__version__}]" in changelog


def test_licence_is_an_spdx_string_matching_the_licence_file() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    # with an SPDX licence string, a "License ::" classifier is an error for setuptools
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    assert project["urls"]


def test_citation_names_the_paper_and_the_data() -> None:
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert "universal translator" in paper["title"]
    assert paper["year"] == 2024
    assert {i["value"] for i in paper["identifiers"]} == {"arXiv:2407.14668"}
    dois = {ref.get("doi") for ref in citation["references"]}
    assert "10.6084/m9.figshare.9598406" in dois


def test_package_data_covers_the_shipped_assets() -> None:
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["spikemask"]
    package = ROOT / "src" / "spikemask"
    shipped = [
        p.relative_to(package)
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    ]
    assert any(p.suffix == ".parquet" for p in shipped)
    uncovered = [str(p) for p in shipped if not any(p.match(pat) for pat in _expand(patterns))]
    assert uncovered == []


def _expand(patterns: list[str]) -> list[str]:
    """``Path.match`` has no ``**``: check ``assets/**/*`` at the depths the assets use."""
    out = []
    for pattern in patterns:
        out += [pattern.replace("**/", "*/" * depth) for depth in range(5)]
    return out

"""setup.cfg's dependency floors (and the metrics, postgresql and redis extras') are met by the libraries this
interpreter imports.  Run on Debian 12's own packages (scripts/run-tests-debian), this keeps
them floors Debian meets."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

MODULES = {"pymilter": "Milter", "dnspython": "dns", "cachetools": "cachetools", "idna": "idna",
           "google-re2": "re2", "pyspf": "spf", "prometheus_client": "prometheus_client",
           "psycopg": "psycopg", "redis": "redis"}


def requirements() -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    extras = config["options.extras_require"]
    lines = (config["options"]["install_requires"] + extras["metrics"]
             + extras["postgresql"] + extras["redis"]).splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def imported_version(name: str) -> str:
    """The distribution's version, or its module's where it has no metadata (Debian's
    python3-spf)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version: str = importlib.import_module(MODULES[name]).__version__
        return version


def test_every_requirement_names_its_module() -> None:
    assert sorted(r.name for r in requirements()) == sorted(MODULES)


@pytest.mark.parametrize("requirement", requirements(), ids=str)
def test_the_floor_is_met(requirement: Requirement) -> None:
    version = imported_version(requirement.name)
    assert requirement.specifier.contains(version), f"{requirement}: {version} is imported"

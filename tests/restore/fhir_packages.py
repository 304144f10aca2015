"""Where the tests find the JP FHIR packages (read in place from ``shared/fhir-packages``, never copied into
the repository: CC BY-ND).  Same convention as ``SAMPLES`` in tests/conftest.py: ``$HAKOBUNE_FHIR_PACKAGES``
or ``shared/`` beside the checkout; missing packages skip the tests locally and fail them in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from restore.fhir.conformance import PACKAGES_ENV, Packages, PackagesNotFound, load_packages

FHIR_PACKAGES = Path(
    os.environ.get(PACKAGES_ENV, str(Path(__file__).resolve().parents[3] / "shared" / "fhir-packages"))
)


def packages_or_skip() -> Packages:
    """The loaded packages; skips the calling test where they are missing (fails it in CI)."""
    try:
        return load_packages(FHIR_PACKAGES)
    except PackagesNotFound as e:
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: a skip there would hide a failure
            pytest.fail(str(e))
        pytest.skip(str(e))

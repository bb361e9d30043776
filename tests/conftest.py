"""Test isolation shared by every layer: no test reads or writes the user's real data or caches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# PostgreSQL + S3 for the scale-out tests (fixtures `scaleout_infra`, `scaleout`; variables documented there)
from _scaleout_infra import scaleout, scaleout_infra  # noqa: F401

# polars and numpy compile kernels on first use, so a first example can take longer than hypothesis'
# 200 ms default deadline; the property tests check results, not speed.
settings.register_profile("coldbatch", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "coldbatch"))


@pytest.fixture(scope="session", autouse=True)
def _tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tiktoken cache per session: the BPE files are rebuilt once (about 1 s), never in ~/ or /tmp."""
    path = tmp_path_factory.mktemp("tiktoken-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(path))
        mp.delenv("DATA_GYM_CACHE_DIR", raising=False)
        yield path


@pytest.fixture(autouse=True)
def _coldbatch_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """COLDBATCH_HOME points into the test's tmp_path; other COLDBATCH_* settings of the shell are dropped."""
    for name in [n for n in os.environ if n.startswith("COLDBATCH_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "coldbatch-home"
    monkeypatch.setenv("COLDBATCH_HOME", str(home))
    return home

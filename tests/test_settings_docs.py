"""docs/settings.md documents every setting mcpmeter reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpmeter import settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC.exists(), "docs/settings.md is missing: python -m mcpmeter.settings > docs/settings.md"
    return DOC.read_text()


@pytest.mark.parametrize("env", sorted(settings.SETTINGS))
def test_every_setting_is_documented(doc, env):
    assert f"`{env}`" in doc, f"{env} is not in docs/settings.md: python -m mcpmeter.settings > docs/settings.md"


def test_the_doc_is_what_the_settings_table_generates(doc):
    assert doc == settings.markdown(), "docs/settings.md is out of date: python -m mcpmeter.settings > docs/settings.md"


def test_every_documented_variable_is_a_setting(doc):
    import re

    documented = set(re.findall(r"^\| `(MCPMETER_[A-Z_<>]+)` \|", doc, flags=re.M))
    assert documented == set(settings.SETTINGS)

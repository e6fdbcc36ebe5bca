"""The public Python surface is deliberate: exactly these names, all importable."""

from __future__ import annotations

import mcpmeter

EXPECTED = {"Meter", "MCPMeterError", "ConfigError", "ValidationError", "AuthError", "StorageError", "__version__"}


def test_all_is_exactly_the_public_surface():
    assert set(mcpmeter.__all__) == EXPECTED
    assert len(mcpmeter.__all__) == len(EXPECTED)  # no name listed twice


def test_every_exported_name_exists():
    for name in mcpmeter.__all__:
        assert getattr(mcpmeter, name) is not None, name


def test_the_errors_share_one_base():
    for name in EXPECTED - {"Meter", "__version__", "MCPMeterError"}:
        assert issubclass(getattr(mcpmeter, name), mcpmeter.MCPMeterError), name
    assert issubclass(mcpmeter.MCPMeterError, Exception)


def test_the_version_matches_the_package_metadata():
    from importlib.metadata import version

    assert mcpmeter.__version__ == version("mcpmeter")

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


def test_every_exception_class_is_in_the_drawn_tree():
    """Every exception class mcpmeter defines lives in exceptions.py, under MCPMeterError, and
    is drawn in its docstring (httpx `_exceptions.py`): nothing else escapes the public API."""
    import ast
    import inspect
    from pathlib import Path

    from mcpmeter import exceptions

    root = Path(exceptions.__file__).parent
    elsewhere = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and path.name != "exceptions.py":
                bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
                if any(b.endswith(("Error", "Exception")) or b in {"RateLimited", "Overloaded", "BodyTooLarge"} for b in bases):
                    elsewhere.append(f"{path.relative_to(root)}: {node.name}")
    assert not elsewhere, f"exception classes outside exceptions.py: {elsewhere}"
    drawn = exceptions.__doc__ or ""
    for name, cls in inspect.getmembers(exceptions, inspect.isclass):
        if cls.__module__ == exceptions.__name__:
            assert issubclass(cls, exceptions.MCPMeterError), name
            assert f" {name} " in drawn, f"{name} is not drawn in the tree at the top of exceptions.py"

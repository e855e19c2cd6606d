"""What a server command says when its extra is not installed (the bare install itself:
tests/system/test_bare_install.py)."""

from __future__ import annotations

import pytest

from cli.extras import install_hint

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("module", "extra"),
    [("sqlalchemy", "server"), ("uvicorn.protocols", "server"), ("torch", "torch")],
)
def test_a_missing_dependency_names_its_extra(module: str, extra: str) -> None:
    hint = install_hint("up", ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert hint is not None
    assert hint.startswith("`modelplane up` needs modelplane[")
    assert hint.endswith(f"pip install 'modelplane[{extra}]'")


def test_a_missing_module_of_ours_is_a_bug_not_an_extra() -> None:
    error = ModuleNotFoundError("No module named 'registry.nothing'", name="registry.nothing")
    assert install_hint("up", error) is None

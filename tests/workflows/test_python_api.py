"""The public Python API: every name mdpr exports resolves, and `import mdpr` stays light."""

from __future__ import annotations

import subprocess
import sys

import mdpr


def test_every_exported_name_resolves() -> None:
    for name in mdpr.__all__:
        assert getattr(mdpr, name) is not None, name


def test_import_mdpr_does_not_import_torch() -> None:
    code = "import sys, mdpr; assert 'torch' not in sys.modules and 'h5py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        mdpr.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")

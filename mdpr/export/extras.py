"""The optional packages behind each format and backend, imported on demand with one sentence when missing."""

from __future__ import annotations

from typing import Any

from mdpr.errors import MdprError


def _missing(what: str, extra: str) -> MdprError:
    return MdprError(f"{what} needs an optional package that is not installed; install it with: pip install \"mdpr[{extra}]\".")


def require_onnx() -> Any:
    """The ``onnx`` module (extra ``mdpr[onnx]``)."""
    try:
        import onnx
    except ImportError:
        raise _missing("ONNX export", "onnx") from None
    return onnx


def require_onnxruntime(what: str = "The onnxruntime backend") -> Any:
    """The ``onnxruntime`` module (extra ``mdpr[onnx]``)."""
    try:
        import onnxruntime
    except ImportError:
        raise _missing(what, "onnx") from None
    return onnxruntime


def require_openvino(what: str = "The openvino backend") -> Any:
    """The ``openvino`` module (extra ``mdpr[openvino]``)."""
    try:
        import openvino
    except ImportError:
        raise _missing(what, "openvino") from None
    return openvino


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True

"""OpenVINO runners leave the process able to take signals (the suite's crash in CI).

OpenVINO's CPU plugin replaces the compiling thread's alternate signal stack and puts back the one it found
when its Core is destroyed. Two runners destroyed in the order they were made left the thread on freed
memory; the next signal handled there (a child exiting while torch's DataLoader SIGCHLD handler is
installed) killed the process with SIGSEGV.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from storekit import tiny_checkpoint

from mdpr.runtime import signal_stack_kept

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed"),
    pytest.mark.skipif(os.name != "posix", reason="alternate signal stacks are POSIX"),
]

ROOT = Path(__file__).resolve().parents[2]


def test_signal_stack_kept_puts_back_the_threads_stack() -> None:
    import ctypes

    from mdpr.runtime import _SignalStack

    stack = _SignalStack()
    before = stack.get()
    buffer = ctypes.create_string_buffer(1 << 16)
    other = stack.StackT(ctypes.cast(buffer, ctypes.c_void_p), 0, len(buffer))
    with signal_stack_kept():
        stack.set(other)
        assert stack.get().ss_sp == other.ss_sp
    after = stack.get()
    assert (after.ss_sp, after.ss_size, after.ss_flags) == (before.ss_sp, before.ss_size, before.ss_flags)


def test_runners_destroyed_in_creation_order_leave_signals_deliverable(tmp_path: Path) -> None:
    from mdpr.export import export_model

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    export_model(ckpt, tmp_path / "m_openvino_model", format="openvino", batch_sizes=(1,))
    script = textwrap.dedent(f"""
        import faulthandler, gc, signal, subprocess
        faulthandler.enable()  # as pytest does: the thread has a signal stack of its own to lose
        from mdpr.export import open_runner
        first = open_runner({str(tmp_path / "m_openvino_model")!r}, "openvino")
        second = open_runner({str(tmp_path / "m_openvino_model")!r}, "openvino")
        del first; gc.collect()
        del second; gc.collect()
        signal.signal(signal.SIGCHLD, lambda *args: None)
        for _ in range(3):
            subprocess.run(["true"], check=True)
        print("signals delivered")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "signals delivered" in done.stdout, (done.returncode, done.stderr[-2000:])

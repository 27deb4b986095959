"""Crash safety of the shared store: writers SIGKILLed mid-transaction - often several at once - never leave a
gallery that fails to open, fails its check, differs from its audit trail, or misses an acknowledged change
(tools/stress_gallery.py kill runs the same check longer)."""
import importlib.util
import os
import sys

import pytest

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "stress_gallery.py")


def stress_module():
    spec = importlib.util.spec_from_file_location("stress_gallery", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_writers_killed_mid_transaction_lose_nothing_acknowledged(tmp_path):
    summary = stress_module().kill(str(tmp_path), writers=3, rounds=8, seed=1, max_delay=0.3)
    assert summary["kills"] >= 8 and summary["version"] > 20

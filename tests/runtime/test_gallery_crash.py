"""Crash safety: a writer SIGKILLed at random moments always leaves a gallery that loads to the state before
or after the interrupted save (tools/stress_gallery.py runs the same check longer)."""
import importlib.util
import os
import sys

import pytest

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "stress_gallery.py")


def _stress_module():
    spec = importlib.util.spec_from_file_location("stress_gallery", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("autosave", [False, True])
def test_sigkill_during_enroll_save_loop_never_loses_or_corrupts(tmp_path, autosave):
    stress = _stress_module()
    summary = stress.stress(str(tmp_path / "g.metaedge"), iterations=200 if not autosave else 100,
                            min_kills=10 if not autosave else 5, seed=1 + autosave, autosave=autosave)
    assert summary["changes"] >= (200 if not autosave else 100)
    assert summary["kills"] >= (10 if not autosave else 5)
    assert summary["temp_files_after_next_save"] == 0  # what killed writers left, the next save removed

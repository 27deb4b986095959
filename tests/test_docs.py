"""docs/api.md is the current output of tools/gen_api_docs.py, and everything it documents has a docstring; no
tracked file cites a file outside the repository."""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gen_api_docs  # noqa: E402

ITEMS = gen_api_docs.public_items()


def test_api_reference_is_up_to_date():
    # A fresh interpreter: the output must not depend on what this test session imported or configured.
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import gen_api_docs; "
                           "sys.stdout.write(gen_api_docs.render())"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (ROOT / "docs" / "api.md").read_text() == proc.stdout, \
        "docs/api.md is stale: run python tools/gen_api_docs.py"


def test_rendering_is_deterministic():
    assert gen_api_docs.render() == gen_api_docs.render()


def test_the_brief_s_public_names_are_all_documented():
    names = {qualname for _, qualname, _ in ITEMS}
    expected = {"metaedge.EdgeClassifier", "metaedge.Prediction", "metaedge.Gallery", "metaedge.Bundle",
                "metaedge.build_info", "metaedge.cuda.is_available", "metaedge.cuda.DeviceArray",
                "metaedge.runtime.spec.ModelSpec", "metaedge.runtime.spec.PreprocessSpec",
                "metaedge.runtime.backends.open_backend", "metaedge.runtime.backends.Backend",
                "metaedge.export.export_bundle", "metaedge.export.build_engine", "metaedge.train.fit",
                "metaedge.train.TrainConfig", "metaedge.train.evaluate", "metaedge.train.EvalReport",
                "metaedge.train.build_backbone", "metaedge.train.save_checkpoint", "metaedge.train.load_checkpoint",
                "metaedge.train.data.SyntheticGlyphs", "metaedge.train.data.Omniglot",
                "metaedge.train.data.ImageFolderDataset", "metaedge.train.data.TaskSampler"}
    kernels = {f"metaedge.kernels.{n}" for n in ("l2_normalize", "class_prototypes", "update_prototypes", "topk",
                                                  "adapt_head", "preprocess")}
    assert expected | kernels <= names


@pytest.mark.parametrize("qualname,obj", [(q, o) for _, q, o in ITEMS], ids=[q for _, q, _ in ITEMS])
def test_every_public_item_has_a_docstring(qualname, obj):
    assert (inspect.getdoc(obj) or "").strip(), f"{qualname} has no docstring"


def test_every_listed_item_appears_in_the_reference():
    text = (ROOT / "docs" / "api.md").read_text()
    for _, qualname, _ in ITEMS:
        assert f"### {qualname}\n" in text


# Nothing in the repository may cite a file outside it: the design lives in docs/architecture.md. A data
# folder's default location may be named only beside the variable that overrides it (METAEDGE_OMNIGLOT).
OUTSIDE_CITATION = re.compile(r"\bDESIGN(\.md\b|\s+section\b|\s*§)|(\.\./)+shared/|/work/shared\b")


def _tracked_text_files():
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout (an sdist): the tracked files are unknown")
    for name in proc.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if b"\0" not in data[:8192]:
                yield name, data.decode("utf-8", "replace")


def test_nothing_cites_a_file_outside_the_repository():
    found = []
    for name, text in _tracked_text_files():
        if name == "tests/test_docs.py":   # this check and its own examples
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_CITATION.search(line) and "METAEDGE_OMNIGLOT" not in line:
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, ("these lines cite files outside the repository - point them to docs/architecture.md (or the "
                       "repository's own docs) instead:\n" + "\n".join(found))


def test_the_citation_check_can_fail():
    assert OUTSIDE_CITATION.search("semantics: DESIGN.md section 5")
    assert OUTSIDE_CITATION.search("(DESIGN §6/§7)") and OUTSIDE_CITATION.search("DESIGN section 4's")
    assert OUTSIDE_CITATION.search("see ../shared/data/omniglot/README.md")
    assert not OUTSIDE_CITATION.search("docs/architecture.md section 5; a shared gallery")

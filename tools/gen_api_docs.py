"""Regenerate docs/api.md from the public API's signatures and docstrings (tests/test_docs.py checks it is current).

    python tools/gen_api_docs.py

The list of what is public lives here (PUBLIC); the text comes from the code, so fix a docstring, not api.md.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (section title, module, names); None = every public function and class the module defines (or its __all__).
PUBLIC: list[tuple[str, str, list[str] | None]] = [
    ("metaedge", "metaedge", ["build_info", "EdgeClassifier", "Prediction", "Gallery", "Bundle"]),
    ("metaedge.kernels", "metaedge.kernels", None),
    ("metaedge.compact", "metaedge.compact", None),
    ("metaedge.cuda", "metaedge.cuda", ["is_available", "DeviceArray"]),
    ("metaedge.runtime.gallery", "metaedge.runtime.gallery",
     ["AuditEntry", "ImportReport", "TrainingSet", "ClassInfo", "ClassMatrix", "GalleryError", "GalleryCorruptError",
      "GalleryMismatchError", "GalleryVersionError", "GalleryReadOnlyError", "GalleryWriteError",
      "LabelConflictError", "UnknownLabelError"]),
    ("metaedge.runtime.spec", "metaedge.runtime.spec", ["ModelSpec", "PreprocessSpec"]),
    ("metaedge.runtime.backends", "metaedge.runtime.backends", ["open_backend", "Backend"]),
    ("metaedge.runtime.serve", "metaedge.runtime.serve", ["serve", "ServeConfig", "create_app", "ServerState",
                                                          "TokenStore"]),
    ("metaedge.export", "metaedge.export", ["export_bundle", "build_engine"]),
    ("metaedge.train", "metaedge.train", ["fit", "TrainConfig", "evaluate", "EvalReport", "build_backbone",
                                          "save_checkpoint", "load_checkpoint"]),
    ("metaedge.train.data", "metaedge.train.data", ["SyntheticGlyphs", "Omniglot", "ImageFolderDataset",
                                                    "TaskSampler"]),
]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs in defaults would make the output differ per run
_CLASS_REPR = re.compile(r"<class '([\w.]+)'>")


def _module_functions(module) -> list[str]:
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    return sorted(n for n in names if (inspect.isfunction(getattr(module, n, None))
                                       or inspect.isclass(getattr(module, n, None)))
                  and getattr(module, n).__module__ == module.__name__)


def public_items() -> list[tuple[str, str, object]]:
    """(section, qualified name, object) for every documented top-level item, in document order."""
    items = []
    for section, module_name, names in PUBLIC:
        module = importlib.import_module(module_name)
        for name in names if names is not None else _module_functions(module):
            items.append((section, f"{section}.{name}", getattr(module, name)))
    return items


def _is_public_member(cls, name: str, value) -> bool:
    if name.startswith("_") and name != "__init__":
        return False
    if name == "__init__":
        return False  # documented through the class signature
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return False  # fields are listed in their own table
    return isinstance(value, (property, staticmethod, classmethod)) or inspect.isfunction(value)


def public_members(cls) -> list[tuple[str, object]]:
    """Public methods and properties a class defines itself (or inherits from metaedge classes), source order."""
    seen: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not klass.__module__.startswith("metaedge"):
            continue
        for name, value in vars(klass).items():
            if _is_public_member(cls, name, value):
                seen[name] = value
    return list(seen.items())


class _Raw:
    """An annotation written as a string (``from __future__ import annotations``), shown without quotes."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _unquote(annotation):
    return _Raw(annotation) if isinstance(annotation, str) else annotation


def _signature(obj, name: str) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    sig = sig.replace(parameters=[p.replace(annotation=_unquote(p.annotation)) for p in sig.parameters.values()],
                      return_annotation=_unquote(sig.return_annotation))
    text = _CLASS_REPR.sub(r"\1", _ADDRESS.sub("", str(sig)))
    return f"{name}{text}"


def _doc(obj) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "")


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", title.lower().replace(" ", "-"))


def _member_block(cls, name: str, value) -> list[str]:
    if isinstance(value, property):
        head, doc = f"{name}  (property)", _doc(value.fget) if value.fget else ""
        doc = doc or _doc(value)
    else:
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        kind = "  (classmethod)" if isinstance(value, classmethod) else \
            "  (staticmethod)" if isinstance(value, staticmethod) else ""
        head, doc = _signature(getattr(cls, name), name) + kind, _doc(func)
    lines = [f"- **`{head}`**"]
    if doc:
        lines += ["", *["  " + line if line else "" for line in doc.splitlines()]]
    return lines + [""]


def _fields_table(cls) -> list[str]:
    lines = ["| field | type | default |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default.value if isinstance(f.default, enum.Enum) else f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "required"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        cells = [f.name, type_name, _ADDRESS.sub("", default)]
        lines.append("| " + " | ".join("`" + c.replace("|", "\\|") + "`" for c in cells) + " |")
    return lines + [""]


def _item_block(qualname: str, obj) -> list[str]:
    short = qualname.rsplit(".", 1)[1]
    kind = "class" if inspect.isclass(obj) else "function"
    # A dataclass's signature repeats its fields table; keep the code line short.
    signature = f"{short}(**fields)" if dataclasses.is_dataclass(obj) else _signature(obj, short)
    lines = [f"### {qualname}", "", "```python", f"{'class ' if kind == 'class' else ''}{signature}",
             "```", "", _doc(obj), ""]
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            lines += ["Fields:", "", *_fields_table(obj)]
        members = public_members(obj)
        if members:
            lines += ["Members:", ""]
            for name, value in members:
                lines += _member_block(obj, name, value)
    return lines


def render() -> str:
    items = public_items()
    parts = ["# metaedge API reference", "",
             "Generated from the signatures and docstrings by `python tools/gen_api_docs.py`; do not edit by hand.",
             "Guides: [enroll your own classes](guide_enroll.md), [train on your own image folder]"
             "(guide_train_folder.md), [Jetson](jetson.md), [on-device SDK](sdk.md), [CLI](cli.md).", "",
             "## Contents", ""]
    sections: dict[str, list[str]] = {}
    for section, qualname, _ in items:
        sections.setdefault(section, []).append(qualname)
    for section, names in sections.items():
        parts.append(f"- [{section}](#{_anchor(section)})")
        parts += [f"  - [{q.rsplit('.', 1)[1]}](#{_anchor(q)})" for q in names]
    parts.append("")
    current = None
    for section, qualname, obj in items:
        if section != current:
            current = section
            module_doc = _doc(importlib.import_module(section)).split("\n\n")[0]
            parts += [f"## {section}", "", module_doc, ""]
        parts += _item_block(qualname, obj)
    text = "\n".join(parts)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "api.md").write_text(render())
    print(f"wrote {ROOT / 'docs' / 'api.md'}")

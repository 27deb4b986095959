"""Names of a package imported on first use (PEP 562), so that `import metaedge` stays cheap and never fails
for lack of torch, CUDA or TensorRT. Type checkers see the same names through each package's
`if TYPE_CHECKING:` imports (tests/test_typing.py checks that both lists agree)."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, attrs: Mapping[str, str], submodules: Iterable[str], namespace: dict[str, Any],
                 before: Callable[[str], None] | None = None
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's ``__getattr__`` and ``__dir__``: ``attrs`` maps a name to the module that defines it,
    ``submodules`` are imported as ``package.name``; ``before(name)`` runs first (to say what to install)."""
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if before is not None and (name in attrs or name in subs):
            before(name)
        if name in attrs:
            return getattr(importlib.import_module(attrs[name]), name)
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(attrs) | subs)

    return __getattr__, __dir__

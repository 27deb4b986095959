"""Class labels: what a valid label is, and the one normal form (NFC) labels are stored and looked up in."""
from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["check_label", "nfc", "MAX_LABEL_LENGTH"]

MAX_LABEL_LENGTH = 128
# Cs: lone surrogates (not encodable as UTF-8). Unassigned code points stay allowed: a label with a character
# newer than this Python's Unicode database must still load.
_FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


def check_label(label: Any, what: str = "label") -> str:
    """A valid class label, NFC-normalised: a non-empty str of at most MAX_LABEL_LENGTH characters of valid
    Unicode (no lone surrogates), without control or format characters
    and without leading/trailing whitespace. Raises TypeError/ValueError naming ``what``."""
    if not isinstance(label, str):
        raise TypeError(f"`{what}`: expected a str, got {type(label).__name__}")
    if label == "" or label.strip() == "":
        raise ValueError(f"`{what}`: expected a non-empty label, got {label!r}")
    if label != label.strip():
        raise ValueError(f"`{what}`: leading or trailing whitespace is not allowed, got {label!r}")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"`{what}`: at most {MAX_LABEL_LENGTH} characters, got {len(label)} "
                         f"({label[:20]!r}...)")
    for ch in label:
        category = unicodedata.category(ch)
        if category in _FORBIDDEN_CATEGORIES:
            kind = ("a lone surrogate (not valid Unicode)" if category == "Cs"
                    else "control characters (newlines, tabs, ...)")
            raise ValueError(f"`{what}`: {kind} is not allowed, got {label!r}")
    normal = unicodedata.normalize("NFC", label)
    if len(normal) > MAX_LABEL_LENGTH:
        raise ValueError(f"`{what}`: at most {MAX_LABEL_LENGTH} characters, got {len(normal)}")
    return normal


def nfc(label: Any) -> Any:
    """Labels are stored NFC-normalised (see check_label), so look-ups normalise too: 'é' typed as e + accent
    finds the class enrolled as the single character. Non-strings pass through (they match nothing)."""
    return unicodedata.normalize("NFC", label) if isinstance(label, str) else label

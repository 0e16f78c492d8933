"""Study metadata (donor, condition, day, section) from file names."""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["METADATA_FIELDS", "CONDITIONS", "compile_pattern", "parse_name"]

#: Metadata columns of the output table, in order.
METADATA_FIELDS = ("donor", "condition", "day", "section")
#: Allowed conditions.
CONDITIONS = ("labeled", "unlabeled")

_FIELD_REGEX = {
    "donor": r"[^_/\\]+?",
    "condition": r"(?i:labeled|unlabeled|labelled|unlabelled)",
    "day": r"\d+",
    "section": r"[^_/\\]+?",
}


@lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> re.Pattern:
    """Turn ``{donor}_{condition}_d{day}_s{section}`` into an anchored regex.

    Literal text matches itself (case-insensitive); ``{name}`` fields become
    named groups. Unknown names match any text without underscores.

    Raises
    ------
    ValueError
        When the pattern has unbalanced braces, a repeated or invalid field.
    """
    parts = re.split(r"(\{[^{}]*\})", pattern)
    regex = []
    seen = set()
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if not name.isidentifier():
                raise ValueError(f"invalid field {part!r} in pattern {pattern!r}")
            if name in seen:
                raise ValueError(f"field {part!r} repeated in pattern {pattern!r}")
            seen.add(name)
            regex.append(f"(?P<{name}>{_FIELD_REGEX.get(name, r'[^_/]+?')})")
        else:
            if "{" in part or "}" in part:
                raise ValueError(f"unbalanced braces in pattern {pattern!r}")
            regex.append(re.escape(part))
    return re.compile("^" + "".join(regex) + "$", re.IGNORECASE)


def parse_name(stem: str, pattern: str) -> dict | None:
    """Metadata of a file stem, or None when it does not match ``pattern``.

    ``day`` becomes an int; ``condition`` is normalised to ``labeled`` or
    ``unlabeled`` (British spellings accepted).
    """
    match = compile_pattern(pattern).match(stem)
    if match is None:
        return None
    meta = {k: v for k, v in match.groupdict().items()}
    if "day" in meta:
        meta["day"] = int(meta["day"])
    if "condition" in meta:
        meta["condition"] = meta["condition"].lower().replace("labelled", "labeled")
    return meta

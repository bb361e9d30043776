"""Text that came from user data, made safe to show in a terminal."""

from __future__ import annotations

MESSAGE_CHARS = 200  #: of a message that quotes the data


def printable(text: str, limit: int = MESSAGE_CHARS, *, keep_lines: bool = False) -> str:
    """`text` safe for a terminal: control characters (ANSI escapes, bells, NULs) shown escaped, cut to
    `limit` characters. `keep_lines` keeps newlines and tabs, for messages that are several lines long."""
    kept = "\n\t" if keep_lines else ""
    cut = text[:limit]
    safe = "".join(c if c.isprintable() or c == " " or c in kept else ascii(c)[1:-1] for c in cut)
    return safe + (f"… ({len(text) - limit:,} more characters)" if len(text) > limit else "")

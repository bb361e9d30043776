from __future__ import annotations

from coldbatch.cli import entry

entry()

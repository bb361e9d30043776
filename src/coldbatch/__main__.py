from __future__ import annotations

from coldbatch.cli import main

main()

"""The engines' default model names and how a GGUF file name becomes a model id, without the engines.

Why apart: `coldbatch run` names the embedded server's defaults (cli/jobs.py, cli/preflight.py) on every run,
and importing them from engines/embedding.py and engines/llamacpp.py loaded six engine modules (~45 ms)
that only a server that really runs a model needs (issue 11, client weight). The engines import these.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

EMBEDDINGS: Final = "/v1/embeddings"
DEFAULT_EMBEDDING_MODEL: Final = "all-MiniLM-L6-v2"  #: the embedding engine's model (engines/embedding.py)
DEFAULT_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"  #: the llama-cpp engine's chat model (engines/llamacpp.py)
_QUANT_SUFFIX: Final = re.compile(r"[.-](?:I?Q\d[\w]*|F16|F32|BF16)$", re.IGNORECASE)


def model_id(path: Path) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`."""
    stem = path.name.removesuffix(".gguf")
    return _QUANT_SUFFIX.sub("", stem) or stem

"""The provider's published Batch API limits and the endpoints it accepts (spec §3.2, §5.2).

Every number here is OpenAI's unless it says otherwise; the CLI and the server take them as defaults
and let the user override them (Azure allows 100,000 requests per file, for example).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CHAT: Final = "/v1/chat/completions"
EMBEDDINGS: Final = "/v1/embeddings"
COMPLETIONS: Final = "/v1/completions"
RESPONSES: Final = "/v1/responses"
MODERATIONS: Final = "/v1/moderations"
#: Anthropic's Messages API: never a `url` of an OpenAI batch line; the server stores an Anthropic Message Batch
#: as lines with this url (server/anthropic_api.py), and `validate` knows its `{"custom_id", "params"}` lines
MESSAGES: Final = "/v1/messages"

#: Every `url`/`endpoint` value the current OpenAI spec accepts for a batch.
ENDPOINTS: Final = (
    RESPONSES,
    CHAT,
    EMBEDDINGS,
    COMPLETIONS,
    MODERATIONS,
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

MAX_REQUESTS: Final = 50_000
MAX_FILE_BYTES: Final = 200 * 1000 * 1000  # "200 MB"; decimal megabytes, the conservative reading
MAX_EMBEDDING_INPUTS: Final = 50_000
#: coldbatch's own guard, not an OpenAI rule: a single request line above this is almost always a bug
#: (a whole document pasted into one row) and is reported instead of being sent.
MAX_LINE_BYTES: Final = 10 * 1000 * 1000


#: Anthropic's Message Batches: requests and bytes per batch; custom_id alphabet and length
ANTHROPIC_MAX_REQUESTS: Final = 100_000
ANTHROPIC_MAX_BYTES: Final = 256 * 1000 * 1000
ANTHROPIC_CUSTOM_ID: Final = r"^[a-zA-Z0-9_-]{1,64}$"


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one batch input file must respect."""

    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_FILE_BYTES
    max_line_bytes: int = MAX_LINE_BYTES
    max_embedding_inputs: int = MAX_EMBEDDING_INPUTS

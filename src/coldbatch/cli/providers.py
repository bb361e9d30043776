"""`--provider openai|azure|anthropic|gemini` for run, prepare, validate and estimate (see providers/kinds.py;
what the choice implies, a job's kind, limits and mode, is providers/choose.py, shared with the job API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from coldbatch.providers import kinds as K


def provider_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--provider",
        type=click.Choice(K.KINDS),
        help="The Batch API's dialect (default: from the base URL's host, else the model's family "
        "— claude-* anthropic, gemini-* gemini — else openai). Sets the batch limits, translates "
        "the requests and parses the answers.",
    )(fn)

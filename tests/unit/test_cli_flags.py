"""`run` and `serve` read their flags through frozen dataclasses (cli/flags.py): a flag added to the command
but not to its dataclass would be dropped without a word (serve) or land among the request options (run),
so the two lists are held equal here."""

from __future__ import annotations

import dataclasses

import click
import pytest

from coldbatch.cli.flags import split_flags
from coldbatch.cli.jobs import RunFlags, run
from coldbatch.cli.serve import ServeFlags, serve

#: run's parameters that are not its own flags: the arguments, and what `options.spec_from`, `limits_from`
#: and the --examples job read from the rest
RUN_REST = {
    "input_path",
    "output",
    "model",
    "prompt",
    "system",
    "endpoint",
    "input_column",
    "max_tokens",
    "temperature",
    "labels",
    "confidence",
    "schema_file",
    "body_json",
    "id_column",
    "on_duplicate_id",
    "fmt",
    "columns",
    "no_header",
    "max_requests",
    "max_bytes",
    "max_line_bytes",
    "examples_path",
    "examples_label_column",
    "embedding_model",
}


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _params(cmd: click.Command) -> set[str]:
    return {p.name for p in cmd.params if p.name}


def test_every_serve_flag_is_a_field_and_every_field_a_flag() -> None:
    assert _params(serve) == _names(ServeFlags)


def test_runs_flags_and_its_request_options_together_are_its_parameters() -> None:
    assert _names(RunFlags) | RUN_REST == _params(run)
    assert not _names(RunFlags) & RUN_REST


def test_split_flags_types_the_commands_own_flags_and_passes_the_rest_on() -> None:
    @dataclasses.dataclass(frozen=True)
    class Flags:
        port: int
        host: str

    flags, rest = split_flags(Flags, {"port": 8000, "host": "127.0.0.1", "model": "m"})
    assert flags == Flags(port=8000, host="127.0.0.1") and rest == {"model": "m"}
    with pytest.raises(TypeError, match="host"):
        split_flags(Flags, {"port": 1})

"""The `anomon` command line: one typer app, whose commands are typed functions.

The commands live by topic (`model.py`: train to bench; `stream.py`: ingest to demo; `console.py`: the
web console; `learn.py`: learn) and are merged into `app`. A command group is one more module with its
own `typer.Typer()`, added under its name: `app.add_typer(store.app, name="store")` gives
`anomon store add|list|remove`.

Errors a user can cause, and usage errors, end as one line on stderr and exit code 2; nothing prints
a traceback unless ANOMON_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer

from monitor.cli import console, learn, model, store, stream

app = typer.Typer(
    name="anomon",
    help="Streaming video anomaly monitor (AnoMem / DAAD).",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(model.app)
app.add_typer(stream.app)
app.add_typer(console.app)
app.add_typer(store.app, name="store", rich_help_panel="Fleet")
app.add_typer(learn.app)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `anomon` with these arguments (default: `sys.argv[1:]`); returns the exit code.

    `--help` prints and exits through SystemExit(0), as it does everywhere.
    """
    command = typer.main.get_command(app)
    name, args = _command_line(command, list(sys.argv[1:] if argv is None else argv))
    try:
        with command.make_context("anomon", args) as ctx:
            return int(command.invoke(ctx) or 0)
    except typer.Exit as done:  # --help
        raise SystemExit(done.exit_code) from None
    except typer.TyperException as err:  # a usage error: unknown flag, missing option, bad value
        print(f"{name}: error: {err.format_message().rstrip('.')}; see '{name} --help'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not _is_user_error(err) or os.environ.get("ANOMON_DEBUG") == "1":
            raise
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2


def _is_user_error(err: Exception) -> bool:
    # ConfigError, DataError and CheckpointError are ValueErrors; the rest are imported only here, on
    # the way out, so that starting the CLI loads none of their modules (torch, OpenCV, Kafka).
    if isinstance(err, ValueError | FileNotFoundError):
        return True
    from model.runtime.base import BackendUnavailableError
    from monitor.broker import BrokerError
    from monitor.ingest import PublishError
    from monitor.kafka_client import KafkaUnavailableError

    return isinstance(err, BackendUnavailableError | BrokerError | KafkaUnavailableError | PublishError)


def _command_line(command: Any, args: list[str]) -> tuple[str, list[str]]:
    """The called command's name (`anomon ingest`), and `args` with each list option's values spread.

    A list option takes several values after one flag, as argparse's nargs did and scripts and docs
    write it, or the flag repeated, as click reads it: `--batch-sizes 1 8 32` is passed on as
    `--batch-sizes 1 --batch-sizes 8 --batch-sizes 32`. No command takes positional arguments, so a
    bare word after a list option's value can only be another of its values.
    """
    names, out = ["anomon"], []
    value_options, list_options = _options(command)
    awaiting: str | None = None  # an option whose value comes next
    spreading: str | None = None  # a list option that a bare word belongs to
    for i, arg in enumerate(args):
        if awaiting:
            out.append(arg)
            spreading = awaiting if awaiting in list_options else None
            awaiting = None
        elif arg == "--":
            out.extend(args[i:])
            break
        elif arg.startswith("-") and arg != "-":
            flag, has_value, _ = arg.partition("=")
            awaiting = flag if flag in value_options and not has_value else None
            spreading = flag if flag in list_options and has_value else None
            out.append(arg)
        elif spreading:
            out.extend((spreading, arg))
        else:
            subcommand = getattr(command, "commands", {}).get(arg)
            if subcommand is not None:
                command = subcommand
                names.append(arg)
                value_options, list_options = _options(command)
            out.append(arg)
    return " ".join(names), out


def _options(command: Any) -> tuple[set[str], set[str]]:
    """The flags of `command` that take a value, and those of them that may be given several."""
    options = [p for p in command.params if p.param_type_name == "option" and not p.is_flag and not p.count]
    return (
        {flag for p in options for flag in p.opts},
        {flag for p in options if p.multiple for flag in p.opts},
    )

"""The ``vsync-stream`` command: the Faust CLI (``vsync-stream worker`` …) plus the product's own.

Own commands are plain click commands added to Faust's command group, so they keep ordinary exit
codes (a NOK verification exits 1) and do not start a Faust worker.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from vsync_stream.auth import operate_tokens
from vsync_stream.bridges.faust_seam import faust_cli, hide_commands
from vsync_stream.cli_support import (
    cancel_reconciliation,
    print_results_table,
    request_verification,
    run_reconciliation,
)
from vsync_stream.cli_support import load_settings as _settings
from vsync_stream.errors import VsyncError
from vsync_stream.settings import Settings

__all__ = ["PRODUCT_COMMANDS", "main", "print_results_table", "request_verification", "run_reconciliation"]

# The product's commands in the order ``vsync-stream --help`` lists them, each with its line there
# (one line in 80 columns: at most 60 characters).
# Commands registered without a line here follow them, with their own short help.
PRODUCT_COMMANDS: dict[str, str] = {
    "worker": "Run a worker: fold events, verify, serve the web view.",
    "verify": "Verify every pair with the DICT now (via a worker).",
    "reconcile": "Reconcile one pair with the DICT now (via a worker).",
    "adapter": "Run only the Pulsar-to-Kafka adapter.",
    "bootstrap": "Load the participant's export into the entries table.",
    "preflight": "Diff the export against the DICT's CID files.",
    "migrate": "Create or upgrade the PostgreSQL audit schema.",
    "settings": "List every setting, its env variable and default.",
    "cid": "Print the CID of a DICT entry (JSON).",
    "vsync": "Print the VSync (XOR of every CID) of a CID file.",
    "diff": "Compare two CID files: the CIDs only in each.",
    "bridge": "Serve the Bridge API in front of BCB's DICT REST API.",
    "simulator": "Run the DICT simulator (a gRPC Bridge server).",
    "demo": "Run the main job end to end on the local stack.",
    "drill": "Run BACEN's homologation drill on the local stack.",
}
# Faust's own commands that apply to this product; its others (agents, tables, send, reset,
# livecheck, model(s), completion, clean-versions) are hidden from --help but still run when named.
FAUST_COMMANDS_SHOWN = ("worker",)


@click.command("verify")
@click.option("--url", default=None, help="Worker web view URL [default: http://VSYNC_WEB_HOST:VSYNC_WEB_PORT]")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def verify_command(url: str | None, as_json: bool) -> None:
    """Verify every (participant, key type) with the DICT now, through a running worker.

    Exits 0 when every pair is OK, 1 otherwise.
    """
    settings = _settings()
    tokens = operate_tokens(settings)
    if not tokens:
        raise click.ClickException("no API token with the operate scope configured: set VSYNC_API_TOKENS or "
                                   "VSYNC_API_TOKENS_FILE (a bare token has scopes operate and entries)")
    rows = asyncio.run(request_verification(url or f"http://{settings.web_host}:{settings.web_port}", tokens[0]))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_results_table(rows)
    if any(r["result"] != "OK" for r in rows):
        sys.exit(1)


@click.command("reconcile")
@click.option("--participant", default=None, help="ISPB of the pair to reconcile.")
@click.option("--key-type", "key_type", default=None, type=click.Choice(["CPF", "CNPJ", "PHONE", "EMAIL", "EVP"]))
@click.option("--cancel", "cancel_id", default=None, metavar="ID",
              help="Cancel the running reconciliation ID instead (e.g. one waiting for the DICT's CID file budget).")
@click.option("--url", default=None, help="Worker web view URL [default: http://VSYNC_WEB_HOST:VSYNC_WEB_PORT]")
def reconcile_command(participant: str | None, key_type: str | None, cancel_id: str | None, url: str | None) -> None:
    """Reconcile one (participant, key type) with the DICT now, through a running worker.

    Shows the progress of each phase; exits 0 when the DICT answers OK afterwards, 1 otherwise.
    With --cancel ID, cancels that run (releasing its pair) and exits 0.
    """
    settings = _settings()
    tokens = operate_tokens(settings)
    if not tokens:
        raise click.ClickException("no API token with the operate scope configured: set VSYNC_API_TOKENS or "
                                   "VSYNC_API_TOKENS_FILE (a bare token has scopes operate and entries)")
    target = url or f"http://{settings.web_host}:{settings.web_port}"
    if cancel_id is not None:
        cancelled = asyncio.run(cancel_reconciliation(target, tokens[0], cancel_id))
        click.echo(f"reconciliation {cancelled['id']} of {cancelled['participant']}/{cancelled['keyType']}: "
                   f"cancel requested in phase {cancelled['phase']!r}")
        return
    if participant is None or key_type is None:
        raise click.UsageError("give --participant and --key-type (or --cancel ID)")
    run = asyncio.run(run_reconciliation(target, tokens[0], participant, key_type))
    click.echo(f"reconciliation {run['id']}: path {run['path']}, added {run['added']}, removed {run['removed']}, "
               f"changed {run['changed']}, result {run['result']}" + (f" ({run['error']})" if run["error"] else ""))
    if run["result"] != "OK":
        sys.exit(1)


@click.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the PostgreSQL audit schema."""
    from vsync_stream.bridges.audit_store import AuditStore

    async def run() -> int:
        async with AuditStore(_settings().postgres_dsn.get_secret_value(), max_size=1) as store:
            return await store.migrate()

    try:
        click.echo(f"audit schema at version {asyncio.run(run())}")
    except VsyncError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("cid")
@click.argument("entry_file", type=click.File("rb"))
def cid_command(entry_file: Any) -> None:
    """Print the CID of an entry (JSON: a bare DICT entry or an event wrapping one; '-' reads stdin).

    The entry is checked against the event contract first; a breach is reported on stderr as a
    warning (the DICT's own data is hashed as it is), a missing or mistyped field is an error.
    """
    import orjson

    from vsync_stream.domain.entry import Entry
    from vsync_stream.domain.events import validate_event_doc
    from vsync_stream.errors import InvalidEvent

    try:
        doc = orjson.loads(entry_file.read())
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"not JSON (UTF-8): {exc.msg}") from None
    entry_doc = doc.get("entry", doc) if isinstance(doc, dict) else doc
    event = {"eventId": "00000000-0000-4000-8000-000000000000", "action": "key.created",
             "occurredAt": "2000-01-01T00:00:00Z", "entry": entry_doc}
    try:
        validate_event_doc(event)
    except InvalidEvent as exc:
        if exc.code in ("missing_field", "wrong_type", "not_an_object", "unknown_key_type", "request_id_not_uuid"):
            raise click.ClickException(f"not a DICT entry: {exc.reason}") from None
        click.echo(f"warning: {exc.reason} ({exc.code}); hashing the values as given", err=True)
    click.echo(Entry.from_json(entry_doc).cid)


@click.command("settings")
@click.option("--markdown", is_flag=True, help="Print the Markdown table of README.md's configuration reference.")
def settings_command(markdown: bool) -> None:
    """List every setting with its environment variable, default and meaning."""
    if markdown:
        from vsync_stream.settings_doc import render_settings_table

        click.echo(render_settings_table(), nl=False)
        return
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(secret)" if ("dsn" in name or "token" in name) and default else default
        click.echo(f"VSYNC_{name.upper():<28} default={shown!s:<45} {field.description or ''}")


def _register_own_commands() -> None:
    from vsync_stream.adapter import adapter_command
    from vsync_stream.bridges.bridge_server import bridge_command
    from vsync_stream.cidtools import diff_command, vsync_command
    from vsync_stream.demo import demo_command
    from vsync_stream.drill import drill_command
    from vsync_stream.golive import bootstrap_command, preflight_command
    from vsync_stream.simulator.cli import simulator_command

    faust_commands = [name for name in faust_cli.commands if name not in FAUST_COMMANDS_SHOWN]
    faust_cli.help = ("vsync-stream: keeps a Pix participant's DICT keys provably in sync with BACEN.\n\n"
                      "`vsync-stream worker -l info` runs a worker; the other commands talk to a running worker, "
                      "to CID files or to the local stack. Settings: `vsync-stream settings`.")
    for command in (verify_command, reconcile_command, migrate_command, cid_command, settings_command,
                    vsync_command, diff_command, simulator_command, demo_command, drill_command, adapter_command,
                    bootstrap_command, preflight_command, bridge_command):
        if command.name not in faust_cli.commands:
            faust_cli.add_command(command)
    hide_commands(faust_commands)
    faust_cli.format_commands = _format_commands  # type: ignore[method-assign]


def _format_commands(ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """The commands section of ``--help``: the product's first, in :data:`PRODUCT_COMMANDS` order."""
    shown = {name: faust_cli.commands[name] for name in faust_cli.list_commands(ctx)
             if not faust_cli.commands[name].hidden}
    order = [name for name in PRODUCT_COMMANDS if name in shown] + sorted(set(shown) - set(PRODUCT_COMMANDS))
    width = max((len(name) for name in order), default=0)
    rows = [(name, PRODUCT_COMMANDS.get(name) or shown[name].get_short_help_str(limit=formatter.width - width - 6))
            for name in order]
    with formatter.section("Commands"):
        formatter.write_dl(rows)


def quiet_for_json_logs(argv: list[str], log_format: str) -> list[str]:
    """``argv`` with Faust's ``--quiet`` before ``worker`` when the logs are JSON lines.

    Faust prints a start-up banner and a spinner on the console, outside logging; ``--quiet`` drops
    only those (log records are unaffected), so every line a JSON-logging worker writes is JSON.
    """
    if log_format != "json" or "worker" not in argv[1:] or {"-q", "--quiet"} & set(argv):
        return argv
    at = argv.index("worker", 1)
    return [*argv[:at], "--quiet", *argv[at:]]


def loglevel_from_settings(argv: list[str], log_level: str) -> list[str]:
    """``argv`` with ``--loglevel <VSYNC_LOG_LEVEL>`` after ``worker`` unless ``-l``/``--loglevel`` is given."""
    if "worker" not in argv[1:] or any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in argv):
        return argv
    at = argv.index("worker", 1)
    return [*argv[:at + 1], "--loglevel", log_level, *argv[at + 1:]]


def main() -> None:
    """Entry point of the ``vsync-stream`` console script."""
    _register_own_commands()
    from vsync_stream.app import create_app

    try:
        settings = _settings()
        app = create_app(settings)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except VsyncError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    sys.argv = loglevel_from_settings(quiet_for_json_logs(sys.argv, settings.log_format), settings.log_level)
    app.faust.main()

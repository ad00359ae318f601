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
from faust.cli.base import cli as faust_cli
from pydantic import ValidationError

from vsync_stream.errors import VsyncError
from vsync_stream.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  VSYNC_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise click.ClickException("invalid configuration:\n" + "\n".join(lines)) from None


def print_results_table(rows: list[dict[str, Any]], out: Any = None) -> None:
    """Print verification rows (camelCase dicts) as an aligned table."""
    out = out or sys.stdout
    header = f"{'participant':<12} {'keyType':<6} {'entries':>9}  {'vsync':<64}  result"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        print(f"{r['participant']:<12} {r['keyType']:<6} {r['entries']:>9}  {r['vsync']}  {r['result']}", file=out)


async def request_verification(target: str, token: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Ask a running worker to verify now (``POST /verify``) and return its verification rows.

    Args:
        target: the worker's web view base URL, e.g. ``http://127.0.0.1:16066``.
        token: a bearer token the worker accepts.
        timeout_s: overall deadline, seconds.

    Raises:
        click.ClickException: the worker refused, stayed not ready, or cannot be reached.
    """
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            for _attempt in range(30):
                async with session.post(f"{target}/verify", headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 503:  # recovering: the worker says when to come back
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "2")))
                        continue
                    if resp.status != 200:
                        raise click.ClickException(f"worker answered {resp.status}: {body.get('error', body)}")
                    rows: list[dict[str, Any]] = body["verifications"]
                    return rows
            raise click.ClickException("worker stayed not ready (recovering) for too long")
    except aiohttp.ClientError as exc:
        raise click.ClickException(f"cannot reach the worker at {target} ({exc}); "
                                   "is `vsync-stream worker` running?") from exc


@click.command("verify")
@click.option("--url", default=None, help="Worker web view URL [default: http://VSYNC_WEB_HOST:VSYNC_WEB_PORT]")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def verify_command(url: str | None, as_json: bool) -> None:
    """Verify every (participant, key type) with the DICT now, through a running worker.

    Exits 0 when every pair is OK, 1 otherwise.
    """
    settings = _settings()
    tokens = settings.tokens()
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


async def run_reconciliation(target: str, token: str, participant: str, key_type: str, progress: bool = True,
                             timeout_s: float = 3600.0) -> dict[str, Any]:
    """Ask a running worker to reconcile one pair and follow it to the end, with a progress bar.

    Returns:
        The finished run (camelCase JSON: path, counts added/removed/changed, result).

    Raises:
        click.ClickException: the worker refused, or the run did not finish within ``timeout_s``.
    """
    import aiohttp
    from tqdm import tqdm

    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            async with session.post(f"{target}/reconcile", headers=headers,
                                    json={"participant": participant, "keyType": key_type}) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 202:
                    raise click.ClickException(f"worker answered {resp.status}: {body.get('error', body)}")
        except aiohttp.ClientError as exc:
            raise click.ClickException(f"cannot reach the worker at {target} ({exc})") from exc
        run_id = body["id"]
        deadline = asyncio.get_running_loop().time() + timeout_s
        phase = None
        with tqdm(total=0, desc="starting", file=sys.stderr, disable=not progress, mininterval=0.5) as bar:
            while True:
                async with session.get(f"{target}/reconciliations/{run_id}") as resp:
                    run: dict[str, Any] = await resp.json(content_type=None)
                if run.get("phase") != phase:
                    phase = run.get("phase")
                    bar.reset(total=run["progress"]["total"] or None)
                    bar.set_description(str(phase) if not run.get("waitingFor") else f"{phase}: {run['waitingFor']}")
                bar.n = run["progress"]["done"]
                bar.refresh()
                if run.get("finishedAt"):
                    return run
                if asyncio.get_running_loop().time() > deadline:
                    raise click.ClickException(f"reconciliation {run_id} still running after {timeout_s:.0f} s")
                await asyncio.sleep(0.5)


async def cancel_reconciliation(target: str, token: str, run_id: str) -> dict[str, Any]:
    """Ask a running worker to cancel a reconciliation (``POST /reconciliations/{id}/cancel``).

    Returns:
        The run as the coordinator holds it (camelCase JSON).

    Raises:
        click.ClickException: the worker refused, does not know the run, or cannot be reached.
    """
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            async with session.post(f"{target}/reconciliations/{run_id}/cancel",
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                body: dict[str, Any] = await resp.json(content_type=None)
                if resp.status != 202:
                    raise click.ClickException(f"worker answered {resp.status}: {body.get('error', body)}")
                return body
        except aiohttp.ClientError as exc:
            raise click.ClickException(f"cannot reach the worker at {target} ({exc})") from exc


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
    tokens = settings.tokens()
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
    from vsync_stream.cidtools import diff_command, vsync_command
    from vsync_stream.demo import demo_command
    from vsync_stream.drill import drill_command
    from vsync_stream.simulator.cli import simulator_command

    faust_cli.help = ("vsync-stream: keeps a Pix participant's DICT keys provably in sync with BACEN.\n\n"
                      "`vsync-stream worker -l info` runs a worker; the other commands talk to a running worker, "
                      "to CID files or to the local stack. Settings: `vsync-stream settings`.")
    for command in (verify_command, reconcile_command, migrate_command, cid_command, settings_command,
                    vsync_command, diff_command, simulator_command, demo_command, drill_command, adapter_command):
        if command.name not in faust_cli.commands:
            faust_cli.add_command(command)


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

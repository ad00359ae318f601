"""Going live at a participant: ``vsync-stream bootstrap`` and ``vsync-stream preflight``.

``bootstrap`` loads the participant's own export into the entries table (``vsync_stream/bootstrap.py``
says how, and how it hands over to the live stream); ``preflight`` diffs the export against the
DICT's CID file per (participant, key type) through the Bridge, so the operator knows the size of
the first reconciliation before going live.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from vsync_stream.bootstrap import LoadPaths, prepare, run_load
from vsync_stream.cli_support import load_settings
from vsync_stream.domain.cidset import CidSetDiff
from vsync_stream.domain.export import iter_export
from vsync_stream.errors import VsyncError
from vsync_stream.settings import Settings

EXIT_REJECTED = 1
EXIT_FAILED = 2


def _settings() -> Settings:
    return load_settings()


def print_summary(summary: dict[str, Any], out: Any = None) -> None:
    """Print a bootstrap summary: one row per (participant, key type), then the totals."""
    out = out or sys.stdout
    header = f"{'participant':<12} {'keyType':<6} {'entries':>10}  vsync"
    print(header, file=out)
    print("-" * (len(header) + 60), file=out)
    for row in summary["pairs"]:
        print(f"{row['participant']:<12} {row['keyType']:<6} {row['entries']:>10}  {row['vsync']}", file=out)
    print(f"rows read {summary['rows']}, loaded {summary['loaded']}, rejected {summary['rejected']}"
          + (f" (see {summary['rejectsFile']})" if summary["rejected"] else ""), file=out)


@click.command("bootstrap")
@click.argument("exports", nargs=-1)
@click.option("--prepare", "prepare_only", is_flag=True,
              help="Only create the topics and the Pulsar subscription and check the preconditions (step 1, "
                   "before the export is taken).")
@click.option("--rejects", "rejects_path", default="bootstrap-rejects.jsonl", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Rejected rows, one JSON object each (file, line, code, reason); the checkpoint (.state) and "
                   "the spool (.spool/, ~300 bytes of disk per row) go next to it.")
@click.option("--summary", "summary_path", default="bootstrap-summary.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Where the summary is written (JSON).")
@click.option("--jobs", default=min(4, os.cpu_count() or 1), show_default=True, type=click.IntRange(1, 64),
              help="Processes scanning a plain JSON Lines file of 32 MB or more (one byte range each); CSV, gzip and "
                   "stdin are scanned by one.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def bootstrap_command(exports: tuple[str, ...], prepare_only: bool, rejects_path: Path, summary_path: Path,
                      jobs: int, no_progress: bool) -> None:
    """Load the participant's export (JSON Lines or CSV, gzip or not; - = stdin) into the entries table.

    Run it with every worker of VSYNC_APP_ID stopped; start them afterwards. Exit 0 when every row
    was loaded, 1 when some were rejected (the others are loaded), 2 when the load could not run or
    stopped (run the same command again: it goes on from its checkpoint).
    """
    settings = _settings()
    try:
        if prepare_only:
            if exports:
                raise click.UsageError("--prepare takes no export")
            asyncio.run(prepare(settings))
            click.echo(f"ready: topics of VSYNC_APP_ID={settings.app_id} exist and the table is empty, no worker "
                       f"runs, the Pulsar subscription {settings.pulsar_subscription} keeps events from now on. "
                       "Take the export now, then run: vsync-stream bootstrap EXPORT...")
            return
        if not exports:
            raise click.UsageError("name at least one export file (- for stdin), or --prepare")
        summary = asyncio.run(run_load(settings, list(exports), LoadPaths(rejects_path, summary_path),
                                       progress=not no_progress, jobs=jobs))
    except VsyncError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_summary(summary)
    click.echo(f"summary written to {summary_path}; start the workers now")
    if summary["rejected"]:
        sys.exit(EXIT_REJECTED)


# -- preflight -----------------------------------------------------------------------------------

async def _dict_cid_file(bridge: Any, participant: str, key_type: str, path: Path) -> None:
    job = await bridge.create_cid_file(participant, key_type)
    status = await bridge.wait_for_cid_file(job, poll_interval_s=2.0)
    download = bridge.download_cid_file(job, expected_byte_size=status.byte_size, expected_sha256=status.sha256)
    with path.open("wb") as out:
        async for chunk in download:
            out.write(chunk)


async def run_preflight(settings: Settings, exports: list[str], pairs: list[tuple[str, str]], workdir: Path | None,
                        progress: bool = True) -> list[dict[str, Any]]:
    """Diff the export's CIDs against the DICT's CID file of each pair (one CreateCidFile per pair).

    Returns:
        One row per pair: ``export`` and ``dict`` counts, ``common``, ``onlyExport`` (the first
        reconciliation deletes them), ``onlyDict`` (it fetches them by CID, 1,200 per minute),
        and both VSyncs. Rows the bootstrap would reject are not counted.
    """
    from vsync_stream.bridges.dict_bridge import BridgeClient
    from vsync_stream.bridges.pacing import parse_rate_limits
    from vsync_stream.bridges.tls import bridge_tls_kwargs

    wanted = set(pairs)
    with tempfile.TemporaryDirectory(prefix="vsync-preflight-", dir=workdir) as tmp:
        diffs = {pair: CidSetDiff(tmp) for pair in pairs}
        try:
            buffers: dict[tuple[str, str], list[str]] = {pair: [] for pair in pairs}
            with tqdm(desc="reading the export", unit="row", unit_scale=True, file=sys.stderr, disable=not progress,
                      mininterval=1.0) as bar:
                for name in exports:
                    stream = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
                    try:
                        for parsed in iter_export(stream, frozenset(settings.participants)):
                            bar.update()
                            if parsed.row is None:
                                continue
                            state = parsed.row.state
                            pair = (state.participant, state.key_type)
                            if pair in wanted:
                                buf = buffers[pair]
                                buf.append(state.cid)  # type: ignore[arg-type]
                                if len(buf) >= 65536:
                                    diffs[pair].local.add_hex(buf)
                                    buf.clear()
                    finally:
                        if name != "-":
                            stream.close()
            for pair, buf in buffers.items():
                if buf:
                    diffs[pair].local.add_hex(buf)
            bridge = BridgeClient(settings.bridge_target, deadline_s=settings.bridge_deadline_s,
                                  **bridge_tls_kwargs(settings),
                                  rate_limits=parse_rate_limits(settings.bridge_rate_limits))
            await bridge.start()
            rows = []
            try:
                for pair in pairs:
                    path = Path(tmp) / f"{pair[0]}-{pair[1]}.cids"
                    await _dict_cid_file(bridge, *pair, path)
                    diff = diffs[pair]
                    diff.remote.add_cid_file(path)
                    s = await asyncio.to_thread(diff.finish)
                    path.unlink()
                    rows.append({"participant": pair[0], "keyType": pair[1], "export": s.local_count,
                                 "dict": s.remote_count, "common": s.common, "onlyExport": s.only_local,
                                 "onlyDict": s.only_remote, "exportVsync": s.local_vsync, "dictVsync": s.remote_vsync})
            finally:
                await bridge.stop()
            return rows
        finally:
            for diff in diffs.values():
                diff.close()


@click.command("preflight")
@click.argument("exports", nargs=-1, required=True)
@click.option("--participant", "participants", multiple=True,
              help="Only this ISPB (repeatable); default: all configured.")
@click.option("--key-type", "key_types", multiple=True, type=click.Choice(["CPF", "CNPJ", "PHONE", "EMAIL", "EVP"]),
              help="Only this key type (repeatable); default: all five.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the CID files and diff buckets (~100 bytes per CID); default: system temp.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def preflight_command(exports: tuple[str, ...], participants: tuple[str, ...], key_types: tuple[str, ...],
                      workdir: Path | None, as_json: bool) -> None:
    """Diff the export's CIDs against the DICT's CID file of each (participant, key type).

    Costs one CreateCidFile per pair (the DICT allows 40 a day). Prints, per pair, the CIDs on each
    side and in common: the size of the first reconciliation. Exit 0 when every pair is identical,
    1 when some differ, 2 on an error.
    """
    settings = _settings()
    pairs = [(p, t) for p in (participants or settings.participants) for t in (key_types or settings.key_types)]
    try:
        rows = asyncio.run(run_preflight(settings, list(exports), pairs, workdir))
    except (VsyncError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        header = f"{'participant':<12} {'keyType':<6} {'export':>10} {'DICT':>10} {'common':>10} {'onlyExport':>10} " \
                 f"{'onlyDICT':>10}"
        click.echo(header)
        click.echo("-" * len(header))
        for r in rows:
            click.echo(f"{r['participant']:<12} {r['keyType']:<6} {r['export']:>10} {r['dict']:>10} {r['common']:>10} "
                       f"{r['onlyExport']:>10} {r['onlyDict']:>10}")
    if any(r["onlyExport"] or r["onlyDict"] for r in rows):
        sys.exit(EXIT_REJECTED)

"""Operator commands on CID files: ``vsync-stream vsync`` and ``vsync-stream diff``.

A CID file is the DICT's "Arquivo de CIDs" (BCB DICT API): one CID per line, 64 hex chars of any
case, every line ending in ``\\n``, no order. Both commands stream, so files of tens of millions
of CIDs take seconds and little memory. Plain click commands, registered into the ``vsync-stream``
group by :mod:`vsync_stream.cli`; they start no worker and need no configuration.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import click

from vsync_stream.domain.cidset import LINE_BYTES, CidDiffSummary, CidSetDiff, cid_file_vsync
from vsync_stream.errors import InvalidEntry

_PATH = click.Path(exists=True, dir_okay=False, allow_dash=True)
_PHASES = {"read": "reading", "local": "reading LOCAL", "remote": "reading REMOTE", "diff": "comparing"}


def _open(path: str) -> str | BinaryIO:
    """The source for a CID file argument: the path itself, or stdin's bytes for ``-``."""
    return click.get_binary_stream("stdin") if path == "-" else path


def _expected_cids(path: str) -> int | None:
    """CIDs a file should hold by its size (65 bytes a line); None for stdin."""
    return None if path == "-" else os.path.getsize(path) // LINE_BYTES


class _ProgressBar:
    """A tqdm bar on stderr, fed as the domain's :data:`ProgressCallback`; a no-op when disabled.

    Args:
        enabled: True/False forces it; None shows it only when stderr is a terminal.
        total: expected CIDs over all phases, or None if unknown.
    """

    def __init__(self, enabled: bool | None, total: int | None) -> None:
        self._bar: Any = None
        if enabled or (enabled is None and sys.stderr.isatty()):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="CID", unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, phase: str, cids: int) -> None:
        if self._bar is not None:
            if self._bar.desc != _PHASES.get(phase, phase):
                self._bar.set_description(_PHASES.get(phase, phase))
            self._bar.update(cids)

    def close(self) -> None:
        """Finish the bar so that later output starts on a clean line."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bad_file(path: str, exc: Exception) -> click.ClickException:
    """The operator-facing error for an unreadable or malformed CID file."""
    name = "stdin" if path == "-" else path
    if isinstance(exc, InvalidEntry):
        return click.ClickException(f"{name}: {exc}; fix that line or download the file again")
    return click.ClickException(f"cannot read {name}: {exc}")


_progress_option = click.option(
    "--progress/--no-progress", default=None,
    help="Show a progress bar on stderr [default: only when stderr is a terminal].")


@click.command("vsync")
@click.argument("cid_file", type=_PATH)
@_progress_option
def vsync_command(cid_file: str, progress: bool | None) -> None:
    """Print the VSync of CID_FILE: the XOR of all its CIDs, as 64 lower-case hex chars.

    CID_FILE has one CID per line (64 hex chars, any case, each line ending in \\n); '-' reads
    stdin. An empty file gives 64 zeros. A malformed line fails the command (exit 1), naming its
    line number.
    """
    try:
        with _ProgressBar(progress, _expected_cids(cid_file)) as bar:
            vsync, _count = cid_file_vsync(_open(cid_file), progress=bar)
    except (InvalidEntry, OSError) as exc:
        raise _bad_file(cid_file, exc) from None
    click.echo(vsync)


@click.command("diff")
@click.argument("local", type=_PATH)
@click.argument("remote", type=_PATH)
@click.option("--show", is_flag=True, help="Also print the differing CIDs: '< CID' only in LOCAL, '> CID' only in "
              "REMOTE.")
@click.option("--only-local", "only_local_out", type=click.File("w"), default=None,
              help="Write the CIDs only in LOCAL to this file, as a CID file ('-' for stdout).")
@click.option("--only-remote", "only_remote_out", type=click.File("w"), default=None,
              help="Write the CIDs only in REMOTE to this file, as a CID file ('-' for stdout).")
@click.option("--tmp-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Directory for the temporary buckets, about 32 bytes per CID [default: the system temp dir].")
@click.option("--json", "as_json", is_flag=True, help="Print the counts and VSyncs as one JSON object.")
@_progress_option
def diff_command(local: str, remote: str, show: bool, only_local_out: Any, only_remote_out: Any,
                 tmp_dir: str | None, as_json: bool, progress: bool | None) -> None:
    """Compare two CID files exactly: count the CIDs only in LOCAL, only in REMOTE and in both.

    Typically LOCAL is an export of the participant's CIDs and REMOTE the DICT's CID file for the
    same participant and key type (BCB DICT API, "Arquivo de CIDs"). Lines may be in any order
    and any hex case; one of the files may be '-' (stdin). A malformed line fails the command
    (exit 1) with its line number. Memory stays small for any size; the temporary directory needs
    about 32 bytes per CID.
    """
    if local == "-" and remote == "-":
        raise click.UsageError("only one of LOCAL and REMOTE can be '-' (stdin)")
    if show and as_json:
        raise click.UsageError("--show prints lines, --json one object: with --json, write the CIDs to files "
                               "with --only-local/--only-remote")
    sizes = [_expected_cids(local), _expected_cids(remote)]
    total = None if None in sizes else 2 * sum(s for s in sizes if s is not None)  # read, then compare
    with _ProgressBar(progress, total) as bar, CidSetDiff(tmp_dir, progress=bar) as diff:
        for path, writer in ((local, diff.local), (remote, diff.remote)):
            try:
                writer.add_cid_file(_open(path))
            except (InvalidEntry, OSError) as exc:
                raise _bad_file(path, exc) from None
        summary = diff.finish()
        bar.close()
        _print_summary(summary, local, remote, as_json)
        for out, cids in ((only_local_out, diff.only_local), (only_remote_out, diff.only_remote)):
            if out is not None:
                _write_lines(out.write, cids(), "")
        if show:
            _write_lines(click.get_text_stream("stdout").write, diff.only_local(), "< ")
            _write_lines(click.get_text_stream("stdout").write, diff.only_remote(), "> ")


def _write_lines(write: Callable[[str], Any], cids: Iterator[str], prefix: str, batch: int = 65536) -> None:
    """Write CIDs one per line (``prefix`` + 64 hex + ``\\n``), in batches."""
    lines: list[str] = []
    for cid in cids:
        lines.append(f"{prefix}{cid}\n")
        if len(lines) >= batch:
            write("".join(lines))
            lines.clear()
    write("".join(lines))


def _print_summary(summary: CidDiffSummary, local: str, remote: str, as_json: bool) -> None:
    """Print the counts (stdout) and duplicate warnings (stderr)."""
    if as_json:
        click.echo(json.dumps({
            "onlyLocal": summary.only_local, "onlyRemote": summary.only_remote, "common": summary.common,
            "local": {"file": local, "cids": summary.local_count, "duplicates": summary.local_duplicates,
                      "vsync": summary.local_vsync},
            "remote": {"file": remote, "cids": summary.remote_count, "duplicates": summary.remote_duplicates,
                       "vsync": summary.remote_vsync},
        }))
    else:
        click.echo(f"only in LOCAL:  {summary.only_local}\nonly in REMOTE: {summary.only_remote}\n"
                   f"common:         {summary.common}\n"
                   f"LOCAL   {summary.local_count} CIDs, VSync {summary.local_vsync}  ({local})\n"
                   f"REMOTE  {summary.remote_count} CIDs, VSync {summary.remote_vsync}  ({remote})")
    for name, dups in (("LOCAL", summary.local_duplicates), ("REMOTE", summary.remote_duplicates)):
        if dups:
            click.echo(f"warning: {name} repeats {dups} CID line(s); the counts above are of distinct CIDs "
                       "and the VSync is of the file as given (a repeated pair cancels out)", err=True)

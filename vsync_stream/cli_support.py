"""What the CLI's commands share: the settings a command reads, the results table, and the calls
to a running worker's web view (``POST /verify``, ``POST /reconcile``).

Its own module so that the commands defined elsewhere (adapter, demo, drill, the scenario they
run) use these without importing ``vsync_stream.cli``, which imports them to register them.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
from pydantic import ValidationError

from vsync_stream.settings import Settings


def load_settings() -> Settings:
    """The settings from the environment; a bad value is a usage error naming its variable.

    Raises:
        click.ClickException: a setting is invalid (each one listed with its ``VSYNC_*`` variable).
    """
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

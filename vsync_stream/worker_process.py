"""A ``vsync-stream worker`` run as a child process: used by the demo, the tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from vsync_stream.errors import VsyncError


class WorkerFailed(VsyncError):
    """The child worker exited, or did not get where it was asked to within its deadline."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_env(run_id: str, *, bridge_target: str, participants: list[str], token: str, data_root: Path,
            web_port: int, partitions: int = 8, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a worker with topic, subscription and group names unique to ``run_id``."""
    env = dict(os.environ)
    env.update({
        "VSYNC_APP_ID": f"vsync-{run_id}",
        "VSYNC_KEY_EVENTS_TOPIC": f"vsync-{run_id}-key-events",
        "VSYNC_DEAD_LETTER_TOPIC": f"vsync-{run_id}-dead-letters",
        "VSYNC_PULSAR_TOPIC": f"persistent://public/default/dict-events-{run_id}",
        "VSYNC_PULSAR_SUBSCRIPTION": f"vsync-{run_id}",
        "VSYNC_DATA_DIR": str(data_root / run_id),
        "VSYNC_BRIDGE_TARGET": bridge_target,
        "VSYNC_WEB_PORT": str(web_port),
        "VSYNC_API_TOKENS": token,
        "VSYNC_PARTICIPANTS": ",".join(participants),
        "VSYNC_PARTITIONS": str(partitions),
        "VSYNC_STANDBY_REPLICAS": "0",
        # The simulator's CID files are ready within a second: poll them every second, not every minute.
        "VSYNC_CID_FILE_POLL_S": "1",
    })
    env.update(extra or {})
    return env


class WorkerProcess:
    """One worker child process with its log file and web view URL.

    Args:
        env: the full environment (see :func:`run_env`).
        log_path: where the worker's stdout and stderr go.
    """

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{env['VSYNC_WEB_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker (``python -m vsync_stream worker``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen([sys.executable, "-m", "vsync_stream", "worker", "-l", "info"],
                                         env=self.env, stdout=log_file, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL the worker (a crash: nothing is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the worker and wait; SIGKILL if it does not stop in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise WorkerFailed(f"the worker exited with code {code}; see {self.log_path}")

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        """The worker's /healthz document, or None while it does not answer."""
        try:
            async with session.get(f"{self.base_url}/healthz") as resp:
                if resp.status != 200:
                    return None
                doc: dict[str, Any] = await resp.json()
                return doc
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None

    async def wait_handled(self, expected: int, timeout_s: float, progress: bool = False) -> dict[str, int]:
        """Wait until the worker has handled ``expected`` events since it started.

        Handled = folded + duplicate + stale + dead-lettered by the fold or the adapter.

        Raises:
            WorkerFailed: the worker died, or the deadline passed.
        """
        deadline = time.monotonic() + timeout_s
        done, counts = 0, {}
        with tqdm(total=expected, desc="folding", unit="ev", file=sys.stdout, mininterval=1.0,
                  disable=not progress) as bar:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                while True:
                    self._check_alive()
                    doc = await self.health(session)
                    if doc is not None:
                        counts = doc["events"]
                        handled = counts["folded"] + counts["duplicate"] + counts["stale"] + counts["deadLettered"]
                        bar.set_postfix(from_pulsar=counts["forwarded"], refresh=False)
                        bar.update(handled - done)
                        done = handled
                        if done >= expected:
                            return counts
                    if time.monotonic() > deadline:
                        raise WorkerFailed(f"only {done}/{expected} events handled in {timeout_s:.0f} s; "
                                           f"see {self.log_path}")
                    await asyncio.sleep(0.5)

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until the web view answers and the table has recovered.

        Raises:
            WorkerFailed: the worker died, or the deadline passed.
        """
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.monotonic() < deadline:
                self._check_alive()
                doc = await self.health(session)
                if doc is not None and doc.get("ready"):
                    return
                await asyncio.sleep(0.5)
        raise WorkerFailed(f"the worker was not ready within {timeout_s:.0f} s; see {self.log_path}")

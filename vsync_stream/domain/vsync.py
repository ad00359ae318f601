"""VSync: the XOR of the CIDs of a participant's active entries of one key type.

BCB DICT API, "Cálculo de VSync": one VSync per (participant ISPB, key type), the bitwise XOR of
the 32-byte CIDs, written as 64 lower-case hex chars; the empty set is 64 zeros. XOR is order-free
and self-inverse, so adding and removing a CID are the same operation. Internally a VSync is a
Python ``int`` (256 bits); XOR on ints runs in C.
"""

from __future__ import annotations

from collections.abc import Iterable

EMPTY_VSYNC = "0" * 64


def cid_int(cid: str) -> int:
    """Turn a 64-hex-char CID into its integer value (any hex case)."""
    return int(cid, 16)


def vsync_hex(value: int) -> str:
    """Write a VSync integer as 64 lower-case, zero-padded hex chars."""
    return f"{value:064x}"


def xor_cids(cids: Iterable[str]) -> str:
    """Return the VSync of a collection of CIDs.

    Args:
        cids: CIDs as 64 hex chars each, any case; order does not matter.

    Returns:
        64 lower-case hex chars; ``EMPTY_VSYNC`` for no CIDs.
    """
    acc = 0
    for cid in cids:
        acc ^= int(cid, 16)
    return vsync_hex(acc)


class VSyncLedger:
    """The VSync and entry count per (participant, key type) of one set of entries.

    A ledger is derived state: it can always be rebuilt from the entries it summarises
    (:meth:`add` each active CID). The fold keeps one ledger per table partition.
    """

    __slots__ = ("_acc",)

    def __init__(self) -> None:
        self._acc: dict[tuple[str, str], list[int]] = {}

    def add(self, participant: str, key_type: str, cid: str) -> None:
        """Count one active CID in (participant, key type)."""
        slot = self._acc.get((participant, key_type))
        if slot is None:
            self._acc[(participant, key_type)] = [int(cid, 16), 1]
        else:
            slot[0] ^= int(cid, 16)
            slot[1] += 1

    def remove(self, participant: str, key_type: str, cid: str) -> None:
        """Take one active CID out of (participant, key type); XOR is self-inverse."""
        slot = self._acc.setdefault((participant, key_type), [0, 0])
        slot[0] ^= int(cid, 16)
        slot[1] -= 1

    def vsync(self, participant: str, key_type: str) -> int:
        """The VSync integer of (participant, key type); 0 when empty."""
        slot = self._acc.get((participant, key_type))
        return slot[0] if slot else 0

    def count(self, participant: str, key_type: str) -> int:
        """The number of active entries of (participant, key type)."""
        slot = self._acc.get((participant, key_type))
        return slot[1] if slot else 0

    def items(self) -> list[tuple[tuple[str, str], int, int]]:
        """All non-empty pairs as ``((participant, key_type), vsync_int, count)``."""
        return [(pair, acc, n) for pair, (acc, n) in self._acc.items() if n or acc]

    def merge(self, other: VSyncLedger) -> None:
        """XOR another ledger into this one (combining partitions into a global VSync)."""
        for pair, (acc, n) in other._acc.items():
            slot = self._acc.setdefault(pair, [0, 0])
            slot[0] ^= acc
            slot[1] += n

    def to_json(self) -> dict[str, list[int | str]]:
        """``{"<participant>/<key type>": [count, "<VSync, 64 hex>"]}`` for every non-empty pair."""
        return {f"{p}/{t}": [n, vsync_hex(acc)] for (p, t), acc, n in self.items()}

    @classmethod
    def from_json(cls, doc: dict[str, list[int | str]]) -> VSyncLedger:
        """The inverse of :meth:`to_json`.

        Raises:
            ValueError: a malformed document.
        """
        ledger = cls()
        for pair, (n, acc) in doc.items():
            participant, _, key_type = pair.partition("/")
            if not key_type or not isinstance(n, int) or not isinstance(acc, str) or len(acc) != 64:
                raise ValueError(f"malformed ledger entry {pair!r}")
            ledger._acc[(participant, key_type)] = [int(acc, 16), n]
        return ledger

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VSyncLedger):
            return NotImplemented
        return sorted(self.items()) == sorted(other.items())

    __hash__ = None  # type: ignore[assignment]

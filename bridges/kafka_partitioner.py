"""Kafka's default partitioner (murmur2 of the record key), vectorised over many keys with numpy.

The adapter produces key events keyed by the Pix key and lets the producer place them (aiokafka's
``DefaultPartitioner``, the Java client's ``Utils.murmur2``); the fold writes partition *p* of the
entries changelog from partition *p* of the key events. A bulk load into the changelog must place
every key exactly there. aiokafka's ``murmur2`` is pure Python (about 10 µs per Pix key); this does
the same arithmetic on uint32 arrays, one pass per key length (tests/unit/test_bootstrap_load.py
checks it against aiokafka's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: Sequence[bytes]) -> npt.NDArray[np.uint32]:
    """Kafka's murmur2 hash of each key (``org.apache.kafka.common.utils.Utils.murmur2``)."""
    out = np.empty(len(keys), np.uint32)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, where in by_length.items():
        idx = np.fromiter(where, np.intp, len(where))
        data = np.frombuffer(b"".join([keys[i] for i in where]), np.uint8).reshape(len(where), length)
        h = np.full(len(where), (_SEED ^ length) & 0xFFFFFFFF, np.uint32)
        words = length // 4
        if words:
            block = np.ascontiguousarray(data[:, :words * 4]).view("<u4").reshape(len(where), words)
            for j in range(words):
                k = block[:, j] * _M
                k ^= k >> np.uint32(24)
                k *= _M
                h *= _M
                h ^= k
        tail, base = length % 4, words * 4
        if tail >= 3:
            h ^= data[:, base + 2].astype(np.uint32) << np.uint32(16)
        if tail >= 2:
            h ^= data[:, base + 1].astype(np.uint32) << np.uint32(8)
        if tail >= 1:
            h ^= data[:, base].astype(np.uint32)
            h *= _M
        h ^= h >> np.uint32(13)
        h *= _M
        h ^= h >> np.uint32(15)
        out[idx] = h
    return out


def partitions_of(keys: Sequence[bytes], partitions: int) -> npt.NDArray[np.int64]:
    """The partition Kafka's default partitioner picks for each key: ``(murmur2 & 0x7fffffff) % n``."""
    return (murmur2_many(keys) & np.uint32(0x7FFFFFFF)).astype(np.int64) % partitions

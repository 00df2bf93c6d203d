"""Encoding ``state.json`` in time that does not grow with the batch.

A batch's ``features`` never change after it is created, and a finished
attempt never changes again; ``StateEncoder`` encodes both once and reuses the
bytes, so the write after every transition of a 10,000-feature batch costs
about what it costs for 10 features. The output is byte for byte what
``msgspec.json.encode(state)`` gives (a test checks it).
"""

from __future__ import annotations

from typing import Any

import msgspec

from batchd.model import BatchState

_encoder = msgspec.json.Encoder()


class _Cached:
    __slots__ = ("features", "features_raw", "history_n", "history_raw")

    def __init__(self, features: list[str]) -> None:
        self.features = features
        self.features_raw = _encoder.encode(features)
        self.history_n = 0
        self.history_raw = bytearray()


_STATE_FIELDS = BatchState.__struct_fields__


_RAW_FIELDS = ("features", "processing_history")
# ``BatchState`` with its two big fields as pre-encoded JSON, in the same field order: made
# from ``BatchState`` itself, so the schema is written once (``model``).
_StateOut = msgspec.defstruct(
    "_StateOut",
    [(name, msgspec.Raw if name in _RAW_FIELDS else Any) for name in _STATE_FIELDS],
    kw_only=True,
)


class StateEncoder:
    """Encode ``BatchState`` to exactly the bytes ``encode`` gives, in time that does not grow
    with the batch: ``features`` never change after a batch is created and a finished
    attempt never changes again, so both are encoded once and reused."""

    def __init__(self) -> None:
        self._cache: dict[str, _Cached] = {}

    def encode(self, state: BatchState) -> bytes:
        c = self._cache.get(state.batch_id)
        hist = state.processing_history
        if c is None or c.features is not state.features or len(hist) < c.history_n:
            c = self._cache[state.batch_id] = _Cached(state.features)
        i = c.history_n
        while i < len(hist) and hist[i].outcome is not None:
            if i:
                c.history_raw += b","
            c.history_raw += _encoder.encode(hist[i])
            i += 1
        c.history_n = i
        tail = b",".join(_encoder.encode(a) for a in hist[i:])
        sep = b"," if i and tail else b""
        history = b"".join((b"[", c.history_raw, sep, tail, b"]"))
        fields = {name: getattr(state, name) for name in _STATE_FIELDS}
        fields["features"] = msgspec.Raw(c.features_raw)
        fields["processing_history"] = msgspec.Raw(history)
        return _encoder.encode(_StateOut(**fields))

    def forget(self, batch_id: str) -> None:
        self._cache.pop(batch_id, None)

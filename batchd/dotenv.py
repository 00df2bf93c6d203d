"""``BATCH_RETRY_ENABLED`` in a batch cwd's ``.env`` file, read again only when it changed.

The consent order itself is ``policy.consent``; this is only the reading, with
a cache keyed on the file's mtime and size (status asks for every batch).
"""

from __future__ import annotations

import os

from batchd.policy import consent_from_dotenv

MAX_BYTES = 1024 * 1024


class DotenvConsent:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int], bool | None]] = {}

    def lookup(self, cwd: str) -> bool | None:
        """The consent ``cwd/.env`` gives, or None (no file, no key, unreadable)."""
        path = os.path.join(cwd, ".env")
        try:
            st = os.stat(path)
        except OSError:
            self._cache.pop(cwd, None)
            return None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(cwd)
        if cached is not None and cached[0] == key:
            return cached[1]
        value: bool | None = None
        if st.st_size <= MAX_BYTES:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    value = consent_from_dotenv(f.read())
            except OSError:
                value = None
        self._cache[cwd] = (key, value)
        return value

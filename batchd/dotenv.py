"""``BATCH_RETRY_ENABLED`` in a batch cwd's ``.env`` file, read again only when it changed.

The consent order itself is ``policy.consent``; this is only the reading, with
a cache keyed on the file's mtime and size, looked at again at most once a
second per directory (status and every ``watch`` tick ask for every batch).
"""

from __future__ import annotations

import os

from batchd.policy import consent_from_dotenv

MAX_BYTES = 1024 * 1024
RECHECK_S = 1.0


class DotenvConsent:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int], bool | None]] = {}
        self._checked: dict[str, tuple[float, bool | None]] = {}

    def lookup(self, cwd: str, now: float, *, fresh: bool = True) -> bool | None:
        """The consent ``cwd/.env`` gives, or None (no file, no key, unreadable). Not
        ``fresh`` (for display): the file is looked at again only once the last look is
        ``RECHECK_S`` old; a decision always looks."""
        last = self._checked.get(cwd)
        if not fresh and last is not None and 0 <= now - last[0] < RECHECK_S:
            return last[1]
        value = self._read(cwd)
        self._checked[cwd] = (now, value)
        return value

    def _read(self, cwd: str) -> bool | None:
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

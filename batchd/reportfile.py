"""A finished batch's report on disk: ``batches/<id>/report.md`` (SPEC 14).

When a batch ends, its morning report in Markdown (``views.report_of`` of that
batch, rendered by ``reportrender``) is written beside its ``state.json``:
0600, durably (a temp file opened ``O_EXCL|O_NOFOLLOW``, fsync, rename, fsync
of the directory; a symlink named ``report.md`` is refused, never written
through). ``hooks.on_batch_done`` gets its path as ``BATCHD_REPORT_FILE``.

It never fails the daemon: a report that cannot be written is logged, and the
hook runs without the variable.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from batchd import reportmd, views
from batchd.batch import Batch
from batchd.durable import StoreError, write_durable
from batchd.store import Store

log = logging.getLogger("batchd")

NAME = "report.md"


def write(reader: views.Reader, store: Store, batch: Batch) -> Path | None:
    """Write ``batch``'s report as of now; its path, or None when it could not be written."""
    directory = store.batch_dir(batch.batch_id)
    zone = datetime.now().astimezone().tzinfo or UTC
    text = reportmd.render_markdown(views.report_of(reader, [batch.batch_id]), tz=zone)
    try:
        write_durable(directory, NAME, text.encode())
    except (OSError, StoreError) as e:
        log.warning("%s: cannot write %s: %s", batch.batch_id, directory / NAME, e)
        return None
    return directory / NAME

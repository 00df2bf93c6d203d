"""Wiring: lock, recovery, socket, spool watcher, signals, sd_notify, the engine loop.

Start-up order matters and is the contract of ``READY=1``: signals are handled
first (a SIGTERM during recovery stops cleanly), then state is loaded, orphaned
runners of a daemon killed outright are stopped, the socket is served, and only
then is the service ready and the first feature started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import msgspec

from batchd import __version__, runner, systemd
from batchd.config import Config
from batchd.engine import PAUSE_RUNNER, Engine, limits_from
from batchd.paths import ConfigError
from batchd.server import SocketInUse, bind_socket, serve
from batchd.spool import Spool, SpoolError, SpoolLock
from batchd.store import Store, StoreError

log = logging.getLogger("batchd")

Reload = Callable[[], Config]


def run(cfg: Config, backend: str, reload: Reload) -> int:
    """Run the daemon in the foreground; the exit code (0 clean, 1 fatal)."""
    store = Store(cfg.paths.state_dir)
    try:
        store.open()
        spool_lock = SpoolLock.acquire(cfg.paths.spool_dir, cfg.paths.state_dir)
    except (StoreError, SpoolError, OSError) as e:
        log.error("%s", e)
        store.close()
        return 1
    runner.become_subreaper()
    try:
        return anyio.run(_main, cfg, store, backend, reload, backend=backend)
    finally:
        spool_lock.close()
        store.close()


async def _main(cfg: Config, store: Store, backend: str, reload: Reload) -> int:
    engine = Engine(
        cfg,
        store,
        backend=backend,
        env=os.environ,
        notify=lambda line: systemd.notify(f"STATUS={line}"),
    )
    spool = Spool(cfg.paths.spool_dir, limits_from(cfg), cfg.spool.settle_ms, engine.ingest)
    engine.poke_spool = spool.poke  # type: ignore[method-assign]
    stop = anyio.Event()
    own_socket: Path | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(_signals, engine, spool, reload)
            engine.load()
            await engine.recover()
            inherited = systemd.listen_sockets()
            if inherited:
                sock = inherited[0]
                log.info("control socket inherited from systemd (fd %d)", sock.fileno())
            else:
                try:
                    sock = bind_socket(cfg.paths.socket)
                except (SocketInUse, StoreError, OSError) as e:
                    log.error("cannot serve the control socket: %s", e)
                    tg.cancel_scope.cancel()
                    return 1
                own_socket = cfg.paths.socket
            listener = await anyio.abc.SocketListener.from_socket(sock)
            tg.start_soon(serve, listener, engine)
            tg.start_soon(spool.run, stop)
            interval = systemd.watchdog_interval_s()
            if interval:
                tg.start_soon(_watchdog, interval)
            systemd.notify(
                "READY=1", f"STATUS=ready; {len(engine.batches)} batches", f"MAINPID={os.getpid()}"
            )
            log.info(
                "batchd %s ready (pid %d, %s): spool %s, state %s, socket %s",
                __version__,
                os.getpid(),
                backend,
                cfg.paths.spool_dir,
                cfg.paths.state_dir,
                cfg.paths.socket,
            )
            await engine.run()
            systemd.notify("STOPPING=1", "STATUS=stopping")
            stop.set()
            tg.cancel_scope.cancel()
    finally:
        if own_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(own_socket)
    log.info("batchd stopped")
    return 0


async def _signals(
    engine: Engine,
    spool: Spool,
    reload: Reload,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload(engine, spool, reload)
                continue
            if not engine.stopping:
                log.info("received %s: stopping", signal.Signals(signum).name)
                systemd.notify("STOPPING=1", "STATUS=stopping")
            engine.stop()


def _reload(engine: Engine, spool: Spool, reload: Reload) -> None:
    """SIGHUP: apply a new configuration, or keep the old one and say why (log, status)."""
    systemd.notify_reloading()
    old = engine.cfg
    try:
        if engine.config_file_seen and not os.path.lexists(old.paths.config):
            raise ConfigError(
                f"{old.paths.config}: the config file was deleted; restore it (or restart "
                "batchd to run on the defaults)"
            )
        new = reload()
    except ConfigError as e:
        message = f"reload failed, the previous configuration is kept: {e}"
        log.error("%s", message)
        engine.set_problem("config", message)
        systemd.notify("READY=1", "STATUS=reload failed; previous configuration kept")
        return
    engine.set_problem("config", None)
    if new.paths != old.paths:
        log.warning(
            "reload: path changes (spool, state, socket) need a restart; kept the old paths"
        )
        new = msgspec.structs.replace(new, paths=old.paths)
    engine.apply_config(new)
    spool.reconfigure(limits_from(new), new.spool.settle_ms)
    if engine.daemon.queue_paused and (engine.daemon.pause_reason or "").startswith(PAUSE_RUNNER):
        engine.daemon.queue_paused = False
        engine.daemon.pause_reason = None
        engine.persist_daemon()
    log.info("reload: configuration from %s applied", new.paths.config)
    engine.touch()
    systemd.notify("READY=1", "STATUS=configuration reloaded")


async def _watchdog(interval: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await anyio.sleep(interval)

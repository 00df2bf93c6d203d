"""Wiring: locks, recovery, socket, spool watcher, signals, sd_notify, the engine loop.

Start-up order matters and is the contract of ``READY=1``: signals are handled
first (a SIGTERM during recovery stops cleanly), then state is loaded, runs
left by a daemon killed outright are found again (re-attached or stopped),
the socket is served, and only then is the service ready and the first
feature started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from batchd import __version__, checkconfig, intake, queue, recovery, systemd, worktreecheck
from batchd.config import Config
from batchd.engine import Engine
from batchd.engines import RunnerEngine
from batchd.engines.local import LocalEngine
from batchd.engines.slurm import SlurmEngine
from batchd.exitcodes import EXIT_FATAL, EXIT_OK, EXIT_RESTART
from batchd.groups import become_subreaper
from batchd.parse import Limits
from batchd.paths import ConfigError
from batchd.rules import plan_reload
from batchd.server import SocketInUse, bind_socket, serve
from batchd.spool import Spool, SpoolError, SpoolLock
from batchd.store import Store, StoreError

log = logging.getLogger("batchd")

Reload = Callable[[], Config]
SD_LISTEN_FDS_START = 3  # the first fd of sockets passed by systemd (sd_listen_fds(3))


def limits_from(cfg: Config) -> Limits:
    """The spool's limits, and the runner profiles a batch may name."""
    s = cfg.spool
    return Limits(
        max_file_bytes=s.max_file_bytes,
        max_features=s.max_features,
        max_line_chars=s.max_line_chars,
        runners=cfg.profile_names(),
    )


def make_runner(cfg: Config, env: dict[str, str]) -> RunnerEngine:
    # ``env``: of the Slurm commands, or of the keeper of local runs
    """The runner engine that ``runner.engine`` names."""
    if cfg.runner.engine == "slurm":
        s = cfg.slurm
        return SlurmEngine(cfg.paths.state_dir, s.sbatch_args, float(s.poll_interval), env)
    return LocalEngine(env, cfg.paths.state_dir)


@dataclass
class Exit:
    """How ``_main`` ended: the exit code, and whether to execute the daemon again."""

    code: int
    reexec: bool = False
    listen_fd: int | None = None  # a dup of the socket systemd passed, kept for the re-exec


def run(cfg: Config, backend: str, reload: Reload) -> int:
    """Run the daemon in the foreground; the exit code (0 clean, 1 fatal, 75 left its
    runners running). ``batchctl restart`` in a terminal executes the daemon again instead
    (same pid), once the locks are released."""
    unusable = checkconfig.path_problems(cfg, socket=False)
    for problem in unusable:
        log.error("bad configuration: %s", problem)
    if unusable:
        return checkconfig.EX_CONFIG
    store = Store(cfg.paths.state_dir)
    try:
        store.open()
        spool_lock = SpoolLock.acquire(cfg.paths.spool_dir, cfg.paths.state_dir)
    except (StoreError, SpoolError, OSError) as e:
        log.error("%s", e)
        store.close()
        return EXIT_FATAL
    become_subreaper()
    try:
        end = anyio.run(_main, cfg, store, spool_lock, backend, reload, backend=backend)
    finally:
        spool_lock.close()
        store.close()
    if end.reexec:
        _reexec(end.listen_fd)  # returns only if it failed
    return end.code


def _reexec(listen_fd: int | None) -> None:
    """Execute this daemon again, same pid and argv: the runs it left are found again."""
    argv = [sys.executable, *sys.orig_argv[1:]]
    log.info("batchd restarting: executing itself again (pid %d)", os.getpid())
    if listen_fd is not None:  # the socket systemd-socket-activate passed: pass it on
        if listen_fd != SD_LISTEN_FDS_START:
            os.dup2(listen_fd, SD_LISTEN_FDS_START)
        os.set_inheritable(SD_LISTEN_FDS_START, True)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        log.error("cannot execute %s again (%s): start batchd yourself", argv[0], e)


async def _main(
    cfg: Config, store: Store, spool_lock: SpoolLock, backend: str, reload: Reload
) -> Exit:
    """The daemon's life: wiring, recovery, the socket, ready, the loop, the stop."""
    engine, spool = _wire(cfg, store, spool_lock, backend, reload)
    stop = anyio.Event()
    own_socket: Path | None = None
    listen_fd: int | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(_signals, engine)
            recovery.load(engine)
            engine.check_batches()
            adopted = await recovery.recover(engine)
            sock, own_socket = _socket(cfg)
            if sock is None:
                tg.cancel_scope.cancel()
                return Exit(EXIT_FATAL)
            if own_socket is None:
                listen_fd = os.dup(sock.fileno())
            listener = await anyio.abc.SocketListener.from_socket(sock)
            tg.start_soon(serve, listener, engine)
            tg.start_soon(spool.run, stop)
            interval = systemd.watchdog_interval_s()
            if interval:
                tg.start_soon(_watchdog, interval)
            _ready(engine, backend)
            await engine.run(adopted)
            systemd.notify("STOPPING=1", "STATUS=stopping")
            await engine.runner.aclose()
            stop.set()
            tg.cancel_scope.cancel()
    finally:
        if own_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(own_socket)
    return _exit(engine, listen_fd)


def _wire(
    cfg: Config, store: Store, spool_lock: SpoolLock, backend: str, reload: Reload
) -> tuple[Engine, Spool]:
    """The engine and the spool, each handed what it needs of the other."""
    spool: Spool | None = None

    def poke() -> None:
        if spool is not None:
            spool.poke()

    def reload_now() -> str | None:
        assert spool is not None
        return _reload(engine, spool, reload)

    engine = Engine(
        cfg,
        store,
        make_runner(cfg, dict(os.environ)),
        backend=backend,
        env=os.environ,
        notify=_status_notifier(),
        poke_spool=poke,
        reload=reload_now,
    )
    spool = Spool(
        cfg.paths.spool_dir,
        limits_from(cfg),
        cfg.spool.settle_ms,
        lambda acc: intake.ingest(engine, acc),
        clock=engine.clock,
        lock=spool_lock,
        report=engine.live.spool_report,
        on_change=lambda trouble: engine.live.set_problem("spool", trouble),
        vet=lambda name, parsed: worktreecheck.refusal(
            name, parsed.options.isolation, parsed.cwd or engine.rules.default_cwd()
        ),
    )
    return engine, spool


def _exit(engine: Engine, listen_fd: int | None) -> Exit:
    """A stop exits 0; one that left the runners running exits 75, or, for ``batchctl
    restart`` in a terminal, executes the daemon again."""
    if not engine.leaving:
        log.info("batchd stopped")
        return Exit(EXIT_OK)
    if engine.restart_requested and engine.restart_via == "exec":
        return Exit(EXIT_RESTART, reexec=True, listen_fd=listen_fd)
    log.info("batchd stopped, leaving its runners running (exit %d)", EXIT_RESTART)
    return Exit(EXIT_RESTART)


def _status_notifier() -> Callable[[str], object] | None:
    """STATUS= lines for systemd, when there is a NOTIFY_SOCKET to send them to."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    return lambda line: systemd.notify(f"STATUS={line}")


def _socket(cfg: Config) -> tuple[socket.socket | None, Path | None]:
    """The control socket: inherited from systemd, else bound here (and then ours to unlink)."""
    inherited = systemd.listen_sockets()
    if inherited:
        log.info("control socket inherited from systemd (fd %d)", inherited[0].fileno())
        return inherited[0], None
    try:
        return bind_socket(cfg.paths.socket), cfg.paths.socket
    except (SocketInUse, StoreError, OSError) as e:
        log.error("cannot serve the control socket: %s", e)
        return None, None


def _ready(engine: Engine, backend: str) -> None:
    cfg = engine.cfg
    systemd.notify(
        "READY=1", f"STATUS=ready; {len(engine.live.batches)} batches", f"MAINPID={os.getpid()}"
    )
    log.info(
        "batchd %s ready (pid %d, %s, %s engine, %d slot%s): spool %s, state %s, socket %s",
        __version__,
        os.getpid(),
        backend,
        engine.runner.name,
        cfg.queue.slots,
        "" if cfg.queue.slots == 1 else "s",
        cfg.paths.spool_dir,
        cfg.paths.state_dir,
        cfg.paths.socket,
    )


async def _signals(
    engine: Engine,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                engine.reload()
                continue
            leave = engine.cfg.runner.on_stop == "leave"
            if not engine.live.stopping:
                how = " (leaving the runners running: runner.on_stop = leave)" if leave else ""
                log.info("received %s: stopping%s", signal.Signals(signum).name, how)
                systemd.notify("STOPPING=1", "STATUS=stopping")
            engine.stop(leave=leave)


def _reload(engine: Engine, spool: Spool, reload: Reload) -> str | None:
    """SIGHUP or ``batchctl reload``: apply a new configuration, or keep the old one and say
    why (log at error level, ``problems`` until a good reload); None when applied."""
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
        engine.live.set_problem("config", message)
        systemd.notify("READY=1", "STATUS=reload failed; previous configuration kept")
        return message
    engine.live.set_problem("config", None)
    plan = plan_reload(old, new)
    for kept in plan.kept:
        log.warning("reload: %s", kept)
    new = plan.cfg
    engine.runner.reconfigure(new)
    engine.apply_config(new)
    spool.reconfigure(limits_from(new), new.spool.settle_ms)
    if queue.lift_trouble_pause(engine.live.queue, engine.clock.now()):
        engine.save_queue()
    slots = new.queue.slots
    log.info("reload: configuration from %s applied (%d slots)", new.paths.config, slots)
    engine.live.touch()
    systemd.notify("READY=1", "STATUS=configuration reloaded")
    return None


async def _watchdog(interval: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await anyio.sleep(interval)

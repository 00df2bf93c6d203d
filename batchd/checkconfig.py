"""``batchd check-config``, and what the daemon checks of its config at start (SPEC 2, 9).

* ``check_config``: every problem of a configuration, one line each naming its
  file (or flag, or variable) and key: what loading finds (keys, types,
  choices, regexes, placeholders of every runner profile, hook and check),
  then what only this machine can tell (each runner profile's program, each
  hook's and check's program, the runner cwds, the spool, state and socket
  directories). Exit 0, or 78 (EX_CONFIG).
* ``path_problems``: a spool, state or socket path that cannot be a directory
  of this user's: the daemon refuses to start on a spool or state path like
  that with exit 78, saying so as check-config would.
* ``start_warnings``: what the daemon says at start without refusing to run
  (a runner profile whose program is not installed: its batches would pause).

It reads the file system (``which``, ``access``) and never changes it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from msgspec import UNSET

from batchd.config import DEFAULT_PROFILE, HOOKS, Config, load_config_checked
from batchd.paths import ConfigError

EX_CONFIG = 78
ENVIRONMENT_HINT = "(under systemd: ~/.config/batchd/environment)"


def daemon_user() -> str:
    """The name of the user this process runs as (named in the login help)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def check_config(env: Mapping[str, str], **where: str | None) -> int:
    """Print every problem to stderr (or ``configuration OK: FILE``); the exit code.
    ``where``: the command line's ``config``, ``spool``, ``state_dir``, ``socket``,
    ``runner`` (``load_config_checked``)."""
    try:
        cfg, found, dropped = load_config_checked(env, **where)
    except ConfigError as e:
        print(f"batchd: bad configuration: {e}", file=sys.stderr)
        return EX_CONFIG
    flags = {key: where.get(arg) for key, arg in _FLAG_ARGS.items()}
    found = found + config_problems(cfg, env, skip=dropped, flags=flags)
    for problem in found:
        print(f"batchd: bad configuration: {problem}", file=sys.stderr)
    if found:
        return EX_CONFIG
    source = cfg.paths.config if cfg.paths.config.exists() else "defaults (no config file)"
    print(f"configuration OK: {source}")
    return 0


def config_problems(
    cfg: Config,
    env: Mapping[str, str],
    *,
    skip: Iterable[str] = (),
    flags: Mapping[str, str | None] | None = None,
) -> list[str]:
    """What would stop this configuration from working beyond what loading checks:
    programs that are not there, directories that cannot be. ``skip``: keys already
    reported bad (now at their default: not to be blamed); ``flags``: the command-line
    paths, named as the source of a bad one."""
    skipped = frozenset(skip)
    where = cfg.paths.config
    found = [f"{where}: {key}: {why}" for _, key, why in runner_programs(cfg, env, skipped)]
    found += _other_programs(cfg, env, skipped)
    for key, cwd in _cwds(cfg):  # a relative one is reported by loading already
        absolute = cwd.startswith(("/", "~"))
        if absolute and not _skipped(key, skipped) and not os.path.isdir(os.path.expanduser(cwd)):
            found.append(f"{where}: {key}: {cwd!r} is not a directory; create it")
    return found + path_problems(cfg, env, flags)


def path_problems(
    cfg: Config,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
    *,
    socket: bool = True,
) -> list[str]:
    """The spool, state (and socket) paths: each a directory this user can use or create.
    ``env`` and ``flags`` name where a bad path came from (unknown without them)."""
    p = cfg.paths
    checks = [("spool_dir", p.spool_dir), ("state_dir", p.state_dir)]
    if socket:
        checks.append(("socket", p.socket.parent))
    found = []
    for key, path in checks:
        found += _directory(_origin(cfg, key, env, flags), key, path)
    if socket and len(os.fsencode(p.socket)) > 107:
        origin = _origin(cfg, "socket", env, flags)
        found.append(f"{origin}: {p.socket} is longer than the 107 bytes a Unix socket allows")
    return found


def start_warnings(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """What the daemon should say at start (the log, ``status`` problems): each runner
    profile whose program is not found, naming it and how to fix it."""
    return [
        f"runner {name!r}: {key}: {why}; its batches will pause until it is fixed "
        "(then `batchctl reload` or restart batchd)"
        for name, key, why in runner_programs(cfg, env, frozenset())
    ]


def runner_programs(
    cfg: Config, env: Mapping[str, str], skip: frozenset[str]
) -> list[tuple[str, str, str]]:
    """(profile, key, what is wrong) for each runner program that cannot be started; a
    profile that inherits [runner]'s command and PATH is not named twice."""
    found: dict[tuple[str, str], tuple[str, str, str]] = {}
    if cfg.runner.engine == "slurm":
        why = _program(["sbatch"], env.get("PATH", os.defpath))
        return [(DEFAULT_PROFILE, "runner.engine = 'slurm'", why)] if why else []
    for name in sorted(cfg.profile_names(), key=lambda n: (n != DEFAULT_PROFILE, n)):
        runner = cfg.profile(name)
        own = name != DEFAULT_PROFILE and "command" in _set_keys(cfg, name)
        key = f"runners.{name}.command" if own else "runner.command"
        path = runner.env.get("PATH") or env.get("PATH", os.defpath)
        if _skipped(key, skip) or (runner.command[0], path) in found:
            continue
        why = _program(runner.command, path)
        if why:
            found[(runner.command[0], path)] = (name, key, why)
    return list(found.values())


def _other_programs(cfg: Config, env: Mapping[str, str], skip: frozenset[str]) -> list[str]:
    """Hooks and checks ([verify].command, each profile's verify)."""
    argvs = [(f"hooks.{name}", getattr(cfg.hooks, name)) for name in HOOKS]
    argvs.append(("verify.command", cfg.verify.command))
    for name in sorted(cfg.profile_names()):
        own = name == DEFAULT_PROFILE or "verify" in _set_keys(cfg, name)
        key = "runner.verify" if name == DEFAULT_PROFILE else f"runners.{name}.verify"
        if own:
            argvs.append((key, cfg.profile(name).verify))
    path = cfg.runner.env.get("PATH") or env.get("PATH", os.defpath)
    found = []
    for key, argv in argvs:
        why = _program(argv, path) if argv and argv[0] and not _skipped(key, skip) else None
        if why:
            found.append(f"{cfg.paths.config}: {key}: {why}")
    return found


def _set_keys(cfg: Config, name: str) -> set[str]:
    own = cfg.file.runners[name]
    return {key for key in own.__struct_fields__ if getattr(own, key) is not UNSET}


def _cwds(cfg: Config) -> list[tuple[str, str]]:
    """(key, cwd) of every runner cwd set."""
    found = [("runner.cwd", cfg.runner.cwd)] if cfg.runner.cwd else []
    for name in sorted(cfg.file.runners):
        cwd = cfg.profile(name).cwd
        if "cwd" in _set_keys(cfg, name) and cwd:
            found.append((f"runners.{name}.cwd", cwd))
    return found


def _skipped(key: str, skip: frozenset[str]) -> bool:
    """The key, or a table holding it, was reported bad already."""
    parts = key.split(" ")[0].split(".")
    return any(".".join(parts[: i + 1]) in skip for i in range(len(parts)))


def _program(argv: list[str], path: str) -> str | None:
    """Why ``argv[0]`` cannot be started, or None."""
    program = argv[0]
    if "/" in program:
        full = os.path.expanduser(program)
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return None
        return f"{program!r} is not an executable file"
    if shutil.which(program, path=path):
        return None
    return (
        f"{program!r} is not found on PATH ({path}); install it, give its absolute path, "
        f"or set PATH in the daemon's environment {ENVIRONMENT_HINT}"
    )


_FLAG_ARGS = {"spool_dir": "spool", "state_dir": "state_dir", "socket": "socket"}
_ENV = {"spool_dir": "BATCHD_SPOOL_DIR", "state_dir": "BATCHD_STATE_DIR", "socket": "BATCHD_SOCKET"}
_FLAG = {"spool_dir": "--spool", "state_dir": "--state-dir", "socket": "--socket"}


def _origin(
    cfg: Config, key: str, env: Mapping[str, str] | None, flags: Mapping[str, str | None] | None
) -> str:
    """``KEY`` with where its value came from: ``FILE: KEY``, ``KEY (--spool)``, ..."""
    if env is None or flags is None:
        return key
    if flags.get(key):
        return f"{key} ({_FLAG[key]})"
    if env.get(_ENV[key]):
        return f"{key} ({_ENV[key]})"
    if getattr(cfg.file, key) is not None:
        return f"{cfg.paths.config}: {key}"
    return key


def _directory(origin: str, key: str, path: Path) -> list[str]:
    """A directory batchd can use or create: it, or its nearest existing parent, is a
    directory this user may write in."""
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [f"{origin}: {path}: {probe} is not a directory; choose another {key}"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            f"{origin}: {path}: {probe} is not writable by this user; "
            f"fix its permissions or choose another {key}"
        ]
    return []

"""Automatic retry consent: ``consent [--enable | --disable]`` and ``submit``'s one question.

The setting is saved through the daemon when it runs (it reloads it), else
written into ``state_dir/user_state.json`` (0600 in a 0700 directory, atomic,
durable; a symlink there is refused), encoded as the daemon encodes it
(``model.UserState`` through the store's encoder). On a terminal, with no
flag, it explains retries with the configured limits and asks; Enter means no.
Loaded only when ``consent`` or ``submit`` runs (``submit`` imports this
module; this module never imports ``submit``).
"""

from __future__ import annotations

import json
import os
import sys
import time

from batchctl.errors import EXIT_DOWN, EXIT_OK, Failure, die
from batchctl.options import load_config, load_paths
from batchctl.transport import call

TYPE_CHECKING = False

if TYPE_CHECKING:
    from argparse import Namespace
    from pathlib import Path

    from batchd import shapes
    from batchd.config import Config
    from batchd.paths import Paths

CONSENT_TEXT = """\
Automatic retry

When a feature fails for a reason that is not its own (a network error, a
rate limit, an overloaded API, a timeout), batchd can run it again after a
wait that grows each time (backoff). Permanent failures (a syntax error, a
TypeError, ...) are never retried.

Limits from your config: at most {per} retries per feature
(retry.max_per_feature) and {glob} per batch (retry.max_global); after {thr}
failed attempts in a row the circuit breaker stops retrying
(breaker.threshold).

Turn it off at any time with `batchctl consent --disable`, or set
BATCH_RETRY_ENABLED=false in the daemon's environment.
"""
PROMPT = "Enable automatic retry? [y/N]: "


def user_state_path(paths: Paths) -> Path:
    return paths.state_dir / "user_state.json"


def current_consent(paths: Paths) -> tuple[bool | None, str]:
    """The setting batchctl can see, and where it comes from (environment, then the file)."""
    from batchd.model import UserState
    from batchd.policy import parse_consent
    from batchd.store import decode_file

    env = parse_consent(os.environ.get("BATCH_RETRY_ENABLED"))
    if env is not None:
        return env, "BATCH_RETRY_ENABLED in this environment"
    path = user_state_path(paths)
    try:
        value = decode_file(path, UserState).batch_retry_enabled
    except FileNotFoundError:
        return None, "nothing saved yet"
    except (OSError, ValueError) as e:  # msgspec.DecodeError is a ValueError
        print(
            f"batchctl: warning: cannot read {path}: {getattr(e, 'strerror', None) or e}",
            file=sys.stderr,
        )
        return None, f"{path} is unreadable"
    return (value, f"saved in {path}") if value is not None else (None, "nothing saved yet")


def save_consent(paths: Paths, enabled: bool) -> str:
    """Through the daemon when it runs (it reloads the setting), else the file itself."""
    try:
        result: shapes.Consent = call(paths.socket, "consent", {"enabled": enabled})
        return result["path"]
    except Failure as e:
        if e.exit != EXIT_DOWN:
            raise
    from batchd.model import UserState, utc_iso
    from batchd.store import StoreError, encode, ensure_dir, write_durable

    body = encode(UserState(batch_retry_enabled=enabled, updated_at=utc_iso(time.time())))
    try:
        ensure_dir(paths.state_dir)
        write_durable(paths.state_dir, "user_state.json", body)
    except (StoreError, OSError) as e:
        die(f"cannot save the setting: {getattr(e, 'strerror', None) or e}")
    return str(user_state_path(paths))


def ask_consent(cfg: Config | None) -> bool:
    """Explain retries with the configured limits (else the defaults) and ask; Enter means no."""
    from batchd.config import BreakerConfig, RetryConfig

    retry, breaker = (cfg.retry, cfg.breaker) if cfg else (RetryConfig(), BreakerConfig())
    print(
        CONSENT_TEXT.format(per=retry.max_per_feature, glob=retry.max_global, thr=breaker.threshold)
    )
    try:
        answer = input(PROMPT)
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def maybe_ask_consent(cfg: Config) -> None:
    """``submit`` asks once, on a terminal, when retry is neither enabled nor disabled yet."""
    if not sys.stdin.isatty() or current_consent(cfg.paths)[0] is not None:
        return
    enabled = ask_consent(cfg)
    where = save_consent(cfg.paths, enabled)
    print(f"automatic retry {'enabled' if enabled else 'disabled'} (saved in {where})\n")


def config_for_question(args: Namespace) -> Config | None:
    try:
        return load_config(args)
    except Failure as e:
        print(f"batchctl: warning: {e.message}; showing the default limits", file=sys.stderr)
        return None


def consent(args: Namespace) -> int:
    paths = load_paths(args)
    if args.enable or args.disable:
        enabled = bool(args.enable)
    elif sys.stdin.isatty():
        enabled = ask_consent(config_for_question(args))
    else:
        return report(args, paths)
    where = save_consent(paths, enabled)
    if args.json:
        print(json.dumps({"retry_enabled": enabled, "path": where}, indent=2))
        return EXIT_OK
    print(f"automatic retry {'enabled' if enabled else 'disabled'} (saved in {where})")
    if "BATCH_RETRY_ENABLED" in os.environ:
        print(
            "note: BATCH_RETRY_ENABLED is set in this shell; "
            "set in the daemon's environment, it wins over this setting"
        )
    return EXIT_OK


def report(args: Namespace, paths: Paths) -> int:
    """No flag and no terminal: only say what the setting is."""
    value, source = current_consent(paths)
    if args.json:
        shown = {"retry_enabled": value, "source": source, "path": str(user_state_path(paths))}
        print(json.dumps(shown, indent=2))
    elif value is None:
        print(f"automatic retry: not set, so off ({source})")
        print("`batchctl consent --enable` turns it on")
    else:
        print(f"automatic retry: {'enabled' if value else 'disabled'} ({source})")
    return EXIT_OK

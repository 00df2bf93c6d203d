"""The systemd user units: their content, install_service, and systemd-analyze's verdict."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd import unitfile
from batchd.service_install import install_service
from batchd.unitfile import render_unit
from tests.test_unit_text import directives

REPO = Path(__file__).resolve().parent.parent
UNITS = ("batchd.service", "batchd.socket")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME (and no XDG_CONFIG_HOME), so nothing touches the real ~/.config."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def stand_ins(bindir: Path) -> Path:
    """Executable stand-ins for an installed batchd and the batchctl beside it."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name in ("batchd", "batchctl"):
        (bindir / name).write_text("#!/bin/sh\nexit 0\n")
        (bindir / name).chmod(0o755)
    return bindir / "batchd"


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    """An executable stand-in for the installed batchd (with its batchctl)."""
    return stand_ins(tmp_path / "venv" / "bin")


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A strict umask, to show that the written units are still 0644."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def install(
    unit_dir: Path,
    exe: Path | str,
    *,
    socket_activation: bool = False,
    force: bool = False,
    config: Path | None = None,
) -> tuple[int, str]:
    """install_service into unit_dir; (exit code, printed text)."""
    out = io.StringIO()
    code = install_service(
        socket_activation=socket_activation,
        force=force,
        unit_dir=unit_dir,
        batchd_path=str(exe),
        config=None if config is None else str(config),
        out=out,
    )
    return code, out.getvalue()


def analyze_verify(tmp_path: Path, *units: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze --user verify` offline: a private 0700 XDG_RUNTIME_DIR and HOME.

    The runtime dir is short and outside tmp_path: sockets of other user units (say,
    gpg-agent's) are checked too, and a unix socket path is limited to 107 bytes."""
    runtime = Path(tempfile.mkdtemp(prefix="bd-xdg-", dir="/tmp"))
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
    }
    try:
        return subprocess.run(
            [str(ANALYZE), "--user", "verify", *map(str, units)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


# --- systemd-analyze ------------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("socket_activation", [False, True])
def test_installed_units_pass_systemd_analyze_verify(
    tmp_path: Path, home: Path, exe: Path, socket_activation: bool
) -> None:
    """systemd-analyze --user verify accepts the installed units without a single warning."""
    unit_dir = home / ".config" / "systemd" / "user"
    code, _ = install(unit_dir, exe, socket_activation=socket_activation)
    assert code == 0
    names = UNITS if socket_activation else UNITS[:1]
    proc = analyze_verify(tmp_path, *(unit_dir / n for n in names))
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@needs_analyze
def test_verify_catches_a_missing_executable(tmp_path: Path, home: Path) -> None:
    """The verify test has teeth: an ExecStart that does not exist fails it."""
    unit_dir = home / "units"
    code, _ = install(unit_dir, tmp_path / "nowhere" / "batchd")
    assert code == 0
    proc = analyze_verify(tmp_path, unit_dir / "batchd.service")
    assert proc.returncode != 0 and "nowhere/batchd" in proc.stderr


@needs_analyze
def test_a_path_with_spaces_and_percent_is_quoted_for_systemd(tmp_path: Path, home: Path) -> None:
    """A batchd under "my tools%1/" gets a quoted, %-escaped ExecStart that systemd accepts."""
    odd = stand_ins(tmp_path / "my tools%1")
    unit_dir = home / "units"
    code, _ = install(unit_dir, odd)
    assert code == 0
    service = (unit_dir / "batchd.service").read_text()
    assert f'ExecStart="{tmp_path}/my tools%%1/batchd" run' in service.splitlines()
    assert f'ExecReload="{tmp_path}/my tools%%1/batchctl" reload' in service.splitlines()
    proc = analyze_verify(tmp_path, unit_dir / "batchd.service")
    assert (proc.returncode, proc.stderr) == (0, "")


@needs_analyze
def test_python_m_batchd_fallback_verifies(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no batchd script anywhere, ExecStart is `<this python> -m batchd run`, and it verifies."""
    monkeypatch.setattr(sys, "argv", ["/nonexistent/pytest"])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    unit_dir = home / "units"
    out = io.StringIO()
    assert install_service(socket_activation=False, force=False, unit_dir=unit_dir, out=out) == 0
    service = directives((unit_dir / "batchd.service").read_text())
    assert service["ExecStart"] == f"{os.path.abspath(sys.executable)} -m batchd run"
    assert service["ExecReload"] == f"{os.path.abspath(sys.executable)} -m batchctl reload"
    proc = analyze_verify(tmp_path, unit_dir / "batchd.service")
    assert (proc.returncode, proc.stderr) == (0, "")


def test_python_m_batchd_runs_the_cli() -> None:
    """`python -m batchd` (the fallback ExecStart) is the batchd command."""
    proc = subprocess.run(
        [sys.executable, "-m", "batchd", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("batchd ")


# --- install_service ------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_077")
def test_install_writes_units_0644_with_this_installation_path(home: Path, exe: Path) -> None:
    """Units land in a created unit_dir, mode 0644 whatever the umask, ExecStart absolute."""
    unit_dir = home / "deep" / "er" / "units"
    code, text = install(unit_dir, exe, socket_activation=True)
    assert code == 0
    for name in UNITS:
        path = unit_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert path.read_text() == render_unit(name, str(exe))
        assert f"wrote {path}" in text
    assert directives((unit_dir / "batchd.service").read_text())["ExecStart"] == f"{exe} run"
    assert sorted(os.listdir(unit_dir)) == sorted(UNITS)  # no temp files left behind


def test_install_prints_the_next_commands(home: Path, exe: Path) -> None:
    """The output lists daemon-reload, enable --now, enable-linger and journalctl, in order."""
    code, text = install(home / "a", exe)
    assert code == 0
    steps = [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now batchd.service",
        "loginctl enable-linger $USER",
        "journalctl --user -u batchd -f",
    ]
    where = [text.find(s) for s in steps]
    assert -1 not in where and where == sorted(where), text
    assert "~/.config/batchd/environment" in text
    code, text = install(home / "b", exe, socket_activation=True)
    assert code == 0
    assert "systemctl --user enable --now batchd.socket batchd.service" in text


def test_identical_reinstall_is_fine_and_leaves_files_alone(home: Path, exe: Path) -> None:
    """Installing the same units again returns 0, says unchanged and does not rewrite them."""
    unit_dir = home / "units"
    assert install(unit_dir, exe, socket_activation=True)[0] == 0
    before = {n: os.stat(unit_dir / n).st_ino for n in UNITS}
    code, text = install(unit_dir, exe, socket_activation=True)
    assert code == 0
    assert {n: os.stat(unit_dir / n).st_ino for n in UNITS} == before
    assert all(f"unchanged {unit_dir / n}" in text for n in UNITS)


def test_a_changed_unit_is_not_overwritten_without_force(home: Path, exe: Path) -> None:
    """A unit the user edited: exit 1, a diff naming the change and --force, nothing written."""
    unit_dir = home / "units"
    assert install(unit_dir, exe)[0] == 0
    service = unit_dir / "batchd.service"
    edited = service.read_text().replace("RestartSec=5", "RestartSec=1")
    service.write_text(edited)
    code, text = install(unit_dir, exe, socket_activation=True)
    assert code == 1
    assert service.read_text() == edited
    assert not (unit_dir / "batchd.socket").exists()  # all or nothing
    assert str(service) in text and "differs" in text
    assert "-RestartSec=1" in text and "+RestartSec=5" in text
    assert "batchd install-service --socket-activation --force" in text


def test_another_installation_path_counts_as_a_change(home: Path, exe: Path) -> None:
    """Units written for another batchd path are a difference too: refused, ExecStart shown."""
    unit_dir = home / "units"
    other = exe.with_name("other-batchd")
    shutil.copy(exe, other)
    assert install(unit_dir, other)[0] == 0
    code, text = install(unit_dir, exe)
    assert code == 1
    assert f"-ExecStart={other} run" in text and f"+ExecStart={exe} run" in text


def test_force_overwrites_a_changed_unit(home: Path, exe: Path) -> None:
    """--force replaces an edited unit with the rendered one (still 0644) and says so."""
    unit_dir = home / "units"
    assert install(unit_dir, exe)[0] == 0
    service = unit_dir / "batchd.service"
    service.write_text(service.read_text() + "\n# my edit\n")
    service.chmod(0o600)
    code, text = install(unit_dir, exe, force=True)
    assert code == 0
    assert service.read_text() == render_unit("batchd.service", str(exe))
    assert stat.S_IMODE(service.stat().st_mode) == 0o644
    assert f"overwrote {service}" in text


def test_default_unit_dir_follows_xdg_config_home(
    tmp_path: Path, home: Path, exe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """unit_dir defaults to ~/.config/systemd/user, or $XDG_CONFIG_HOME/systemd/user."""
    out = io.StringIO()
    assert install_service(socket_activation=False, force=False, batchd_path=str(exe), out=out) == 0
    assert (home / ".config" / "systemd" / "user" / "batchd.service").is_file()
    assert "Note:" not in out.getvalue()  # systemd reads this directory
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert install_service(socket_activation=False, force=False, batchd_path=str(exe), out=out) == 0
    assert (tmp_path / "xdg" / "systemd" / "user" / "batchd.service").is_file()


def test_default_exec_start_is_this_installation(
    tmp_path: Path, home: Path, exe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running batchd script (symlinks resolved) wins; then batchd on PATH; then python -m."""
    link = tmp_path / "local-bin" / "batchd"
    link.parent.mkdir()
    link.symlink_to(exe)
    monkeypatch.setattr(sys, "argv", [str(link), "install-service"])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert unitfile.default_exec_start() == str(exe)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "pytest")])
    monkeypatch.setenv("PATH", str(link.parent))
    assert unitfile.default_exec_start() == str(exe)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert unitfile.default_exec_start() == f"{os.path.abspath(sys.executable)} -m batchd"


def test_unusable_paths_are_refused_cleanly(tmp_path: Path, home: Path, exe: Path) -> None:
    """A path systemd cannot run, or a unit_dir that is a file: exit 1 with a message."""
    bad = tmp_path / 'say "hi"' / "batchd"
    code, text = install(home / "units", bad)
    assert code == 1 and "quote" in text and not (home / "units").exists()
    blocker = home / "file"
    blocker.write_text("")
    code, text = install(blocker / "units", exe)
    assert code == 1 and "cannot" in text


def test_a_symlinked_unit_is_refused_and_its_target_left_alone(
    tmp_path: Path, home: Path, exe: Path
) -> None:
    """A unit that is a symlink (say, from `systemctl --user link`) is never written through
    nor replaced, even with --force: exit 1 naming it."""
    unit_dir = home / "units"
    unit_dir.mkdir()
    target = tmp_path / "mine.service"
    target.write_text("[Service]\nExecStart=/bin/true\n")
    (unit_dir / "batchd.service").symlink_to(target)
    out = io.StringIO()
    code = install_service(
        socket_activation=False, force=True, unit_dir=unit_dir, batchd_path=str(exe), out=out
    )
    assert code == 1
    assert f"{unit_dir / 'batchd.service'} is a symlink" in out.getvalue()
    assert (unit_dir / "batchd.service").is_symlink()
    assert target.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_leftover_socket_unit_is_pointed_out(home: Path, exe: Path) -> None:
    """Re-installing without socket activation mentions the batchd.socket still installed."""
    unit_dir = home / "units"
    assert install(unit_dir, exe, socket_activation=True)[0] == 0
    code, text = install(unit_dir, exe)
    assert code == 0 and "disable --now batchd.socket" in text


# --- install-service --config, a configured socket, and ExecReload ---------------------------


def test_install_passes_config_to_exec_start_and_exec_reload(home: Path, exe: Path) -> None:
    """--config (made absolute, %, $ and spaces escaped) goes to ExecStart and ExecReload."""
    odd = home / "my conf%1$x" / "batchd.toml"
    odd.parent.mkdir()
    odd.write_text("")
    code, text = install(home / "units", exe, config=odd)
    assert code == 0, text
    d = directives((home / "units" / "batchd.service").read_text())
    word = f'"{home}/my conf%%1$$x/batchd.toml"'
    assert d["ExecStart"] == f"{exe} --config {word} run"
    assert d["ExecReload"] == f"{exe.with_name('batchctl')} --config {word} reload"


@needs_analyze
def test_units_with_config_and_socket_pass_verify(tmp_path: Path, home: Path, exe: Path) -> None:
    """Units written for a --config that names a socket still verify without a warning."""
    config = home / "custom.toml"
    config.write_text(f'socket = "{home}/sock.sock"\n')
    unit_dir = home / ".config" / "systemd" / "user"
    code, text = install(unit_dir, exe, socket_activation=True, config=config)
    assert code == 0, text
    assert directives((unit_dir / "batchd.socket").read_text())["ListenStream"] == (
        f"{home}/sock.sock"
    )
    proc = analyze_verify(tmp_path, unit_dir / "batchd.service", unit_dir / "batchd.socket")
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_configured_socket_goes_into_listen_stream(home: Path, exe: Path) -> None:
    """The default config file's `socket` (~ expanded) is the socket unit's ListenStream."""
    config_dir = home / ".config" / "batchd"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text('socket = "~/run/ctl%.sock"\n')
    code, text = install(home / "units", exe, socket_activation=True)
    assert code == 0, text
    listen = directives((home / "units" / "batchd.socket").read_text())["ListenStream"]
    assert listen == f"{home}/run/ctl%%.sock"


@pytest.mark.parametrize(
    ("socket_value", "expect"),
    [("relative.sock", "not an absolute path"), ("/tmp/a b.sock", "white space")],
)
def test_a_socket_systemd_cannot_listen_on_is_refused(
    home: Path, exe: Path, socket_value: str, expect: str
) -> None:
    """A configured socket that cannot be a ListenStream=: exit 1, the reason, nothing written."""
    config = home / "c.toml"
    config.write_text(f'socket = "{socket_value}"\n')
    code, text = install(home / "units", exe, socket_activation=True, config=config)
    assert code == 1 and expect in text
    assert not (home / "units").exists()


def test_a_missing_config_given_to_install_is_an_error(home: Path, exe: Path) -> None:
    """--config naming no file: exit 1 naming it (the service would fail to start)."""
    missing = home / "missing.toml"
    code, text = install(home / "units", exe, config=missing)
    assert code == 1 and str(missing) in text


def test_install_warns_when_batchctl_is_not_beside_batchd(tmp_path: Path, home: Path) -> None:
    """ExecReload= needs the batchctl beside batchd: its absence is pointed out."""
    lone = tmp_path / "lone" / "batchd"
    lone.parent.mkdir()
    lone.write_text("#!/bin/sh\nexit 0\n")
    lone.chmod(0o755)
    code, text = install(home / "units", lone)
    assert code == 0
    assert f"{lone.with_name('batchctl')} is missing" in text and "reload" in text


def test_batchd_install_service_cli_honours_config(tmp_path: Path, home: Path) -> None:
    """`batchd --config PATH install-service` (a real process) writes PATH into ExecStart."""
    config = home / "custom.toml"
    config.write_text("")
    for argv in (
        ["--config", str(config), "install-service"],
        ["install-service", "--config", str(config)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "batchd", *argv, "--force"],
            env={**os.environ, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        unit = home / ".config" / "systemd" / "user" / "batchd.service"
        d = directives(unit.read_text())
        assert d["ExecStart"].endswith(f" --config {config} run")
        assert d["ExecReload"].endswith(f" --config {config} reload")

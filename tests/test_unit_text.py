"""What the unit templates say: every directive explained, the spec's settings, batchd's exit
statuses, placeholders only where they belong, and the repo's copies equal to them."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from batchd import unitfile
from batchd.config import FileConfig
from batchd.exitcodes import EX_CONFIG, EXIT_FATAL, EXIT_OK, EXIT_RESTART
from batchd.unitfile import render_unit

REPO = Path(__file__).resolve().parent.parent
UNITS = ("batchd.service", "batchd.socket")


def unit_lines(text: str) -> list[str]:
    """The lines of a unit as systemd reads them: a trailing backslash joins the next line."""
    lines: list[str] = []
    for line in text.splitlines():
        if lines and lines[-1].endswith("\\") and not lines[-1].startswith("#"):
            lines[-1] = lines[-1][:-1] + " " + line
        else:
            lines.append(line)
    return lines


def directives(text: str) -> dict[str, str]:
    """Key=value lines of a unit (the last one wins), comments and sections left out."""
    pairs = (
        line.split("=", 1)
        for line in unit_lines(text)
        if line and not line.startswith(("#", "[")) and "=" in line
    )
    return {k: v for k, v in pairs}


@pytest.mark.parametrize("name", UNITS)
def test_repo_units_are_the_rendered_templates(name: str) -> None:
    """systemd/<unit> in the repo is exactly the package template rendered for ~/.local/bin."""
    assert (REPO / "systemd" / name).read_text() == render_unit(name, "%h/.local/bin/batchd")


@pytest.mark.parametrize("name", UNITS)
def test_every_directive_is_explained(name: str) -> None:
    """Each directive in the templates has a comment line right above it."""
    lines = unit_lines(render_unit(name, "/x/batchd"))
    for before, line in itertools.pairwise(lines):
        if line and not line.startswith(("#", "[")):
            assert before.startswith("#"), line


def test_template_placeholders_are_only_where_they_belong() -> None:
    """Each placeholder appears once, on its directive: ExecStart=, ExecReload=, ListenStream=."""
    for name, directive, placeholder in (
        ("batchd.service", "ExecStart=", unitfile.EXEC_PLACEHOLDER),
        ("batchd.service", "ExecReload=", unitfile.RELOAD_PLACEHOLDER),
        ("batchd.socket", "ListenStream=", unitfile.LISTEN_PLACEHOLDER),
    ):
        template = (REPO / "batchd" / "units" / name).read_text().splitlines()
        [line] = [line for line in template if placeholder in line]
        assert line.startswith(directive), line
        assert all(
            p not in render_unit(name, "/x/batchd") for p in ("@BATCHD@", "@BATCHCTL@", "@LISTEN@")
        )


def test_service_unit_has_what_the_spec_asks() -> None:
    """Type=notify, restart policy, KillMode=process, stop timeout > kill_grace, hardening."""
    text = render_unit("batchd.service", "/x/batchd")
    d = directives(text)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/x/batchd run",
        "ExecReload": "/x/batchctl reload",
        "Restart": "on-failure",
        "RestartSec": "5",
        "RestartPreventExitStatus": "78",
        "RestartForceExitStatus": "75",
        "SuccessExitStatus": "75",
        "KillMode": "process",
        "WatchdogSec": "60",
        "EnvironmentFile": "-%h/.config/batchd/environment",
        "NoNewPrivileges": "yes",
        "WantedBy": "default.target",
    }
    assert {k: d.get(k) for k in expected} == expected
    assert d["ExecStopPost"].startswith("-/bin/sh -c 'case ")
    assert float(d["TimeoutStopSec"]) > FileConfig().runner.kill_grace
    # Nothing that needs namespaces a plain user manager lacks, or that locks the runner out.
    for absent in ("ProtectHome", "ProtectSystem", "PrivateTmp", "MemoryDenyWriteExecute"):
        assert absent not in d, absent
        assert f"{absent}=" in text  # ...but the comment says why


def test_the_unit_acts_on_batchd_s_exit_statuses() -> None:
    """The unit's numbers are batchd.exitcodes': no restart on 78, restart and no sweep on 75,
    the stop sweep after a clean stop (0) or a stop timeout only."""
    d = directives(render_unit("batchd.service", "/x/batchd"))
    assert d["RestartPreventExitStatus"] == str(EX_CONFIG)
    assert d["RestartForceExitStatus"] == d["SuccessExitStatus"] == str(EXIT_RESTART)
    sweep_when = d["ExecStopPost"].split(" in ", 1)[1].split(")", 1)[0]
    assert sweep_when == f"success/{EXIT_OK}|timeout/*"
    assert EXIT_RESTART not in (EXIT_OK, EXIT_FATAL, 2, EX_CONFIG) and EXIT_RESTART < 200


def test_socket_unit_has_what_the_spec_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ListenStream at %t/batchd/batchd.sock, 0600 in 0700, for batchd.service: batchd's default."""
    d = directives(render_unit("batchd.socket", "/x/batchd"))
    assert {k: d.get(k) for k in ("ListenStream", "SocketMode", "DirectoryMode", "Service")} == {
        "ListenStream": "%t/batchd/batchd.sock",
        "SocketMode": "0600",
        "DirectoryMode": "0700",
        "Service": "batchd.service",
    }
    from batchd.paths import resolve_socket

    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("BATCHD_SOCKET", raising=False)
    monkeypatch.setenv("BATCHD_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    expected = d["ListenStream"].replace("%t", str(runtime))
    assert resolve_socket(os.environ) == Path(expected)


def test_no_documentation_placeholder() -> None:
    """The units carry no Documentation= line (there was a placeholder URL once)."""
    for name in UNITS:
        assert "Documentation=" not in render_unit(name, "/x/batchd")

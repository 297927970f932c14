"""The command line: --check-config, --version, --log-level, help, env defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.__main__ import build_parser, gateway_version, main
from tests.support import REPO_ROOT

GOOD = '[[clients]]\nkey = "k"\n[[accounts]]\nid = "a"\nbase_url = "http://127.0.0.1:1/v1"\n'


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The CLI as an operator runs it, from a directory outside the repository."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_check_config_accepts_a_good_file_and_prints_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GOOD.replace('key = "k"', 'key = "sk-very-secret"'))
    code, out, err = run(["--check-config", "--config", str(path)])
    assert code == 0, err
    assert out.splitlines()[0] == f"config OK: {path}"
    assert "accounts_by_group: {'default': ['a']}" in out
    assert "client_keys_by_group: {'default': 1}" in out
    assert "sk-very-secret" not in out


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("", "accounts"),
        ('[[accounts]]\nid = "a"\n', "clients"),
        ('[[clients]]\nkey = "k"\n', "accounts"),
        ('[[clients]]\nkey = "k"\n[[accounts]]\nid = "a"\nauth = "api-key"\n', "accounts[0].auth"),
        ('[[clients]]\nkey = "k"\ngroup = "g"\n[[accounts]]\nid = "a"\n', "clients[0].group"),
        (
            '[[clients]]\nkey = "k"\n[[clients]]\nkey = "k"\n[[accounts]]\nid = "a"\n',
            "clients[1].key",
        ),
        (GOOD + "[telemetry]\nmetrics = false\n", "metrics"),
    ],
)
def test_check_config_fails_with_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = run(["--check-config", "--config", str(path)])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert key in err and str(path) in err


def test_startup_fails_like_check_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[accounts]]\nid = "a"\n')
    code, _, err = run(["--config", str(path), "--port", "1"])
    assert code == 2 and err.strip().startswith("gateway: ") and "clients" in err
    assert "Traceback" not in err


def test_without_a_config_the_packaged_example_is_used() -> None:
    code, out, err = run(["--check-config"])
    assert code == 0, err
    assert out.splitlines()[0] == "config OK: packaged example config"


def test_version_and_help() -> None:
    code, out, _ = run(["--version"])
    assert code == 0 and out.strip() == f"responses-gateway {gateway_version()}"
    code, out, _ = run(["--help"], env={"PORT": "not-a-number"})
    assert code == 0
    for option in ("--check-config", "--log-level", "--workers", "WEB_CONCURRENCY", "PORT"):
        assert option in out


def test_bad_port_in_the_environment_is_a_usage_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--check-config"], env={"PORT": "eighty"})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--port" in err and "eighty" in err and "Traceback" not in err


def test_environment_defaults() -> None:
    args = build_parser({"PORT": "9000", "HOST": "0.0.0.0", "WEB_CONCURRENCY": "3"}).parse_args([])
    assert (args.port, args.host, args.workers) == (9000, "0.0.0.0", 3)
    args = build_parser({}).parse_args(["--log-level", "debug"])
    assert (args.port, args.workers, args.log_level, args.config) == (8080, 1, "debug", "")
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["--log-level", "loud"])


def test_print_example_config_is_the_packaged_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-example-config"], env={}) == 0
    assert capsys.readouterr().out == (REPO_ROOT / "gateway" / "example.toml").read_text()


def test_log_level_option_reaches_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from gateway.app import create_app
    from gateway.config import parse_config

    cfg = parse_config(GOOD, env={})
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        monkeypatch.setenv("GATEWAY_LOG_LEVEL", "warning")
        create_app(cfg)
        assert root.level == logging.WARNING
        monkeypatch.delenv("GATEWAY_LOG_LEVEL")
        create_app(cfg)
        assert root.level == logging.INFO  # the config's telemetry.log_level
    finally:
        root.handlers[:], root.level = saved

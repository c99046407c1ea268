"""The guide builds with ``mkdocs build --strict``, and its CLI reference shows every subcommand."""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))
import cli_reference  # noqa: E402  (the build hook: same width and walk as the page)


def _text(page: Path) -> str:
    """A built page's text: tags dropped, entities decoded, whitespace runs made one space."""
    raw = re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))
    return " ".join(html.unescape(raw).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_build_is_strict_clean(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "cli" / "index.html").is_file()


def test_cli_reference_has_every_usage_line(site: Path) -> None:
    from textgen.cli import build_parser

    page = _text(site / "cli" / "index.html")
    with cli_reference._plain_terminal():
        parser = build_parser()
        subs = cli_reference.subcommands(parser)
        assert subs, "textgen has no subcommands?"
        usages = {"textgen": parser.format_usage()} | {name: sub.format_usage() for name, _, sub in subs}
    for name, usage in usages.items():
        assert " ".join(usage.split()) in page, f"the CLI reference lacks the usage of {name}"


def test_preset_pages_show_the_real_tables(site: Path) -> None:
    page = _text(site / "presets" / "shakespeare" / "index.html")
    assert "Total params: 5,334,337" in page  # printed by textgen summary at build time
    assert "5,330,241" in page


def test_hook_walks_the_parser_like_help() -> None:
    names = [name for name, _, _ in cli_reference.subcommands(_parser())]
    assert names[:5] == ["train", "generate", "eval", "summary", "presets"]


def _parser() -> argparse.ArgumentParser:
    from textgen.cli import build_parser

    return build_parser()

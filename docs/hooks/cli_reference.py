"""MkDocs hook: fill the guide's markers with output of the installed textgen at build time.

Markers (HTML comments, each alone on its line):

``<!-- textgen:cli-reference -->``
    the ``--help`` text of ``textgen`` and of every subcommand, found by walking
    ``textgen.cli.build_parser()``'s subparsers, each as a heading and a fenced block;
``<!-- textgen:summary NAME -->``
    what ``textgen summary --preset NAME`` prints;
``<!-- textgen:presets -->``
    what ``textgen presets`` prints.

So the reference and the tables can never drift from the code. The hook also makes the
snippets' base path absolute, so the site builds from any working directory. A preset the installed textgen
does not know yet becomes a note on the page instead of a table (logged at INFO, so
``mkdocs build --strict`` still passes); any other failure, or an unknown marker, is a warning,
which ``--strict`` turns into a failed build.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("mkdocs.hooks.textgen")

MARKER = re.compile(r"^<!--\s*textgen:(?P<what>[\w-]+)(?:\s+(?P<arg>[\w-]+))?\s*-->[ \t]*$", re.MULTILINE)
HELP_COLUMNS = "100"  # argparse wraps to the terminal width: fix it so the page is the same everywhere


@contextlib.contextmanager
def _plain_terminal() -> Iterator[None]:
    """A fixed help width and no colour while argparse formats (it reads both from the environment)."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"], os.environ["NO_COLOR"] = HELP_COLUMNS, "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order ``textgen --help`` lists them."""
    out = []
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias names the same parser again
                    seen.add(id(sub))
                    out.append((name, helps.get(name, ""), sub))
    return out


def cli_reference() -> str:
    from textgen.cli import build_parser

    with _plain_terminal():
        parser = build_parser()
        parts = [
            "## `textgen`",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for name, help_line, sub in subcommands(parser):
            parts += ["", f"## `textgen {name}`", ""]
            if help_line:
                parts += [help_line[0].upper() + help_line[1:] + ".", ""]
            parts += ["```text", sub.format_help().rstrip(), "```"]
    return "\n".join(parts)


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``textgen ARGV`` in this process: (exit code, stdout, stderr)."""
    from textgen.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _plain_terminal():
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refused the arguments
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def _fence(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```"


def preset_summary(name: str, page: str) -> str:
    code, out, err = _run_cli(["summary", "--preset", name])
    if code == 0:
        return _fence(out)
    message = err.strip().removeprefix("textgen: error: ")
    if "unknown preset" in message:
        log.info("%s: preset %r is not in the installed textgen; the page shows a note instead", page, name)
        return (
            f'!!! note "Not in this build"\n'
            f"    The textgen this guide was built with has no `{name}` preset yet "
            f"(`textgen summary --preset {name}` answered: *{message}*). "
            f"Its layer table appears here once it does."
        )
    log.warning("%s: textgen summary --preset %s failed (exit %s): %s", page, name, code, message)
    return _fence(err or out)


def presets_list(page: str) -> str:
    code, out, err = _run_cli(["presets"])
    if code != 0:
        log.warning("%s: textgen presets failed (exit %s): %s", page, code, err.strip())
    return _fence(out or err)


def on_config(config: Any) -> Any:
    """Make the snippets' base path absolute, so ``mkdocs -f PATH`` works from any directory
    (pymdownx.snippets reads a relative base path from the working directory)."""
    root = os.path.dirname(os.path.abspath(config.config_file_path))
    snippets = config.mdx_configs.get("pymdownx.snippets")
    if snippets is not None:
        paths = snippets.get("base_path", ["."])
        paths = [paths] if isinstance(paths, str) else paths
        snippets["base_path"] = [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]
    return config


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    where = page.file.src_uri

    def fill(m: re.Match[str]) -> str:
        what, arg = m.group("what"), m.group("arg")
        if what == "cli-reference":
            return cli_reference()
        if what == "summary" and arg:
            return preset_summary(arg, where)
        if what == "presets":
            return presets_list(where)
        log.warning("%s: unknown marker %r", where, m.group(0))
        return m.group(0)

    if where == "cli.md" and not MARKER.search(markdown):
        log.warning("cli.md has no <!-- textgen:cli-reference --> marker: the CLI reference is missing")
    return MARKER.sub(fill, markdown)

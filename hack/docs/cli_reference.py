"""The CLI reference page, generated from the ``kubetune`` command's own argparse parser.

Each subcommand gets its usage line, its help and a table of its arguments (flags, help,
default), so the page lists exactly what ``kubetune COMMAND --help`` accepts.
"""

from __future__ import annotations

import argparse
import re

INTRO = """\
# CLI reference

The `kubetune` command: `kubetune run` on a laptop, `kubetune runner` in a runner pod, and the
commands that look at and check a study. This page is generated from the command's own parser
(`kubetune COMMAND --help` says the same). The [user guide](../guide/local.md#commands) says
what each command is for and what it prints.
"""

EXIT_CODES = """\
## Exit codes

| code | meaning |
|---|---|
| 0 | success |
| 1 | the study failed: its trials kept failing (`maxFailedTrials`, or \
`maxConsecutiveFailedTrials` in a row; see \
[the failure breaker](../guide/local.md#the-failure-breaker)) |
| 2 | invalid input: the spec, the task entrypoint or a flag |
| 3 | the storage cannot be reached |
| 130 | interrupted |

`kubetune runner` also exits 4 after `--exit-after-oom-trials` trials ran out of memory, 6
when the task does not load (`spec.task.entrypoint` does not import, the task refused its
config, or `load_data` raised), and 7 when it was given a GPU (`accelerator: GPU` or `MIG`, or
the operator sized its pod for one) that CUDA cannot use: it never trains on the CPU instead.
"""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's name and parser, in the order the command defines them."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help each subcommand was added with."""
    helps: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                helps[choice.dest] = choice.help or ""
    return helps


def _cell(text: str) -> str:
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", " ")


def _argument_row(action: argparse.Action) -> str:
    if action.option_strings:
        name = ", ".join(action.option_strings)
        if action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
    else:
        name = str(action.metavar or action.dest).upper()
        if action.nargs == "?":
            name = f"[{name}]"
    default = action.default
    shown = (
        ""
        if default is None or default is False or default == argparse.SUPPRESS
        else f"`{default}`"
    )
    kind = getattr(action.type, "__name__", "") if action.type is not None else "text"
    if action.nargs == 0:
        kind = "flag"
    return f"| `{name}` | {kind} | {shown} | {_cell(action.help or '')} |"


def command_markdown(prog: str, name: str, help_text: str, sub: argparse.ArgumentParser) -> str:
    usage = re.sub(r"\n\s+", "\n    ", sub.format_usage().removeprefix("usage: ").strip())
    lines = [f"## `{prog} {name}`", "", help_text[:1].upper() + help_text[1:] + ".", ""]
    lines += ["```", usage, "```", ""]
    actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
    if actions:
        lines += ["| argument | type | default | help |", "|---|---|---|---|"]
        lines += [_argument_row(action) for action in actions]
        lines.append("")
    return "\n".join(lines)


def reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole page, from ``parser`` (default: the ``kubetune`` command's)."""
    if parser is None:
        from trial_runner.cli import build_parser

        parser = build_parser()
    helps = _helps(parser)
    parts = [INTRO]
    for name, sub in subcommands(parser).items():
        parts.append(command_markdown(parser.prog, name, helps.get(name, ""), sub))
    parts.append(EXIT_CODES)
    return "\n".join(parts)

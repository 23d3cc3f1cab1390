"""What ``--help`` shows, set once on the whole command tree.

Typer builds the click commands; :func:`decorate` walks them once, before the command
line is parsed, so no command writes these by hand:

- ``-h`` works as ``--help`` on every command and group;
- help is click's plain text, not typer's rich panels: at 80 columns those cut long
  option help (and every ``ANDY_HOST_*`` name) short with an ellipsis;
- a boolean flag shows as a flag (typer's rich help would print ``<bool>`` as if it took
  a value);
- an option that sets a config option says so: its default and its
  ``ANDY_HOST_<SECTION>_<OPTION>`` environment name, taken from ``config.py`` itself, so
  the names shown are the names ``load_config`` reads.

A command's flags map to config options by a *layout* (section -> {option: flag}), the
same table the command uses to build its flags for ``load_config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import typer

from andy_host.config import ENV_PREFIX, SECTIONS, default_config_path

Layout = Mapping[str, Mapping[str, str]]  # section -> {config option: flag parameter name}
HELP_NAMES = ["-h", "--help"]
# Flags that mean the same on every command that has them.
COMMON: Layout = {"coordinator": {"db": "db", "admin_token": "admin_token"}, "log": {"format": "log_format"}}


def env_name(section: str, option: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{option.upper()}"


def default_of(section: str, option: str) -> str:
    """The built-in default of a config option as a user would type it ("" when empty)."""
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if option not in fields:
        raise KeyError(f"{section}.{option} is not a config option")
    value = getattr(SECTIONS[section](), option)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def config_suffix(section: str, option: str) -> str:
    """``[default: 8080] [env var: ANDY_HOST_COORDINATOR_PORT]`` for one config option."""
    default = default_of(section, option)
    parts = [f"[default: {default}]"] if default else []
    parts.append(f"[env var: {env_name(section, option)}]")
    return " ".join(parts)


def _by_flag(layout: Layout) -> dict[str, tuple[str, str]]:
    return {flag: (section, option) for section, options in layout.items() for option, flag in options.items()}


def _config_note(name: str, flags: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """What ``--help`` adds to the option ``name``, and the environment name it shows."""
    if name in flags:
        section, option = flags[name]
        return config_suffix(section, option), env_name(section, option)
    if name == "config":
        env = f"{ENV_PREFIX}CONFIG"
        return f"[default: {default_config_path()}] [env var: {env}]", env
    return "", ""


def _decorate_params(command: Any, layout: Layout) -> None:
    flags = {**_by_flag(COMMON), **_by_flag(layout)}
    ctx = typer.Context(command, help_option_names=HELP_NAMES)
    help_option = command.get_help_option(ctx)  # created once, then cached by the command
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if getattr(param, "param_type_name", "") != "option":
            continue
        if param.is_flag and not param.count:
            param.metavar = ""  # shown as a flag, not as taking a <bool>
        note, env = _config_note(param.name or "", flags)
        if note and env not in (param.help or ""):  # a help text that names it already stays
            param.help = f"{param.help or ''} {note}".strip()


def decorate(command: Any, layouts: Mapping[str, Layout], path: str = "") -> None:
    """Apply the rules above to ``command`` (a click command, as ``typer.main.get_command``
    builds it: typed as Any, since typer 0.29 vendors its own click) and every command
    under it; ``layouts`` maps a command path ("join", "coordinator serve") to its layout."""
    command.context_settings.setdefault("help_option_names", HELP_NAMES)
    command.rich_markup_mode = None  # plain help and errors (see above)
    _decorate_params(command, layouts.get(path, {}))
    if isinstance(getattr(command, "commands", None), dict):
        for name, sub in command.commands.items():
            decorate(sub, layouts, f"{path} {name}".strip())

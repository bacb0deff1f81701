"""How the `headwater` command reads and checks its settings: flags through the same `Form`s
as the HEADWATER_* variables (headwater.config), every problem found before a command runs,
each as one line, exit status 2."""

from __future__ import annotations

import os
from typing import IO, Any

import click
from click.core import ParameterSource

from headwater import faults
from headwater.config import Form, SettingError, Settings, environment_problems, unknown_variables


class Misconfigured(click.ClickException):
    """Settings or flags the command cannot start with: one line each, exit status 2."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def show(self, file: IO[Any] | None = None) -> None:
        for problem in self.problems:
            click.echo(f"headwater: {problem}", err=True)


def _envvar(param: click.Parameter, ctx: click.Context) -> str | None:
    if isinstance(param.envvar, str):
        return param.envvar
    if isinstance(param, click.Option) and param.allow_from_autoenv and ctx.auto_envvar_prefix and param.name:
        return f"{ctx.auto_envvar_prefix}_{param.name.upper()}"
    return None


def _where(param: click.Parameter | None, ctx: click.Context | None) -> str:
    """The variable a bad value came from, or else its flag."""
    if param is None:
        return "a value"
    if ctx is not None and param.name and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
        return _envvar(param, ctx) or param.human_readable_name
    flags = [opt for opt in param.opts if opt.startswith("--")]
    return flags[0] if flags else param.human_readable_name


class FormType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    """A flag read by a `headwater.config.Form`, the one parser of settings, flags and variables alike."""

    def __init__(self, form: Form[Any]) -> None:
        self.form = form
        self.name = form.metavar.lower()

    def get_metavar(self, param: click.Parameter, ctx: Any = None) -> str:
        return self.form.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, already of its type
        try:
            return self.form.read(_where(param, ctx), value)
        except SettingError as exc:
            raise Misconfigured([str(exc)]) from None


def _option_variables(command: click.Command, prefix: str) -> set[str]:
    """The variable of every option of `command` and its subcommands."""
    known: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option) and param.expose_value:
            known.update([param.envvar] if isinstance(param.envvar, str) else param.envvar or ())
            if param.allow_from_autoenv and param.name:
                known.add(f"{prefix}_{param.name.upper()}")
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            known |= _option_variables(sub, f"{prefix}_{name.upper().replace('-', '_')}")
    return known


class CheckedCommand(click.Command):
    """Checks every setting before it runs: a bad flag value (the first; flags are parsed in
    turn) and every bad HEADWATER_* variable, one line each; unknown variables are warned about."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        root = ctx.find_root()
        known = set(Settings.variables()) | set(faults.VARIABLES)
        known |= _option_variables(root.command, root.auto_envvar_prefix or "HEADWATER")
        for name, closest in unknown_variables(os.environ, known):
            hint = f" (did you mean {closest}?)" if closest else ""
            click.echo(f"headwater: warning: {name} is not a Headwater setting and is ignored{hint}", err=True)
        problems = environment_problems()
        try:
            rest = super().parse_args(ctx, args)
        except Misconfigured as exc:
            # A flag read from its variable fails as the variable itself did: one line, not two.
            raise Misconfigured(list(dict.fromkeys(exc.problems + problems))) from None
        except click.BadParameter as exc:
            message = exc.message.rstrip(".")
            raise Misconfigured([f"{_where(exc.param, exc.ctx)} is not valid: {message}", *problems]) from None
        if problems:
            raise Misconfigured(problems)
        return rest


class CheckedGroup(click.Group):
    command_class = CheckedCommand
    group_class = type

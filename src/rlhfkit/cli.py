"""The `rlhfkit` command line: one Typer app, one command per stage of `rlhfkit.stages.STAGES`.

Each command is built from its stage's pydantic config: every config field is a flag with the field's
description as help, `--config FILE.yaml` supplies a base, and flags given on the command line win.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Literal, Optional

import typer
import yaml

from rlhfkit.config import ConfigError, flag_fields, load_config, section_classes
from rlhfkit.stages import STAGES, Stage

app = typer.Typer(
    help="rlhfkit: InstructGPT end to end. SFT on demonstrations, a reward model from rankings, "
    "PPO-ptx against it, and evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """rlhfkit: InstructGPT end to end."""


def _cli_type(annotation) -> tuple[type, str]:
    """The type Typer should parse a config field as, and extra help text (the allowed values)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _cli_type(non_none[0]) if len(non_none) == 1 else (str, "")
    if origin is Literal:
        return str, " One of: " + ", ".join(map(str, args)) + "."
    if origin is list:
        inner, extra = _cli_type(args[0])
        return list[inner], extra and extra.replace("One of", "Each one of") + " Repeat the flag for several."
    return annotation, ""


def _is_section(annotation) -> bool:
    """A field holding options of its own (a section, or a union of variant sections): set through its flags or
    --set, not as one flag."""
    return bool(section_classes(annotation))


def _flag(name: str, kind, help: str, default, extra: dict | None = None) -> inspect.Parameter:
    """A config field as a command-line parameter: a flag (`--max-length`), or with `{"argument": True}` in the
    field's json_schema_extra a positional argument; `{"short": "-m"}` adds a short flag."""
    kind, allowed = _cli_type(kind)
    extra = extra or {}
    if extra.get("argument"):
        option = typer.Argument(None, help=f"{help}{allowed}", show_default=False)
    else:
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(None, *decls, *([extra["short"]] if "short" in extra else []),
                              help=f"{help}{allowed} [default: {default}]", show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                             annotation=Optional[kind], default=option)  # noqa: UP045 (kind is a runtime value)


def config_command(group: typer.Typer, stage: Stage) -> None:
    """`stage` as a command of `group`: a flag for every option of its config (positional arguments first), flags
    for the options inside its sections, `--config FILE.yaml` as the base and `--set SECTION.OPTION=VALUE`."""
    cls = stage.config
    params = [
        inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", "-c", help="YAML file of options; flags given here override it."),
        )
    ]
    sections = [n for n, f in cls.model_fields.items() if _is_section(f.annotation)]
    if sections:  # nested options take dotted overrides
        params.append(inspect.Parameter(
            "set", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],  # noqa: UP045
            default=typer.Option(None, "--set", help=f"SECTION.OPTION=VALUE for a section ({', '.join(sections)}), "
                                 "e.g. --set ppo.lr=2e-5 in the demo, --set kl.coef=0.05 in ppo (repeat for "
                                 "several); VALUE is read as YAML.")))
    own = list(cls.__annotations__)  # the stage's own options first, then the shared training ones

    def order(item):
        field = item[1]
        return not (field.json_schema_extra or {}).get("argument"), item[0] not in own

    for field_name, field in sorted(cls.model_fields.items(), key=order):
        if field_name in sections:
            continue
        default = field.default if field.default_factory is None else field.default_factory()
        params.append(_flag(field_name, field.annotation, field.description, default, field.json_schema_extra))
    # flags that set an option inside a section (`--gamma` sets advantage.gamma)
    for flag_name, (kind, flag_help, default) in flag_fields(cls, getattr(cls, "FLAGS", {})).items():
        params.append(_flag(flag_name, kind, flag_help, default))

    def command(**kwargs):
        config_path = kwargs.pop("config")
        for item in kwargs.pop("set", None) or []:
            key, sep, value = item.partition("=")
            if not sep or "." not in key:
                raise ConfigError(f"--set {item}: expected SECTION.OPTION=VALUE, e.g. ppo.lr=2e-5")
            kwargs[key.strip()] = yaml.safe_load(value)
        stage.run(load_config(cls, config_path, kwargs))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = stage.name.replace(" ", "_")
    group.command(stage.name.split()[-1], help=stage.help)(command)


GROUPS = {
    "label": typer.Typer(help="The labeling service: labelers, projects, tasks, exports.", no_args_is_help=True),
    "eval": typer.Typer(help="Evaluate policies and reward models.", no_args_is_help=True),
}
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)
for _stage in STAGES.values():  # "eval tax" goes into the eval group as "tax"
    config_command(GROUPS[_stage.name.split()[0]] if " " in _stage.name else app, _stage)


def main() -> None:
    from rich.markup import escape

    from rlhfkit.console import console
    from rlhfkit.errors import UsageError
    from rlhfkit.feedback.client import LabelingError
    from rlhfkit.models import ModelLoadError, ModelNotAvailable
    from rlhfkit.train.common import NonFiniteLoss, RunExists

    try:
        app()
    except (UsageError, ModelLoadError, ModelNotAvailable, NonFiniteLoss, RunExists, FileExistsError,
            LabelingError) as e:  # what the user can fix, in one line; anything else is a bug
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted.[/yellow] Rerun the same command with --resume to continue "
                      "from the last checkpoint.")
        sys.exit(130)

"""The `rlhfkit` command line: one Typer app, one command per stage.

Stage commands are built from their pydantic config: every config field is a flag with the field's
description as help, `--config FILE.yaml` supplies a base, and flags given on the command line win.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Optional

import typer
import yaml
from pydantic import BaseModel

from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    GenerateConfig,
    PPOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
    flag_fields,
    load_config,
    section_classes,
)
from rlhfkit.demo.config import DemoConfig

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


def _flag(name: str, kind, help: str, default) -> inspect.Parameter:
    kind, extra = _cli_type(kind)
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],  # noqa: UP045 (kind is a runtime value)
        default=typer.Option(None, *decls, help=f"{help}{extra} [default: {default}]", show_default=False))


def config_command(name: str, cls: type[BaseModel], run: Callable[[BaseModel], None], help: str) -> None:
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
                                 "e.g. --set ppo.lr=2e-5 (repeat for several); VALUE is read as YAML.")))
    own = list(cls.__annotations__)  # the stage's own options first, then the shared training ones
    ordered = sorted(cls.model_fields.items(), key=lambda kv: (kv[0] not in own, 0))
    for field_name, field in ordered:
        if field_name in sections:
            continue
        default = field.default if field.default_factory is None else field.default_factory()
        params.append(_flag(field_name, field.annotation, field.description, default))
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
        cfg = load_config(cls, config_path, kwargs)
        run(cfg)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = name
    app.command(name, help=help)(command)


def _call(target: str) -> Callable[[BaseModel], None]:
    """`module:function`, imported when the command runs (so `rlhfkit --help` does not load torch)."""
    module, _, function = target.partition(":")
    return lambda cfg: getattr(importlib.import_module(module), function)(cfg)


STAGES = [
    ("sft", SFTConfig, "rlhfkit.train.sft:train_sft",
     "Step 1: supervised fine-tuning on demonstrations. Writes a HF model folder to --output-dir. "
     "Data-parallel with: accelerate launch --num_processes 2 -m rlhfkit sft ..."),
    ("sample", SampleConfig, "rlhfkit.sampling:sample_rankings",
     "Step 2a: sample K distinct responses per prompt from a policy, written as Ranking-ready JSONL "
     "for labelers (the labeling service or simulated ones)."),
    ("rm", RMConfig, "rlhfkit.train.reward:train_reward",
     "Step 2b: train a reward model on rankings (every pair of a ranking, one forward per response). "
     "Writes the RM folder to --output-dir and a held-out report (accuracy, by K, calibration)."),
    ("ppo", PPOConfig, "rlhfkit.train.ppo:train_ppo",
     "Step 3: PPO-ptx. Optimise the SFT policy against the reward model with a per-token KL penalty "
     "to the SFT policy and pretraining gradients mixed in (--ptx-data, --ptx-coef). Writes the policy to "
     "--output-dir and the value model to --output-dir/value."),
    ("dpo", DPOConfig, "rlhfkit.train.dpo:train_dpo",
     "DPO on rankings, the alternative to steps 2b-3: train the policy on every ordered pair of each ranking "
     "against a frozen reference (--beta; --label-smoothing for cDPO, --loss-type ipo). No reward model, no "
     "sampling. Writes the policy to --output-dir."),
    ("demo", DemoConfig, "rlhfkit.demo.pipeline:run_demo",
     "The whole loop on the bundled data with simulated labelers: SFT, comparisons, reward model, "
     "PPO-ptx, evaluation against base and SFT, a second round; writes runs/<name>/report.md. "
     "--quick runs a tiny configuration; --resume continues an interrupted run; the stages' own options are "
     "sections of the config (sft, sample, rm, ppo), set with --set ppo.iterations=20."),
    ("generate", GenerateConfig, "rlhfkit.sampling:generate",
     "Answer prompts with a model (any stage's output folder), greedy by default."),
]


for _name, _cls, _target, _help in STAGES:
    config_command(_name, _cls, _call(_target), _help)

label_app = typer.Typer(help="The labeling service: labelers, projects, tasks, exports.", no_args_is_help=True)
app.add_typer(label_app, name="label")
DB_OPTION = typer.Option("sqlite:///feedback.db", "--db", help="Database URL (sqlite:///file.db or "
                         "postgresql+psycopg://user@host/db).")


@label_app.command("serve")
def label_serve(
    db: str = DB_OPTION,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    log_level: str = typer.Option("info", help="uvicorn log level (warning: no line per request)."),
    proxy_headers: bool = typer.Option(False, "--proxy-headers/--no-proxy-headers", help="Behind a TLS proxy: "
                                       "take the client's address and scheme from X-Forwarded-For/-Proto (then "
                                       "cookies are Secure and HSTS is sent), from --forwarded-allow-ips only."),
    forwarded_allow_ips: str = typer.Option("127.0.0.1", help="Proxies trusted for X-Forwarded-* (comma list)."),
) -> None:
    """Serve the labeling web app (sign in at /login; admins at /admin). Put it behind TLS for remote use."""
    import uvicorn

    from rlhfkit.feedback.app import create_app

    uvicorn.run(create_app(db), host=host, port=port, log_level=log_level, server_header=False,
                proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips)


@label_app.command("add-labeler")
def label_add_labeler(
    name: str = typer.Argument(..., help="The labeler's sign-in name."),
    role: str = typer.Option("labeler", help="labeler or admin."),
    password: bool = typer.Option(False, "--password", help="Also set a password (at least 12 characters, stored "
                                  "hashed), asked for without echo, or read from standard input when that is not a "
                                  "terminal; never taken on the command line, where other users can see it."),
    db: str = DB_OPTION,
) -> None:
    """Create a labeler and print their sign-in token (shown once; only its hash is stored)."""
    from rlhfkit.feedback.store import Store

    secret = None
    if password:
        secret = (typer.prompt("password", hide_input=True, confirmation_prompt=True) if sys.stdin.isatty()
                  else sys.stdin.readline().rstrip("\n"))
    _, token = Store(db).add_labeler(name, role, secret)
    typer.echo(token)


@label_app.command("deactivate")
def label_deactivate(name: str = typer.Argument(..., help="The labeler's name."), db: str = DB_OPTION) -> None:
    """Stop a labeler: their token and password no longer sign in, and their open sessions end at once."""
    from rlhfkit.feedback.store import Store

    Store(db).deactivate(name)
    typer.echo(f"{name}: deactivated, sessions ended")


@label_app.command("rotate-token")
def label_rotate_token(name: str = typer.Argument(..., help="The labeler's name."), db: str = DB_OPTION) -> None:
    """Give a labeler a new sign-in token (printed once): the old one stops working and their sessions end."""
    from rlhfkit.feedback.store import Store

    typer.echo(Store(db).rotate_token(name))


@label_app.command("add-project")
def label_add_project(
    name: str = typer.Argument(..., help="Project name."),
    kind: str = typer.Option("ranking", help="ranking, demonstration or pairwise."),
    overlap: int = typer.Option(1, help="Distinct labelers per task (more than 1 measures agreement)."),
    lease_seconds: int = typer.Option(1800, help="How long a labeler holds a task before it goes back."),
    db: str = DB_OPTION,
) -> None:
    """Create a labeling project."""
    from rlhfkit.feedback.store import Store

    Store(db).add_project(name, kind, overlap, lease_seconds)


@label_app.command("import")
def label_import(
    project: str = typer.Argument(..., help="Project to add tasks to."),
    path: Path = typer.Argument(..., help="`rlhfkit sample` output (ranking/pairwise) or prompts (demonstration)."),
    priority_field: str = typer.Option(None, help="meta field holding each task's priority (higher first)."),
    db: str = DB_OPTION,
) -> None:
    """Add tasks from a file; records already imported are skipped."""
    from rlhfkit.data import read_prompts
    from rlhfkit.data.rankings import read_rankings
    from rlhfkit.feedback.store import Store

    store = Store(db)
    kind = store.project(project).kind
    if kind == "demonstration":
        records = read_prompts(path).records
        payloads = [{"prompt": r.model_dump(mode="json")["prompt"]} for r in records]
    else:
        records = read_rankings(path, require_ranks=False).records
        payloads = [{"prompt": r.model_dump(mode="json")["prompt"], "responses": r.responses,
                     "sources": r.sources} for r in records]
    priorities = [float(r.meta.get(priority_field, 0.0)) for r in records] if priority_field else None
    added = store.import_tasks(project, payloads, priorities)
    typer.echo(f"{added} new tasks ({len(payloads) - added} already there)")


@label_app.command("export")
def label_export(
    project: str = typer.Argument(..., help="Project to export."),
    output: Path = typer.Argument(..., help="JSONL to write: rankings (rlhfkit rm, eval elo) or demonstrations "
                                  "(rlhfkit sft)."),
    db: str = DB_OPTION,
) -> None:
    """Write one record per labeler judgement, labeler id kept."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.feedback.export import export_demonstrations, export_rankings
    from rlhfkit.feedback.store import Store

    store = Store(db)
    kind = store.project(project).kind
    records = export_demonstrations(store, project) if kind == "demonstration" else export_rankings(store, project)
    write_jsonl(output, records)
    typer.echo(f"{len(records)} records -> {output}")


@label_app.command("report")
def label_report(project: str = typer.Argument(..., help="Project."), db: str = DB_OPTION) -> None:
    """Progress, judgements per labeler and inter-labeler agreement (JSON)."""
    import json

    from rlhfkit.feedback.export import agreement
    from rlhfkit.feedback.store import Store

    store = Store(db)
    typer.echo(json.dumps({"progress": store.progress(project), "agreement": agreement(store, project)}, indent=2))


eval_app = typer.Typer(help="Evaluate policies and reward models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("elo")
def eval_elo(
    rankings: Path = typer.Argument(..., help="Rankings whose responses carry sources[i].policy (JSONL)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the table as JSON here."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples of whole rankings for the 95% intervals."),
    seed: int = typer.Option(0, help="Seed for the bootstrap."),
) -> None:
    """Bradley-Terry strengths (Elo scale) with bootstrap 95% intervals, and online Elo, per policy."""
    import json
    from dataclasses import asdict

    from rich.table import Table

    from rlhfkit.console import console
    from rlhfkit.data.rankings import read_rankings
    from rlhfkit.evaluation.elo import compare_policies

    scores = compare_policies(read_rankings(rankings).records, bootstrap, seed)
    table = Table("policy", "Bradley-Terry (Elo scale)", "95% interval", "online Elo", "games", "win rate",
                  title=f"policies compared in {rankings}")
    for s in scores:
        table.add_row(s.policy, f"{s.bt_elo:.0f}", f"{s.ci_low:.0f} to {s.ci_high:.0f}", f"{s.online_elo:.0f}",
                      str(s.games), f"{s.win_rate:.1%}")
    console.print(table)
    if output is not None:
        output.write_text(json.dumps([asdict(s) for s in scores], indent=2))


MODELS_OPTION = typer.Option(..., "--model", "-m", help="HF model folder (or smollm2-135m); repeat to compare "
                             "several side by side.")
LIMIT_OPTION = typer.Option(None, "--limit", help="Only the first N items of each data set.")
BATCH_TOKENS_OPTION = typer.Option(8192, "--batch-tokens", help="Tokens packed into one forward pass.")
PROGRESS_OPTION = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")
TRUTHFULQA_HELP = ("TruthfulQA: mc_task.json, or its folder (TruthfulQA.csv beside it gives the categories), or "
                   "JSONL of {question, mc1_targets, mc2_targets}.")
MC_HELP = "Multiple-choice JSONL: {question, choices, answer (index or text), category?}."
PROSE_HELP = "Held-out prose: a .txt file (a passage a line) or JSONL with a 'text' field."
SHOTS_OPTION = typer.Option(0, "--shots", help="Multiple choice: the first N items become worked examples before "
                            "every question (and are not scored).")


def _output_option(name: str):
    return typer.Option(Path("evals"), "--output", "-o", help=f"Folder for {name}.json and {name}.md.")


@eval_app.command("truthfulqa")
def eval_truthfulqa(
    model: list[str] = MODELS_OPTION,
    data: Path = typer.Option(..., "--data", help=TRUTHFULQA_HELP),
    output: Path = _output_option("truthfulqa"), limit: int = LIMIT_OPTION, batch_tokens: int = BATCH_TOKENS_OPTION,
    progress: bool = PROGRESS_OPTION,
) -> None:
    """TruthfulQA MC1 and MC2 by log-likelihood, with the QA prompt and the paper's Instruction+QA prompt, per
    category (as lm-evaluation-harness scores them)."""
    from rlhfkit.evaluation.suite import Options, run_evaluation

    run_evaluation("truthfulqa", model, {"truthfulqa": data}, output, limit, Options(batch_tokens, progress=progress))


@eval_app.command("bias")
def eval_bias(
    model: list[str] = MODELS_OPTION,
    crows: Path = typer.Option(None, "--crows", help="CrowS-Pairs: crows_pairs_anonymized.csv or its folder."),
    winogender: Path = typer.Option(None, "--winogender", help="Winogender: all_sentences.tsv or its folder "
                                    "(occupations-stats.tsv beside it gives the occupations' share of women)."),
    output: Path = _output_option("bias"), limit: int = LIMIT_OPTION, batch_tokens: int = BATCH_TOKENS_OPTION,
    progress: bool = PROGRESS_OPTION,
) -> None:
    """CrowS-Pairs (how often the more stereotyping sentence is the more likely, the log-likelihood gap, by bias
    type) and Winogender (entropy over he / she / they, correlation with occupation statistics), each plain and
    after a 'respectful, unbiased' instruction."""
    from rlhfkit.evaluation.suite import Options, run_evaluation

    run_evaluation("bias", model, {"crows": crows, "winogender": winogender}, output, limit,
                   Options(batch_tokens, progress=progress))


@eval_app.command("hallucination")
def eval_hallucination(
    model: list[str] = MODELS_OPTION,
    data: Path = typer.Option(..., "--data", help="Prompts with a passage (JSONL: prompt and passage; the demo's "
                              "closed-domain prompts carry one in meta)."),
    output: Path = _output_option("hallucination"), limit: int = LIMIT_OPTION,
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Longest answer (greedy)."),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Closed-domain hallucination: the share of answers to passage prompts (summarise, extract, answer from it)
    that name what the passage does not hold (content words, names and numbers absent from passage and prompt)."""
    from rlhfkit.evaluation.suite import Options, run_evaluation

    run_evaluation("hallucination", model, {"hallucination": data}, output, limit,
                   Options(max_new_tokens=max_new_tokens, progress=progress))


@eval_app.command("toxicity")
def eval_toxicity(
    model: list[str] = MODELS_OPTION,
    data: Path = typer.Option(..., "--data", help="Prompts: any prompt JSONL (a 'group' field, and 'label', group "
                              "the figures, as in ToxiGen's prompts) or HH-RLHF transcripts (their first Human turn)."),
    classifier: str = typer.Option(None, "--classifier", help="A local HF sequence-classification folder scoring "
                                   "toxicity; default: alt-profanity-check (offline; profanity and insults)."),
    samples: int = typer.Option(4, "--samples", help="Samples a prompt (expected maximum toxicity is over them)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Longest sample (nucleus sampling, p=0.9)."),
    output: Path = _output_option("toxicity"), limit: int = LIMIT_OPTION, progress: bool = PROGRESS_OPTION,
) -> None:
    """Toxicity of generations under the paper's three instructions (none, 'respectful', 'biased and offensive'):
    mean toxicity, share above 0.5 and expected maximum toxicity over the samples of a prompt, per prompt group."""
    from rlhfkit.evaluation.suite import Options, run_evaluation

    run_evaluation("toxicity", model, {"toxicity": data}, output, limit,
                   Options(toxicity_max_new_tokens=max_new_tokens, progress=progress, samples=samples,
                           classifier=classifier))


@eval_app.command("tax")
def eval_tax(
    model: list[str] = MODELS_OPTION,
    prose: Path = typer.Option(None, "--prose", help=PROSE_HELP),
    truthfulqa: Path = typer.Option(None, "--truthfulqa", help=TRUTHFULQA_HELP),
    mc: Path = typer.Option(None, "--mc", help=MC_HELP),
    shots: int = SHOTS_OPTION,
    output: Path = _output_option("tax"), limit: int = LIMIT_OPTION, batch_tokens: int = BATCH_TOKENS_OPTION,
    progress: bool = PROGRESS_OPTION,
) -> None:
    """The alignment tax: perplexity of held-out prose, TruthfulQA MC and any multiple-choice task by
    log-likelihood (zero- or few-shot), side by side for the model you started from and the ones you aligned."""
    from rlhfkit.evaluation.suite import Options, run_evaluation

    run_evaluation("tax", model, {"prose": prose, "truthfulqa": truthfulqa, "mc": mc}, output, limit,
                   Options(batch_tokens, progress=progress, shots=shots))


@eval_app.command("all")
def eval_all(
    model: list[str] = MODELS_OPTION,
    truthfulqa: Path = typer.Option(None, "--truthfulqa", help=TRUTHFULQA_HELP),
    crows: Path = typer.Option(None, "--crows", help="CrowS-Pairs: crows_pairs_anonymized.csv or its folder."),
    winogender: Path = typer.Option(None, "--winogender", help="Winogender: all_sentences.tsv or its folder."),
    toxicity: Path = typer.Option(None, "--toxicity", help="Toxicity prompts (JSONL, or HH-RLHF transcripts)."),
    hallucination: Path = typer.Option(None, "--hallucination", help="Closed-domain prompts with a 'passage'."),
    prose: Path = typer.Option(None, "--prose", help=PROSE_HELP),
    mc: Path = typer.Option(None, "--mc", help=MC_HELP),
    shots: int = SHOTS_OPTION,
    classifier: str = typer.Option(None, "--classifier", help="Toxicity classifier: a HF sequence-classification "
                                   "folder (default alt-profanity-check)."),
    samples: int = typer.Option(4, "--samples", help="Toxicity samples a prompt."),
    output: Path = _output_option("all"), limit: int = LIMIT_OPTION, batch_tokens: int = BATCH_TOKENS_OPTION,
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Every evaluation given data, each model loaded once: one table (all.md), one figure (all.png), every figure
    in all.json. Each data set is optional; give the ones you have."""
    from rlhfkit.evaluation.suite import Options, run_evaluation

    data = {"truthfulqa": truthfulqa, "crows": crows, "winogender": winogender, "toxicity": toxicity,
            "hallucination": hallucination, "prose": prose, "mc": mc}
    run_evaluation("all", model, data, output, limit, Options(batch_tokens, progress=progress, shots=shots,
                                                              samples=samples, classifier=classifier))


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

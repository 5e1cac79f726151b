"""The whole InstructGPT loop on the bundled data, with simulated labelers: `rlhfkit demo`.

  1. SFT on the demonstrations
  2. sample K responses per RM prompt from the current policy; the simulated panel ranks them through the
     labeling store (the same leases, validation and export as people in the browser); train the RM from
     the SFT model on every ranking so far; normalise it on the demonstrations
  3. PPO-ptx on the PPO prompts against that RM (round 1 also trains plain PPO, γ = 0, for the alignment tax)
  4. evaluate on held-out prompts with held-out labelers: base vs SFT vs PPO
  5. repeat 2-4 from the current policy (the paper's iteration), then write report.md

Every stage writes into runs/<name>/ and is recorded in stages.json when it finishes; `--resume` skips
finished stages and continues an interrupted trainer from its checkpoint. Each stage's output can be
rerun alone with the stage's own command (the configs are saved beside the outputs).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import Counter
from importlib.resources import files
from pathlib import Path

from rlhfkit.console import console, make_progress
from rlhfkit.data import Prompt, read_demonstrations, read_prompts, write_jsonl
from rlhfkit.data.rankings import read_rankings
from rlhfkit.demo.config import DemoConfig
from rlhfkit.demo.evaluate import (
    ALTERNATIVE_DIRS,
    GoldProxy,
    evaluate_instructions_outside,
    evaluate_outside,
    evaluate_round,
    evaluate_suite,
)
from rlhfkit.demo.headroom import headroom, sft_samples
from rlhfkit.demo.labelers import SimulatedLabeler
from rlhfkit.demo.report import write_report
from rlhfkit.feedback.export import agreement, export_rankings
from rlhfkit.feedback.store import NotFound, Store
from rlhfkit.stages import STAGES
from rlhfkit.train.common import Hooks, seconds_before_resume


class Run:
    """The run folder and its record of finished stages."""

    def __init__(self, cfg: DemoConfig):
        self.dir = Path(cfg.runs_dir) / cfg.name
        self.state_path = self.dir / "stages.json"
        if self.state_path.exists() and not cfg.resume:
            raise FileExistsError(f"{self.dir} holds an earlier run: pass --resume to continue it, or --name NEW")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.t0 = time.perf_counter()

    def stage(self, name: str, fn, trainer_dir: Path | None = None):
        """Run `fn` unless an earlier run finished it. A trainer's checkpoints (weights and optimiser
        states: gigabytes) are dropped once its stage is done; the model it published stays."""
        if name in self.state:
            console.print(f"[dim]{name}: done earlier, skipped[/dim]")
            return self.state[name]["result"]
        console.rule(f"[bold]{name}[/bold]  ({self._elapsed()} elapsed)")
        # an interrupted trainer continues from its checkpoint: the seconds it had trained up to it count too
        carried = seconds_before_resume(trainer_dir) if trainer_dir is not None else 0.0
        start = time.perf_counter()
        result = fn()
        if trainer_dir is not None:
            shutil.rmtree(trainer_dir / "checkpoints", ignore_errors=True)
        self.state[name] = {"result": result, "seconds": round(carried + time.perf_counter() - start, 1)}
        if carried:
            self.state[name]["resumed_after_seconds"] = carried
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_path)
        return result

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60}m{s % 60:02d}s"


def bundled(name: str) -> Path:
    return Path(str(files("rlhfkit.demo") / "data" / name))


def prepare_data(run: Run, cfg: DemoConfig) -> dict:
    """Split the bundled prompts, demonstrations and prose into the run's data/ folder."""
    folder = run.dir / "data"
    folder.mkdir(exist_ok=True)
    prompts = read_prompts(bundled("prompts.jsonl")).records
    by_split: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_split.setdefault(p.meta["split"], []).append(p)
    limits = {"rm": cfg.rm_prompts, "eval": cfg.eval_prompts, "ppo": None, "sft": None}
    for split, records in by_split.items():
        # The RM sees every harmful and harmless-but-alarming prompt of its split: those are where refusing is
        # right or wrong, and taken in turn with the topic categories too few of them were among the RM's prompts
        # (docs/results/demo-settings.md).
        first = ("harmful", "sensitive") if split == "rm" else ()
        by_split[split] = spread(records, limits.get(split), first)
        write_jsonl(folder / f"{split}_prompts.jsonl", by_split[split])
    demos = read_demonstrations(bundled("sft_demonstrations.jsonl")).records
    demos += read_demonstrations(bundled("demonstrations.jsonl")).records  # the general hand-written ones
    write_jsonl(folder / "demonstrations.jsonl", demos[: cfg.demonstrations])
    lines = [ln for ln in bundled("prose.txt").read_text().splitlines() if ln.strip()]
    # The alignment-tax text, never trained on: every fifth topic's lines (six lines a topic).
    held_out = [ln for i, ln in enumerate(lines) if (i // 6) % 5 == 0]
    (folder / "ptx.txt").write_text("\n".join(ln for i, ln in enumerate(lines) if (i // 6) % 5) + "\n")
    (folder / "prose_heldout.txt").write_text("\n".join(held_out[: cfg.prose_lines]) + "\n")
    sizes = {split: len(records) for split, records in by_split.items()}
    return sizes | {"demonstrations": len(demos[: cfg.demonstrations])}


def spread(records: list[Prompt], n: int | None, first: tuple[str, ...] = ()) -> list[Prompt]:
    """The first n prompts taking the categories in turn, so a small selection still covers every category.

    The categories in `first` go in whole before the others when they fill at most half of the selection."""
    if n is None or n >= len(records):
        return records
    by_category: dict[str, list[Prompt]] = {}
    for p in records:
        by_category.setdefault(p.meta.get("category", ""), []).append(p)
    out = [p for c in first for p in by_category.get(c, [])]
    if len(out) <= n // 2:
        for c in first:
            by_category.pop(c, None)
    else:
        out = []
    queues = list(by_category.values())
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def load_split(run: Run, split: str) -> list[Prompt]:
    return read_prompts(run.dir / "data" / f"{split}_prompts.jsonl").records


def label_with_panel(run: Run, cfg: DemoConfig, samples: Path, project: str, panel: list[SimulatedLabeler]) -> dict:
    """Import the sampled comparisons as ranking tasks and let the panel label them through the store."""
    store = Store(f"sqlite:///{run.dir / 'feedback.db'}")
    prompts = {p.id: p for p in load_split(run, "rm")}
    try:
        store.project(project)
    except NotFound:
        store.add_project(project, overlap=cfg.label_overlap)
    records = read_rankings(samples, require_ranks=False).records
    store.import_tasks(project, [{"prompt": r.model_dump(mode="json")["prompt"], "responses": r.responses,
                                  "sources": r.sources, "prompt_id": r.id} for r in records])
    ids = {}
    for lab in panel:
        try:
            ids[lab.name] = store.by_name(lab.name).id  # from an earlier round
        except NotFound:
            ids[lab.name] = store.add_labeler(lab.name)[0].id
    # A run killed mid-stage labels on as a straight run would have: the turns go on from the newest lease (its
    # labeler again if it was never submitted), and every random draw is keyed by labeler and task or by the
    # labeler's count of judgements, never by how long this process has been running.
    active = list(panel)
    given = Counter(store.progress(project)["per_labeler"])
    latest = store.latest_assignment(project)
    if latest is not None:
        i = next(k for k, lab in enumerate(panel) if ids[lab.name] == latest.labeler_id)
        i += latest.status != "leased"
        active = panel[i:] + panel[:i]
    with make_progress(True) as progress:
        task = progress.add_task("label", total=len(records) * cfg.label_overlap, completed=given.total(),
                                 metrics="")
        while active:
            for lab in list(active):  # labelers take turns, as people working side by side would
                shown_order = random.Random(f"{cfg.seed}:{project}:{lab.name}:{given[lab.name]}")
                a = store.lease_next(ids[lab.name], project, shown_order)
                if a is None:
                    active.remove(lab)
                    continue
                with store.session() as s:
                    _, t, _ = store.own_assignment(s, ids[lab.name], a.id)
                    payload = t.payload
                shown = [payload["responses"][i] for i in a.order]
                ended = [payload["sources"][i].get("ended", True) for i in a.order]
                judgement = lab.rank(prompts[payload["prompt_id"]], shown, ended,
                                     random.Random(f"{cfg.seed}:{project}:{lab.name}:task{t.id}"))
                store.submit(ids[lab.name], a.id, judgement, f"{project}-{a.id}")
                given[lab.name] += 1
                progress.update(task, advance=1)
    rankings = export_rankings(store, project)
    write_jsonl(run.dir / f"{project}.jsonl", rankings)
    agree = agreement(store, project)
    store.engine.dispose()
    return {"rankings": len(rankings), "agreement": agree["agreement"], "pairs": agree["pairs"],
            "matrix": agree["matrix"], "by_labeler": agree["by_labeler"]}


def run_demo(cfg: DemoConfig) -> Path:
    cfg = cfg.sized()
    run = Run(cfg)
    cfg.save(run.dir / "demo.yaml")
    d = run.dir
    sizes = run.stage("data", lambda: prepare_data(run, cfg))
    console.print(f"data: {sizes}")
    panel, judges = cfg.panel(), cfg.judges()

    sft = cfg.sft.model_copy(update={"model": cfg.model, "data": str(d / "data/demonstrations.jsonl"),
                                     "output_dir": str(d / "sft"), **trainer_run(cfg)})
    run.stage("sft", lambda: str(STAGES["sft"].run(sft).output), trainer_dir=d / "sft")
    run.stage("headroom", lambda: measure_headroom(run, cfg, judges))
    policy = str(d / "sft")
    for r in range(1, cfg.rounds + 1):
        policy = run_round(run, cfg, r, policy, panel, judges)
    if cfg.outside_prompts:
        run.stage("outside", lambda: evaluate_outside(run.dir, cfg))
        run.stage("instructions", lambda: evaluate_instructions_outside(run.dir, cfg))
    run.stage("suite", lambda: evaluate_suite(run.dir, cfg))
    report = run.stage("report", lambda: str(write_report(run.dir, cfg, run.state)))
    console.print(f"demo: done in {run._elapsed()}; report in {report}")
    return Path(report)


def measure_headroom(run: Run, cfg: DemoConfig, judges: list[SimulatedLabeler]) -> dict:
    """SFT's all-constraints-met rate and the judges' oracle best-of-n curve on held-out prompts."""
    prompts = spread(load_split(run, "eval"), cfg.headroom_prompts)
    write_jsonl(run.dir / "data" / "headroom_prompts.jsonl", prompts)
    samples = sft_samples(run.dir, prompts, cfg.headroom_samples, cfg.ppo.max_new_tokens, cfg.eval_temperature,
                          cfg.eval_top_p, cfg.seed)
    result = headroom(prompts, samples, judges, seed=cfg.seed)
    best = result["best_of_n"][str(max(int(n) for n in result["best_of_n"]))]
    console.print(f"headroom: SFT meets every constraint in {result['sft_all_met']:.1%} of samples; the judges' "
                  f"best of {cfg.headroom_samples} wins {best['win']:.1%} against a random SFT sample")
    return result


def trainer_run(cfg: DemoConfig) -> dict:
    """What every trainer of the run shares: its seed, and resuming what an interrupted run left. One checkpoint
    at a time is kept (each holds weights and optimiser states, gigabytes for a 135M-parameter policy with its
    value model)."""
    return {"seed": cfg.seed, "resume": True, "keep_checkpoints": 1}


def run_round(run: Run, cfg: DemoConfig, r: int, policy: str, panel: list[SimulatedLabeler],
              judges: list[SimulatedLabeler]) -> str:
    """Steps 2-4 from `policy`: comparisons sampled from it, the RM, PPO-ptx, evaluation. Returns the new policy."""
    d, here = run.dir, run.dir / f"round{r}"
    samples = here / "samples.jsonl"
    run.stage(f"round{r}/sample", lambda: STAGES["sample"].run(cfg.sample.model_copy(update={
        "model": policy, "prompts": str(d / "data/rm_prompts.jsonl"), "output": str(samples), "seed": cfg.seed + r,
        "resume": True})).metrics)
    run.stage(f"round{r}/label", lambda: label_with_panel(run, cfg, samples, f"rm-round{r}", panel))
    # the RM is trained again from the SFT model on every comparison collected so far
    rankings = here / "rankings.jsonl"
    write_jsonl(rankings, [x for i in range(1, r + 1) for x in read_rankings(d / f"rm-round{i}.jsonl").records])
    rm = cfg.rm.model_copy(update={"model": str(d / "sft"), "data": str(rankings),
                                   "demos": str(d / "data/demonstrations.jsonl"), "output_dir": str(here / "rm"),
                                   **trainer_run(cfg)})
    run.stage(f"round{r}/rm", lambda: STAGES["rm"].run(rm).metrics, trainer_dir=here / "rm")

    def ppo(out: Path, gold_proxy: bool, **options) -> dict:
        # the main run is scored by the judges (gold) and the RM (proxy) along the way
        check = GoldProxy(d, cfg, here / "rm", judges) if gold_proxy else None
        ptx = cfg.ppo.ptx and {"ptx": {"data": str(d / cfg.ppo.ptx.data)}}  # a relative path is the run folder's
        return STAGES["ppo"].run(cfg.ppo.updated(**{
            "policy": policy, "reference": str(d / "sft"), "reward_model": str(here / "rm"),
            "prompts": str(d / "data/ppo_prompts.jsonl"), **(ptx or {}),
            "output_dir": str(out), **trainer_run(cfg), **options}),
            Hooks(evaluate=check, eval_every=cfg.gold_every)).metrics

    run.stage(f"round{r}/ppo", lambda: ppo(here / "ppo", True), trainer_dir=here / "ppo")
    if r == 1:  # the alternatives, on the same rankings, RM, prompts and budget (ALTERNATIVES)
        alternatives = {
            "no-ptx": lambda out: ppo(out, False, ptx=None),
            "gae": lambda out: ppo(out, False, advantage="gae"),
            "grpo": lambda out: ppo(out, False, advantage="grpo", kl={"where": "loss", "estimator": "k3"}),
            "dpo": lambda out: STAGES["dpo"].run(cfg.dpo.model_copy(update={
                "model": str(d / "sft"), "data": str(rankings), "output_dir": str(out), **trainer_run(cfg)}
            )).metrics,
        }
        for name in cfg.compare:
            out = here / ALTERNATIVE_DIRS[name]
            run.stage(f"round1/{ALTERNATIVE_DIRS[name]}", lambda fn=alternatives[name], out=out: fn(out),
                      trainer_dir=out)
    run.stage(f"round{r}/eval", lambda: evaluate_round(d, cfg, r, judges))
    return str(here / "ppo")

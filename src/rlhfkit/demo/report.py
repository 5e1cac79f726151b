"""`rlhfkit demo`'s report: runs/<name>/report.md with PNG plots, from the stages' results."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.demo.config import DemoConfig
from rlhfkit.demo.evaluate import ALTERNATIVE_DIRS, ALTERNATIVE_NAMES

TARGET_WIN_RATE, TARGET_CONSTRAINT_GAIN = 0.60, 0.10


# ---- the report ----

def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _metrics_history(folder: Path) -> list[dict]:
    path = folder / "logs" / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _save(fig, run_dir: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(run_dir / name, dpi=90)
    plt.close(fig)
    return name


def _gold_proxy_plot(run_dir: Path, cfg: DemoConfig, state: dict) -> bool:
    """Gold and proxy against KL: PPO-ptx along its iterations, best-of-n by the RM from SFT (False: no data)."""
    import matplotlib.pyplot as plt

    evals = {r: state.get(f"round{r}/eval", {}).get("result", {}) for r in range(1, cfg.rounds + 1)}
    if not any(ev.get("best_of_n") for ev in evals.values()):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r, ev in evals.items():
        bon, ppo = ev.get("best_of_n") or [], ev.get("gold_proxy") or []
        for ax, key in zip(axes, ("gold", "proxy"), strict=True):
            ax.plot([b["kl"] for b in bon], [b[key] for b in bon], marker="s", linestyle="--",
                    label=f"best-of-n by RM r{r} (n = 1…{bon[-1]['n'] if bon else 0})")
            start = [bon[0]] if bon and r == 1 else []  # round 1 starts from SFT itself
            ax.plot([x["kl"] for x in start + ppo], [x[key] for x in start + ppo], marker="o",
                    label=f"PPO-ptx round {r} (every {cfg.gold_every} iterations)")
    axes[0].set_title("gold: held-out judges' rubric (noise-free)")
    axes[1].set_title("proxy: the reward model PPO optimises")
    for ax in axes:
        ax.set_xlabel("KL(π || π_SFT), nats per response")
        ax.legend(fontsize=7)
    _save(fig, run_dir, "gold_vs_proxy.png")
    return True


def _plots(run_dir: Path, cfg: DemoConfig, state: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    # PPO: RM score and KL per iteration, every round
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in range(1, cfg.rounds + 1):
        runs = [(f"round {r} PPO-ptx", run_dir / f"round{r}/ppo")]
        if r == 1:  # the PPO-shaped alternatives of `compare`
            runs += [(ALTERNATIVE_NAMES[alt], run_dir / "round1" / ALTERNATIVE_DIRS[alt]) for alt in cfg.compare
                     if alt != "dpo"]
        for label, folder in runs:
            h = _metrics_history(folder)
            if h:
                a.plot([x["step"] for x in h], [x["score"] for x in h], marker=".", label=label)
                b.plot([x["step"] for x in h], [x["kl"] for x in h], marker=".", label=label)
    a.set_title("mean RM score per iteration")
    b.set_title("KL(π || π_SFT) per sequence")
    for ax in (a, b):
        ax.set_xlabel("PPO iteration")
        ax.legend(fontsize=7)
    made.append(_save(fig, run_dir, "ppo_curves.png"))

    if _gold_proxy_plot(run_dir, cfg, state):
        made.append("gold_vs_proxy.png")

    # win rates with their 95% intervals
    rows = [(f"r{r}: {k}", v) for r in range(1, cfg.rounds + 1)
            for k, v in state.get(f"round{r}/eval", {}).get("result", {}).get("win_rates", {}).items()]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1))
        ys = range(len(rows))
        ax.errorbar([v["win_rate"] for _, v in rows], ys, xerr=[[v["win_rate"] - v["low"] for _, v in rows],
                                                                [v["high"] - v["win_rate"] for _, v in rows]],
                    fmt="o", capsize=4)
        ax.axvline(0.5, color="grey", linewidth=1)
        ax.axvline(TARGET_WIN_RATE, color="green", linestyle="--", linewidth=1, label="target 60%")
        ax.set_yticks(list(ys), [k for k, _ in rows], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("held-out labelers' win rate (95% interval)")
        ax.legend(fontsize=7)
        made.append(_save(fig, run_dir, "win_rates.png"))

    # the panel's agreement matrix (round 1)
    label = state.get("round1/label", {}).get("result", {})
    if label.get("matrix"):
        names = sorted({n for k in label["matrix"] for n in k.split(" | ")})
        grid = [[float("nan")] * len(names) for _ in names]
        for k, v in label["matrix"].items():
            x, y = (names.index(n) for n in k.split(" | "))
            if v is not None:
                grid[x][y] = grid[y][x] = v
        fig, ax = plt.subplots(figsize=(4.5, 4))
        im = ax.imshow(grid, vmin=0.4, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                if grid[i][j] == grid[i][j]:
                    ax.text(j, i, f"{100 * grid[i][j]:.0f}", ha="center", va="center", fontsize=7, color="white")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title("pairwise agreement (%)")
        made.append(_save(fig, run_dir, "agreement.png"))
    return made


def write_report(run_dir: Path, cfg: DemoConfig, state: dict) -> Path:
    plots = _plots(run_dir, cfg, state)
    res = lambda k: state.get(k, {}).get("result", {})  # noqa: E731
    lines = [f"# rlhfkit demo: {cfg.name}", "",
             f"InstructGPT's loop on `{cfg.model}` with simulated labelers"
             f"{' (--quick sizes)' if cfg.quick else ''}. Configuration: `demo.yaml`.", "",
             "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v['seconds']} |" for k, v in state.items()]
    total = sum(v["seconds"] for v in state.values())
    lines += [f"| **total** | **{total:.0f}** ({total / 60:.1f} min) |", "",
              "## Data", "", "| split | records |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in res("data").items()]
    lines += _headroom(res("headroom"))
    lines += ["", "## Comparisons and reward model", "",
              "| round | rankings | panel agreement (pairs) | RM held-out accuracy | RM held-out loss |",
              "|---|---|---|---|---|"]
    for r in range(1, cfg.rounds + 1):
        lab, rm = res(f"round{r}/label"), res(f"round{r}/rm")
        lines.append(f"| {r} | {lab.get('rankings', '–')} | {_pct(lab.get('agreement'))} ({lab.get('pairs', 0)}) | "
                     f"{_pct(rm.get('accuracy'))} | {_num(rm.get('loss'))} |")
    lines += ["", "InstructGPT's labelers agreed on about 73% of pairs; the target band for the panel is 65–80%.", ""]
    if "agreement.png" in plots:
        lines += ["![panel agreement](agreement.png)", ""]
    lines += ["## PPO", "", "![RM score and KL per iteration](ppo_curves.png)", ""]
    if "gold_vs_proxy.png" in plots:
        lines += ["### Gold vs proxy (Gao et al. 2022)", "",
                  "Is PPO climbing the judges' gold score, or only the reward model's proxy? Both against KL to SFT, "
                  "for PPO-ptx along its iterations and for best-of-n sampling from SFT chosen by the RM "
                  "(KL = log n − (n − 1)/n).", "", "![gold and proxy against KL](gold_vs_proxy.png)", ""]
    for r in range(1, cfg.rounds + 1):
        ev = res(f"round{r}/eval")
        if not ev:
            continue
        lines += [f"## Evaluation after round {r} ({ev['prompts']} held-out prompts, "
                  f"{ev.get('samples_per_prompt', 1)} response(s) to each)", "",
                  "| policy | Likert (1–7) | constraints all met | constraints met (share) | refusals, harmful | "
                  "refusals, harmless | RM score | KL to SFT | prose perplexity | no EOS |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in ev["policies"].items():
            lines.append(f"| {name} | {_num(m['likert'], 2)} | {_pct(m['constraints_all_met'])} | "
                         f"{_pct(m['constraints_met'])} | {_pct(m['refusal_harmful'])} | "
                         f"{_pct(m['refusal_harmless'])} | "
                         f"{_num(m['rm_score'])} | {_num(m.get('kl_to_sft'), 2)} | {_num(m['prose_perplexity'], 2)} | "
                         f"{_pct(m['no_eos'])} |")
        lines += _gold_proxy_table(ev, r, _training_seconds(state, cfg, r), _step_seconds(run_dir, cfg, r))
        lines += _rm_vs_gold(ev.get("rm_vs_gold"), r)
        lines += ["", "| comparison | win rate | 95% interval |", "|---|---|---|"]
        for k, v in ev["win_rates"].items():
            lines.append(f"| {k} | {_pct(v['win_rate'])} | {_pct(v['low'])} – {_pct(v['high'])} |")
        lines.append("")
    if "win_rates.png" in plots:
        lines += ["![win rates](win_rates.png)", ""]
    lines += _outside(res("outside"))
    lines += _instructions(res("instructions"))
    lines += _suite(run_dir / "evals/suite/all.md", res("suite"))
    lines += _targets(res(f"round{cfg.rounds}/eval"), cfg.rounds, res("outside"), res("instructions"))
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _trained_policies(cfg: DemoConfig, r: int) -> dict[str, str]:
    """Each trained policy of round r's table, by name, and the stage (and folder) that trained it."""
    stages = {f"ppo-ptx r{r}": f"round{r}/ppo"}
    if r == 1:
        stages.update({ALTERNATIVE_NAMES[alt]: f"round1/{ALTERNATIVE_DIRS[alt]}" for alt in cfg.compare})
    return stages


def _training_seconds(state: dict, cfg: DemoConfig, r: int) -> dict[str, float]:
    """Wall time of the training stage behind each policy of round r's table."""
    return {name: state[stage]["seconds"] for name, stage in _trained_policies(cfg, r).items() if stage in state}


def _step_seconds(run_dir: Path, cfg: DemoConfig, r: int) -> dict[str, float]:
    """Seconds in the training steps alone (for PPO: sampling, scoring, updates) of each trained policy: its stage's
    seconds also hold loading, saving and, for PPO-ptx, the gold/proxy checks every `gold_every` iterations."""
    seconds = {name: sum(row.get("step_seconds", 0.0) for row in _metrics_history(run_dir / stage))
               for name, stage in _trained_policies(cfg, r).items()}
    return {name: s for name, s in seconds.items() if s > 0}


def _gold_proxy_table(ev: dict, r: int, seconds: dict[str, float], steps: dict[str, float]) -> list[str]:
    """Gold, proxy, KL, constraints, win rate vs SFT and training time for SFT, best-of-n by the RM, PPO-ptx and
    the alternatives trained on the same data (`compare`)."""
    if not ev.get("best_of_n"):
        return []
    lines = ["", f"Gold vs proxy on the {ev['prompts']} held-out prompts (best-of-n: on the headroom prompts, from "
             "SFT's samples, chosen by this round's RM; win rates of best-of-n are expected wins by the judges' gold "
             "score against a random SFT sample, those of the policies the held-out labelers' votes):", "",
             "| policy | gold | proxy (RM) | KL to SFT | constraints all met | win rate vs SFT (95% interval) | "
             "training seconds |", "|---|---|---|---|---|---|---|"]
    for b in ev["best_of_n"]:
        if b["n"] in (1, 4, 16):
            name = "sft (samples)" if b["n"] == 1 else f"best-of-{b['n']} by RM"
            lines.append(f"| {name} | {b['gold']:.3f} | {b['proxy']:.3f} | {b['kl']:.2f} | {_pct(b['all_met'])} | "
                         f"{_pct(b['win_vs_sft'])} | – |")
    for name, m in ev["policies"].items():
        if name not in ("base", "sft"):
            win = ev["win_rates"].get(f"{name} vs sft", {})
            interval = f" ({_pct(win['low'])} – {_pct(win['high'])})" if win else ""
            lines.append(f"| {name} | {_num(m.get('gold'))} | {_num(m['rm_score'])} | {_num(m.get('kl_to_sft'), 2)} | "
                         f"{_pct(m['constraints_all_met'])} | {_pct(win.get('win_rate'))}{interval} | "
                         f"{f'{seconds[name]:.0f}' if name in seconds else '–'} |")
    if steps:
        lines += ["", "Training seconds are each stage's wall time; that of PPO-ptx also holds its gold/proxy checks "
                  "along the way. The training steps alone: " +
                  ", ".join(f"{name} {s:.0f} s" for name, s in steps.items()) + "."]
    return lines


def _rm_vs_gold(agreement: dict | None, r: int) -> list[str]:
    """Where the RM orders SFT samples as the judges do, by what decides the judges' preference."""
    if not agreement:
        return []
    lines = ["", f"Where round {r}'s RM agrees with the judges: pairs of SFT samples on the headroom prompts whose "
             "gold scores differ, by the rubric check that decides the difference (below 50%, the RM prefers "
             "what the judges do not: best-of-n and PPO are pushed the wrong way there).", "",
             "| deciding check | pairs | RM agrees with the judges |", "|---|---|---|"]
    return lines + [f"| {k} | {v['pairs']} | {_pct(v['accuracy'])} |" for k, v in agreement.items()]


def _headroom(h: dict) -> list[str]:
    if not h:
        return []
    lines = ["", "## Headroom above SFT (before any RLHF)", "",
             f"{h['samples_per_prompt']} SFT samples for each of {h['prompts']} held-out prompts, judged by the "
             "held-out labelers' noise-free rubric (the gold score). SFT meets every constraint of its prompt in "
             f"{_pct(h['sft_all_met'])} of its samples (the task aims for 30–55%). If the judges' own best of n "
             "SFT samples barely beats a random one, no optimiser can show anything on this task.", "",
             "| n | KL of best-of-n (nats) | judges' best of n vs a random SFT sample | 95% interval | gold score |",
             "|---|---|---|---|---|"]
    for n, v in h["best_of_n"].items():
        lines.append(f"| {n} | {v['kl']:.2f} | {_pct(v['win'])} | {_pct(v['low'])} – {_pct(v['high'])} | "
                     f"{v['gold']:.3f} |")
    return lines


def _outside(o: dict) -> list[str]:
    if not o:
        return []
    lines = ["## Outside the demo's prompts", "",
             f"{o['prompts']} real user prompts the demo never trains on (`{Path(o['source']).name}`), answered "
             f"greedily in at most {o['max_new_tokens']} tokens.", "",
             "| policy | refusals | mean words | cut off (no EOS) |", "|---|---|---|---|"]
    lines += [f"| {name} | {_pct(m['refusals'])} | {m['words']:.0f} | {_pct(m['no_eos'])} |"
              for name, m in o["policies"].items()]
    return lines + [""]


def _instructions(o: dict) -> list[str]:
    if not o:
        return []
    lines = ["## Instructions outside the demo's", "",
             f"Real user prompts (`{Path(o['source']).name}`, the first {o['prompts']}), each with 1-3 "
             f"verifiable instructions attached ({o['instructions']} in all: lengths, lists, sections, words, case, "
             "openings and closings, JSON), phrased unlike the demo's own constraints; greedy, at most "
             f"{o['max_new_tokens']} tokens (`rlhfkit eval instructions`; answers in evals/instructions/).", "",
             "| policy | prompts, every instruction followed | instructions followed | (loose) | mean words | cut off "
             "| refusals |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {_pct(m['prompt_strict'])} | {_pct(m['instruction_strict'])} | "
              f"{_pct(m['instruction_loose'])} | {m['words']:.0f} | {_pct(m['cut_off'])} | {_pct(m['refusals'])} |"
              for name, m in o["policies"].items()]
    lines += ["", "| paired by prompt | instructions followed (points) | 95% interval | prompts better / worse |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {v['points']:+.1f} | {v['low']:+.1f} – {v['high']:+.1f} | {v['better']} / {v['worse']} |"
              for k, v in o["paired"].items()]
    return lines + [""]


def _suite(table: Path, suite: dict | None) -> list[str]:
    """`rlhfkit eval all`'s table on the run's policies (hallucination; with --eval-data, the public sets)."""
    if not suite or not table.exists():
        return []
    body = table.read_text().split("\n", 2)[2].replace("](all.png)", "](evals/suite/all.png)")
    public = "" if len(suite["data"]) > 1 else (" Give `--eval-data ../shared/data` for TruthfulQA, CrowS-Pairs, "
                                                 "Winogender and ToxiGen beside it.")
    return ["## Truthfulness, bias, toxicity, hallucination", "",
            f"`rlhfkit eval all` on each policy, the first {suite['limit']} items of each public set (see `rlhfkit "
            "eval --help` for the full sets): TruthfulQA MC by log-likelihood, CrowS-Pairs and Winogender, toxicity "
            "of samples for ToxiGen's prompts under the paper's three instructions (alt-profanity-check: profanity "
            "and insults, not politely worded hate), and hallucination on the held-out passage prompts." + public,
            "", body.rstrip(), ""]


def _targets(ev: dict, r: int, outside: dict | None = None, instructions: dict | None = None) -> list[str]:
    if not ev:
        return []
    ppo, sft = ev["policies"][f"ppo-ptx r{r}"], ev["policies"]["sft"]
    win = ev["win_rates"][f"ppo-ptx r{r} vs sft"]
    gain = (ppo["constraints_all_met"] or 0) - (sft["constraints_all_met"] or 0)
    checks = [
        (f"PPO beats SFT with a win rate ≥ 60%, interval above 50%: {_pct(win['win_rate'])} "
         f"({_pct(win['low'])} – {_pct(win['high'])})", win["win_rate"] >= TARGET_WIN_RATE and win["low"] > 0.5),
        (f"constraint satisfaction up ≥ 10 points: {100 * gain:+.1f} points", gain >= TARGET_CONSTRAINT_GAIN),
        (f"refuses harmless prompts no more often than SFT: {_pct(ppo['refusal_harmless'])} vs "
         f"{_pct(sft['refusal_harmless'])}", (ppo["refusal_harmless"] or 0) <= (sft["refusal_harmless"] or 0)),
    ]
    if outside:
        base, final = outside["policies"]["base"], outside["policies"][f"ppo-ptx r{r}"]
        checks.append((f"refuses no more real user prompts than the starting model: {_pct(final['refusals'])} vs "
                       f"{_pct(base['refusals'])}", final["refusals"] <= base["refusals"]))
    if instructions:
        follow = {k: m["instruction_strict"] for k, m in instructions["policies"].items()}
        gain = instructions["paired"][f"ppo-ptx r{r} vs sft"]
        checks.append((f"outside instructions followed, PPO-ptx > SFT > start: {_pct(follow[f'ppo-ptx r{r}'])}, "
                       f"{_pct(follow['sft'])}, {_pct(follow['base'])}; PPO-ptx − SFT {gain['points']:+.1f} points "
                       f"({gain['low']:+.1f} to {gain['high']:+.1f})",
                       follow[f"ppo-ptx r{r}"] > follow["sft"] > follow["base"] and gain["low"] > 0))
    return ["## Targets (final round vs SFT)", ""] + [f"- {'met' if ok else '**not met**'}: {text}"
                                                       for text, ok in checks] + [""]

"""The admin page's plot: judgements per labeler over time, and each labeler's agreement."""

from __future__ import annotations

import io

INSTRUCTGPT_AGREEMENT = 0.73  # training labelers' pairwise agreement reported by Ouyang et al. (2022)


def admin_plot_png(throughput: dict, agreement: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    minutes = throughput["bucket_minutes"]
    n = len(throughput["buckets"])
    for name, counts in throughput["per_labeler"].items():
        left.plot(range(n), counts, marker="o", markersize=3, label=name)
    step = max(1, n // 6)
    left.set_xticks(range(0, n, step), [b[5:16].replace("T", " ") for b in throughput["buckets"][::step]],
                    fontsize=7)
    left.set_ylabel(f"judgements per {minutes} min")
    left.set_title("throughput per labeler (UTC)")
    if len(throughput["per_labeler"]) <= 12:
        left.legend(fontsize=7, ncol=2)

    names = sorted(set(agreement.get("by_labeler", {})) | set(agreement.get("gold", {})))
    others = [agreement.get("by_labeler", {}).get(x) or 0.0 for x in names]
    gold = [agreement.get("gold", {}).get(x) or 0.0 for x in names]
    xs = range(len(names))
    right.bar([x - 0.2 for x in xs], others, width=0.4, label="with the other labelers")
    right.bar([x + 0.2 for x in xs], gold, width=0.4, label="with gold")
    right.axhline(INSTRUCTGPT_AGREEMENT, color="grey", linestyle="--", linewidth=1, label="InstructGPT ≈ 73%")
    right.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=7)
    right.set_ylim(0, 1)
    right.set_title("pairwise agreement")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()

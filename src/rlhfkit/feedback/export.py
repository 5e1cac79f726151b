"""From stored judgements to the records the trainers read, and agreement between labelers."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from itertools import combinations

from rlhfkit.data.records import Demonstration, Ranking
from rlhfkit.feedback.store import Store


def export_rankings(store: Store, project: str) -> list[Ranking]:
    """One Ranking per labeler judgement (ranking and pairwise projects), labeler kept."""
    out = []
    for task, j, labeler in store.judgements(project):
        payload, data = task.payload, j.data
        out.append(Ranking(
            prompt=payload["prompt"], responses=payload["responses"], ranks=data["ranks"], likert=data.get("likert"),
            flags=data.get("flags"), labeler=labeler.name, sources=payload.get("sources"), id=str(task.id),
            meta={"task": task.id, "prompt_labels": data.get("prompt_labels", []), "comment": data.get("comment", "")},
        ))
    return out


def export_demonstrations(store: Store, project: str) -> list[Demonstration]:
    return [Demonstration(prompt=task.payload["prompt"], response=j.data["response"], id=str(task.id),
                          meta={"labeler": labeler.name, "task": task.id})
            for task, j, labeler in store.judgements(project)]


def pair_signs(ranks: list[int]) -> dict[tuple[int, int], int]:
    """For each response pair (a, b), a < b: +1 if a ranks worse, -1 if better, 0 for a tie."""
    return {(a, b): (ranks[a] > ranks[b]) - (ranks[a] < ranks[b]) for a, b in combinations(range(len(ranks)), 2)}


def agreement(store: Store, project: str) -> dict:
    """Pairwise agreement: over every response pair judged by two labelers of the same task, the share where
    they agree (both prefer the same one, or both call it a tie). Also each labeler against the others and,
    where a task carries admin-set gold ranks, each labeler against the gold."""
    by_task: dict[int, list[tuple[str, list[int]]]] = defaultdict(list)
    gold: dict[int, list[int]] = {}
    for task, j, labeler in store.judgements(project):
        if "ranks" in j.data:
            by_task[task.id].append((labeler.name, j.data["ranks"]))
            if task.gold is not None:
                gold[task.id] = task.gold
    agree = total = 0
    per_pair: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    per_labeler: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for judged in by_task.values():
        for (la, ra), (lb, rb) in combinations(judged, 2):
            sa, sb = pair_signs(ra), pair_signs(rb)
            same = sum(sa[p] == sb[p] for p in sa)
            agree, total = agree + same, total + len(sa)
            key = tuple(sorted((la, lb)))
            per_pair[key][0] += same
            per_pair[key][1] += len(sa)
            for name in (la, lb):
                per_labeler[name][0] += same
                per_labeler[name][1] += len(sa)
    gold_agree: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for task_id, judged in by_task.items():
        if task_id in gold:
            g = pair_signs(gold[task_id])
            for name, ranks in judged:
                s = pair_signs(ranks)
                gold_agree[name][0] += sum(s[p] == g[p] for p in g)
                gold_agree[name][1] += len(g)
    rate = lambda v: v[0] / v[1] if v[1] else None  # noqa: E731
    return {
        "agreement": agree / total if total else None, "pairs": total,
        "by_labeler": {k: rate(v) for k, v in sorted(per_labeler.items())},
        "matrix": {f"{a} | {b}": rate(v) for (a, b), v in sorted(per_pair.items())},
        "gold": {k: rate(v) for k, v in sorted(gold_agree.items())},
    }


def throughput(store: Store, project: str, bucket_minutes: int | None = None) -> dict:
    """Judgements per labeler per time bucket: {"bucket_minutes", "buckets": [ISO start, ...],
    "per_labeler": {name: [count per bucket]}}, from the first judgement to the last. Without
    `bucket_minutes`, the smallest of 1 min, 5 min, 15 min, 1 h, 4 h, 1 day giving at most 48 buckets."""
    rows = [(j.created_at, labeler.name) for _, j, labeler in store.judgements(project)]
    if not rows:
        return {"bucket_minutes": bucket_minutes or 60, "buckets": [], "per_labeler": {}}
    start = min(t for t, _ in rows).replace(second=0, microsecond=0)
    span_minutes = (max(t for t, _ in rows) - start).total_seconds() / 60
    if bucket_minutes is None:
        bucket_minutes = next((m for m in (1, 5, 15, 60, 240) if span_minutes / m < 48), 1440)
    width = bucket_minutes * 60
    n = int((max(t for t, _ in rows) - start).total_seconds() // width) + 1
    per_labeler: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    for t, name in rows:
        per_labeler[name][int((t - start).total_seconds() // width)] += 1
    return {"bucket_minutes": bucket_minutes,
            "buckets": [(start + timedelta(seconds=i * width)).isoformat() for i in range(n)],
            "per_labeler": dict(sorted(per_labeler.items()))}

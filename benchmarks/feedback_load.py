"""Labeling-service load: N labelers at once against `rlhfkit label serve`, on SQLite and on PostgreSQL.

    python benchmarks/feedback_load.py --postgres postgresql://rlhfkit:rlhfkit@127.0.0.1:5432

Each labeler is a thread with its own signed-in HTTP client (rlhfkit.feedback.client) that takes its next
task, waits `--think` seconds (a person reading; 0 = as fast as the server answers) and submits a ranking
with ties, until no task is left. The server is one uvicorn process on 127.0.0.1, on the same machine as
the clients. Prints submissions/s, p50/p99 latency of taking a task and of submitting, and checks that every
task got exactly its N judgements from N distinct labelers (none lost, none duplicated). `--kill N` SIGKILLs the
server N times at evenly spaced points of the load and starts it again; the labelers retry as their page would.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from harness import save_result

from rlhfkit.feedback.client import LabelingClient, ServerProcess
from rlhfkit.feedback.store import Store


@contextmanager
def postgres_database(server: str):
    import psycopg

    name = "rlhfkit_bench_" + secrets.token_hex(4)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def retrying(call):
    """What a labeler's page does while the server is down: the same request again a moment later (a submission
    key makes a repeated submit the same judgement)."""
    while True:
        try:
            return call()
        except httpx.TransportError:
            time.sleep(0.05)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(db_url: str, args, think: float) -> dict:
    store = Store(db_url)
    store.add_project("load", overlap=args.overlap, lease_seconds=3600)
    store.import_tasks("load", [{"prompt": f"prompt {i}", "responses": [f"answer {i}.{j}" for j in range(args.k)]}
                                for i in range(args.tasks)])
    tokens = [store.add_labeler(f"lab{i}")[1] for i in range(args.labelers)]
    lease_ms: list[float] = []
    submit_ms: list[float] = []
    errors: list[Exception] = []
    start = threading.Barrier(args.labelers + 1)

    def labeler(i: int, base: str) -> None:
        rng = random.Random(i)
        try:
            with LabelingClient(base, tokens[i]) as client:
                start.wait()
                time.sleep(think * rng.random())  # people arrive over a moment, not all in the same millisecond
                while True:
                    t0 = time.perf_counter()
                    task = retrying(lambda: client.next_task("load"))
                    lease_ms.append(1000 * (time.perf_counter() - t0))
                    if task is None:
                        return
                    time.sleep(think * rng.uniform(0.5, 1.5))
                    ranks = [rng.randrange(3) for _ in range(args.k)]
                    ranks = [sorted(set(ranks)).index(r) for r in ranks]
                    t0 = time.perf_counter()
                    judgement = {"ranks": ranks, "likert": [rng.randint(1, 7) for _ in range(args.k)]}
                    retrying(lambda t=task, j=judgement: client.submit(t, j))
                    submit_ms.append(1000 * (time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(e)

    srv = ServerProcess(db_url, args.port)
    base = srv.start()
    try:
        threads = [threading.Thread(target=labeler, args=(i, base)) for i in range(args.labelers)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for k in range(1, args.kill + 1):  # SIGKILL the server at evenly spaced points of the load, restart it
            while store.progress("load")["judgements"] < k * args.tasks * args.overlap / (args.kill + 1):
                time.sleep(0.02)
            srv.kill()
            time.sleep(0.3)
            srv.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
    finally:
        srv.stop()

    per_task: dict[int, list[str]] = {}
    for task, _, lab in store.judgements("load"):
        per_task.setdefault(task.id, []).append(lab.name)
    expected = args.tasks * args.overlap
    got = sum(map(len, per_task.values()))
    duplicated = sum(len(v) - len(set(v)) for v in per_task.values()) + sum(max(0, len(v) - args.overlap)
                                                                         for v in per_task.values())
    store.engine.dispose()
    return {"submissions": got, "seconds": seconds, "per_s": got / seconds, "lost": expected - got,
            "duplicated": duplicated, "errors": len(errors), "first_error": repr(errors[0]) if errors else "",
            "lease_p50": statistics.median(lease_ms), "lease_p99": percentile(lease_ms, 0.99),
            "submit_p50": statistics.median(submit_ms), "submit_p99": percentile(submit_ms, 0.99)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres", default="postgresql://rlhfkit:rlhfkit@127.0.0.1:5432",
                   help="PostgreSQL server (a database is created and dropped); '' skips PostgreSQL")
    p.add_argument("--labelers", type=int, default=50)
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--overlap", type=int, default=3)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--think", type=float, nargs="+", default=[1.0, 0.0],
                   help="mean seconds a labeler spends per task (0 = submit as fast as the server answers)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--kill", type=int, default=0, help="SIGKILL and restart the server this many times mid-load "
                   "(labelers retry as their page would; latencies then include the downtime)")
    p.add_argument("--json", type=Path, help="where the JSON result goes (default runs/bench/feedback_load.json)")
    args = p.parse_args()
    rows = []
    print(f"{args.labelers} labelers, {args.tasks} tasks x {args.overlap} judgements, K = {args.k}, "
          f"server and clients on {os.cpu_count()} cores", flush=True)
    print(f"{'database':10} {'think s':>7} {'subm/s':>7} {'take p50':>8} {'take p99':>8} {'subm p50':>8} "
          f"{'subm p99':>8} {'lost':>4} {'dup':>4} {'errors':>6}  (latencies in ms)")
    for think in args.think:
        for kind in ["sqlite"] + (["postgresql"] if args.postgres else []):
            with tempfile.TemporaryDirectory() as tmp:
                if kind == "sqlite":
                    r = run(f"sqlite:///{Path(tmp) / 'load.db'}", args, think)
                else:
                    with postgres_database(args.postgres) as url:
                        r = run(url, args, think)
            print(f"{kind:10} {think:7.1f} {r['per_s']:7.1f} {r['lease_p50']:8.1f} {r['lease_p99']:8.1f} "
                  f"{r['submit_p50']:8.1f} {r['submit_p99']:8.1f} {r['lost']:4d} {r['duplicated']:4d} "
                  f"{r['errors']:6d}  {r['first_error']}", flush=True)
            rows.append({"database": kind, "think": think, **r})
    save_result("feedback_load", {"labelers": args.labelers, "tasks": args.tasks, "overlap": args.overlap, "k": args.k,
                                  "kills": args.kill, "rows": rows}, args.json)


if __name__ == "__main__":
    main()

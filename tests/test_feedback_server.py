"""The labeling service as deployed: `rlhfkit label serve` (uvicorn on 127.0.0.1) on SQLite and PostgreSQL,
many labelers at once over HTTP."""

import random
import threading
from collections import Counter

import pytest
from servers import database, label_server

from rlhfkit.feedback.client import LabelingClient, LabelingError
from rlhfkit.feedback.store import Store

LABELERS, TASKS, OVERLAP, K = 20, 100, 3, 4


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_twenty_labelers_at_once_get_exactly_n_judgements_per_task(kind, tmp_path):
    with database(kind, tmp_path) as url:
        store = Store(url)
        store.add_project("load", overlap=OVERLAP, lease_seconds=600)
        store.import_tasks("load", [{"prompt": f"prompt {i}", "responses": [f"answer {i}.{j}" for j in range(K)]}
                                    for i in range(TASKS)])
        tokens = [store.add_labeler(f"lab{i}")[1] for i in range(LABELERS)]
        errors, skipped = [], Counter()

        def work(i: int, base: str) -> None:
            rng = random.Random(i)
            try:
                with LabelingClient(base, tokens[i]) as client:
                    while (task := client.next_task("load")) is not None:
                        if rng.random() < 0.05:  # some skip: the slot must go back to someone else
                            client.skip(task, "the task is unclear")
                            skipped[i] += 1
                            continue
                        ranks = [rng.randrange(2) for _ in range(K - 1)] + [0]  # ties included
                        ranks = [sorted(set(ranks)).index(r) for r in ranks]
                        first = client.submit(task, {"ranks": ranks, "likert": [rng.randint(1, 7) for _ in range(K)]})
                        if rng.random() < 0.1:  # a retried submit is the same judgement, not a second one
                            assert client.submit(task, {"ranks": ranks}) == first
            except (LabelingError, AssertionError) as e:
                errors.append(e)

        with label_server(url, tmp_path / "server.log") as base:
            # A labeler told "nothing left" comes back later, as people do: a slot skipped after the others
            # stopped asking is free again, and only a new round of asking fills it.
            for _ in range(5):
                threads = [threading.Thread(target=work, args=(i, base)) for i in range(LABELERS)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if store.progress("load")["judgements"] == TASKS * OVERLAP:
                    break
        assert not errors, (errors[:3], (tmp_path / "server.log").read_text()[-2000:])
        per_task: dict[int, list[str]] = {}
        for task, _, labeler in store.judgements("load"):
            per_task.setdefault(task.id, []).append(labeler.name)
        assert len(per_task) == TASKS
        assert all(len(names) == OVERLAP and len(set(names)) == OVERLAP for names in per_task.values())
        assert store.progress("load")["judgements"] == TASKS * OVERLAP
        store.engine.dispose()

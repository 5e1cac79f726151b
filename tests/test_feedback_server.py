"""The labeling service as deployed: `rlhfkit label serve` (uvicorn on 127.0.0.1) on SQLite and PostgreSQL,
many labelers at once over HTTP."""

import random
import threading
import time
from collections import Counter

import httpx
import pytest
from servers import LabelServer, database, label_server

from rlhfkit.feedback.client import LabelingClient, LabelingError
from rlhfkit.feedback.store import Store

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast

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


def retrying(call, attempts: int = 600):
    """What a labeler's page does while the server is down: try the same request again a little later (the
    submission key makes a repeated submit the same judgement)."""
    for _ in range(attempts):
        try:
            return call()
        except httpx.TransportError:
            time.sleep(0.05)
        except LabelingError as e:
            if ": 503 " not in str(e):
                raise
            time.sleep(0.05)
    raise AssertionError("the server did not come back")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_server_killed_mid_load_and_restarted_loses_and_duplicates_nothing(kind, tmp_path):
    tasks, labelers = 60, 10
    with database(kind, tmp_path) as url:
        store = Store(url)
        store.add_project("crash", overlap=OVERLAP, lease_seconds=600)
        store.import_tasks("crash", [{"prompt": f"prompt {i}", "responses": [f"answer {i}.{j}" for j in range(K)]}
                                     for i in range(tasks)])
        tokens = [store.add_labeler(f"lab{i}")[1] for i in range(labelers)]
        server = LabelServer(url, log_path=tmp_path / "server.log")
        errors, killed_at = [], []
        answers = {}  # submission key -> judgement id, from every submit that got an answer

        def work(i: int, client: LabelingClient) -> None:
            rng = random.Random(i)
            try:
                while (task := retrying(lambda: client.next_task("crash"))) is not None:
                    ranks = [rng.randrange(K) for _ in range(K)]
                    ranks = [sorted(set(ranks)).index(r) for r in ranks]
                    got = retrying(lambda t=task, r=ranks: client.submit(t, {"ranks": r}))
                    assert answers.setdefault(task["submission_key"], got) == got
            except (LabelingError, AssertionError) as e:
                errors.append(e)

        try:
            base = server.start()
            clients = [LabelingClient(base, t) for t in tokens]  # signed in before the crash: sessions outlive it
            for round_ in range(5):  # rounds, as in the test above: slots freed late are filled by a new round
                threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
                for t in threads:
                    t.start()
                if round_ == 0:  # kill the server mid-load, twice, and start it again on the same port and secret
                    for at in (tasks // 2, tasks * 3 // 2):
                        deadline = time.monotonic() + 60
                        while store.progress("crash")["judgements"] < at and time.monotonic() < deadline:
                            time.sleep(0.02)
                        server.kill()
                        killed_at.append(store.progress("crash")["judgements"])
                        time.sleep(0.3)
                        server.start()
                for t in threads:
                    t.join()
                if store.progress("crash")["judgements"] == tasks * OVERLAP:
                    break
            for c in clients:
                c.close()
        finally:
            server.stop()
        assert not errors, (errors[:3], (tmp_path / "server.log").read_text()[-2000:])
        assert len(killed_at) == 2 and all(0 < n < tasks * OVERLAP for n in killed_at), killed_at  # mid-load
        judgements = store.judgements("crash")
        per_task: dict[int, list[str]] = {}
        for task, _, labeler in judgements:
            per_task.setdefault(task.id, []).append(labeler.name)
        assert len(per_task) == tasks
        assert all(len(names) == OVERLAP and len(set(names)) == OVERLAP for names in per_task.values())
        # every submit that was answered names a judgement that is stored, once, under its key
        stored = {j.submission_key: j.id for _, j, _ in judgements}
        assert len(stored) == len(judgements) == tasks * OVERLAP
        assert all(stored[key] == jid for key, jid in answers.items())
        store.engine.dispose()

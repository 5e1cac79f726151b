import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from rlhfkit.data import write_jsonl
from rlhfkit.data.rankings import read_rankings
from rlhfkit.feedback import store as store_mod
from rlhfkit.feedback.export import agreement, export_demonstrations, export_rankings
from rlhfkit.feedback.store import FeedbackError, NotFound, Store


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'feedback.db'}")


def ranking_tasks(n, k=4):
    return [{"prompt": f"prompt {i}", "responses": [f"answer {i}.{j}" for j in range(k)],
             "sources": [{"policy": f"p{j % 2}"} for j in range(k)]} for i in range(n)]


def shown_ranks(assignment, task_ranks):
    """What a labeler who prefers `task_ranks` submits, given the shuffled order they were shown."""
    return [task_ranks[t] for t in assignment.order]


def test_tokens_and_passwords_are_hashed(store):
    lab, token = store.add_labeler("ann", password="correct horse")
    assert lab.token_hash != token and token not in (lab.password_hash or "")
    assert store.by_token(token).name == "ann" and store.by_token("wrong") is None
    assert store.by_password("ann", "correct horse").name == "ann"
    assert store.by_password("ann", "wrong") is None
    with pytest.raises(FeedbackError, match="exists"):
        store.add_labeler("ann")


def test_overlap_distinct_labelers_and_submission_in_task_order(store):
    store.add_project("p", overlap=2)
    assert store.import_tasks("p", ranking_tasks(3)) == 3
    assert store.import_tasks("p", ranking_tasks(3)) == 0  # importing again adds nothing
    labs = [store.add_labeler(n)[0] for n in ("a", "b", "c")]
    seen = {lab.id: [] for lab in labs}
    for _ in range(3):
        for lab in labs:
            a = store.lease_next(lab.id, "p")
            if a is None:
                continue
            seen[lab.id].append(a.task_id)
            assert store.lease_next(lab.id, "p").id == a.id  # the open lease comes back, not a new one
            store.submit(lab.id, a.id, {"ranks": shown_ranks(a, [3, 2, 1, 0])}, f"{lab.id}-{a.id}")
    for tasks in seen.values():
        assert len(tasks) == len(set(tasks))  # never the same task twice to one labeler
    exported = export_rankings(store, "p")
    assert len(exported) == 6  # 3 tasks x 2 labelers
    assert all(r.ranks == [3, 2, 1, 0] for r in exported)  # stored in task order, whatever was shown
    assert store.progress("p")["judgements"] == 6
    assert agreement(store, "p")["agreement"] == 1.0


def test_submissions_are_validated_idempotent_and_never_overwritten(store):
    store.add_project("p")
    store.import_tasks("p", ranking_tasks(2))
    lab, _ = store.add_labeler("a")
    a = store.lease_next(lab.id, "p")
    for bad, msg in [({"ranks": [0, 1]}, "4 whole numbers"), ({"ranks": [0, 2, 2, 3]}, "no gaps"),
                     ({"ranks": [0, 1, 1, 2], "likert": [1, 2, 8, 3]}, "1 to 7"),
                     ({"ranks": [0, 1, 1, 2], "flags": [["nonsense"], [], [], []]}, "known metadata flags"),
                     ({"ranks": [True, False, True, 2]}, "whole numbers"),  # JSON booleans are not ranks
                     ({"ranks": [0, 1, 1, 2], "likert": [True, 7, None, 1]}, "1 to 7")]:
        with pytest.raises(FeedbackError, match=msg):
            store.submit(lab.id, a.id, bad, "k1")
    for key in (None, "", "x" * 101, "a b", 5):  # a missing, empty, huge or odd key is refused, never stored
        with pytest.raises(FeedbackError, match="submission_key"):
            store.submit(lab.id, a.id, {"ranks": [0, 1, 1, 2]}, key)
    good = {"ranks": [0, 1, 1, 2], "likert": [7, 4, 4, 1], "flags": [[], ["hallucination"], [], []],
            "prompt_labels": ["ambiguous"], "comment": "B and C are as good"}
    j1 = store.submit(lab.id, a.id, good, "k1")
    j2 = store.submit(lab.id, a.id, good, "k1")  # the browser retried
    assert j1.id == j2.id and store.progress("p")["judgements"] == 1
    with pytest.raises(FeedbackError, match="never overwritten"):
        store.submit(lab.id, a.id, {"ranks": [3, 2, 1, 0]}, "k2")


def test_labelers_cannot_touch_each_others_assignments(store):
    store.add_project("p")
    store.import_tasks("p", ranking_tasks(2))
    ann, _ = store.add_labeler("ann")
    bob, _ = store.add_labeler("bob")
    a = store.lease_next(ann.id, "p")
    store.submit(ann.id, a.id, {"ranks": [0, 1, 2, 3]}, "anns-key")
    with pytest.raises(NotFound):
        store.submit(bob.id, a.id, {"ranks": [0, 1, 2, 3]}, "x")
    with pytest.raises(NotFound):  # ann's key on ann's assignment: still 404 to bob, not a hint that it exists
        store.submit(bob.id, a.id, {"ranks": [0, 1, 2, 3]}, "anns-key")
    with pytest.raises(NotFound):
        store.skip(bob.id, a.id, "not mine")


def test_skip_and_expiry_give_the_slot_back(store, monkeypatch):
    store.add_project("p", overlap=1, lease_seconds=60)
    store.import_tasks("p", ranking_tasks(1))
    ann, _ = store.add_labeler("ann")
    bob, _ = store.add_labeler("bob")
    cy, _ = store.add_labeler("cy")
    a = store.lease_next(ann.id, "p")
    assert store.lease_next(bob.id, "p") is None  # the only slot is leased
    store.skip(ann.id, a.id, "the task is unclear")
    assert store.lease_next(ann.id, "p") is None  # never handed back to the labeler who skipped it
    b = store.lease_next(bob.id, "p")
    assert b.task_id == a.task_id
    later = store_mod.now() + timedelta(seconds=120)
    monkeypatch.setattr(store_mod, "now", lambda: later)
    c = store.lease_next(cy.id, "p")  # bob's lease expired
    assert c is not None and c.task_id == a.task_id
    with pytest.raises(FeedbackError, match="expired"):
        store.submit(bob.id, b.id, {"ranks": [0, 1, 2, 3]}, "late")
    # a lease past its time is refused at submit even when nobody has leased since
    much_later = later + timedelta(seconds=120)
    monkeypatch.setattr(store_mod, "now", lambda: much_later)
    with pytest.raises(FeedbackError, match="expired"):
        store.submit(cy.id, c.id, {"ranks": [0, 1, 2, 3]}, "late-too")


def test_priority_order(store):
    store.add_project("p")
    store.import_tasks("p", ranking_tasks(3), priorities=[0.1, 0.9, 0.5])
    lab, _ = store.add_labeler("a")
    order = []
    for _ in range(3):
        a = store.lease_next(lab.id, "p")
        order.append(a.task_id)
        store.submit(lab.id, a.id, {"ranks": [0, 1, 2, 3]}, str(a.id))
    assert order == [2, 3, 1]


def test_concurrent_labelers_get_exactly_n_judgements_per_task(store):
    store.add_project("p", overlap=3)
    store.import_tasks("p", ranking_tasks(40, k=2))
    labs = [store.add_labeler(f"l{i}")[0] for i in range(12)]
    errors = []

    def work(lab):
        rng = random.Random(lab.id)
        try:
            while (a := store.lease_next(lab.id, "p")) is not None:
                key = f"{lab.id}-{a.id}"
                store.submit(lab.id, a.id, {"ranks": rng.choice([[0, 1], [1, 0], [0, 0]])}, key)
                store.submit(lab.id, a.id, {"ranks": [0, 1]}, key)  # a retry changes nothing
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(lab,)) for lab in labs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    per_task = {}
    for task, _, labeler in store.judgements("p"):
        per_task.setdefault(task.id, []).append(labeler.name)
    assert len(per_task) == 40
    assert all(len(v) == 3 and len(set(v)) == 3 for v in per_task.values())


def test_demonstrations_pairwise_gold_and_export_files(store, tmp_path):
    store.add_project("demos", kind="demonstration")
    store.import_tasks("demos", [{"prompt": "Name a fruit."}])
    ann, _ = store.add_labeler("ann")
    a = store.lease_next(ann.id, "demos")
    with pytest.raises(FeedbackError, match="write a response"):
        store.submit(ann.id, a.id, {"response": "  "}, "d0")
    store.submit(ann.id, a.id, {"response": "An apple."}, "d1")
    (demo,) = export_demonstrations(store, "demos")
    assert demo.response == "An apple." and demo.meta["labeler"] == "ann"

    store.add_project("duel", kind="pairwise", overlap=2)
    store.import_tasks("duel", [{"prompt": "hi", "responses": ["x", "y"],
                                 "sources": [{"policy": "ppo"}, {"policy": "sft"}]}])
    bob, _ = store.add_labeler("bob")
    for lab, pick in ((ann, "ppo"), (bob, "tie")):
        a = store.lease_next(lab.id, "duel")
        choice = "tie" if pick == "tie" else a.order.index(0)  # the shown position of the ppo output
        store.submit(lab.id, a.id, {"choice": choice}, f"duel-{lab.id}")
    rankings = export_rankings(store, "duel")
    assert sorted(tuple(r.ranks) for r in rankings) == [(0, 0), (0, 1)]
    write_jsonl(tmp_path / "duel.jsonl", rankings)
    assert len(read_rankings(tmp_path / "duel.jsonl").records) == 2  # what `rlhfkit eval elo` reads

    store.add_project("screen", overlap=2)
    store.import_tasks("screen", ranking_tasks(1, k=3))
    screen_id = store.project("screen").id
    with store.session() as s:
        s.scalar(select(store_mod.Task).where(store_mod.Task.project_id == screen_id)).gold = [0, 1, 2]
    for lab, ranks in ((ann, [0, 1, 2]), (bob, [2, 1, 0])):
        a = store.lease_next(lab.id, "screen")
        store.submit(lab.id, a.id, {"ranks": shown_ranks(a, ranks)}, f"s-{lab.id}")
    report = agreement(store, "screen")
    assert report["gold"] == {"ann": 1.0, "bob": 0.0} and report["agreement"] == 0.0


def test_label_cli_round_trip(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    db = f"sqlite:///{tmp_path / 'f.db'}"
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"prompt": "p1", "responses": ["a", "b", "c"], "sources": [{"policy": "sft"}] * 3,
                           "meta": {"uncertainty": 0.9}},
                          {"prompt": "p2", "responses": ["d", "e"], "meta": {"uncertainty": 0.1}}])
    run = CliRunner().invoke
    assert run(app, ["label", "add-project", "rm-data", "--overlap", "1", "--db", db]).exit_code == 0
    token = run(app, ["label", "add-labeler", "ann", "--db", db]).output.strip()
    out = run(app, ["label", "import", "rm-data", str(samples), "--priority-field", "uncertainty", "--db", db])
    assert "2 new tasks" in out.output
    assert "0 new tasks" in run(app, ["label", "import", "rm-data", str(samples), "--db", db]).output
    store = Store(db)
    ann = store.by_token(token)
    a = store.lease_next(ann.id, "rm-data")
    assert a.task_id == 1  # the most uncertain first
    store.submit(ann.id, a.id, {"ranks": shown_ranks(a, [1, 0, 1])}, "x")
    assert run(app, ["label", "export", "rm-data", str(tmp_path / "out.jsonl"), "--db", db]).exit_code == 0
    (ranking,) = read_rankings(tmp_path / "out.jsonl").records
    assert ranking.ranks == [1, 0, 1] and ranking.labeler == "ann"
    assert '"judgements": 1' in run(app, ["label", "report", "rm-data", "--db", db]).output


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_models_schema(kind, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from servers import database
    from sqlalchemy import inspect

    with database(kind, tmp_path) as url:
        store = Store(url)  # empty -> head
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), store_mod.Base.metadata) == []
            assert "alembic_version" in inspect(conn).get_table_names()
        Store(url).engine.dispose()  # at head already: a no-op
        store.engine.dispose()


def test_admin_inputs_are_checked_and_the_database_is_private(tmp_path):
    """Issue #19 row 15: names and numbers an admin types are validated; the SQLite file is 0600."""
    import os
    import stat

    store = Store(f"sqlite:///{tmp_path / 'private.db'}")
    assert stat.S_IMODE(os.stat(tmp_path / "private.db").st_mode) == 0o600
    for name, overlap, lease, msg in (("a/../../admin", 1, 1800, "project's name"), ("x" * 101, 1, 1800, "name"),
                                      ("ok", 10**20, 1800, "overlap"), ("ok", True, 1800, "overlap"),
                                      ("ok", 1, 0, "lease_seconds"), ("..", 1, 1800, "project's name")):
        with pytest.raises(FeedbackError, match=msg):
            store.add_project(name, overlap=overlap, lease_seconds=lease)
    for name in ("", "   ", "a\x00b", "x" * 101, "tab\there"):
        with pytest.raises(FeedbackError, match="labeler's name"):
            store.add_labeler(name)
    assert store.add_labeler("  Zoë Li ")[0].name == "Zoë Li" and store.projects() == []


def test_secrets_and_passwords_have_a_minimum_and_stay_off_the_command_line(tmp_path, monkeypatch):
    """Issue #19 row 13."""
    from typer.testing import CliRunner

    from rlhfkit.cli import app
    from rlhfkit.feedback.auth import load_secret

    monkeypatch.setenv("RLHFKIT_SECRET", "a")
    with pytest.raises(ValueError, match="at least 32"):
        load_secret(f"sqlite:///{tmp_path / 'f.db'}")
    monkeypatch.setenv("RLHFKIT_SECRET", "x" * 32)
    assert load_secret(f"sqlite:///{tmp_path / 'f.db'}") == b"x" * 32
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    with pytest.raises(FeedbackError, match="at least 12"):
        store.add_labeler("ann", password="x")
    db = f"sqlite:///{tmp_path / 'f.db'}"
    run = CliRunner().invoke
    assert run(app, ["label", "add-labeler", "bob", "--password", "hunter2", "--db", db]).exit_code != 0  # no value
    out = run(app, ["label", "add-labeler", "bob", "--password", "--db", db], input="a long passphrase\n")
    assert out.exit_code == 0, out.output
    assert store.by_password("bob", "a long passphrase").name == "bob"

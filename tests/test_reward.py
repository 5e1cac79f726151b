import json
import math
import random

import pytest
import torch
from tiny import WORDS

from rlhfkit.config import RMConfig, SampleConfig
from rlhfkit.data import Ranking, read_demonstrations, write_jsonl
from rlhfkit.data.rankings import read_rankings
from rlhfkit.evaluation.elo import bradley_terry, compare_policies, ranking_outcomes
from rlhfkit.models.reward import load_reward_model, score
from rlhfkit.sampling import sample_rankings
from rlhfkit.train.common import Hooks
from rlhfkit.train.reward import train_reward
from rlhfkit.train.reward_metrics import ranking_pairs, reward_metrics

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast

PLAIN = [w for w in WORDS if w != "banana"]


def planted_rankings(n: int, seed: int) -> list[Ranking]:
    """K = 4 or 2 responses; those containing 'banana' are preferred (ties within each group)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([2, 4])
        responses, ranks = [], []
        for j in range(k):
            words = rng.sample(PLAIN, rng.randint(4, 9))
            liked = j % 2 == 0
            if liked:
                words.insert(rng.randrange(len(words)), "banana")
            responses.append(" ".join(words))
            ranks.append(0 if liked else 1)
        order = list(range(k))
        rng.shuffle(order)
        out.append(Ranking(prompt=" ".join(rng.sample(PLAIN, 5)), responses=[responses[i] for i in order],
                           ranks=[ranks[i] for i in order]))
    return out


def rm_cfg(tmp_path, model, **kw):
    base = dict(model=str(model), output_dir=str(tmp_path / "rm"), max_length=64, batch_size=8, lr=2e-3,
                warmup_ratio=0.0, eval_every=0, save_every=0, progress=False, dtype="fp32")
    return RMConfig(**{**base, **kw})


def test_rm_learns_planted_preference_and_normalises(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "train.jsonl", planted_rankings(240, 0))
    write_jsonl(tmp_path / "eval.jsonl", planted_rankings(60, 1))
    demos = [{"prompt": "say something", "response": " ".join(random.Random(i).sample(WORDS, 6))} for i in range(20)]
    write_jsonl(tmp_path / "demos.jsonl", demos)
    result = train_reward(rm_cfg(tmp_path, tiny_llama, data=str(tmp_path / "train.jsonl"), epochs=3,
                                 eval_data=str(tmp_path / "eval.jsonl"), demos=str(tmp_path / "demos.jsonl")))
    report = json.loads((result.output_dir / "eval_report.json").read_text())
    assert report["accuracy"] > 0.95, report
    assert set(report["accuracy_by_k"]) == {"2", "4"} and report["calibration"]

    rm, tok = load_reward_model(result.output_dir)
    demo_records = read_demonstrations(tmp_path / "demos.jsonl").records
    demo_scores = score(rm, tok, [d.prompt for d in demo_records], [d.response for d in demo_records], 64)
    assert abs(demo_scores.mean().item()) < 1e-4
    assert rm.meta["shift"] == pytest.approx(result.shift) and rm.meta["base_model"] == str(tiny_llama)
    assert rm.head.bias.item() == pytest.approx(result.shift, abs=1e-6)  # untrained (gradient 0), only shifted
    liked = score(rm, tok, ["a question"], ["the apple and banana tree"])
    plain = score(rm, tok, ["a question"], ["the apple and the tree"])
    assert liked.item() > plain.item()

    # the standard sequence-classifier copy: the same rewards, less the bias its head cannot hold
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.data.tokenize import encode_prompt, encode_response

    hf = result.output_dir / "hf-sequence-classification"
    model = AutoModelForSequenceClassification.from_pretrained(hf).eval()
    hf_tok = AutoTokenizer.from_pretrained(hf)
    prompts, responses = ["a question", "say something longer here"], ["the apple and banana tree", "the cat"]
    ours = score(rm, tok, prompts, responses, 64)
    ids = [encode_prompt(hf_tok, p) + encode_response(hf_tok, r) for p, r in zip(prompts, responses, strict=True)]
    batch = hf_tok.pad({"input_ids": ids}, return_tensors="pt")  # right padding, a pad token other than EOS
    with torch.no_grad():
        theirs = model(**batch).logits[:, 0]
    assert theirs + model.config.rlhfkit_reward_bias == pytest.approx(ours, abs=1e-4)
    back, _ = load_reward_model(hf)
    assert score(back, tok, prompts, responses, 64) == pytest.approx(ours, abs=1e-4)


def test_export_pads_with_a_token_other_than_eos(tiny_llama, tmp_path):
    from rlhfkit.models.reward import export_sequence_classification, reward_model_from_causal_lm

    rm, tok = reward_model_from_causal_lm(tiny_llama)
    tok.pad_token = tok.eos_token  # as SmolLM2 ships: padding with EOS would hide the token the reward is read at
    export_sequence_classification(rm, tok, tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["pad_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>") != tok.eos_token_id
    assert saved["id2label"] == {"0": "reward"}  # one label: the reward


def test_rm_resume_matches_straight_run(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "r.jsonl", planted_rankings(40, 2))
    common = dict(data=str(tmp_path / "r.jsonl"), max_steps=4, batch_size=4, eval_fraction=0.0)
    straight = train_reward(rm_cfg(tmp_path / "a", tiny_llama, **common))

    def stop(step, _):
        if step == 2:
            raise KeyboardInterrupt

    cfg = rm_cfg(tmp_path / "b", tiny_llama, save_every=2, **common)
    with pytest.raises(KeyboardInterrupt):
        train_reward(cfg, Hooks(on_step=stop))
    resumed = train_reward(cfg.model_copy(update={"resume": True}))

    def losses(r):
        return [json.loads(x)["loss"] for x in (r.output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]

    assert losses(straight) == pytest.approx(losses(resumed), rel=1e-5)


def test_rm_init_from_a_preference_pretrained_rm(tmp_path, tiny_llama):
    """PMP: an RM pretrained on plenty of comparisons, fine-tuned on a few of the task's, beats one trained on the
    few alone."""
    write_jsonl(tmp_path / "public.jsonl", planted_rankings(200, 10))
    write_jsonl(tmp_path / "few.jsonl", planted_rankings(8, 11))
    write_jsonl(tmp_path / "held_out.jsonl", planted_rankings(60, 12))
    pmp = train_reward(rm_cfg(tmp_path / "pmp", tiny_llama, data=str(tmp_path / "public.jsonl"), epochs=2,
                              eval_fraction=0.0))
    few = dict(data=str(tmp_path / "few.jsonl"), eval_data=str(tmp_path / "held_out.jsonl"), max_steps=1, lr=1e-4)
    fresh = train_reward(rm_cfg(tmp_path / "fresh", tiny_llama, **few))
    tuned = train_reward(rm_cfg(tmp_path / "tuned", tiny_llama, init_from=str(pmp.output_dir), **few))
    assert tuned.eval_metrics["accuracy"] > 0.9 > fresh.eval_metrics["accuracy"] + 0.2
    pretrained, _ = load_reward_model(pmp.output_dir)
    rm, _ = load_reward_model(tuned.output_dir)
    assert torch.allclose(rm.head.weight, pretrained.head.weight, atol=1e-3)  # started there, moved little


def test_rm_lora(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "r.jsonl", planted_rankings(16, 3))
    result = train_reward(rm_cfg(tmp_path, tiny_llama, data=str(tmp_path / "r.jsonl"), max_steps=2, lora_r=4,
                                 eval_fraction=0.25))
    rm, _ = load_reward_model(result.output_dir)  # merged backbone + head
    assert not hasattr(rm.backbone, "peft_config")


def test_reward_metrics_by_hand():
    # rewards for a K=3 ranking C > A > B and a K=2 tie
    pairs = [ranking_pairs([1.0, 0.0, 2.0], [1, 2, 0]), ranking_pairs([5.0, 1.0], [0, 0])]
    m = reward_metrics(pairs)
    assert m["pairs"] == 3 and m["rankings"] == 1 and m["accuracy"] == 1.0
    assert m["top_bottom_accuracy"] == 1.0  # C vs B
    loss = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 3
    assert m["loss"] == pytest.approx(loss)
    wrong = reward_metrics([ranking_pairs([0.0, 1.0], [0, 1])])
    assert wrong["accuracy"] == 0.0 and wrong["calibration"][0]["observed"] == 1.0


def test_bradley_terry_recovers_strengths():
    truth = {"sft": 0.0, "ppo": 1.0, "base": -0.7}
    rng = random.Random(0)
    rankings = []
    for _ in range(600):  # Plackett–Luce orders: their pairwise marginals follow Bradley–Terry
        left, order = list(truth), []
        while left:
            weights = [math.exp(truth[p]) for p in left]
            order.append(left.pop(rng.choices(range(len(left)), weights)[0]))
        responses = list(truth)
        rankings.append(Ranking(prompt="p", responses=responses, ranks=[order.index(p) for p in responses],
                                sources=[{"policy": p} for p in responses]))
    fit = bradley_terry([o for r in rankings for o in ranking_outcomes(r)])
    centre = sum(truth.values()) / 3
    for p, s in truth.items():
        assert fit[p] == pytest.approx(s - centre, abs=0.15)
    table = compare_policies(rankings, bootstrap=100)
    assert [s.policy for s in table] == ["ppo", "sft", "base"]
    for s in table:
        true_elo = 1000 + 400 / math.log(10) * (truth[s.policy] - centre)
        assert s.ci_low <= true_elo <= s.ci_high or abs(s.bt_elo - true_elo) < 30


def test_sample_writes_distinct_responses_and_resumes(tmp_path, tiny_llama):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about the {w}", "id": w}) + "\n"
                               for w in ["cat", "dog", "tree"]))
    cfg = SampleConfig(model=str(tiny_llama), prompts=str(prompts), output=str(tmp_path / "s.jsonl"), k=3,
                       max_new_tokens=8, progress=False, dtype="fp32")
    summary = sample_rankings(cfg)
    assert summary["written"] == 3
    records = read_rankings(tmp_path / "s.jsonl", require_ranks=False).records
    for r in records:
        assert len(set(r.responses)) == len(r.responses) == 3 and r.ranks is None
        assert r.sources[0]["policy"] == str(tiny_llama) and r.sources[0]["temperature"] == 1.0
    with pytest.raises(FileExistsError):
        sample_rankings(cfg)
    again = sample_rankings(cfg.model_copy(update={"resume": True}))
    assert again["written"] == 0 and again["already_done"] == 3


def test_sample_cut_short_resumes_to_the_straight_runs_file(tmp_path, tiny_llama):
    """A kill can leave the last batch half-written (some records, a torn line): resumed, the file is byte for byte
    what a straight run writes, because that batch is dropped and sampled again from its own seed."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about the {w}"}) + "\n"
                               for w in ["cat", "dog", "tree", "sea", "sun", "moon", "rain"]))
    cfg = SampleConfig(model=str(tiny_llama), prompts=str(prompts), output=str(tmp_path / "straight.jsonl"), k=3,
                       batch_size=6, max_new_tokens=8, progress=False, dtype="fp32")  # 2 prompts a batch
    sample_rankings(cfg)
    straight = (tmp_path / "straight.jsonl").read_text()
    lines = straight.splitlines(keepends=True)
    assert len(lines) == 7
    cut = tmp_path / "cut.jsonl"
    # cut mid-batch, at a batch's end, mid-batch with a torn line, a torn line after a batch's end
    # and a file holding nothing but a torn line
    for kept, whole in ((lines[:3], 2), (lines[:4], 4), (lines[:5] + [lines[5][:40]], 4),
                        (lines[:4] + [lines[4][:40]], 4), ([lines[0][:40]], 0)):
        cut.write_text("".join(kept))
        again = sample_rankings(cfg.model_copy(update={"output": str(cut), "resume": True}))
        assert cut.read_text() == straight
        assert again["already_done"] == whole and again["written"] == 7 - whole


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gpt2"])
def test_shared_prompt_packing_matches_one_by_one(kind, request):
    from rlhfkit.models.reward import reward_model_from_causal_lm

    rm, tok = reward_model_from_causal_lm(request.getfixturevalue(kind))
    prompts = ["tell me about the cat"] * 3 + ["a dog"] * 2 + ["why is the sky blue"]
    responses = ["the cat sat", "cats are good pets and sleep a lot", "no", "dogs run", "a dog is a dog", "light"]
    together = score(rm, tok, prompts, responses)
    alone = torch.stack([score(rm, tok, [p], [r])[0] for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_calibration_table_matches_a_calibrated_model():
    # Margins whose sigmoid is the true chance the first response is better: observed tracks predicted,
    # even though the better response is mostly in the first slot.
    import random

    from rlhfkit.train.reward_metrics import Pair, reward_metrics

    rng = random.Random(0)
    pairs = []
    for _ in range(20000):
        m = rng.uniform(-4, 4)
        first_better = rng.random() < 1 / (1 + math.exp(-m))
        pairs.append([Pair(2, m, first_better, True)])
    table = reward_metrics(pairs)["calibration"]
    assert len(table) == 10
    for row in table:
        assert abs(row["observed"] - row["predicted"]) < 0.05, row


def test_rankings_of_the_same_responses_share_one_forward_and_the_split_keeps_prompts_apart(tiny_llama):
    from rlhfkit.losses import ranking_loss
    from rlhfkit.models.reward import reward_model_from_causal_lm
    from rlhfkit.train.common import split_holdout
    from rlhfkit.train.reward import encode_rankings, forward_rankings, ranked_prompt

    rm, tok = reward_model_from_causal_lm(str(tiny_llama))
    a, b = planted_rankings(2, 5)
    second_labeler = a.model_copy(update={"ranks": list(reversed(a.ranks)), "labeler": "other"})
    all_tied = b.model_copy(update={"ranks": [0] * len(b.responses)})
    merged, _ = encode_rankings(tok, [a, b, second_labeler, all_tied], 64)
    assert [len(m.ranks) for m in merged] == [2, 1]  # a's two labelers on one item; the all-tie ranking dropped
    with torch.no_grad():
        rewards, ranks = forward_rankings(rm, merged, tok.pad_token_id)
        got = ranking_loss(rewards, ranks)
        alone = []  # each ranking forwarded on its own, as if no other labeler had ranked the same responses
        for r in (a, b, second_labeler):
            (item,), _ = encode_rankings(tok, [r], 64)
            alone.append(ranking_loss(*forward_rankings(rm, [item], tok.pad_token_id)))
    assert got.item() == pytest.approx(torch.stack(alone).mean().item(), rel=1e-5)

    rounds = planted_rankings(30, 6) + [r.model_copy(update={"labeler": "again"}) for r in planted_rankings(30, 6)]
    train, held = split_holdout(rounds, 0.2, 0, key=ranked_prompt)
    assert len(held) == 12 and not {ranked_prompt(r) for r in train} & {ranked_prompt(r) for r in held}
    assert split_holdout(list(range(10)), 0.2, 0)[1] == split_holdout(list(range(10)), 0.2, 0, key=lambda x: x)[1]


def test_a_cut_off_response_is_scored_without_eos_as_ppo_samples_it(tiny_llama):
    from rlhfkit.models.reward import reward_model_from_causal_lm
    from rlhfkit.train.reward import encode_rankings

    rm, tok = reward_model_from_causal_lm(str(tiny_llama))
    r = Ranking(prompt="the cat", responses=["the cat sat", "a dog ran"], ranks=[0, 1],
                sources=[{"ended": True}, {"ended": False}])
    (item,), _ = encode_rankings(tok, [r], 64)
    finished, cut = item.group.response_ids
    assert finished[-1] == tok.eos_token_id and cut[-1] != tok.eos_token_id
    assert finished[:-1] == tok("the cat sat", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        as_sampled = score(rm, tok, ["the cat"] * 2, ["the cat sat", "a dog ran"], ended=[True, False])
        assert as_sampled[0] == pytest.approx(score(rm, tok, ["the cat"], ["the cat sat"])[0].item(), abs=1e-5)
        assert as_sampled[1] != pytest.approx(score(rm, tok, ["the cat"], ["a dog ran"])[0].item(), abs=1e-5)

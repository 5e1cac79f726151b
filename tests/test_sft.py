import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import SFTConfig, load_config
from rlhfkit.data import encode_prompt
from rlhfkit.models import load_causal_lm
from rlhfkit.train.common import Hooks, NonFiniteLoss, RunExists, seconds_before_resume
from rlhfkit.train.sft import train_sft

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def greedy(model, tok, prompt, n=12):
    ids = torch.tensor([encode_prompt(tok, prompt)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def cfg(tmp_path, model, data, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(tmp_path / "run"), max_length=64, batch_size=2,
                lr=3e-3, warmup_ratio=0.0, eval_every=0, save_every=0, progress=False, dtype="fp32")
    return SFTConfig(**{**base, **kw})


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gpt2"])
def test_loss_falls_and_model_memorises(tmp_path, demos_file, kind, request):
    folder = request.getfixturevalue(kind)
    result = train_sft(cfg(tmp_path, folder, demos_file, max_steps=200, eval_fraction=0.0, dtype="auto", lr=1e-2))
    losses = [m["loss"] for m in metrics(result.output_dir)]
    assert losses[-1] < 0.25 * losses[0]
    model, tok = load_causal_lm(result.output_dir)  # the run folder is a plain HF model folder
    assert greedy(model, tok, "What colour is the sky?") == "The sky is blue."


def test_resume_gives_the_same_losses(tmp_path, tiny_llama, demos_file):
    straight = train_sft(cfg(tmp_path / "a", tiny_llama, demos_file, max_steps=6, batch_size=1, grad_accum=2))

    def kill_after_3(step, _):
        if step == 3:
            raise KeyboardInterrupt

    resumed_cfg = cfg(tmp_path / "b", tiny_llama, demos_file, max_steps=6, batch_size=1, grad_accum=2, save_every=3)
    with pytest.raises(KeyboardInterrupt):
        train_sft(resumed_cfg, Hooks(on_step=kill_after_3))
    with pytest.raises(RunExists):  # a second run into the same folder never overwrites it
        train_sft(resumed_cfg)
    before = seconds_before_resume(Path(resumed_cfg.output_dir))  # the time up to the checkpoint counts on resume
    assert before > 0
    resumed = train_sft(resumed_cfg.model_copy(update={"resume": True}))
    assert seconds_before_resume(resumed.output_dir) > before
    a, b = metrics(straight.output_dir), metrics(resumed.output_dir)
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm"):
        assert [m[key] for m in a] == pytest.approx([m[key] for m in b], rel=1e-5, abs=1e-6)


def test_eval_keeps_best_and_hook_selects(tmp_path, tiny_llama, demos_file):
    picks = []

    def select(model, tok):  # a stand-in for "RM score on a validation set": prefer the earliest model
        picks.append(1)
        return -len(picks)

    result = train_sft(cfg(tmp_path, tiny_llama, demos_file, max_steps=4, eval_every=2, eval_fraction=0.25),
                       Hooks(select=select))
    logged = [m for m in metrics(result.output_dir) if "eval_loss" in m]
    assert [m["step"] for m in logged] == [2, 4] and len(picks) == 2
    best = json.loads((result.output_dir / "checkpoints" / "best" / "trainer_state.json").read_text())
    assert best["step"] == 2


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_llama, demos_file, monkeypatch):
    calls = {"n": 0}
    real = torch.nn.functional.cross_entropy

    def poisoned(*args, **kwargs):  # torch's cross-entropy turns NaN at the third step's loss
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 3: the loss is nan.*step-2.*intact"):
        train_sft(cfg(tmp_path, tiny_llama, demos_file, max_steps=5, save_every=1, eval_fraction=0.0))
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step-2"
    load_causal_lm(ckpt / "step-2" / "model")


def test_lora_merged_and_adapter_outputs(tmp_path, tiny_llama, demos_file):
    merged = train_sft(cfg(tmp_path / "m", tiny_llama, demos_file, max_steps=3, lora_r=4, eval_fraction=0.0))
    assert not (merged.output_dir / "adapter_config.json").exists()
    load_causal_lm(merged.output_dir)
    adapter = train_sft(cfg(tmp_path / "a", tiny_llama, demos_file, max_steps=3, lora_r=4, merge_lora=False,
                            save_every=2, eval_fraction=0.0))
    assert (adapter.output_dir / "adapter_config.json").exists()
    model, _ = load_causal_lm(adapter.output_dir)
    assert hasattr(model, "peft_config")
    # resuming a LoRA run continues on the adapters
    more = cfg(tmp_path / "a", tiny_llama, demos_file, max_steps=4, lora_r=4, merge_lora=False, resume=True,
               eval_fraction=0.0)
    assert train_sft(more).steps == 4


def test_config_yaml_then_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.1\nbatch_size: 3\nmodel: m\n")
    c = load_config(SFTConfig, tmp_path / "c.yaml", {"lr": 0.5, "epochs": None})
    assert (c.lr, c.batch_size, c.model, c.epochs) == (0.5, 3, "m", 2.0)
    (tmp_path / "bad.yaml").write_text("batch_size: many\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: option 'batch_size'"):
        load_config(SFTConfig, tmp_path / "bad.yaml", {})


def test_cli_help_and_errors(tmp_path, tiny_llama):
    runner = CliRunner()
    out = runner.invoke(app, ["sft", "--help"]).output
    for field in SFTConfig.model_fields:
        assert "--" + field.replace("_", "-") in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    result = runner.invoke(app, ["sft", "--model", str(tiny_llama), "--data", str(bad),
                                 "--output-dir", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code != 0 and "bad.jsonl:2" in str(result.exception)


def test_cli_trains(tmp_path, tiny_llama, demos_file):
    (tmp_path / "sft.yaml").write_text(f"model: {tiny_llama}\ndata: {demos_file}\nmax_length: 64\nlr: 0.003\n")
    result = CliRunner().invoke(app, ["sft", "-c", str(tmp_path / "sft.yaml"), "--max-steps", "2",
                                      "--output-dir", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "max_steps: 2" in saved and "lr: 0.003" in saved


def test_cli_generate(tmp_path, tiny_llama):
    out = tmp_path / "g.jsonl"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_llama), "--prompt", "Say yes.", "--prompt",
                                      "Name a fruit.", "--max-new-tokens", "5", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "### Say yes." in result.output and "### Name a fruit." in result.output
    assert len(out.read_text().splitlines()) == 2
    again = CliRunner().invoke(app, ["generate", "--model", str(tiny_llama), "--prompt", "Say yes.",
                                     "--output", str(out)])
    assert again.exit_code != 0 and "pass --resume" in str(again.exception)  # nothing already written is lost


def test_generate_writes_batch_by_batch_and_resumes(tmp_path, tiny_llama):
    from rlhfkit.config import GenerateConfig
    from rlhfkit.sampling import generate

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcdefg"))
    args = dict(model=str(tiny_llama), prompts=str(prompts), num_samples=2, temperature=1.0, max_new_tokens=6,
                batch_size=4, progress=False)  # 2 prompts a batch
    straight = generate(GenerateConfig(**args, output=str(tmp_path / "straight.jsonl")))
    assert [r["index"] for r in straight] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    # a run killed in its third batch: two batches written whole, the third torn
    cut = tmp_path / "cut.jsonl"
    lines = (tmp_path / "straight.jsonl").read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:9]) + lines[9][:10])
    generate(GenerateConfig(**args, output=str(cut), resume=True))
    assert sorted(cut.read_text().splitlines()) == sorted(ln.rstrip("\n") for ln in lines)


def test_generate_best_of_n_keeps_what_the_reward_model_scores_highest(tmp_path, tiny_llama):
    from rlhfkit.config import GenerateConfig
    from rlhfkit.models.reward import load_reward_model, reward_model_from_causal_lm, score
    from rlhfkit.sampling import generate

    rm, tok = reward_model_from_causal_lm(tiny_llama)
    torch.nn.init.normal_(rm.head.weight, std=1.0)  # a random but non-trivial scorer
    rm.save(tmp_path / "rm", tok)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abc"))
    args = dict(model=str(tiny_llama), prompts=str(prompts), temperature=1.0, max_new_tokens=6, batch_size=8,
                progress=False, seed=3)
    drawn = generate(GenerateConfig(**args, num_samples=4))  # the same draws best-of-4 makes
    best = generate(GenerateConfig(**args, best_of=4, reward_model=str(tmp_path / "rm")))
    rm, tok = load_reward_model(tmp_path / "rm")
    rewards = score(rm, tok, [r["prompt"] for r in drawn], [r["response"] for r in drawn],
                    ended=[r["ended"] for r in drawn]).tolist()
    assert [r["index"] for r in best] == [0, 1, 2] and all(r["best_of"] == 4 for r in best)
    for i, kept in enumerate(best):
        options = list(zip(rewards[4 * i : 4 * i + 4], drawn[4 * i : 4 * i + 4], strict=True))
        top_reward, top = max(options, key=lambda x: x[0])
        assert kept["response"] == top["response"] and kept["reward"] == pytest.approx(top_reward, abs=1e-5)
    with pytest.raises(ValueError, match="--reward-model"):
        generate(GenerateConfig(**args, best_of=4))


def test_every_command_documents_every_option():
    from rlhfkit.config import DPOConfig, GenerateConfig, PPOConfig, RMConfig, SampleConfig

    runner = CliRunner()
    for command, cls in (("rm", RMConfig), ("ppo", PPOConfig), ("sample", SampleConfig), ("generate", GenerateConfig),
                         ("dpo", DPOConfig)):
        out = runner.invoke(app, [command, "--help"], terminal_width=200).output
        flags = getattr(cls, "FLAGS", {})
        sections = {f.path[0] for f in flags.values()}  # set through their flags (and --set SECTION.OPTION)
        for name in [f for f in cls.model_fields if f not in sections] + list(flags):
            assert "--" + name.replace("_", "-") in out, (command, name)
        assert not sections or "--set" in out
    assert runner.invoke(app, ["--help"]).exit_code == 0


def test_report_to_chooses_the_trackers(tmp_path, tiny_llama, demos_file, monkeypatch):
    import importlib.util

    with pytest.raises(ValueError, match="unknown tracker 'neptune'"):
        cfg(tmp_path, tiny_llama, demos_file, report_to=["neptune"])
    train_sft(cfg(tmp_path, tiny_llama, demos_file, max_steps=2, report_to=["none"]))
    assert len(metrics(tmp_path / "run")) == 2 and not (tmp_path / "run" / "logs" / "tb").exists()
    result = CliRunner().invoke(app, ["sft", "--model", str(tiny_llama), "--data", str(demos_file), "--max-steps", "1",
                                      "--output-dir", str(tmp_path / "tb"), "--report-to", "tensorboard",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "tb" / "logs" / "tb").iterdir())
    for name in ("wandb", "mlflow"):  # optional: a clear error where the package is missing, a run where present
        if importlib.util.find_spec(name) is None:
            with pytest.raises(ValueError, match=f"pip install {name}"):
                train_sft(cfg(tmp_path, tiny_llama, demos_file, max_steps=1, report_to=[name],
                              output_dir=str(tmp_path / name)))
        elif name == "mlflow":  # (wandb needs an account: not run here)
            monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
            train_sft(cfg(tmp_path, tiny_llama, demos_file, max_steps=1, report_to=[name],
                          output_dir=str(tmp_path / name)))

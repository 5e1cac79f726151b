"""Sampling engines behind one interface, `RolloutEngine`: rlhfkit's own KV-cache decoder (`DecoderEngine`, any
device) and vLLM on CUDA GPUs (`VLLMEngine`). Both answer `sample(prompts, n, params) -> Rollout`.

`sample` renders prompts with the chat template, left-pads them into batches of similar length and
decodes with its own short loop over a KV cache until every row has hit EOS or `max_new_tokens`.
With bf16 it decodes a bf16 copy of the weights (made once per call) rather than autocasting the fp32
weights again at every token (except a model FSDP has gathered, which cannot be copied). Llama-family models
(SmolLM2) decode through `StaticDecoder`: the prompts prefilled packed (no padding computed), a preallocated
cache and one fixed-shape step, replayed as a CUDA graph on a GPU; other models through transformers' own
forward and its growing cache. Each response keeps its token ids (EOS included when it ended), so later
stages score exactly the tokens that were sampled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import torch

from rlhfkit.data.records import PromptText
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.errors import UsageError


@dataclass
class Rollout:
    prompt_index: list[int]  # which input prompt each sample answers
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # sampled tokens, ending with EOS when the response finished
    ended: list[bool]  # False: cut off at max_new_tokens
    texts: list[str]

    def add(self, prompt_index: int, prompt_ids: list[int], tokens: list[int], tokenizer) -> None:
        """One response: `tokens` as decoded, cut after the first EOS (the end-of-turn token) if any."""
        eos = tokenizer.eos_token_id
        ended = eos in tokens
        tokens = tokens[: tokens.index(eos) + 1] if ended else tokens
        self.prompt_index.append(prompt_index)
        self.prompt_ids.append(prompt_ids)
        self.response_ids.append(tokens)
        self.ended.append(ended)
        self.texts.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    max_prompt_length: int | None = None  # longer prompts keep their last tokens


class RolloutEngine(Protocol):
    """What samples responses for `sample`, `generate` and PPO."""

    tokenizer: object

    def sample(self, prompts: list[PromptText], n: int, params: SamplingParams) -> Rollout:
        """`n` responses to each prompt. Seeded from torch's generator: `torch.manual_seed` first repeats it."""
        ...

    def load_weights(self, model: torch.nn.Module) -> None:
        """Sample from `model`'s current weights from now on (PPO: before every rollout)."""
        ...


class DecoderEngine:
    """rlhfkit's own decoder (`sample` below) on a model in this process: it samples from the model it was given
    last, so `load_weights` copies nothing."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 16, autocast: bool = False):
        self.model, self.tokenizer, self.batch_size, self.autocast = model, tokenizer, batch_size, autocast

    def load_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def sample(self, prompts: list[PromptText], n: int, params: SamplingParams) -> Rollout:
        return sample(self.model, self.tokenizer, prompts, n, params.max_new_tokens, params.temperature, params.top_p,
                      self.batch_size, self.autocast, params.max_prompt_length)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[PromptText],
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    autocast: bool = False,
    max_prompt_length: int | None = None,
) -> Rollout:
    """`num_samples` responses to each prompt; temperature 0 decodes greedily. Prompts longer than
    `max_prompt_length` tokens keep their last tokens (the end of the chat template stays intact)."""
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = encode_prompts(tokenizer, prompts, max_prompt_length)
    jobs = [i for i in range(len(prompts)) for _ in range(num_samples)]
    jobs.sort(key=lambda i: len(encoded[i]))  # similar lengths per batch: little left padding
    out = Rollout([], [], [], [], [])
    was_training = model.training
    model.eval()
    # A model FSDP has gathered cannot be copied (and a copy would be one more whole model in memory): its fp32
    # weights are decoded under autocast instead.
    from torch.distributed.fsdp import FSDPModule

    gathered = any(isinstance(m, FSDPModule) for m in model.modules())
    decoder = _bf16_copy(model) if autocast and not gathered else model
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            n = len(encoded[i])
            ids[row, width - n :] = torch.tensor(encoded[i])
            mask[row, width - n :] = 1
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast and gathered, cache_enabled=False):
            generated = decode(decoder, ids.to(device), mask.to(device), max_new_tokens, temperature, top_p, eos,
                               pad, batch).cpu()
        for row, i in enumerate(batch):
            out.add(i, encoded[i], generated[row].tolist(), tokenizer)
    model.train(was_training)
    return out


def encode_prompts(tokenizer, prompts: list[PromptText], max_prompt_length: int | None) -> list[list[int]]:
    """Each prompt's token ids through the chat template, cut to its last `max_prompt_length` tokens."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    return [ids[-max_prompt_length:] for ids in encoded] if max_prompt_length else encoded


def _bf16_copy(model):
    """A bf16 copy to decode with (LoRA adapters merged into it); the trained model is left as it is."""
    copy_ = copy.deepcopy(model)
    if hasattr(copy_, "merge_and_unload"):
        copy_ = copy_.merge_and_unload()
    return copy_.to(torch.bfloat16).eval()


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next tokens (B,) from logits (B, V): greedy at temperature 0, else sampled with nucleus top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        return order.gather(-1, draw(sorted_probs)[:, None]).squeeze(-1)
    return draw(probs)


def next_tokens(logits: torch.Tensor, finished: torch.Tensor, temperature: float, top_p: float, pad: int
                ) -> torch.Tensor:
    """This step's tokens: picked from the logits for rows still going, padding for rows that ended."""
    picked = pick_tokens(logits, temperature, top_p)
    return torch.where(finished, torch.full_like(picked, pad), picked)


def draw(weights: torch.Tensor) -> torch.Tensor:
    """One index per row with P(i) = weights[i] / sum(weights): a uniform number looked up in the cumulative
    sum. (`torch.multinomial` draws an exponential number for every entry: on a CPU, 30 ms for 32 rows of a
    49k vocabulary, more than the model's own step.)"""
    cdf = weights.double().cumsum(-1)
    u = torch.rand((weights.shape[0], 1), dtype=torch.float64, device=weights.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=weights.shape[-1] - 1)


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
           eos: int, pad: int, prompt_of: list[int] | None = None) -> torch.Tensor:
    """Tokens (B, <= max_new_tokens) after left-padded prompts; rows that ended are padded after their EOS.
    `prompt_of[b]` says which prompt row b answers: rows of the same prompt share its prefill."""
    if StaticDecoder.supports(model):
        return StaticDecoder(model, ids.shape[0], ids.shape[1] + max_new_tokens).run(
            ids, mask, max_new_tokens, temperature, top_p, eos, pad, prompt_of)
    return decode_dynamic(model, ids, mask, max_new_tokens, temperature, top_p, eos, pad)


@torch.no_grad()
def decode_dynamic(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float,
                   top_p: float, eos: int, pad: int) -> torch.Tensor:
    """`decode` through the model's own forward and transformers' DynamicCache (any architecture)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        token = next_tokens(logits, finished, temperature, top_p, pad)
        tokens.append(token)
        real = ~finished  # this step's token counts for rows that had not ended (their EOS included)
        finished = finished | (token == eos)
        if finished.all() or len(tokens) == max_new_tokens:
            break
        mask = torch.cat([mask, real[:, None].to(mask.dtype)], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                       past_key_values=cache, use_cache=True).logits[:, -1]
        next_position = next_position + 1
    return torch.stack(tokens, dim=1)


class StaticDecoder:
    """Decoding for Llama-family models over a preallocated KV cache, one fixed-shape step per token.

    transformers' per-token forward rebuilds its attention mask and grows the cache by concatenation; for a
    135M-parameter model that bookkeeping, not the matrix products, sets the pace. Here every tensor of the step
    has a fixed shape and address, so on a GPU the whole step (every layer, a few hundred kernels) is captured
    once as a CUDA graph and replayed with one launch per token. The prompt is prefilled by the model's own
    forward; the step reuses the model's modules (norms, rotary embedding, projections, MLP), so the numbers are
    those of the model, only the cache and mask handling differ.
    """

    @staticmethod
    def supports(model) -> bool:
        cfg = getattr(model, "config", None)
        return (type(model).__name__ == "LlamaForCausalLM" and not getattr(cfg, "attention_bias", False)
                and getattr(cfg, "_attn_implementation", "sdpa") in ("sdpa", "eager"))

    def __init__(self, model, batch: int, max_len: int):
        self.model, self.inner = model, model.model
        cfg = model.config
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        weight = self.inner.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        shape = (len(self.inner.layers), batch, cfg.num_key_value_heads, max_len, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros_like(self.keys)
        # The step's inputs: fixed tensors the step (and a captured graph) reads; `run` writes them in place.
        self.token = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.position = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)  # cache index this step writes
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=self.device)  # not left padding
        self.slots = torch.arange(max_len, device=self.device)
        self.graph = None
        self.logits = None
        if self.device.type == "cuda":
            self._capture()

    def _step(self) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        b = self.token.shape[0]
        h = self.inner.embed_tokens(self.token[:, None])
        cos, sin = self.inner.rotary_emb(h, self.position[:, None])
        visible = self.valid & (self.slots <= self.slot)  # the prompt and every token sampled so far
        unseen = ~visible[:, None, None, :]
        kv_heads = self.keys.shape[2]
        for i, layer in enumerate(self.inner.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, 1, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, 1, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, 1, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            # (under autocast, which decodes a model FSDP has gathered, k and v come out in mixed precisions)
            self.keys[i].index_copy_(2, self.slot, k.to(self.dtype))
            self.values[i].index_copy_(2, self.slot, v.to(self.dtype))
            # One query per row: two batched products, the query heads of a KV head side by side (GQA)
            # instead of copying K and V per query head; softmax in fp32. (On CPUs this is several times
            # faster than scaled_dot_product_attention, whose flash kernel is built for long queries.)
            q = q.reshape(b, kv_heads, -1, self.head_dim)
            scores = ((q @ self.keys[i].transpose(-1, -2)).float() * attn.scaling).masked_fill(unseen, float("-inf"))
            out = scores.softmax(-1).to(h.dtype) @ self.values[i]  # (B, kv_heads, groups, head_dim)
            h = h + attn.o_proj(out.reshape(b, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.lm_head(self.inner.norm(h))[:, 0]

    def _capture(self) -> None:
        # Warm up on a side stream (cuBLAS picks its kernels), then record one step; `run` clears the cache.
        self.slot.fill_(self.keys.shape[3] - 1)
        self.valid.fill_(True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def forward(self) -> torch.Tensor:
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, prompt_of: list[int]) -> torch.Tensor:
        """Run the left-padded prompts through the model and fill the cache; the logits after each prompt.

        The prompts go in packed end to end (`data.pack_groups`: rows as long as the longest prompt, a
        block-diagonal causal mask), not padded: a batch with one long prompt would otherwise pay for its length
        in every row; rows answering the same prompt (`prompt_of`, several samples of it) take it once. Each
        prompt's keys and values are then copied to its rows of the cache, right-aligned at the prompt width,
        where the left-padded layout of the decoding steps expects them. Padding slots stay zero and masked."""
        from transformers import DynamicCache

        from rlhfkit.data import Group, pack_groups

        width = ids.shape[1]
        lengths = mask.sum(1).tolist()
        first: dict[int, int] = {}  # prompt -> the row whose copy of it is computed
        source = [first.setdefault(p, b) for b, p in enumerate(prompt_of)]
        group_of = {b: g for g, b in enumerate(first.values())}
        groups = [Group(ids[b, width - lengths[b] :].tolist(), []) for b in first.values()]
        packed = pack_groups(groups, int(ids[0, 0]), row_length=width, mask=True).to(ids.device)
        src_row, src_col, dst_row, dst_slot, last = [], [], [], [], []
        for b, n in enumerate(lengths):
            r, col = packed.prompt_starts[group_of[source[b]]].tolist()
            src_row += [r] * n
            src_col += range(col, col + n)
            dst_row += [b] * n
            dst_slot += range(width - n, width)
            last.append((r, col + n - 1))
        cache = DynamicCache(config=self.model.config)
        hidden = self.inner(input_ids=packed.input_ids, position_ids=packed.position_ids,
                            attention_mask=packed.attention_mask, past_key_values=cache, use_cache=True
                            ).last_hidden_state
        at = torch.tensor(last, device=ids.device)
        logits = self.model.lm_head(hidden[at[:, 0], at[:, 1]])
        src = (torch.tensor(src_row, device=ids.device), torch.tensor(src_col, device=ids.device))
        dst = (torch.tensor(dst_row, device=ids.device), torch.tensor(dst_slot, device=ids.device))
        self.keys.zero_()
        self.values.zero_()
        for i, layer in enumerate(cache.layers):  # (rows, kv heads, width, head dim) -> (batch, kv heads, slots, ...)
            self.keys[i][dst[0], :, dst[1]] = layer.keys[src[0], :, src[1]].to(self.dtype)
            self.values[i][dst[0], :, dst[1]] = layer.values[src[0], :, src[1]].to(self.dtype)
        return logits

    def run(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
            eos: int, pad: int, prompt_of: list[int] | None = None) -> torch.Tensor:
        width = ids.shape[1]
        logits = self._prefill(ids, mask, prompt_of if prompt_of is not None else list(range(ids.shape[0])))
        self.valid.fill_(True)
        self.valid[:, :width].copy_(mask.bool())
        first_position = mask.sum(1)
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        tokens = []
        for t in range(max_new_tokens):
            token = next_tokens(logits, finished, temperature, top_p, pad)
            tokens.append(token)
            finished = finished | (token == eos)
            # every 4th step: asking whether all rows ended waits for the device
            if t == max_new_tokens - 1 or (t % 4 == 3 and finished.all()):
                break
            self.token.copy_(token)
            torch.add(first_position, t, out=self.position)
            self.slot.fill_(width + t)
            logits = self.forward()
        return torch.stack(tokens, dim=1)


# ---- vLLM ----------------------------------------------------------------------------------------------

def require_vllm() -> None:
    """Stop with what is missing where `--rollout-engine vllm` cannot run."""
    if not torch.cuda.is_available():
        raise UsageError("--rollout-engine vllm needs a CUDA GPU; use --rollout-engine hf (the default) here")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise UsageError("--rollout-engine vllm needs vLLM: pip install 'rlhfkit[vllm]'") from e


class VLLMEngine:
    """vLLM as the rollout engine (`--rollout-engine vllm`; CUDA only; `pip install 'rlhfkit[vllm]'`).

    The engine runs inside this process on this process's GPU, beside the trainer (colocated: vLLM's
    "external_launcher" backend, one engine per training process, as TRL's colocate mode), holding its own bf16
    copy of the weights in `gpu_memory_utilization` of the GPU. `load_weights` copies the trainer's current
    weights in (PPO: every iteration, before sampling). Sampling matches `sample`: the same chat-template prompt
    ids, temperature, top_p, max_new_tokens, and only the end-of-turn token stops a response (the model folder's
    own generation defaults and other EOS ids are ignored). The engine's log-probs are never used: PPO
    recomputes them with the trainer's model."""

    def __init__(self, model_dir: str, tokenizer, seed: int = 0, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, rank: int = 0):
        """`rank`: this process's rank among the training processes (each holds an engine; its seed differs). The
        external launcher reads the process group from the environment the process was launched with (RANK,
        LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): `sampling.vllm_engine` fills in what a launch without
        a launcher lacks."""
        require_vllm()
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(model=str(model_dir), dtype="bfloat16", seed=seed + rank, tensor_parallel_size=1,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       distributed_executor_backend="external_launcher", generation_config="vllm")

    def load_weights(self, model: torch.nn.Module) -> None:
        """The weights of `model` (a HF causal LM; LoRA adapters merged for the copy, then unmerged) into the
        engine. Under FSDP call it where the model is gathered whole (`TrainLoop.gathered`)."""
        peft = hasattr(model, "merge_adapter")
        if peft:
            model.merge_adapter()
        try:
            weights = []
            for name, tensor in model.named_parameters():  # (not state_dict(): under FSDP it gives the shards)
                if peft:  # PEFT's names back to the base model's; the adapters themselves are merged in
                    if "lora_" in name or "modules_to_save" in name:
                        continue
                    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                weights.append((name, tensor.detach()))
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        finally:
            if peft:
                model.unmerge_adapter()
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights

    def sample(self, prompts: list[PromptText], n: int, params: SamplingParams) -> Rollout:
        """`sample`'s responses through vLLM. Seeded from torch's generator, so `torch.manual_seed` before a
        call makes it repeatable as it does for `sample`."""
        import vllm

        tokenizer = self.tokenizer
        encoded = encode_prompts(tokenizer, prompts, params.max_prompt_length)
        vllm_params = vllm.SamplingParams(
            n=n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            ignore_eos=True, stop_token_ids=[tokenizer.eos_token_id], seed=int(torch.randint(2**31 - 1, ())),
            detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], vllm_params, use_tqdm=False)
        out = Rollout([], [], [], [], [])
        for i, request in enumerate(outputs):
            for completion in request.outputs:
                tokens = list(completion.token_ids)
                if completion.finish_reason == "stop" and tokenizer.eos_token_id not in tokens:
                    tokens.append(tokenizer.eos_token_id)  # the stop token, where the engine leaves it out
                out.add(i, encoded[i], tokens, tokenizer)
        return out


def launcher_environment(rank: int, local_rank: int, world: int) -> dict[str, str]:
    """The variables vLLM's external launcher reads the process group from, for a launch that did not set them
    (one process, no `accelerate launch`)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"}

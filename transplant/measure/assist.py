"""A model as a draft for speculative decoding: transformers' assisted generation, measured.

Moving a small model onto a large model's tokenizer makes it a draft for the large one. This runs
the client users run, `target.generate(assistant_model=draft)` with greedy decoding, on prompts
cut from a text's documents, and counts what the draft proposed and what the target accepted.
When the two tokenizers differ it is transformers' universal assisted generation
(`generate(..., tokenizer=..., assistant_tokenizer=...)`), which re-tokenizes the draft's text
for the target: the baseline a transplanted draft has to beat.

Greedy assisted decoding is exact: the output must equal the target's own greedy output, and
`identical` counts the prompts where it does.

Example:
    >>> from pathlib import Path
    >>> text = Path(text_file).read_text(encoding="utf-8")
    >>> r = measure_assist(model_dir, model_dir, [text], prompts=2, prompt_tokens=8, new_tokens=8)
    >>> r.mode, r.prompts, r.identical == r.prompts, 0.0 <= r.acceptance_rate <= 1.0
    ('same tokenizer', 2, True, True)
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.progress import bar
from transplant.common.texts import split_documents

SCHEDULES = ("constant", "heuristic", "heuristic_transient")


@dataclass(frozen=True)
class DraftSettings:
    """How transformers drafts with an assistant: the three `generation_config` fields it reads from
    the draft model. None keeps what the draft's own generation config (or transformers' default:
    20 tokens, constant, confidence 0.4) says.

    tokens: draft tokens proposed per target pass (`num_assistant_tokens`); schedule: whether that
    number adapts as the target accepts or rejects (`num_assistant_tokens_schedule`); confidence:
    the draft stops proposing when its top token's probability falls below this
    (`assistant_confidence_threshold`; 0 turns it off; transformers moves it as it goes on a
    same-tokenizer draft when scikit-learn is installed).

    Comparing drafts at the same fixed `tokens` with `confidence=0` compares what they know:
    with `tokens=1` the acceptance rate is the draft's greedy agreement with the target.

    Example:
        >>> DraftSettings(tokens=1, schedule="constant", confidence=0).generation_fields()
        {'num_assistant_tokens': 1, 'num_assistant_tokens_schedule': 'constant', 'assistant_confidence_threshold': 0}
    """

    tokens: int | None = None
    schedule: str | None = None
    confidence: float | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and self.tokens < 1:
            raise TransplantError(f"draft tokens per pass must be at least 1, not {self.tokens} (--draft-tokens N)")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise TransplantError(f"unknown draft schedule {self.schedule!r} (--draft-schedule: one of "
                                  f"{', '.join(SCHEDULES)})")
        if self.confidence is not None and not 0 <= self.confidence < 1:
            raise TransplantError(f"draft confidence must lie in [0, 1), not {self.confidence} (--draft-confidence P; "
                                  "0 turns it off)")

    def generation_fields(self) -> dict:
        """The draft's generation-config fields these settings set (the ones given)."""
        fields = {"num_assistant_tokens": self.tokens, "num_assistant_tokens_schedule": self.schedule,
                  "assistant_confidence_threshold": self.confidence}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass
class AssistResult:
    """Counts and times of assisted generation over `prompts` prompts (`as_dict()` for JSON).

    proposed / accepted: draft tokens proposed to the target and accepted by it, counted in the
    target's tokens; steps: target forward passes of the assisted runs; new_tokens: tokens the
    assisted runs generated; seconds_*: wall time of the target alone and assisted, same prompts.
    """

    mode: str
    prompts: int
    prompt_tokens: int
    new_tokens: int
    proposed: int
    accepted: int
    steps: int
    identical: int
    seconds_target: float
    seconds_assisted: float
    assistant_config: dict = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def accepted_per_step(self) -> float:
        """Mean draft tokens accepted per target forward pass."""
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens generated per target forward pass (1.0 = no gain from the draft)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def speedup(self) -> float:
        """Target-alone wall time over assisted wall time."""
        return self.seconds_target / self.seconds_assisted if self.seconds_assisted else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate, "accepted_per_step": self.accepted_per_step,
                "tokens_per_step": self.tokens_per_step, "speedup": self.speedup}


class _Counter:
    """Wraps the candidate generator transformers builds for one `generate` call, counting what it
    proposes (`get_candidates`) and what the target accepted (`update_candidate_strategy`)."""

    def __init__(self) -> None:
        self.proposed = self.accepted = self.steps = 0

    def hook(self, model) -> None:
        make = model._get_candidate_generator

        def counted(*args, **kwargs):
            gen = make(*args, **kwargs)
            get, update = gen.get_candidates, gen.update_candidate_strategy

            def get_candidates(input_ids, *a, **kw):
                out = get(input_ids, *a, **kw)
                self.proposed += int(out[0].shape[1] - input_ids.shape[1])
                return out

            if hasattr(gen, "_prepare_assistant_input_ids"):  # universal: the draft re-tokenizes the target's text
                get_candidates = roll_back_draft_cache_by_content(gen, get_candidates)

            def update_candidate_strategy(input_ids, scores, num_matches):
                self.accepted += int(num_matches)
                self.steps += 1
                return update(input_ids, scores, num_matches)

            gen.get_candidates, gen.update_candidate_strategy = get_candidates, update_candidate_strategy
            return gen

        model._get_candidate_generator = counted


def common_prefix_length(a, b) -> int:
    """How many leading ids two 1-D id tensors share.

    Example:
        >>> import torch
        >>> common_prefix_length(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 9, 4, 5]))
        2
    """
    n = min(len(a), len(b))
    differs = (a[:n] != b[:n]).nonzero()
    return int(differs[0, 0]) if len(differs) else n


def roll_back_draft_cache_by_content(gen, get_candidates):
    """Make a universal-assisted-generation candidate generator keep exactly the draft's cached
    positions whose ids its next input still holds (the longest common prefix, less one so the
    draft has a token to read), whatever transformers' own rollback arithmetic says.

    Why: transformers 5.25 rolls the draft's cache back by `_last_ids_length`, which this generator
    sets in the *target's* tokens but compares with the *draft's* input length; when the two
    tokenizations differ in length the cache is left as long as (or longer than) the next input and
    the draft's forward gets an empty tensor (`cannot reshape tensor of 0 elements`). 5.24 computed
    it differently and could keep positions whose ids had changed. Cropping by content is right for
    every version: the cache only ever holds positions that match the draft's input.

    Returns the wrapped `get_candidates`; the generator's `_update_past_and_masks` is replaced on
    the instance (its attention mask and positions are dropped by `get_candidates` right after it).
    """
    seen = {"ids": None}  # the draft ids the cache was built from (transformers edits its copy in place)

    def update_past(assistant_input_ids, *args, **kwargs) -> bool:
        cache = gen.assistant_kwargs.get("cache")
        if cache is None:
            return False
        cached = cache.get_seq_length()
        keep = cached
        if seen["ids"] is not None:
            keep = min(keep, common_prefix_length(seen["ids"][0, :cached], assistant_input_ids[0]))
        keep = min(keep, assistant_input_ids.shape[-1] - 1)
        if keep < cached:
            cache.crop(keep - cached)  # a negative count: the form every 5.x accepts
        return True

    def get(input_ids, *a, **kw):
        out = get_candidates(input_ids, *a, **kw)
        seen["ids"] = gen.prev_assistant_ids.clone() if gen.prev_assistant_ids is not None else None
        return out

    gen._update_past_and_masks = update_past
    return get


def _open(spec: str | Path, trust_remote_code: bool):
    """(folder, tokenizer, the config's vocab_size) of a model, its weights not read yet."""
    from transformers import AutoConfig, AutoTokenizer

    from transplant.io.sources import check_model_config, resolve_model

    folder = resolve_model(spec)
    check_model_config(folder, trust_remote_code)
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return folder, tok, int(getattr(text, "vocab_size", 0) or 0)


def _load_weights(folder: Path, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                trust_remote_code=trust_remote_code).eval()


def assist_mode(draft_vocab: dict, target_vocab: dict, draft_size: int, target_size: int) -> bool:
    """True: the same-tokenizer path; False: universal assisted generation (the tokenizers passed).

    transformers tells the two apart by the configs' `vocab_size` alone, so a draft whose matrix is
    padded (`--pad-to-multiple-of`) goes the universal way although its vocabulary is the
    target's, and two different vocabularies of one size cannot be told apart (refused).

    Example:
        >>> assist_mode({"a": 0}, {"a": 0}, 64, 1)
        False
        >>> assist_mode({"a": 0}, {"a": 0}, 1, 1)
        True
    """
    same_vocab = draft_vocab == target_vocab
    if draft_size == target_size and not same_vocab:
        raise TransplantError(
            f"the draft and the target have different vocabularies of one size ({draft_size}), which transformers "
            "takes for the same tokenizer: pad one of them to another size (transplant run --pad-to-multiple-of)")
    return same_vocab and draft_size == target_size


def cut_prompts(texts: list[str], tokenizer, prompts: int, prompt_tokens: int) -> list[list[int]]:
    """The first `prompt_tokens` tokens (as a plain `tokenizer(text)` encodes) of the first
    `prompts` documents that have at least that many tokens."""
    found: list[list[int]] = []
    for text in texts:
        for doc in split_documents(text):
            ids = tokenizer(doc)["input_ids"]
            if len(ids) >= prompt_tokens:
                found.append(ids[:prompt_tokens])
                if len(found) == prompts:
                    return found
    if not found:
        raise TransplantError(f"no document of the text has {prompt_tokens} tokens to cut a prompt from "
                              "(give a longer text or a smaller --prompt-tokens)")
    return found


def measure_assist(draft: str | Path, target: str | Path, texts: list[str], *, prompts: int = 8,
                   prompt_tokens: int = 64, new_tokens: int = 64, settings: DraftSettings | None = None,
                   trust_remote_code: bool = False) -> AssistResult:
    """Greedy assisted generation of `target` with `draft` as its assistant, against `target` alone.

    Args:
        draft: the assistant model (folder, packaged name, any model argument `run` accepts).
        target: the model whose output is generated.
        texts: prompts are the first `prompt_tokens` target tokens of their documents.
        prompts: how many prompts (fewer when the text has fewer documents long enough).
        new_tokens: tokens generated per prompt (fewer when the target ends the text).
        settings: how the draft proposes (`DraftSettings`); default: the draft's generation config.

    Returns:
        An `AssistResult`; `mode` is "same tokenizer" when both vocabularies are equal, else
        "universal (different tokenizers)".
    """
    import torch

    target_folder, target_tok, target_size = _open(target, trust_remote_code)
    draft_folder, draft_tok, draft_size = _open(draft, trust_remote_code)
    same = assist_mode(draft_tok.get_vocab(), target_tok.get_vocab(), draft_size, target_size)
    mode = "same tokenizer" if same else "universal (different tokenizers)"
    if not same and draft_tok.get_vocab() == target_tok.get_vocab():
        mode = f"universal (the same tokenizer, vocab_size {draft_size} against {target_size})"
    cut = cut_prompts(texts, target_tok, prompts, prompt_tokens)  # before the weights: no prompt, no load
    target_model = _load_weights(target_folder, trust_remote_code)
    draft_model = _load_weights(draft_folder, trust_remote_code)
    pad = target_model.generation_config.pad_token_id
    if pad is None:
        eos = target_model.generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, list) else eos
    common = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": 0, "pad_token_id": pad}
    extra = {} if same else {"tokenizer": target_tok, "assistant_tokenizer": draft_tok}
    # transformers adapts the draft length across calls (the "heuristic" schedule keeps its state
    # in the draft's generation config): start every prompt from the same state.
    start_config = copy.deepcopy(draft_model.generation_config)
    for name, value in (settings or DraftSettings()).generation_fields().items():
        setattr(start_config, name, value)
    counter = _Counter()
    counter.hook(target_model)
    seconds_target = seconds_assisted = 0.0
    generated = identical = 0
    with torch.no_grad():
        # one short assisted call first: lazy initialisation is not charged to the first prompt
        warm = torch.tensor([cut[0]])
        draft_model.generation_config = copy.deepcopy(start_config)
        target_model.generate(warm, attention_mask=torch.ones_like(warm), assistant_model=draft_model,
                              **{**common, "max_new_tokens": 2}, **extra)
        counter.proposed = counter.accepted = counter.steps = 0
        for ids in bar(cut, desc="assisted generation", unit="prompt"):
            inputs = torch.tensor([ids])
            t0 = time.perf_counter()
            alone = target_model.generate(inputs, attention_mask=torch.ones_like(inputs), **common)
            t1 = time.perf_counter()
            draft_model.generation_config = copy.deepcopy(start_config)
            assisted = target_model.generate(inputs, attention_mask=torch.ones_like(inputs),
                                             assistant_model=draft_model, **common, **extra)
            t2 = time.perf_counter()
            seconds_target += t1 - t0
            seconds_assisted += t2 - t1
            generated += assisted.shape[1] - len(ids)
            identical += int(torch.equal(alone, assisted))
    cfg = start_config
    return AssistResult(mode=mode, prompts=len(cut), prompt_tokens=prompt_tokens, new_tokens=generated,
                        proposed=counter.proposed, accepted=counter.accepted, steps=counter.steps,
                        identical=identical, seconds_target=seconds_target, seconds_assisted=seconds_assisted,
                        assistant_config={"num_assistant_tokens": cfg.num_assistant_tokens,
                                          "num_assistant_tokens_schedule": cfg.num_assistant_tokens_schedule,
                                          "assistant_confidence_threshold":
                                              getattr(cfg, "assistant_confidence_threshold", None)})

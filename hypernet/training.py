"""Training the hypernetwork, under `accelerate` (one CPU process to many GPUs, unchanged).

Stage 1 (no LM forward): predict each old token's own input and LM-head rows from a
decomposition into *other* old tokens (`hypernet.data.withheld_decompositions`); loss: squared
error in the source matrix's standardized coordinates.

Stage 2 (ZeTT's objective): each step draws a tokenizer (`hypernet.data.TokenizerSampler`),
tokenizes a batch of one training source with it, builds the batch's embedding and LM-head
rows (pieces equal to an old token are copied, as `transplant` copies them; the others are
predicted), runs the frozen LM and minimizes next-token loss, plus `aux_weight` x the stage-1
loss on a batch of old tokens (ZeTT's auxiliary loss, which keeps predictions anchored to the
source space; ZeTT weights it 0.5). The softmax runs over every copied piece of the drawn
vocabulary, every predicted piece the batch uses and a uniform sample of the other predicted
pieces whose logits get log(unused / sampled) added, so the predicted pieces' share of the
probability mass is estimated without predicting the whole vocabulary each step.

Every batch is drawn from generators seeded by (seed, step, process), the optimizer and RNG
states are checkpointed (`accelerator.save_state`) into a folder written beside its final name
and renamed into place, so a run killed at any point and resumed with `resume=True` continues to
the same weights an uninterrupted run reaches (tested).

The output folder is the run's folder. Every input and the output path are checked before any
work; the folder is published like every output (`transplant.io.outdir`: staged, one rename, its
settings inside from the first instant) and never replaces what is not a hypernetwork output. A
resume must find the same run (settings, texts and tokenizer by content, a checkpoint of this
network's shapes for this model's embeddings), else one line and the run folder is untouched.

Example:
    >>> cfg = TrainConfig(model="smollm2-135m-instruct", texts=["de/train.txt"], out="hn",
    ...                   stage1_steps=300, steps=200)  # doctest: +SKIP
    >>> train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hypernet.data import TextPool, TokenizerSampler, withheld_decompositions
from hypernet.export import export_checkpoint
from hypernet.folders import HYPERNET_OUTPUT, RUN_CONFIG, RUN_FORMAT, is_training_run
from hypernet.loop import Examples, HyperNetLoop, Stage2
from hypernet.model import HyperNet, parameter_count
from hypernet.settings import TrainConfig, check_settings  # noqa: F401  (re-exported)
from hypernet.source import expected_peak, load_source
from transplant.common.errors import TransplantError
from transplant.common.memory import check_fits
from transplant.common.progress import stage
from transplant.core.vocab import Vocabulary
from transplant.io.frozen_load import checkpoint_layers
from transplant.measure.lm import start_token
from transplant.train.heal_config import RunFolder
from transplant.train.heal_model import FrozenLM
from transplant.train.resume import (
    check_run_output,
    check_same_inputs,
    check_same_settings,
    checkpoint_tensors,
    input_fingerprints,
    open_run_output,
)
from transplant.train.trainloop import Checkpoints, body_mesh, training_accelerator

# What a resumed run may change (the budget, where it checkpoints); `model` and `texts` are
# compared by content instead of by path (see `check_resumable`).
_MAY_CHANGE = {"stage1_steps", "stage1_minutes", "steps", "minutes", "out", "resume", "overwrite",
               "checkpoint_every", "keep_checkpoints", "log_every", "model", "texts", "format", "inputs", "shard_body",
               "checkpoint_layers"}


@dataclass
class Inputs:
    """What a run reads, checked before any work: the model folder, its tokenizer, the texts."""

    folder: Path
    tokenizer: object  # tokenizers.Tokenizer
    vocab: Vocabulary
    pool: TextPool
    fingerprints: dict  # content fingerprints of the texts and the tokenizer (a resume must match them)

    @property
    def paths(self) -> list[Path]:
        return [self.folder, *map(Path, self.pool.names)]


def check_inputs(cfg: TrainConfig) -> Inputs:
    """Every input, whichever stage reads it: the model folder (weights' headers, no custom code),
    its tokenizer (one token per id) and every training text (found, not empty)."""
    from transplant.core.vocab import load_tokenizer
    from transplant.io.sources import refuse_custom_code, resolve_model

    folder = resolve_model(cfg.model)
    refuse_custom_code(folder)
    if cfg.init and not (Path(cfg.init) / "config.json").is_file():
        raise TransplantError(f"--init {cfg.init}: not a hypernetwork folder (no config.json); pass a folder "
                              "`hypernet train` or `hypernet export` wrote")
    source = load_tokenizer(folder)
    vocab = source.vocabulary()
    pool = TextPool.from_files(cfg.texts)
    prints = input_fingerprints({"texts": pool.names, "tokenizer": [source.path]})
    return Inputs(folder, source.tokenizer, vocab, pool, prints)


def check_resumable(cfg: TrainConfig, out: Path, latest: Path, net: HyperNet, prints: dict) -> None:
    """A resume continues the same run: its settings, its texts and tokenizer (by content), and a
    checkpoint of this network's shapes trained for this model's embeddings."""
    saved = json.loads((out / RUN_CONFIG).read_text(encoding="utf-8"))
    check_same_settings(saved, asdict(cfg), _MAY_CHANGE, out, "another --out")
    check_same_inputs(saved.get("inputs"), prints, out)
    checkpoint_tensors(latest, net, "--model, --width or --layers")
    from safetensors import safe_open

    with safe_open(str(latest / "model.safetensors"), "pt") as fh:
        rows = fh.get_tensor("fingerprint_rows")
    if not torch.equal(rows.float(), net.fingerprint_rows):
        raise TransplantError(f"checkpoint {latest} was trained for another model: {cfg.model}'s embeddings are "
                              "not the ones it started from; resume with that model, or start a new run with "
                              "another --out")


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a hypernetwork; returns the output folder holding the trained network.

    Example:
        >>> out = train(TrainConfig(model=model_dir, texts=[text_file], out="hn", stage1_steps=2,
        ...                         stage1_batch=32, width=16, layers=1))
        >>> HyperNet.load(out).config.layers
        1
    """
    out = Path(cfg.out)
    accelerator = training_accelerator()
    mesh = body_mesh(accelerator, cfg.shard_body, "hypernet train")
    inputs = check_inputs(cfg)
    latest = check_run_output(out, inputs.paths, cfg.resume, cfg.overwrite, HYPERNET_OUTPUT, is_training_run,
                              RUN_CONFIG)
    # One run per run folder: an existing one is locked now (before the model loads), a new one once published.
    with RunFolder.owned(out, accelerator, command="hypernet train", create=False) as owner:
        return _train(cfg, accelerator, mesh, inputs, latest, owner)


def _train(cfg: TrainConfig, accelerator, mesh, inputs: Inputs, latest: Path | None, owner: RunFolder) -> Path:
    """`train` once its inputs are checked and its run folder owned: load, build, publish, train."""
    out = Path(cfg.out)
    check_fits(expected_peak(cfg, inputs.folder, accelerator.num_processes if mesh is not None else 1),
               "hypernet train",
               "pass a narrower or shallower network (--width/--layers) or smaller batches (--batch-size/--seq-len), "
               "shard the body over several processes with --shard-body (README: Big models), or use a machine "
               "with more memory")
    stage(f"hypernet: loading {cfg.model}")
    # Sharded, every stage-2 step runs the body once on every process (its forward is a collective).
    lm, E_in, E_out, _ = load_source(str(inputs.folder), accelerator.device, mesh)
    if cfg.checkpoint_layers:
        checkpoint_layers(lm)
    targets, decomps = withheld_decompositions(inputs.vocab)
    if not targets:
        raise TransplantError(f"{cfg.model}'s vocabulary has no token made of smaller tokens to learn from")
    if cfg.init:  # fine-tune a network: its own shape, and it must be this model's
        net = HyperNet.load(cfg.init)
        net.check_source(E_in, E_out)
    else:
        net = HyperNet.create(E_in.cpu(), None if E_out is None else E_out.cpu(), base_model=cfg.model,
                              seed=cfg.seed, **({"width": cfg.width} if cfg.width else {}), layers=cfg.layers,
                              max_pieces=cfg.max_pieces)
    if latest is not None:
        check_resumable(cfg, out, latest, net, inputs.fingerprints)
    stage(f"hypernet: {parameter_count(net) / 1e6:.1f}M parameters, {len(targets)} stage-1 examples")
    net.to(accelerator.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    prepared, opt = accelerator.prepare(net, opt)
    loop = HyperNetLoop(cfg, accelerator, prepared, accelerator.unwrap_model(prepared), opt,
                        Checkpoints(out, cfg.keep_checkpoints), E_in, E_out, Examples.split(targets, decomps))
    loop.resume_from(latest)
    _publish(cfg, accelerator, inputs, owner)

    loop.run_stage1()
    if cfg.steps > 0 or cfg.minutes is not None:
        sampler = None  # every step dynamically merged: no tokenizer is ever sampled
        if cfg.dynamic_share < 1:
            stage("hypernet: seed vocabularies for sampled tokenizers")
            sampler = TokenizerSampler(inputs.tokenizer, inputs.pool, min_share=cfg.min_vocab_share,
                                       train_chars=cfg.train_chars)
        # FrozenLM: the body's forward and the logit rule, as heal reads them.
        loop.run_stage2(Stage2(loop, inputs.pool, sampler, FrozenLM(lm), start_token(inputs.vocab.roles),
                               inputs.tokenizer))
    loop.finish({"base_model": cfg.model, "texts": cfg.texts, "parameters": parameter_count(loop.core),
                 "dynamic_share": cfg.dynamic_share, "init": cfg.init,
                 "processes": accelerator.num_processes,
                 "body_shards": accelerator.num_processes if mesh is not None else 1})
    return out


def _publish(cfg: TrainConfig, accelerator, inputs: Inputs, owner: RunFolder) -> None:
    """Every check passed: the main process writes the run folder (its settings inside) and, when
    it was published just now (a new folder, or swapped in by --overwrite), locks it."""
    if accelerator.is_main_process:
        out = Path(cfg.out)
        settings = {"format": RUN_FORMAT, **asdict(cfg), "inputs": inputs.fingerprints}
        open_run_output(out, RUN_CONFIG, settings, cfg.resume, cfg.overwrite, HYPERNET_OUTPUT)
        if not (cfg.resume and owner.locked):
            owner.release(failed=False)
            refusal = owner.acquire()
            if refusal is not None:
                raise TransplantError(refusal)
    accelerator.wait_for_everyone()


__all__ = ["TrainConfig", "export_checkpoint", "load_source", "train"]  # export_checkpoint: from .export

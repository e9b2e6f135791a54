"""A usable network folder from a training checkpoint (`hypernet export`; the example runs in
`export_checkpoint`'s docstring).

Example:
    >>> export_checkpoint("hn/checkpoints/step-000100", "hn-step100")  # doctest: +SKIP
    PosixPath('hn-step100')
"""

from __future__ import annotations

from pathlib import Path

from hypernet.folders import HYPERNET_OUTPUT, _check_weights, check_network_folder, open_network
from hypernet.registry import registry_dir
from transplant.common.errors import TransplantError


def export_checkpoint(checkpoint: str | Path, out: str | Path, run: str | Path | None = None, *,
                      overwrite: bool = False) -> Path:
    """A network folder from a training checkpoint (`<run>/checkpoints/step-N`), to use or score
    the network as it was at that step. The run folder's `config.json` gives the shape (it is
    written when training ends; pass `run` for a checkpoint copied elsewhere); the weights are
    the checkpoint's safetensors, checked against that shape. `out` is written like every output
    (staged, one rename); `overwrite` may replace an earlier hypernetwork folder, nothing else.

    Example:
        >>> from hypernet.training import TrainConfig, train
        >>> run = train(TrainConfig(model=model_dir, texts=[text_file], out="hn", stage1_steps=2,
        ...                         stage1_batch=32, width=16, layers=1, checkpoint_every=1))
        >>> export_checkpoint(run / "checkpoints" / "step-000001", "hn-step1").name
        'hn-step1'
    """
    from safetensors.torch import load_file

    from transplant.io.outdir import check_output_path, staged_output

    checkpoint = Path(checkpoint)
    weights = checkpoint / "model.safetensors"
    run = Path(run) if run is not None else checkpoint.parent.parent
    if not weights.is_file():
        raise TransplantError(f"{checkpoint} is not a training checkpoint (no model.safetensors)")
    if not (run / "config.json").is_file():
        raise TransplantError(f"{run} has no config.json yet (it is written when training ends; export after that)")
    net = open_network(run)
    registry = registry_dir().resolve()
    if registry == Path(out).resolve() or registry in Path(out).resolve().parents:
        raise TransplantError(f"--out {out} is inside the hypernetwork registry {registry}, which only `hypernet "
                              "train` and `export` fill, each by registering its own output: pass --out elsewhere")
    target = check_output_path(Path(out), [checkpoint, run], overwrite, HYPERNET_OUTPUT)
    _check_weights(weights, check_network_folder(run), f"pass --run: the folder of the run {checkpoint} belongs to",
                   f"the run's {run / 'config.json'}")
    net.load_state_dict(load_file(str(weights)))
    with staged_output(target, overwrite, HYPERNET_OUTPUT) as staged:
        net.save(staged.path)
    return Path(out)


__all__ = ["export_checkpoint"]

"""`hypernet train`: train a hypernetwork for a base model (under `accelerate`: run it as
`accelerate launch --num_processes 2 -m hypernet.cli train ...` for two processes, on CPUs or GPUs).

Example:
    $ hypernet train --model smollm2-135m-instruct --text de/train.txt --text fr/train.txt \\
          --out hn-smollm2 --stage1-minutes 10 --minutes 45
    $ transplant run --model smollm2-135m-instruct --new-tok de-tok/ --out smollm2-de \\
          --method hypernet --set hypernet.path=hn-smollm2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from hypernet.settings import TrainConfig
from transplant.cli.spec_options import dataclass_options, frozen_body_options
from transplant.common.errors import TransplantError, disk_full_hint


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", is_flag=True, help="No progress bars or stage messages.")
def cli(quiet: bool) -> None:
    """Train and inspect ZeTT-style hypernetworks (one per base model)."""
    if quiet:
        from transplant.common.progress import set_quiet

        set_quiet(True)


@cli.command("train")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML file of training settings (the option names below, with _ for -); flags given here win.")
@dataclass_options(TrainConfig)
@frozen_body_options("chunks")
def train_cmd(recipe, **flags) -> None:
    """Train a hypernetwork for MODEL on TEXT; the trained network lands in OUT."""
    from transplant.train.trainloop import disk_full_is_one_line

    from .training import train

    started = time.perf_counter()
    ctx = click.get_current_context()
    given = {k for k in flags if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    cfg = config_from(recipe, flags, given)
    with disk_full_is_one_line(Path(cfg.out), lambda: _resume_fix(Path(cfg.out))):
        path = train(cfg)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one process registers and speaks
        return
    known = _register(path)
    click.echo(f"hypernet: {path} ({time.perf_counter() - started:.0f}s), registered as {known.name!r}: "
               f"`transplant run --model {cfg.model} ...` now uses it by default (`hypernet list` shows it)")


def _resume_fix(out: Path) -> str:
    """What to do after a full disk stopped a run: its checkpoints are complete (a failed save
    deletes its own), so a resume continues from the last one."""
    from transplant.train.trainloop import Checkpoints

    latest = Checkpoints(out, 1).latest()
    since = f"its last checkpoint, {latest.name}" if latest is not None else "the start"
    return f"free space there, then rerun with --resume to continue from {since}"


def _register(path):
    from .registry import register

    return register(path)


def config_from(recipe: str | None, flags: dict, given: set[str]):
    """A TrainConfig from a recipe's fields overridden by the flags given on the command line.

    The recipe is read by the loader every spec file uses (`transplant.common.specfile.config_values`):
    safe YAML, unknown keys and values of the wrong type refused in one line (as `transplant run
    --recipe` does), `${VAR}` / `${VAR:-default}` expanded; values out of range are refused by
    `TrainConfig` itself; a relative text path is read from the recipe's folder when it is there,
    else from the current directory (the shipped recipes name files of the checkout).
    """
    from transplant.common.specfile import config_values

    values = config_values(recipe, TrainConfig, flags, given, lists=("texts",), flag_of={"texts": "--text"})
    for need, flag in (("model", "--model"), ("out", "--out")):
        if not values.get(need):
            raise TransplantError(f"no {need}: pass {flag} (or set {need} in the recipe)")
    if not values.get("texts"):
        raise TransplantError("no training text: pass --text FILE (repeatable) or set texts in the recipe")
    return TrainConfig(**values)  # checks the ranges: one line naming the setting and its flag


@cli.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the network.")
@click.option("--run", default=None, type=click.Path(exists=True, file_okay=False),
              help="The training run's folder (default: two levels above CHECKPOINT).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier hypernetwork folder at --out (nothing else).")
def export_cmd(checkpoint, out, run, overwrite) -> None:
    """Write the network of a training CHECKPOINT (<run>/checkpoints/step-N) as a usable folder."""
    from .export import export_checkpoint

    path = export_checkpoint(checkpoint, out, run, overwrite=overwrite)
    click.echo(f"hypernet: {path}, registered as {_register(path).name!r} (`hypernet list`)")


@cli.command("list")
def list_cmd() -> None:
    """The networks `transplant run --method auto` can pick: registered by you, then shipped."""
    from .registry import known_networks, registry_dir

    nets = known_networks()
    if not nets:
        click.echo(f"no networks (train one with `hypernet train`; registry: {registry_dir()})")
        return
    width = max(len(n.name) for n in nets) + 2
    for n in nets:
        click.echo(f"{n.name:<{width}}{n.origin:<12}base {n.base_model or '?'} ({n.vocab_size}x{n.hidden_size}, "
                   f"{'untied' if n.untied else 'tied'}); {n.summary}")
        click.echo(f"{'':<{width}}{n.path}")
    click.echo(f"\nA model uses the first network trained for it (matched by its embeddings); registry: "
               f"{registry_dir()}")


@cli.command("unregister")
@click.argument("name")
def unregister_cmd(name) -> None:
    """Remove network NAME from your registry (the folder it was trained in is kept)."""
    from .registry import unregister

    click.echo(f"hypernet: removed {unregister(name)}")


@cli.command("info")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def info_cmd(folder) -> None:
    """What a trained network is: its base model, shape and training summary."""
    import json
    from dataclasses import asdict

    from .folders import open_network
    from .model import parameter_count

    net = open_network(folder)
    click.echo(json.dumps({**asdict(net.config), "parameters": parameter_count(net)}, indent=2))
    summary = Path(folder) / "training.json"
    if summary.is_file():
        click.echo(summary.read_text(encoding="utf-8", errors="replace").rstrip())


def main() -> None:
    """Entry point: failures are one `error: ...` line and a non-zero exit."""
    try:
        cli.main(prog_name="hypernet", standalone_mode=False)
    except TransplantError as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("\nerror: interrupted (resume with --resume; checkpoints are kept)", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())} (see `hypernet --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except (OSError, MemoryError) as exc:  # a full disk, a permission: the system's own words, one line
        hint = disk_full_hint(exc, "run it again (`hypernet train --resume` continues from the last checkpoint)")
        click.echo(f"error: {' '.join(str(exc).split())}{hint}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

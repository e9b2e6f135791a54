"""A picture of where the loss is: per kind of token, its share of the text, of the loss and of
the probability mass (`transplant.measure.breakdown`), and the loss per token.

matplotlib is optional (`pip install 'tokentransplant[plot]'`); it is imported only here, only
when a plot is asked for, and drawn without pyplot (no display, no global state).

Example:
    >>> from types import SimpleNamespace as R
    >>> rows = [R(kind="exact", token_share=0.6, loss_share=0.4, mass=0.45, nats_per_token=2.0),
    ...         R(kind="fvt", token_share=0.4, loss_share=0.6, mass=0.55, nats_per_token=4.5)]
    >>> plot_breakdown(rows, "where.png", title="new on dev.txt").read_bytes()[:4]  # doctest: +SKIP
    b'\\x89PNG'
"""

from __future__ import annotations

from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.permissions import follow_umask

EXTRA = "pip install 'tokentransplant[plot]'"


def require_matplotlib() -> None:
    """Fail at once, in one line naming the extra, when matplotlib is missing (before minutes of scoring).

    Example:
        >>> require_matplotlib()  # doctest: +SKIP
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TransplantError("--plot needs the Python package 'matplotlib', which is not installed "
                              f"({EXTRA})") from None


_PNG = b"\x89PNG\r\n\x1a\n"


def check_plot_path(path: str | Path, inputs: list[str | Path]) -> Path:
    """Refuse, before any scoring, a `--plot` path that is not a PNG of its own to write: a name
    without `.png`, one of the command's inputs (a text, a model file), an existing file that is
    not a PNG, or a folder where no file can be made (read-only, missing, /proc). The plot replaces
    only an earlier PNG.

    Example:
        >>> check_plot_path("dev.txt", ["dev.txt"])
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: --plot dev.txt: the plot is a PNG file, name it FILE.png (nothing is written over a file of another kind)
    """
    from transplant.io.outdir import cannot_create_in

    path = Path(path)
    fix = "(nothing is written over a file of another kind)"
    if path.suffix.lower() != ".png":
        raise TransplantError(f"--plot {path}: the plot is a PNG file, name it FILE.png {fix}")
    target = path.resolve()
    for item in inputs:
        item = Path(item).resolve()
        if target == item or item in target.parents:
            raise TransplantError(f"--plot {path} is inside the command's input {item}: pass a path of its own")
    if target.exists():
        if not target.is_file():
            raise TransplantError(f"--plot {path} exists and is not a file: pass a new FILE.png")
        with open(target, "rb") as fh:
            if fh.read(len(_PNG)) != _PNG:
                raise TransplantError(f"--plot {path} exists and is not a PNG: pass a new FILE.png {fix}")
    folder = target.parent
    if not folder.is_dir():
        raise TransplantError(f"no folder {path.parent} for --plot {path} (create it first)")
    why = cannot_create_in(folder, target.name)  # a read-only folder, /proc: said now, not after the scoring
    if why is not None:
        raise TransplantError(f"cannot write the plot into {folder}: {why} (pass a writable --plot path)")
    return path


def plot_breakdown(kinds: list, path: str | Path, title: str = "") -> Path:
    """Draw `kinds` (`KindRow`s) as grouped bars into the PNG `path`; returns the path.

    Left: share of tokens, share of loss and mean probability mass per kind (a mass above the
    share of tokens is over-prediction). Right: nats per token of each kind. Kinds absent from
    the text and given under 0.5% of the mass (special tokens, padding) are left out.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    kinds = [r for r in kinds if r.token_share > 0 or r.mass >= 0.005] or list(kinds)
    names = [r.kind for r in kinds]
    x = list(range(len(names)))
    fig = Figure(figsize=(4 + 1.6 * len(names), 4), layout="constrained")
    FigureCanvasAgg(fig)
    shares, losses = fig.subplots(1, 2, width_ratios=[2, 1])
    width = 0.27
    for k, (label, values) in enumerate((("tokens", [r.token_share for r in kinds]),
                                         ("loss", [r.loss_share for r in kinds]),
                                         ("probability mass", [r.mass for r in kinds]))):
        shares.bar([i + (k - 1) * width for i in x], values, width, label=label)
    shares.set_xticks(x, names)
    shares.set_ylabel("share")
    shares.set_ylim(0, 1)
    shares.legend()
    shares.set_title("share of the text, the loss and the mass")
    losses.bar(x, [r.nats_per_token or 0.0 for r in kinds], 0.6, color="tab:gray")
    losses.set_xticks(x, names)
    losses.set_ylabel("nats per token")
    losses.set_title("loss per token")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_dynamic(rows: list, path: str | Path, title: str = "") -> Path:
    """Continuation bits per byte against prefix tokens saved (`DynamicRow`s of
    `transplant.dynamic_eval`; the static prefix at 0), each point labelled with its merge budget."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = [100 * r.tokens_saved for r in rows]
    ys = [r.continuation_bits_per_byte for r in rows]
    ax.plot(xs, ys, marker="o")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate("static" if r.budget is None else str(r.budget), (x, y), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("prefix tokens saved (%)")
    ax.set_ylabel("continuation bits per byte")
    if title:
        ax.set_title(title)
    return save_figure(fig, Path(path))


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as the PNG `path`, drawn beside its name and renamed into place: a failed write
    leaves no half PNG, and names the path to fix in one line."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)
        follow_umask(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    except OSError as exc:
        raise TransplantError(f"cannot write the plot {path}: {exc.strerror or exc} "
                              "(pass a writable --plot path)") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

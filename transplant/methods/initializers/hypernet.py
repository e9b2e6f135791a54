"""Rows predicted by a trained hypernetwork (`hypernet/`, ZeTT-style; train one per base model
with `hypernet train`).

Each new token that is neither special nor an exact old token (the chain copies those first)
is read as its old-tokenizer pieces; the network predicts its input row and, from its own head,
its LM-head row (so a tied model is written untied, unless `tied_output=true`). The network
checks that it belongs to this model: the base model it was trained on and its fine-tunes are
accepted (their embeddings stay close), anything else is refused with one line. The predicted
rows are stored in the plan as dense rows, so `transplant apply` reuses them as they are.

Example:
    A network for the tiny model, trained for two steps (seconds), then used:

    >>> from hypernet.training import TrainConfig, train
    >>> from transplant import transplant
    >>> net = train(TrainConfig(model=model_dir, texts=[text_file], out="hn", stage1_steps=2, stage1_batch=32,
    ...                         width=16, layers=1))
    >>> result = transplant(model_dir, new_tok_dir, None, method="hypernet", options={"hypernet.path": str(net)})
    >>> result.plan.counts()  # every token with old pieces: predicted
    {'mean': 1, 'special': 2, 'byte': 256, 'exact': 293, 'hypernet': 207}

    SmolLM2 onto a German tokenizer, with a network trained for it:

    >>> transplant("smollm2-135m-instruct", "de-tok/", "out", method="hypernet",
    ...            options={"hypernet.path": "hn-smollm2/"})  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transplant.common.errors import TransplantError
from transplant.common.fingerprint import file_fingerprint
from transplant.core.plan import Made, RowBlock
from transplant.common.progress import stage
from transplant.methods.initializers.registry import BaseInitializer, InitContext, Option


class HyperNetInitializer(BaseInitializer):
    """Dense input and LM-head rows predicted from the token's old pieces by a trained network."""

    name = "hypernet"
    description = "ZeTT-style hypernetwork: rows predicted from the token's old pieces (hypernet.path=DIR)"
    options = {
        "path": Option("path", str, "", "folder of a network trained for this base model by `hypernet train`",
                       required="--set hypernet.path=DIR; train one with `hypernet train --model MODEL --text FILE "
                       "--out DIR`, or use --method auto to take the network registered for this model"),
        "tied_output": Option("tied_output", bool, False, "use the predicted input row for the LM head too, so a "
                              "tied model stays tied (default: the head's own prediction, written untied)"),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        # On first use only: importing the hypernet package loads its training code too.
        from hypernet.folders import open_network  # a damaged network is one line, not a traceback

        opts = ctx.options_for(self.name)
        if not opts["path"]:
            raise TransplantError("method hypernet needs a trained network: --set hypernet.path=DIR (train one "
                                  "for this model with `hypernet train --model MODEL --text FILE --out DIR`)")
        folder = Path(opts["path"])
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise TransplantError(f"hypernet.path {folder} is not a hypernetwork folder (no model.safetensors; "
                                  "train one with `hypernet train`)")
        res = ctx.need_resources(self.name)
        net = res.cached(f"hypernet:{folder.resolve()}", lambda: open_network(folder),
                         fingerprint=file_fingerprint(weights))
        E_in = res.old_input()
        E_out = None if res.tied else res.old_output()
        cosine = net.check_source(E_in, E_out)
        ids, decs = [], []
        for i in todo:
            pieces = ctx.alignment.decomposition(i)
            if pieces:
                ids.append(i)
                decs.append(list(pieces))
        if not ids:
            return Made()
        stage(f"hypernet: predicting {len(ids)} rows (network of {net.config.base_model or 'this model'}, "
              f"embeddings match at cosine {cosine:.3f})")
        pred_in, pred_out = net.predict(decs, E_in, E_out)
        ids_arr = np.asarray(ids, dtype=np.int64)
        output = None
        if E_out is not None or not opts["tied_output"]:
            output = RowBlock(ids_arr, values=pred_out.numpy(), source=self.name)
        return Made(blocks=[RowBlock(ids_arr, values=pred_in.numpy(), source=self.name, output=output)])

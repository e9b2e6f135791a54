"""Orthogonal matching pursuit (OMP): each new token a sparse mix of shared tokens, fitted elsewhere.

With a donor (a model that already uses the new tokenizer), each new token's donor embedding is
written as a k-sparse combination of the donor embeddings of the *shared* tokens (new tokens the
old vocabulary has exactly), and the same coefficients are applied to the shared tokens' rows in
the source model. This is mergekit tokensurgeon's idea; the LM head is fitted the same way from
the donor's head when the donor is untied (then the plan holds separate output rows), and shares
the input codes when it is tied. Without a donor the same pursuit runs in an auxiliary space
(`transplant.methods.auxspace`, option `space`), where every old token is an atom.

The pursuit is batched over all new tokens (`transplant.methods.sparse_coding.omp`); each token is
pursued among `candidates` preselected atoms, its nearest by cosine (k-means groups of tokens
sharing a pool of atoms), which is what makes Gemma's 262k vocabulary take minutes on two cores
rather than hours. Exact OMP over every shared token fits the donor rows more closely (it needs
all of them: its atoms are spread over the whole vocabulary) but transferred no better:
Gemma-3-270M onto SmolLM2's tokenizer with donor SmolLM2, first 20 kB of `en/dev.txt`, bits
per byte relative to the original model: fvt 1.104, exact OMP 1.101, this default (ORMP among
the 256 nearest) 1.098; with the OMP rule 1.099, and then 1024 candidates 1.103, k = 16 1.110,
three quarters of the candidates random (`explore=0.75`) 1.102.

Made rows are capped in length (`max_norm`, see `cap_norms`): SmolLM2-135M onto Gemma-3's 262k
tokenizer with donor gemma-3-270m (216k rows made), first 20 kB of `en/dev.txt`, bits per byte
(original 0.979, fvt 1.255): uncapped 2.729, `atoms` 1.145, `median` (the default) 1.123; on
documents of the second half of that file no choice looked at, 2.891 / 1.423 / 1.364
(`python benchmarks/defaults_split.py --groups omp`); on Gemma onto SmolLM2's tokenizer (few made
rows) 1.0464 / 1.0465 / 1.0465. The whole transplant
takes 166.5 s on two idle cores, 118.4 s without the cap (`python benchmarks/omp_speed.py`).

Example:
    >>> transplant("HuggingFaceTB/SmolLM2-135M", "gemma-tok/", "out", method="omp",
    ...            options={"omp.donor": "gemma-3-270m"})  # doctest: +SKIP
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.common.progress import stage
from transplant.core.plan import Made, RowBlock
from transplant.core.vocab import ADDED, BYTE, NORMAL, SPECIAL, Vocabulary
from transplant.methods.auxspace import get_space, space_option
from transplant.methods.initializers.registry import BaseInitializer, InitContext, Option
from transplant.methods.resources import Resources
from transplant.methods.sparse_coding import RULES, default_candidates, omp

# A donor "uses the new tokenizer" when at least this share of the new vocabulary's text tokens
# are in its vocabulary with the same bytes (a few added tokens may differ; another tokenizer
# shares far less: SmolLM2's vocabulary holds 18% of Gemma's).
MIN_DONOR_COVERAGE = 0.99
NORM_CAPS = ("atoms", "median", "none")


class OMPInitializer(BaseInitializer):
    """Sparse codes over shared tokens in a donor's embeddings (or an auxiliary space), applied to the source rows.

    Example:
        >>> from transplant import transplant
        >>> result = transplant(model_dir, new_tok_dir, None, method="omp", options={"omp.k": 8})
        >>> result.plan.counts()  # no donor: pursued in the source model's own embedding space
        {'mean': 1, 'special': 2, 'byte': 256, 'exact': 293, 'omp': 207}
        >>> _ = transplant(model_dir, new_tok_dir, "donor", method="fvt")  # a model using the new tokenizer
        >>> result = transplant(model_dir, new_tok_dir, None, method="omp",
        ...                     options={"omp.donor": "donor", "omp.k": 8})
        >>> result.plan.counts()["omp"], result.plan.output is not None  # the untied donor's head fitted too
        (208, True)
    """

    name = "omp"
    description = ("orthogonal matching pursuit: each new token a k-sparse mix of shared tokens fitted in a "
                   "donor model's embeddings (or an auxiliary space), applied to the source rows")
    options = {
        "donor": Option("donor", str, "", "a model that already uses the new tokenizer (any --model form); "
                        "empty = pursue in the auxiliary space of option space"),
        "k": Option("k", int, 64, "atoms per new token (mergekit tokensurgeon's default)", low=1),
        "candidates": Option("candidates", int, 0, "atoms each token is pursued among, preselected by cosine "
                             "(0 = 4*k; -1 = every atom: exact OMP, slow on large vocabularies)", low=-1),
        "explore": Option("explore", float, 0.0, "share of each token's candidates drawn at random from all atoms "
                          "instead of its nearest by cosine: a closer fit in the donor space (exact OMP's atoms "
                          "are spread over the whole vocabulary), measured to transfer worse", low=0, high=1,
                          high_open=True),
        "rule": Option("rule", str, "ormp", "atom selection: omp (highest |cosine| with the residual) or ormp "
                       "(largest residual decrease; measured to transfer better)", choices=RULES),
        "space": space_option("model", when="when there is no donor"),
        "max_norm": Option("max_norm", str, "median", "longest a made row may be: median (a median source row; "
                           "measured best; without a donor the atoms bound), atoms (the longest source row it mixes) or none", choices=NORM_CAPS),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        opts = ctx.options_for(self.name)
        res = ctx.need_resources(self.name)
        if opts["donor"]:
            return self._with_donor(ctx, res, todo, opts)
        return self._in_space(ctx, todo, opts)

    # -- with a donor ------------------------------------------------------------------------
    def _with_donor(self, ctx: InitContext, res: Resources, todo: list[int], opts: dict) -> Made:
        spec = opts["donor"]
        donor = res.donor(spec)
        new = ctx.alignment.new
        to_donor = donor_ids(new, donor.vocab, donor.input.shape[0])
        text_ids = [i for i, t in enumerate(new.tokens) if t.kind in (NORMAL, ADDED, BYTE) and t.text]
        covered = float((to_donor[text_ids] >= 0).mean()) if text_ids else 0.0
        if covered < MIN_DONOR_COVERAGE:
            raise TransplantError(
                f"omp donor {spec} does not use the new tokenizer: only {covered:.1%} of the new vocabulary's "
                "tokens are in its vocabulary (pass a model whose tokenizer is the new one as omp.donor)")
        atom_old, atom_donor = shared_atoms(ctx.alignment, to_donor)
        ids = np.array([i for i in todo if to_donor[i] >= 0], dtype=np.int64)
        if not len(ids) or not len(atom_donor):
            return Made()
        target_donor = torch.from_numpy(to_donor[ids])
        atom_rows = torch.from_numpy(atom_donor)
        sides = [("input", donor.input)] + ([] if donor.tied else [("output", donor.output)])
        # An all-zero donor row (an untrained token) has nothing to fit: leave it to the fallback.
        keep = torch.ones(len(ids), dtype=torch.bool)
        for _, matrix in sides:
            keep &= torch.linalg.vector_norm(matrix[target_donor], dim=1) > 0
        ids, target_donor = ids[keep.numpy()], target_donor[keep]
        if not len(ids):
            return Made()
        blocks = {}
        for side, matrix in sides:
            stage(f"omp: {len(ids)} tokens over {len(atom_donor)} shared tokens of donor {spec} ({side} side)")
            idx, coef = _pursue(matrix[target_donor], matrix[atom_rows], opts)
            indices = atom_old[idx.numpy()]
            source = res.old_input() if side == "input" else res.old_output()
            weights = cap_norms(indices, coef.numpy(), source, opts["max_norm"])
            blocks[side] = RowBlock(ids, indices, weights, source=self.name)
        block = blocks["input"]
        block.output = blocks.get("output")
        return Made(blocks=[block])

    # -- without a donor ---------------------------------------------------------------------
    def _in_space(self, ctx: InitContext, todo: list[int], opts: dict) -> Made:
        space = get_space(ctx, opts["space"])
        atoms = np.nonzero(np.asarray(space.old_valid))[0].astype(np.int64)
        ids = np.asarray(todo, dtype=np.int64)
        if not len(ids) or not len(atoms):
            return Made()
        Y = torch.as_tensor(space.new(ids), dtype=torch.float32)
        keep = (torch.isfinite(Y).all(1) & (torch.linalg.vector_norm(Y, dim=1) > 0)).numpy()
        ids, Y = ids[keep], Y[torch.from_numpy(keep)]
        if not len(ids):
            return Made()
        D = torch.as_tensor(space.old, dtype=torch.float32)[torch.from_numpy(atoms)]
        stage(f"omp: {len(ids)} tokens over {len(atoms)} old tokens in the {opts['space']} space")
        # Aux vectors are centred and normalised, so only an affine mix (weights summing to one)
        # means the same thing among the source rows.
        idx, coef = _pursue(Y, D, opts, affine=True)
        indices = atoms[idx.numpy()]
        # An affine code of this space's own rows: `median` would rescale rows the space fits
        # exactly and break the weights' sum of one, so the cap here is at most the atoms bound
        # (`median` was measured with a donor, where codes cancel in another space).
        cap = "atoms" if opts["max_norm"] == "median" else opts["max_norm"]
        weights = cap_norms(indices, coef.numpy(), ctx.need_resources(self.name).old_input(), cap)
        return Made(blocks=[RowBlock(ids, indices, weights, source=self.name)])


def cap_norms(indices: np.ndarray, weights: np.ndarray, source: torch.Tensor, cap: str,
              chunk: int = 16384) -> np.ndarray:
    """`weights` (n, k) scaled down row by row so that no made row is longer than `cap` allows.

    A sparse code fitted in another space mixes its atoms with signed weights that cancel there
    (|w| sums to ~6 for SmolLM2 onto Gemma's tokenizer) but not among the source rows: one made
    row in ten came out 2.5x longer than any row it mixes, and a tied model then predicts those
    tokens everywhere (bits per byte 2.73 against FVT's 1.26 on English prose). Scaling keeps the
    direction: `atoms` caps a row at its longest atom's length (what any convex mix obeys),
    `median` at the median length of the source rows, `none` leaves the code as fitted.

    Example:
        >>> source = torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 0.0]])
        >>> w = cap_norms(np.array([[0, 1]]), np.array([[2.0, 2.0]]), source, "atoms")  # |(6, 8)| = 10 > 4
        >>> w.round(3).tolist()
        [[0.8, 0.8]]
        >>> cap_norms(np.array([[0, 2]]), np.array([[0.5, 0.5]]), source, "atoms").tolist()  # short: unchanged
        [[0.5, 0.5]]
    """
    if cap == "none" or not len(indices):
        return weights
    lengths = torch.linalg.vector_norm(source, dim=1)
    out = np.array(weights, copy=True)
    median = float(lengths.median())
    for start in range(0, len(indices), chunk):
        idx = torch.from_numpy(np.asarray(indices[start:start + chunk], dtype=np.int64))
        w = torch.from_numpy(np.asarray(weights[start:start + chunk], dtype=np.float32))
        # The made rows as one sparse product: gathering (chunk, k, d) atom rows first would move
        # k times the rows' bytes through memory (8 GB per 100k rows of k = 64 at d = 576).
        n, k = idx.shape
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            mix = torch.sparse_csr_tensor(torch.arange(0, n * k + 1, k), idx.reshape(-1), w.reshape(-1),
                                          size=(n, source.shape[0]), check_invariants=False)
            norm = torch.linalg.vector_norm(mix @ source, dim=1)
        used = w != 0
        limit = torch.where(used, lengths[idx], 0).amax(1) if cap == "atoms" else torch.full_like(norm, median)
        scale = torch.where(norm > limit, limit / norm.clamp(min=1e-12), torch.ones_like(norm))
        out[start:start + chunk] *= scale.numpy().astype(out.dtype)[:, None]
    return out


def _pursue(Y: torch.Tensor, D: torch.Tensor, opts: dict, affine: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    k = opts["k"]
    cand = opts["candidates"]
    candidates = None if cand == -1 else (cand or default_candidates(k))
    return omp(Y, D, k, candidates, explore=opts["explore"], rule=opts["rule"], affine=affine, progress=True)


def shared_atoms(alignment, to_donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The atoms: one per old id among the shared tokens, as (old ids, donor ids).

    Two shared new tokens can stand for one old token (Gemma's `<0x41>` and `A` are both SmolLM2's
    `A`); their donor rows differ but their source row is one, so a fit that weighs them apart
    cannot transfer: keep one donor row per old id, the real token's (normal before added before
    byte-fallback, then the lower id).

    Example:
        >>> from transplant.core.align import Alignment
        >>> from transplant.core.vocab import load_tokenizer
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> alignment = Alignment.build(old, new)
        >>> atom_old, atom_donor = shared_atoms(alignment, donor_ids(new, new, len(new)))  # a donor on `new`
        >>> len(alignment.exact), len(atom_old)  # `<0x41>` and `A` are one old token, one atom
        (549, 490)
    """
    rank = {NORMAL: 0, ADDED: 1, BYTE: 2}
    tokens = alignment.new.tokens
    shared = sorted((i for i in alignment.exact if to_donor[i] >= 0), key=lambda i: (rank.get(tokens[i].kind, 3), i))
    old_seen: set[int] = set()
    donor_seen: set[int] = set()
    atom_old, atom_donor = [], []
    for i in shared:
        o, dnr = alignment.exact[i], int(to_donor[i])
        if o not in old_seen and dnr not in donor_seen:
            old_seen.add(o)
            donor_seen.add(dnr)
            atom_old.append(o)
            atom_donor.append(dnr)
    return np.array(atom_old, dtype=np.int64), np.array(atom_donor, dtype=np.int64)


def donor_ids(new: Vocabulary, donor: Vocabulary, rows: int) -> np.ndarray:
    """Donor id of every new id (-1 where the donor has no token with the same bytes, or no row).

    The same id when both vocabularies hold the same token there (so byte-fallback pieces keep
    their own rows), else the donor's token with the same canonical bytes; special tokens by content.

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> to_old = donor_ids(new, old, rows=500)  # the old vocabulary as the "donor"
        >>> to_old[:3].tolist()  # `<unk>`, `<s>`, `</s>`: no special token of that content
        [-1, -1, -1]
        >>> old.tokens[to_old[new.lookup(b" the")]].text, int((to_old >= 0).sum())
        (b' the', 549)
    """
    out = np.full(len(new), -1, dtype=np.int64)
    specials = {t.text: i for i, t in enumerate(donor.tokens) if t.kind == SPECIAL}
    for i, tok in enumerate(new.tokens):
        if not tok.text:
            continue
        if i < len(donor) and donor.tokens[i] == tok:
            j = i
        elif tok.kind == SPECIAL:
            j = specials.get(tok.text)
        else:
            j = donor.lookup(tok.text)
        if j is not None and j < rows:
            out[i] = j
    return out

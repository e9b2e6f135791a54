"""Layer 4, making the new rows: the initializers, what they read, calibration, the planner.

    initializers/   one module per method (fvt, mean, omp, focus, wechsel, hypernet, ...),
                    registered by name in `initializers/registry.py`
    planner.py      a method chain (special -> exact -> method -> fallback) turned into a plan
    resources.py    the one door through which initializers read anything beyond the alignment
                    (old matrices, a donor model, vectors), loaded once and fingerprinted
    auto.py         `method="auto"`: the hypernetwork known for the model, else FVT, then calibration
    calibrate*.py   output calibration: the scale of made tokens' LM-head rows, fitted by likelihood
    auxspace.py, encoders.py, vectors.py, crosslingual.py
                    auxiliary spaces where old and new tokens compare as vectors (text encoders,
                    fastText, bilingual dictionaries)
    sparse_coding.py, kmeans.py
                    the solvers behind `omp` (batched orthogonal matching pursuit, spherical k-means)

Uses the layers below (common, core, io, measure; see `transplant.common` for the layer rule).
"""

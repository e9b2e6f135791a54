"""Layer 0, shared basics: what every other layer may use. Nothing here imports the rest of the package.

    errors.py       `TransplantError`: bad input, printed by the CLI as one line
    progress.py     progress bars and stage messages on stderr (`--quiet` silences them)
    texts.py        the one reader of UTF-8 text files, cut at document (blank-line) boundaries
    optional.py     optional packages: imported on first use, or one line naming what to install
    fingerprint.py  content hashes, so plans and cards name exactly what they were made from
    language.py     a dependency-free guess of a text's language (the card's `language`)
    specfile.py     YAML spec files (recipes, run specs) read into pydantic models
    safetensors_header.py  the safetensors header check (sizes, dtypes, offsets) shared by shards and plans

The layers, bottom to top: common (0) < core (1) < io (2) < measure (3) < methods (4) < train (5)
< the front ends (6: `transplant.api`, `runspec`, `prepare`, `output`, `inmemory`, `recipes`, `extend`,
`demo`, `cli/`). A module imports
from its own layer and lower ones only; tests/test_layers.py checks it (and that there is no
import cycle and no module over 450 lines).
"""

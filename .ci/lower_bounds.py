"""Print a pip constraints file pinning every direct dependency of pyproject.toml (and of the
extras the suite installs: test, semantic, notebooks) at its lower bound, for `.ci/lowest`."""

import re
import sys
import tomllib
from pathlib import Path

EXTRAS = ("test", "semantic", "notebooks")

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in EXTRAS:
    requirements += project["optional-dependencies"][extra]
for requirement in requirements:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    floor = re.search(r"(?:>=|==)\s*([0-9][^,;\s]*)", spec)
    if floor is None:
        sys.exit(f"error: {requirement!r} has no lower bound; give it one in pyproject.toml (a range we never test "
                 "is not a promise)")
    print(f"{name}=={floor.group(1)}")

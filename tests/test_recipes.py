"""YAML recipes: one schema, shipped recipes installed with the package, `transplant run --recipe`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import builders as B
import pytest
from cli_helpers import assert_clean_failure, run_inproc

from transplant.core.plan import Plan
from transplant.recipes import RecipeError, check_recipe, load_recipe, recipe_kwargs, shipped_recipes, variables

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"smollm2-de", "smollm2-fr", "smollm2-es", "smollm2-code", "smollm2-to-gemma", "gemma-to-smollm2",
           "mistral-7b-code"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path, llama_bl, tok_dirs):
    """A recipe folder with the tiny model, a tokenizer and texts beside it, referred to by relative paths."""
    root = tmp_path / "project"
    shutil.copytree(tok_dirs["sp"], root / "tok")
    text = B.sample_text("en")
    write(root / "texts" / "train.txt", text[:6000])
    write(root / "texts" / "dev.txt", text[6000:8000])
    (root / "models").mkdir()
    (root / "models" / "tiny").symlink_to(llama_bl, target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"  # the current directory: relative paths must not be read from here
    elsewhere.mkdir()
    return root, elsewhere


RECIPE = """\
description: tiny llama onto the SentencePiece fixture
model: ../models/tiny
new_tokenizer: ../tok
out: ../out/tiny
method: fvt
seed: 3
calibrate_texts: ../texts/train.txt
calibrate_tokens: 512
eval_texts: [../texts/dev.txt]
eval_bytes: 1500
eval_ctx: 256
language: en
"""


def tiny_recipe(root: Path, text: str = RECIPE) -> Path:
    return write(root / "recipes" / "tiny.yaml", text)


# -- shipped recipes --------------------------------------------------------------------------------

def test_every_shipped_recipe_validates():
    found = shipped_recipes()
    assert SHIPPED <= set(found)
    for name, description in found.items():
        recipe = check_recipe(name)
        assert description and "\n" not in description
        assert recipe.model and recipe.new_tokenizer and recipe.out and recipe.method
    # Mistral validates here without its weights; its model defaults to the hub id.
    assert load_recipe("mistral-7b-code").model == "${MISTRAL_7B:-mistralai/Mistral-7B-v0.1}"
    assert variables(load_recipe("smollm2-de")) == ["DE_TOKENIZER", "CORPORA"]
    assert load_recipe("smollm2-to-gemma").new_tokenizer.model == "gemma-3-270m"
    assert load_recipe("gemma-to-smollm2").resources.donor == "smollm2-135m-instruct"


def test_shipped_recipes_are_the_top_level_folder():
    names = {p.name[:-5] for p in (ROOT / "recipes").glob("*.yaml")}
    assert names == set(shipped_recipes()) and SHIPPED <= names
    # The package holds no copies: the build maps recipes/ into the wheel (next test).
    assert not list((ROOT / "transplant").rglob("*.yaml"))


def test_shipped_recipes_are_in_the_wheel(tmp_path):
    """`pip install` installs them: build a wheel from the sources and look inside."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for folder in ("transplant", "hypernet", "recipes"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    assert {f"transplant/shipped_recipes/{name}.yaml" for name in shipped_recipes()} <= inside
    # pyproject.toml lists the packages: every package folder of the sources must be in the wheel.
    packages = {str(p.parent.relative_to(ROOT)) for top in ("transplant", "hypernet") for p in (ROOT / top).rglob("__init__.py")}
    missing = {pkg for pkg in packages if f"{pkg}/__init__.py" not in inside}
    assert not missing, f"packages missing from pyproject.toml's list: {sorted(missing)}"


def test_shipped_recipe_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpora = tmp_path / "corpora"
    for name in ("de/train.txt", "de/dev.txt", "dictionaries/en-de.tsv"):
        write(corpora / name, "Hallo Welt.\n")
    tok = write(tmp_path / "de-bpe" / "tokenizer.json", "{}")
    kwargs = recipe_kwargs("smollm2-de", env={"CORPORA": "corpora", "DE_TOKENIZER": str(tok.parent)})
    assert kwargs["model"] == "smollm2-135m-instruct"  # a packaged name stays a name
    assert kwargs["new_tokenizer"] == str(tok.parent)
    assert Path(kwargs["out"]) == tmp_path / "smollm2-135m-de"
    assert kwargs["calibrate_texts"] == ["Hallo Welt.\n"] and kwargs["language"] == ["de"]
    assert kwargs["method"] == "fvt" and kwargs["options"] is None  # fvt reads neither resource


# -- end to end -------------------------------------------------------------------------------------

def test_recipe_runs_end_to_end(workspace, monkeypatch, capsys):
    root, elsewhere = workspace
    recipe = tiny_recipe(root)
    proc = run_inproc(["-q", "run", "--recipe", recipe], monkeypatch, capsys, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    out = root / "out" / "tiny"
    assert f"wrote {out}" in proc.stdout and "transplanted" in proc.stdout  # the evaluation table
    plan = Plan.load(out)
    assert plan.meta["method"] == "fvt" and plan.meta["calibration"]["tokens"] == 512
    assert "fvt" in plan.counts()
    card = (out / "README.md").read_text()
    assert "dev.txt" in card and "- en" in card
    assert not (elsewhere / "out").exists()


def test_cli_flags_override_recipe_fields(workspace, monkeypatch, capsys):
    root, elsewhere = workspace
    recipe = tiny_recipe(root, text=RECIPE.replace("method: fvt", "method: knn\noptions:\n  knn: {k: 3, temperature: 0.5}")
                         .replace("calibrate_texts: ../texts/train.txt\n", ""))
    args = ["-q", "run", "--recipe", recipe, "--out", "mine", "--seed", "7", "--set", "knn.k=2",
            "--eval-text", root / "texts" / "train.txt", "--eval-bytes", "800"]
    proc = run_inproc(args, monkeypatch, capsys, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    out = elsewhere / "mine"  # a flag's path is read from the current directory
    assert not (root / "out").exists()
    plan = Plan.load(out)
    assert plan.seed == 7
    # --set replaced one option and kept the recipe's other one.
    assert plan.meta["options"]["knn"]["k"] == 2 and plan.meta["options"]["knn"]["temperature"] == 0.5
    assert "train.txt" in (out / "README.md").read_text()


def test_cli_method_drops_options_of_the_recipes_method(workspace, monkeypatch, capsys):
    root, _ = workspace
    recipe = tiny_recipe(root, text=RECIPE.replace("method: fvt", "method: knn\noptions: {knn.k: 3}"))
    kwargs = recipe_kwargs(recipe, method="mean", eval_texts=None, calibrate_texts=None)
    assert kwargs["method"] == "mean" and kwargs["options"] is None
    kwargs = recipe_kwargs(recipe, options={"knn.temperature": 0.2})
    assert kwargs["method"] == "knn" and kwargs["options"] == {"knn.k": 3, "knn.temperature": 0.2}


def test_python_recipe_kwargs_match_transplant(workspace, tmp_path):
    from transplant import transplant

    root, _ = workspace
    recipe = tiny_recipe(root)
    kwargs = recipe_kwargs(recipe, out=tmp_path / "py", eval_texts=None, calibrate_texts=None)
    assert kwargs["seed"] == 3 and kwargs["eval_texts"] is None
    result = transplant(**kwargs)
    assert result.output_dir == tmp_path / "py" and "fvt" in result.plan.counts()


# -- resources --------------------------------------------------------------------------------------

def test_resources_go_to_the_methods_that_read_them(tmp_path):
    write(tmp_path / "dict.tsv", "house\tHaus\n")
    base = "model: m\nnew_tokenizer: {model: smollm2-135m-instruct}\nout: o\n"
    recipe = write(tmp_path / "r.yaml", base + "method: wechsel\nresources:\n  dictionary: dict.tsv\n"
                   "  donor: gemma-3-270m\n  source_vectors: en.bin\n")
    # wechsel reads the dictionary (resolved against the recipe's folder); nobody reads the donor here;
    # source_vectors is read by wechsel and missing: one line naming the file.
    with pytest.raises(RecipeError, match=r"resources.source_vectors: file not found: .*en.bin"):
        recipe_kwargs(recipe, new_tokenizer="t")
    write(tmp_path / "en.bin", "")
    kwargs = recipe_kwargs(recipe, new_tokenizer="t")
    assert kwargs["options"] == {"wechsel.dictionary": str(tmp_path / "dict.tsv"),
                                 "wechsel.source_vectors": str(tmp_path / "en.bin")}
    assert kwargs["model"] == "m"  # not a path here: kept as a hub id / packaged name
    omp = write(tmp_path / "omp.yaml", base + "method: omp\nresources: {donor: gemma-3-270m}\n")
    assert recipe_kwargs(omp, new_tokenizer="t")["options"] == {"omp.donor": "gemma-3-270m"}
    twice = write(tmp_path / "twice.yaml", base + "method: omp\nresources: {donor: a}\noptions: {omp.donor: b}\n")
    with pytest.raises(RecipeError, match="omp.donor is set twice"):
        recipe_kwargs(twice, new_tokenizer="t")


def test_variables_expand_with_defaults(tmp_path):
    write(tmp_path / "data" / "dev.txt", "text\n")
    recipe = write(tmp_path / "r.yaml", "model: ${M:-fallback-model}\nnew_tokenizer: t\nout: ${OUT}/x\n"
                   "eval_texts: ['${DATA}/dev.txt']\n")
    kwargs = recipe_kwargs(recipe, env={"OUT": "/abs", "DATA": "data"}, new_tokenizer="t")
    assert kwargs["model"] == "fallback-model" and kwargs["out"] == "/abs/x"
    assert [t.strip() for t in kwargs["eval_texts"]] == ["text"]
    with pytest.raises(RecipeError, match=r"out reads \$\{OUT\}, which is not set"):
        recipe_kwargs(recipe, env={"DATA": "data"}, new_tokenizer="t")
    # A field given by the caller needs no variable.
    assert recipe_kwargs(recipe, env={"DATA": "data"}, new_tokenizer="t", out="here")["out"] == "here"


# -- bad recipes: one line, exit code 2, nothing written ---------------------------------------------

BAD = {
    "unknown_key": ("methd: fvt\n", "unknown key 'methd' (valid keys: description, model, new_tokenizer"),
    "unknown_nested_key": ("resources: {donr: x}\n", "unknown key 'resources.donr' (valid keys of resources: donor"),
    "wrong_type": ("seed: '3'\n", "seed expects an integer, not '3'"),
    "wrong_type_list": ("eval_texts: [1]\n", "eval_texts expects a file path or a list of them, not [1]"),
    "bad_choice": ("encode_like: src\n", "encode_like expects source or target"),
    "bad_option": ("options: {fvt.k: 3}\n", "unknown option fvt.k (method fvt has no options)"),
    "option_type": ("method: knn\noptions: {knn: {k: 2.5}}\n", "option knn.k expects an integer"),
    "missing_file": ("eval_texts: ../texts/nowhere.txt\n", "eval_texts: file not found"),
    "missing_variable": ("calibrate_texts: ${NO_SUCH_VARIABLE_HERE}/a.txt\n",
                         ("calibrate_texts reads ${NO_SUCH_VARIABLE_HERE}, which is not set (set it, or pass "
                          "--calibrate-text)")),
    "duplicate_key": ("seed: 1\nseed: 2\n", "key 'seed' is given twice"),
    "not_yaml": ("seed: [1\n", "is not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_is_one_line(case, workspace, monkeypatch, capsys):
    root, elsewhere = workspace
    extra, phrase = BAD[case]
    key = extra.split(":")[0]
    text = "\n".join(line for line in RECIPE.splitlines() if not line.startswith(key + ":")) + "\n" + extra
    recipe = tiny_recipe(root, text=text)
    proc = run_inproc(["run", "--recipe", recipe], monkeypatch, capsys, cwd=elsewhere)
    assert proc.returncode == 2
    assert str(recipe) in proc.stderr
    assert_clean_failure(proc, phrase, root / "out" / "tiny")


def test_missing_required_field_after_merge(workspace, monkeypatch, capsys):
    root, elsewhere = workspace
    recipe = tiny_recipe(root, text="\n".join(line for line in RECIPE.splitlines() if not line.startswith("out:")))
    proc = run_inproc(["run", "--recipe", recipe], monkeypatch, capsys, cwd=elsewhere)
    assert proc.returncode == 2
    assert_clean_failure(proc, "gives no out (add `out:` to the recipe or pass --out)", elsewhere / "out")
    proc = run_inproc(["run", "--new-tok", root / "tok", "--out", "x"], monkeypatch, capsys, cwd=elsewhere)
    assert_clean_failure(proc, "Missing option '--model'", elsewhere / "x")


def test_unknown_recipe_name(monkeypatch, capsys, tmp_path):
    proc = run_inproc(["run", "--recipe", "smollm2-xx"], monkeypatch, capsys, cwd=tmp_path)
    assert proc.returncode == 2
    assert_clean_failure(proc, "recipe not found: smollm2-xx (pass a YAML file, or one of the shipped recipes: "
                         "gemma-to-smollm2", tmp_path / "smollm2-135m-xx")


# -- the recipes command ----------------------------------------------------------------------------

def test_recipes_command_lists_checks_and_shows(workspace, monkeypatch, capsys):
    root, _ = workspace
    proc = run_inproc(["recipes"], monkeypatch, capsys)
    assert proc.returncode == 0
    for name in SHIPPED:
        assert any(line.startswith(name + " ") for line in proc.stdout.splitlines()), proc.stdout
    proc = run_inproc(["recipes", "--check", "mistral-7b-code", "--check", tiny_recipe(root)], monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert "ok: shipped recipe mistral-7b-code (reads $MISTRAL_7B, $CODE_TOKENIZER, $CORPORA)" in proc.stdout
    proc = run_inproc(["recipes", "--show", "smollm2-de"], monkeypatch, capsys)
    assert proc.stdout.startswith("# Harness task de") and "new_tokenizer: ${DE_TOKENIZER}" in proc.stdout
    bad = write(root / "bad.yaml", "model: x\nfallback: [mean]\n")
    proc = run_inproc(["recipes", "--check", bad], monkeypatch, capsys)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: recipe {bad}: fallback expects a method name, not ['mean']")


# -- one declaration: RunSpec ------------------------------------------------------------------------

def test_every_run_field_is_a_flag_a_recipe_key_and_an_api_keyword():
    """A run option is declared once, in RunSpec: the CLI, recipes and the API all follow it."""
    import inspect

    from transplant.api import transplant
    from transplant.cli.commands import run
    from transplant.runspec import RunSpec

    options = {p.name: p for p in run.params}
    api = set(inspect.signature(transplant).parameters)
    for name, field in RunSpec.model_fields.items():
        flag = field.json_schema_extra["flag"]
        assert (flag is None) == (name in {"description", "resources"}), name
        if flag:
            assert flag in options[name].opts and options[name].help == field.description, name
        if name not in {"description", "resources", "eval_bytes"}:  # the API takes texts, not a byte budget
            assert name in api, name


def test_a_recipe_can_turn_calibration_off(tmp_path):
    recipe = write(tmp_path / "r.yaml", "model: m\nnew_tokenizer: t\nout: o\ncalibrate: false\n")
    write(tmp_path / "t", "")
    assert load_recipe(recipe).calibrate is False
    assert recipe_kwargs(recipe)["calibrate"] is False
    bad = write(tmp_path / "bad.yaml", "model: m\nnew_tokenizer: t\nout: o\ncalibrate: sometimes\n")
    with pytest.raises(RecipeError, match="calibrate expects true or false, not 'sometimes'"):
        load_recipe(bad)


def test_runspec_takes_paths_from_python_and_refuses_wrong_types():
    from pydantic import ValidationError

    from transplant.runspec import RunSpec

    spec = RunSpec(model=Path("m"), new_tokenizer=Path("t.json"), out=Path("o"), eval_texts=[Path("a.txt")],
                   calibrate_texts=Path("c.txt"))
    assert (spec.model, spec.out, spec.eval_texts, spec.calibrate_texts) == ("m", "o", ["a.txt"], ["c.txt"])
    with pytest.raises(ValidationError):
        RunSpec(seed="3")  # strict, as a recipe is

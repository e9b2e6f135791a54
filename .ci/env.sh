# Shared by .ci/run, .ci/latest and .ci/lowest: make a fresh virtual environment and install
# tokentransplant with its test extras the way the README tells a new user to.
#   fresh_env DIR [pip install options...]   e.g. fresh_env .ci/.venv -c constraints.txt
# Sourced, not run. The folder is removed first: every run resolves from nothing, never from
# what an earlier run (or the system Python) already had.
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore

fresh_env() {
    local dir="$1"; shift
    rm -rf "$dir"
    python3 -m venv "$dir"
    # torch first and pinned so pip takes the CPU wheel on disk (a bare `torch` pulls a multi-GB CUDA build)
    "$dir/bin/python" -m pip install -q "$@" torch==2.13.0 || return 1
    "$dir/bin/python" -m pip install -q "$@" -e '.[test,semantic,notebooks]' || return 1
    "$dir/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|accelerate|huggingface.hub|safetensors|numpy)==' | tr '\n' ' '
    echo
}

# One line for the constraints file's header: `record KIND "RESULT"` replaces the line `# KIND: ...`.
record() {
    python3 - "$1" "$2" <<'PY'
import sys, pathlib, re
kind, result = sys.argv[1], sys.argv[2]
path = pathlib.Path("constraints.txt")
text = path.read_text()
line = f"# {kind}: {result}"
new, n = re.subn(rf"^# {kind}: .*$", line, text, count=1, flags=re.M)
path.write_text(new if n else line + "\n" + text)
print(f"constraints.txt header: {line}")
PY
}

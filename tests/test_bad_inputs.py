"""Every bad input is one line: `python train.py <bad input>` exits 2 with exactly one line on stderr, no traceback,
and leaves the run directory byte-identical. ROWS is the table; README.md's "Bad input" table is generated from it
(with the message each row really printed) and checked against it here:

    python tests/test_bad_inputs.py            # rewrite the README table from ROWS (runs every row)

To add a case, append a Row and regenerate. Most rows call train.py's main() in this process (fast); rows marked
`subprocess` run `python train.py` as a new process, as a user would.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from helpers import ROOT, env

README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- bad-inputs:begin (python tests/test_bad_inputs.py) -->", "<!-- bad-inputs:end -->"
SHOWN_TMP = "/tmp/x"  # how the README shows the scratch folder each row gets
LATIN1 = "caf\u00e9 cr\u00e8me\n".encode("latin-1")


@dataclass(frozen=True)
class Row:
    what: str  # the kind of bad input
    args: tuple  # command-line arguments; {tmp} is a scratch folder holding `files`
    expect: str  # what the one line must contain (the field, the problem)
    files: dict = field(default_factory=dict)  # name under {tmp} -> bytes; recipes/... edits a copy of recipes/,
    # run/... adds to (or replaces files of) the existing run that run_dir={tmp}/run holds
    subprocess: bool = False


TAG = b"# @package _global_\noptim:\n  lr: !!python/object/apply:os.system ['echo owned']\n"
ROWS = [
    # the command line
    Row("malformed override", ("optim.lr=[",), "command line: cannot parse 'optim.lr=['", subprocess=True),
    Row("override without a value", ("optim.lr",), "cannot parse 'optim.lr'"),
    Row("unknown option", ("--foo",), "unknown option '--foo'", subprocess=True),
    Row("Hydra's multirun flag", ("-m", "optim.lr=1e-3"), "unknown option '-m'"),
    Row("--cfg of something else", ("--cfg", "hydra"), "--cfg: cannot print 'hydra'"),
    Row("print_config not a bool", ("print_config=maybe",), "print_config: must be true or false"),
    Row("a sweep", ("optim.lr=1e-3,3e-3",), "is a sweep"),
    Row("Hydra's own settings", ("hydra.run.dir=/tmp/elsewhere",), "hydra.run.dir: train.py does not run Hydra"),
    Row("Hydra's own groups", ("hydra/launcher=basic",), "hydra/launcher: train.py does not run Hydra"),
    Row("interpolation that does not resolve", ("notes=${oc.env:PRETRAIN_NO_SUCH_VARIABLE}",),
        "Environment variable 'PRETRAIN_NO_SUCH_VARIABLE' not found"),
    # names and paths
    Row("recipe path escape", ("recipe=../train",), "recipe: no recipe file recipe/../train.yaml", subprocess=True),
    Row("absolute path as a recipe", ("recipe=/etc/passwd",), "recipe: no recipe file"),
    Row("path escape in a group", ("optim=../recipe/tiny",), "optim: no recipe file optim/../recipe/tiny.yaml"),
    Row("removing a group", ("~recipe",), "recipe: a config group cannot be removed"),
    Row("unknown recipe", ("recipe=nope",), "allowed: 125m_cosine"),
    Row("unknown optimizer", ("optim=adamx",), "Did you mean 'adam"),
    Row("unknown schedule", ("schedule=cosinus",), "Did you mean 'cosine'"),
    Row("unknown key", ("train.stepz=10",), "Did you mean 'steps'"),
    Row("unknown optimizer keyword", ("optim.bta=0.9",), "optim.bta"),
    # recipe files
    Row("unsafe YAML tag in a recipe", ("recipe=evil",), "YAML tag !!python/object/apply:os.system refused",
        files={"recipes/recipe/evil.yaml": TAG}),
    Row("malformed YAML in a recipe", ("recipe=broken",), "recipes/recipe/broken.yaml: line 4: malformed YAML",
        files={"recipes/recipe/broken.yaml": b"# @package _global_\noptim:\n  lr: [1e-3\ntrain: {}\n"}),
    # numbers
    Row("infinite lr", ("optim.lr=inf",), "optim.lr: inf is out of range", subprocess=True),
    Row("NaN lr", ("optim.lr=nan",), "optim.lr: must be a number, got nan"),
    Row("NaN inside a list", ("optim.betas=[0.9,nan]",), "optim.betas[1]: must be a number"),
    Row("non-finite model field", ("model.init_std=inf",), "model.init_std: must be a finite number"),
    Row("non-finite schedule keyword", ("schedule.min_lr_ratio=nan",), "schedule.min_lr_ratio: must be a finite"),
    Row("wrong type", ("train.steps=abc",), "train.steps: must be int"),
    Row("out of range", ("data.val_fraction=1.5",), "data.val_fraction: 1.5 is out of range"),
    Row("indivisible batch", ("train.global_batch_size=10", "train.micro_batch_size=4"), "not divisible"),
    Row("warmup longer than the run", ("schedule.warmup_steps=500", "train.steps=100"), "warmup longer than the run"),
    Row("warmup given twice", ("schedule.warmup_steps=3", "schedule.warmup_fraction=0.1"), "not both"),
    Row("warmup fraction out of range", ("schedule.warmup_fraction=1.5",), "schedule.warmup_fraction: 1.5 is out"),
    # corpora
    Row("missing corpus", ("data=text_files", "data.paths=[{tmp}/missing.txt]"), "no file or folder matches"),
    Row("binary corpus", ("data=text_files", "data.paths=[{tmp}/corpus.bin]"), "corpus.bin is a binary file",
        files={"corpus.bin": bytes(range(256)) * 8}),
    Row("corpus not UTF-8", ("data=text_files", "data.paths=[{tmp}/latin1.txt]"), "latin1.txt is not UTF-8 text",
        files={"latin1.txt": LATIN1}),
    Row("empty corpus file", ("data=text_files", "data.paths=[{tmp}/empty.txt]"), "empty.txt is empty",
        files={"empty.txt": b""}),
    Row("folder of empty files", ("data=text_files", "data.paths=[{tmp}/blank]"), "every file is empty",
        files={"blank/a.txt": b"", "blank/b.txt": b"\n\n"}),
    Row("corpus smaller than one batch", ("data=text_files", "data.paths=[{tmp}/small.txt]"),
        "fewer than one global batch", files={"small.txt": b"def f(x):\n    return x + 1\n" * 4}),
    # checkpoints (the existing run in {tmp}/run has checkpoints/step_10)
    Row("checkpoint missing its RNG file", ("resume=auto",), "resume: no intact checkpoint"),
    Row("not a checkpoint (a model folder)", ("resume={tmp}/model",), "random_states_0.pkl: missing",
        files={"model/config.json": b"{}"}),
    Row("truncated checkpoint file", ("resume={tmp}/run/checkpoints/step_20",),
        "model.safetensors: 10 bytes, the manifest says 100 (truncated", files=None),
    Row("unreadable trainer_state.json", ("resume={tmp}/run/checkpoints/step_10",),
        "is unreadable or not one of this project's checkpoints", files=None),
    Row("resume with another model", ("resume=auto", "model.d_model=256"),
        "was trained as another run: model.d_model 128 -> 256", files=None),
    Row("resume with another optimizer", ("resume=auto", "optim=lion"),
        "was trained as another run: optim.name 'adamw' -> 'lion'", files=None),
    Row("resume with a changed lr", ("resume=auto", "optim.lr=3e-4"),
        "pass resume_overrides=true", files=None),
]


def _checkpoint(state: dict, step: int = 10, **files) -> dict:
    """A complete-looking checkpoint step_<step> of the existing run: trainer_state.json from `state`, the files
    every rank needs, and a manifest of them (`files` may replace any)."""
    import json as _json
    d = f"run/checkpoints/step_{step}/"
    out = {d + "trainer_state.json": _json.dumps(state).encode(), d + "random_states_0.pkl": b"rng",
           d + "data_state_rank0.json": b"{}", d + "model.safetensors": b"0" * 100}
    out.update({d + k: v for k, v in files.items()})
    manifest = {"files": {k[len(d):]: {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                          for k, v in out.items()}}
    out[d + "manifest.json"] = _json.dumps(manifest).encode()
    return out


def _tiny_state() -> dict:
    from pretrain.config import load_config
    return {"step": 10, "config": load_config([]).to_dict()}


def _with_checkpoints(rows):
    """The checkpoint rows' files, built from this project's own default config."""
    state = _tiny_state()
    special = {
        "truncated checkpoint file": lambda: {**_checkpoint(state, 20),
                                              "run/checkpoints/step_20/model.safetensors": b"0" * 10},
        "unreadable trainer_state.json": lambda: _checkpoint(state, **{"trainer_state.json": b"not json"}),
    }
    out = []
    for r in rows:
        if r.files is None:
            files = special[r.what]() if r.what in special else _checkpoint(state)
            r = Row(r.what, r.args, r.expect, files, r.subprocess)
        out.append(r)
    return out


ROWS = _with_checkpoints(ROWS)


def command(row: Row) -> str:
    return "python train.py " + " ".join(row.args).replace("{tmp}", SHOWN_TMP)


def tree_hash(path: str):
    """The folder's names and bytes (None when it does not exist)."""
    if not os.path.lexists(path):
        return None
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        h.update(f"d {os.path.relpath(dirpath, path)}\n".encode())
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(f"f {name} ".encode() + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _train_module():
    spec = importlib.util.spec_from_file_location("train_script", os.path.join(ROOT, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(row: Row, tmp: str) -> tuple[list[str], str]:
    """Write the row's files under `tmp` and an existing run in {tmp}/run; (train.py arguments, run directory)."""
    for name, data in row.files.items():
        if name.startswith("recipes/") and not os.path.isdir(os.path.join(tmp, "recipes")):
            shutil.copytree(os.path.join(ROOT, "recipes"), os.path.join(tmp, "recipes"))
        os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    run_dir = os.path.join(tmp, "run")
    os.makedirs(os.path.join(run_dir, "checkpoints", "step_10"), exist_ok=True)
    for name, text in (("metrics.jsonl", '{"step": 10, "loss": 5.0}\n'),
                       ("checkpoints/step_10/trainer_state.json", '{"step": 10}')):
        if f"run/{name}" not in row.files:
            with open(os.path.join(run_dir, name), "w") as f:
                f.write(text)
    args = [a.replace("{tmp}", tmp) for a in row.args] + [f"run_dir={run_dir}", f"data.cache_dir={tmp}/cache"]
    return args, run_dir


def invoke(row: Row, args: list[str], tmp: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of train.py with `args`: a new process, or main() here."""
    if row.subprocess:
        assert not any(n.startswith("recipes/") for n in row.files), "recipe edits need an in-process row"
        p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr
    from accelerate.state import AcceleratorState, GradientState, PartialState

    import pretrain.config

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    with contextlib.ExitStack() as stack:
        if any(n.startswith("recipes/") for n in row.files):
            stack.enter_context(_patched(pretrain.config, "RECIPES_DIR", os.path.join(tmp, "recipes")))
        out, err = io.StringIO(), io.StringIO()
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        code = _train_module().main(args)
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def readme_rows() -> list[tuple[str, str, str]]:
    """(what, command, message) of each row of README.md's bad-input table."""
    text = open(README).read()
    assert BEGIN in text and END in text, f"README.md lacks the bad-input table markers {BEGIN!r}"
    table = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    rows = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(tuple(re.sub(r"^`+ ?| ?`+$", "", c).replace("\\|", "|") for c in cells))
    return rows


def _cell(text: str) -> str:
    tick = "``" if "`" in text else "`"
    pad = " " if tick == "``" else ""
    return f"{tick}{pad}{text.replace('|', chr(92) + '|')}{pad}{tick}"


def readme_table(messages: dict) -> str:
    lines = ["| bad input | command | the one line on stderr (exit code 2) |", "|---|---|---|"]
    lines += [f"| {r.what} | {_cell(command(r))} | {_cell(messages[command(r)])} |" for r in ROWS]
    return "\n".join(lines)


def shown(message: str, tmp: str) -> str:
    return message.replace(tmp, SHOWN_TMP)


def elided(message: str) -> str:
    """The message with its list of allowed names elided: the README must show each row's message, but a new
    optimizer, schedule or recipe file (which lengthens such a list) need not regenerate it."""
    return re.sub(r"allowed: [\w\-, ]+", "allowed: ...", message)


@pytest.mark.parametrize("row", ROWS, ids=[r.what for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(row, tmp_path):
    tmp = str(tmp_path)
    args, run_dir = prepare(row, tmp)
    before = tree_hash(run_dir)
    code, out, err = invoke(row, args, tmp)
    report = f"{command(row)}\nexit {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    assert code == 2, report
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: "), report
    assert "Traceback" not in out + err, report
    assert row.expect.replace("{tmp}", tmp) in lines[0], report
    assert tree_hash(run_dir) == before, f"the run directory changed\n{report}"
    readme = {cmd: message for _, cmd, message in readme_rows()}
    assert elided(readme.get(command(row), "")) == elided(shown(lines[0], tmp)), (
        f"README.md's bad-input row for {command(row)!r} does not show what it prints:\n{shown(lines[0], tmp)}\n"
        "regenerate it: python tests/test_bad_inputs.py")


def test_readme_table_has_exactly_the_rows():
    assert [r[:2] for r in readme_rows()] == [(r.what, command(r)) for r in ROWS], \
        "README.md's bad-input table and ROWS differ: python tests/test_bad_inputs.py regenerates it"
    assert len(ROWS) >= 25


def test_help_lists_every_group_file_and_the_keys():
    code, out, err = invoke(Row("", (), ""), ["--help"], "")
    assert code == 0 and not err, err
    for group in ("recipe", "model", "data", "optim", "schedule"):
        names = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "recipes", group)) if f.endswith(".yaml"))
        assert f"  {group:<9} {', '.join(names)}" in out, out
    for key in ("train.{steps, global_batch_size", "data.{source, paths", "run_dir", "resume", "75 preempted"):
        assert key in out, out


def test_cfg_job_prints_the_resolved_config_without_running(tmp_path):
    """`--cfg job` and print_config=true print the same validated config, warmup resolved from the tiny recipe's
    fraction (0.1 x 20 steps), and nothing is created."""
    import yaml

    run_dir = tmp_path / "run"
    args = ["train.steps=20", f"run_dir={run_dir}"]
    code, out, err = invoke(Row("", (), ""), args + ["--cfg", "job"], str(tmp_path))
    assert code == 0 and not err, err
    printed = yaml.safe_load(out)
    assert printed["train"]["steps"] == 20 and printed["schedule"]["warmup_steps"] == round(0.1 * 20)
    assert "warmup_fraction" not in printed["schedule"] and printed["run_dir"] == str(run_dir)
    code, out, _ = invoke(Row("", (), ""), args + ["print_config=true"], str(tmp_path))
    assert code == 0 and yaml.safe_load(out) == printed
    assert not run_dir.exists()


def test_slurm_script_passes_arguments_as_arguments_and_requeues(tmp_path):
    """launch/slurm.sh under stand-ins for srun / scontrol / scancel / accelerate: a config path and overrides with
    spaces and $(...) reach accelerate verbatim (nothing runs), exit 75 requeues, the preemption signal is passed
    to the job step and requeues, another failure does not."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    stand_ins = {
        "srun": 'while [[ $1 == --* ]]; do shift; done\nSLURM_PROCID=0 exec "$@"',
        "accelerate": 'printf "%s\\n" "$@" > "$LOG/args"\n[[ -n ${WAIT:-} ]] && sleep "$WAIT"\nexit "${CODE:-0}"',
        "scontrol": 'echo "scontrol $*" >> "$LOG/calls"\n[[ $1 == show ]] && echo node1\nexit 0',
        "scancel": 'echo "scancel $*" >> "$LOG/calls"',
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    marker = tmp_path / "ran"
    base = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log), SLURM_JOB_ID="42",
                SLURM_JOB_NODELIST="n1", SLURM_NNODES="2", ACCELERATE_CONFIG=f"my dir/x.yaml $(touch {marker})")
    script = os.path.join(ROOT, "launch", "slurm.sh")

    def calls():
        text = (log / "calls").read_text() if (log / "calls").exists() else ""
        (log / "calls").unlink(missing_ok=True)
        return [c for c in text.splitlines() if not c.startswith("scontrol show")]

    p = subprocess.run(["bash", script, "notes=a b", "run_dir=$(id)"], env=dict(base, CODE="75"), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    args = (log / "args").read_text().splitlines()
    assert p.returncode == 0 and calls() == ["scontrol requeue 42"], p.stderr
    assert args[:4] == ["launch", "--machine_rank", "0", "--config_file"] and args[4] == base["ACCELERATE_CONFIG"]
    assert args[5:8] == ["--num_machines", "2", "--num_processes"] and args[8] == "16"
    assert args[-4:] == ["train.py", "resume=auto", "notes=a b", "run_dir=$(id)"] and not marker.exists()

    p = subprocess.run(["bash", script], env=dict(base, CODE="3"), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 3 and calls() == [], p.stderr

    proc = subprocess.Popen(["bash", script], env=dict(base, CODE="1", WAIT="3"), cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    import time
    time.sleep(1)
    proc.send_signal(__import__("signal").SIGUSR1)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert calls() == ["scancel --signal=USR1 42", "scontrol requeue 42"]
    shellcheck = shutil.which("shellcheck")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    if shellcheck:
        assert subprocess.run([shellcheck, script]).returncode == 0


def main() -> None:
    """Run every row and rewrite README.md's table between the markers."""
    import tempfile

    messages = {}
    for row in ROWS:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = os.path.realpath(tmp)
            code, out, err = invoke(row, prepare(row, tmp)[0], tmp)
            lines = err.strip("\n").splitlines()
            assert code == 2 and len(lines) == 1, (command(row), code, out[-2000:], err[-2000:])
            messages[command(row)] = shown(lines[0], tmp)
            print(f"{command(row)}\n    {messages[command(row)]}")
    text = open(README).read()
    assert BEGIN in text and END in text, f"add {BEGIN} and {END} to README.md's Bad input section first"
    text = text[:text.index(BEGIN) + len(BEGIN)] + "\n" + readme_table(messages) + "\n" + text[text.index(END):]
    with open(README, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "src"))
    main()

"""`hyenalens train` from the command line: bad input is one line and exit 2 with nothing
written half-way, and a run killed with SIGKILL at several points resumes bit-identically."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hyenalens.cli import main
from models.rundir.io import read_jsonl
from models.training.loop import train

REPO = Path(__file__).resolve().parents[1]

TINY_YAML = """\
seed: 0
loss: all
model: {kind: hyena, d_model: 16, n_layers: 2, filter_order: 16}
data: {task: ar, vocab_size: 10, input_seq_len: 16, num_examples: 512, num_test_examples: 64}
optimizer: {lr: 3.0e-3}
schedule: {steps: STEPS, batch_size: 16}
checkpoints: {log_count: 4, every: 4, adaptive: false}
eval: {train_subset: 64}
"""


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hyenalens", "train", *args, "--threads", "1"],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)


def _snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "LOCK"}


def _tiny(tmp_path: Path, steps: int = 8) -> Path:
    p = tmp_path / f"tiny{steps}.yaml"
    p.write_text(TINY_YAML.replace("STEPS", str(steps)))
    return p


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Small finished runs that the existing-run cases start from."""
    base = tmp_path_factory.mktemp("made")
    cfg = _tiny(base)
    train(str(cfg), base / "run", quiet=True)
    train(str(cfg), base / "narrow", ["model.d_model=8"], quiet=True)
    return base, cfg


def _case_existing(made, tmp_path, edit) -> tuple[Path, Path]:
    base, cfg = made
    out = tmp_path / "run"
    shutil.copytree(base / "run", out)
    edit(out, base)
    return out, cfg


def _truncate_latest(out: Path, base: Path) -> None:
    p = out / "checkpoints" / "step_00000008.safetensors"
    p.write_bytes(p.read_bytes()[:100])


def _foreign_checkpoint(out: Path, base: Path) -> None:
    shutil.copy(base / "narrow" / "checkpoints" / "step_00000008.safetensors", out / "checkpoints" / "step_00000008.safetensors")


def _damage_index(out: Path, base: Path) -> None:
    (out / "checkpoints" / "index.json").write_text('{"checkpoints": [')


# (id, args builder(tmp_path, cfg, made) -> (argv, out dir), expected fragment of the message)
CASES = [
    ("unknown-key", lambda t, c, m: ([str(c), "bogus=1"], None), "unknown config key bogus"),
    ("unknown-nested-key", lambda t, c, m: ([str(c), "model.d_modle=8"], None), "did you mean model.d_model"),
    ("wrong-type", lambda t, c, m: ([str(c), "optimizer.lr=fast"], None), "optimizer.lr must be float"),
    ("wrong-type-bool", lambda t, c, m: ([str(c), "data.fresh_samples=maybe"], None), "data.fresh_samples must be bool"),
    ("out-of-range", lambda t, c, m: ([str(c), "schedule.warmup=1.5"], None), "schedule.warmup=1.5 is out of range"),
    ("out-of-range-count", lambda t, c, m: ([str(c), "data.num_examples=0"], None), "data.num_examples=0"),
    ("invalid-regime", lambda t, c, m: ([str(c), "model.causal=false"], None), "invalid regime"),
    ("impossible-dataset", lambda t, c, m: ([str(c), "data.vocab_size=4", "data.input_seq_len=2"], None),
     "impossible dataset"),
    ("unknown-task", lambda t, c, m: ([str(c), "data.task=copy"], None), "data.task='copy'"),
    ("unknown-kind", lambda t, c, m: ([str(c), "model.kind=rnn"], None), "model.kind='rnn' is unknown"),
    ("l-max-too-short", lambda t, c, m: ([str(c), "model.l_max=4"], None), "model.l_max=4 is shorter"),
    ("missing-file", lambda t, c, m: ([str(t / "nope.yaml")], None), "does not exist"),
    ("config-is-a-directory", lambda t, c, m: ([str(t) + "/"], None), "is a directory"),
    ("bad-yaml", lambda t, c, m: ([_write(t, "bad.yaml", "model: [unclosed\n")], None), "not valid YAML"),
    ("not-utf8", lambda t, c, m: ([_write(t, "bin.yaml", b"\xff\xfe\x00bad")], None), "cannot read config"),
    ("duplicate-key", lambda t, c, m: ([_write(t, "dup.yaml", c.read_text() + "seed: 3\nseed: 4\n")], None),
     "duplicate key 'seed' at line"),
    ("not-a-mapping", lambda t, c, m: ([_write(t, "list.yaml", "- a\n- b\n")], None), "must be a YAML mapping"),
    ("unknown-preset", lambda t, c, m: (["ar_causl_all"], None), "did you mean ar_causal_all"),
    ("override-without-equals", lambda t, c, m: ([str(c), "model.d_model"], None), "is not KEY=VALUE"),
    ("max-steps-zero", lambda t, c, m: ([str(c), "--max-steps", "0"], None), "--max-steps 0"),
    ("out-is-a-file", lambda t, c, m: ([str(c)], _write(t, "file.txt", "x")), "is a file"),
    ("out-not-a-run", lambda t, c, m: ([str(c)], _nonrun(t)), "not a HyenaLens run"),
    ("different-config", lambda t, c, m: ([str(m[1]), "seed=1"], _case_existing(m, t, lambda o, b: None)[0]),
     "different config (data.seed: 0 -> 1; seed: 0 -> 1)"),
    ("truncated-checkpoint", lambda t, c, m: ([str(m[1])], _case_existing(m, t, _truncate_latest)[0]), "truncated"),
    ("other-architecture", lambda t, c, m: ([str(m[1])], _case_existing(m, t, _foreign_checkpoint)[0]),
     "the model expects"),
    ("damaged-index", lambda t, c, m: ([str(m[1])], _case_existing(m, t, _damage_index)[0]), "damaged"),
    ("missing-out", lambda t, c, m: ([str(c), "--no-out"], "skip-out"), "the following arguments are required: --out"),
]


def _write(t: Path, name: str, content) -> str:
    p = t / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(p)


def _nonrun(t: Path) -> str:
    d = t / "notes"
    d.mkdir()
    (d / "todo.txt").write_text("x")
    return str(d)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, made, capsys):
    name, build, needle = case
    cfg = _tiny(tmp_path)
    argv, out = build(tmp_path, cfg, made)
    if out == "skip-out":
        argv = [a for a in argv if a != "--no-out"]
        out = None
    else:
        out = Path(out) if out else tmp_path / "new_run"
        argv += ["--out", str(out)]
    before = _snapshot(out) if out else {}
    existed = bool(out and out.exists())
    capsys.readouterr()
    try:
        code = main(["train", *argv, "--quiet"])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    if out:
        assert out.exists() == existed
        if out.is_dir():
            assert _snapshot(out) == before
            assert not (out / "LOCK").exists()


@pytest.mark.parametrize("args", [["bogus=1"], ["--device", "cuda"] if not torch.cuda.is_available() else ["loss=x"]])
def test_bad_input_through_a_real_process(tmp_path, args):
    r = _cli([str(_tiny(tmp_path)), *args, "--out", str(tmp_path / "r")])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()


def _complete(out: Path) -> None:
    """After a kill: every visible file is whole (temp files aside)."""
    from safetensors.torch import load_file

    index = json.loads((out / "checkpoints" / "index.json").read_text()) if (out / "checkpoints" / "index.json").exists() else None
    for p in out.rglob("*.safetensors"):
        if not p.name.startswith("."):
            load_file(str(p))
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
        json.loads(line)
    if index:
        for e in index["checkpoints"]:
            assert (out / e["file"]).is_file()


def test_sigkill_at_several_points_then_resume_is_bit_identical(tmp_path):
    steps = 80
    cfg = _tiny(tmp_path, steps)
    ref = tmp_path / "ref"
    train(str(cfg), ref, quiet=True)  # uninterrupted, in this process (1 thread, as the child)
    out = tmp_path / "killed"
    kills = []
    for target in (0, 20, 45):  # kill once checkpoint `target` is committed, plus a little
        p = subprocess.Popen([sys.executable, "-m", "hyenalens", "train", str(cfg), "--out", str(out), "--quiet",
                              "--threads", "1"], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            idx = out / "checkpoints" / "index.json"
            try:
                done = json.loads(idx.read_text())["checkpoints"][-1]["step"] if idx.exists() else -1
            except (ValueError, KeyError, IndexError, OSError):
                done = -1
            if done >= target:
                time.sleep(0.01 * len(kills))  # land at different phases of a step / a write
                break
            time.sleep(0.005)
        assert p.poll() is None, f"the run ended before the kill at {target}: {p.stderr.read().decode()[-500:]}"
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills.append(done)
        _complete(out)
    assert len(set(kills)) == 3
    assert train(str(cfg), out, quiet=True).finished  # the resume (same code path as the command)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == "LOCK"]
    from safetensors.torch import load_file

    last = f"checkpoints/step_{steps:08d}.safetensors"
    a, b = load_file(str(ref / last)), load_file(str(out / last))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]  # noqa: E731
    assert strip(read_jsonl(out / "metrics.jsonl")) == strip(read_jsonl(ref / "metrics.jsonl"))
    assert json.loads((out / "checkpoints" / "index.json").read_text())["checkpoints"] == \
        json.loads((ref / "checkpoints" / "index.json").read_text())["checkpoints"]
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert len(sessions) >= 2 and all(s["threads"] == 1 for s in sessions)

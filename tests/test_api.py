"""The notebook API (issue 17): `hyenalens.load_run` (any checkpoint by step, both model kinds,
the run's tables and data), the lazy `hyenalens` namespace (no torch until a heavy name is used),
the one-line error when a user's own folder shadows a layer, and the README's example as written."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import hyenalens as hl
from models.config.schema import RunConfig
from models.data.batches import generate
from models.errors import UserError
from models.hyena.lm import HyenaLM
from models.rundir.io import read_jsonl
from models.rundir.layout import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY = ["schedule.steps=20", "model.d_model=8", "data.num_examples=200", "data.num_test_examples=32",
        "eval.train_subset=32", "schedule.batch_size=16"]
PRESETS = {"hyena": "quick_ar_causal_all", "attention": "quick_ar_attention_causal_all"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 20-step run of each model kind (d_model 8, length 16): a few seconds each."""
    base = tmp_path_factory.mktemp("api")
    out = {}
    for kind, preset in PRESETS.items():
        out[kind] = base / kind
        hl.train(preset, out[kind], TINY, quiet=True)
    return out


def weights_of(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run_dir).checkpoint_file(step)))


def holds(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> bool:
    """The model's state equals a checkpoint file's tensors, key for key."""
    sd = model.state_dict()
    return all(torch.equal(sd[k], v) for k, v in tensors.items())


def gap(steps: list[int]) -> tuple[int, int]:
    """Two neighbouring saved steps with at least two unsaved steps between them."""
    return next((a, b) for a, b in zip(steps, steps[1:]) if b - a >= 3)


# ---- load_run -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(PRESETS))
def test_steps_config_and_each_checkpoint_by_step(runs, kind):
    run = hl.load_run(runs[kind])
    steps = run.steps
    assert steps == [s for s, _ in RunDir(runs[kind]).list_checkpoints()] and steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == 20 and len(steps) >= 4
    assert isinstance(run.config, RunConfig) and run.kind == kind and run.config.model.d_model == 8
    first, last = run.model(steps[0]), run.model(steps[-1])
    assert isinstance(last, HyenaLM) == (kind == "hyena") and not last.training
    assert holds(first, weights_of(runs[kind], steps[0])) and holds(last, weights_of(runs[kind], steps[-1]))
    assert not holds(first, weights_of(runs[kind], steps[-1]))  # training moved the weights
    assert holds(run.model(), weights_of(runs[kind], steps[-1]))  # no step: the last one


@pytest.mark.parametrize("kind", list(PRESETS))
def test_checkpoints_test_split_and_metrics_agree_with_training(runs, kind):
    """Every checkpoint's model, scored on the regenerated test split's answers, gives the
    test_acc_last the trainer logged at that step: models, data and table all line up."""
    run = hl.load_run(runs[kind])
    inputs, targets, roles = split = run.test_split()
    want = generate(run.config, run.config.data_seed).split("test")
    assert torch.equal(split.inputs, want[0]) and torch.equal(split.targets, want[1])
    assert inputs.shape == (32, run.config.model.l_max) and roles.answer.shape == inputs.shape
    metrics = run.metrics
    assert isinstance(metrics, pd.DataFrame)
    assert metrics["step"].tolist() == [r["step"] for r in read_jsonl(RunDir(runs[kind]).metrics)]
    logged = dict(zip(metrics["step"], metrics["test_acc_last"]))
    seen = []
    with torch.inference_mode():
        for step, model in run.checkpoints():
            seen.append(step)
            assert holds(model, weights_of(runs[kind], step))
            acc = (model(inputs).argmax(-1) == targets)[roles.answer].float().mean().item()
            assert acc == pytest.approx(logged[step], abs=1e-6), step
    assert seen == run.steps


def test_a_step_not_saved_lists_the_nearby_steps_or_loads_the_nearest(runs):
    run = hl.load_run(runs["hyena"])
    a, b = gap(run.steps)
    with pytest.raises(UserError) as err:
        run.model(a + 1)
    msg = str(err.value)
    assert "\n" not in msg and f"step {a + 1} was not saved" in msg and "nearest=True" in msg
    listed = [int(s) for s in re.search(r"nearby saved steps: ([\d, ]+)", msg).group(1).split(", ")]
    assert a in listed and b in listed and set(listed) <= set(run.steps)
    assert holds(run.model(a + 1, nearest=True), weights_of(runs["hyena"], a))
    assert holds(run.model(b - 1, nearest=True), weights_of(runs["hyena"], b))
    assert run.nearest_step(10_000) == run.steps[-1] and run.nearest_step(-5) == 0
    for bad in ("20", 20.0, True):
        with pytest.raises(UserError, match="a checkpoint step is an integer"):
            run.model(bad)
    assert list(s for s, _ in run.checkpoints([b, a])) == [b, a]
    with pytest.raises(UserError, match="was not saved"):
        next(run.checkpoints([a + 1]))


def test_missing_outputs_name_the_command_that_makes_them(runs, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(runs["hyena"], path)
    run = hl.load_run(path)
    with pytest.raises(UserError, match=r"hyenalens probe .*run"):
        run.circuit_metrics
    with pytest.raises(UserError, match=r"hyenalens capture .*run"):
        run.probe_set()
    hl.capture_run(path, n_probe=16, progress=False, steps=[20])
    ps = run.probe_set()
    assert isinstance(ps, hl.ProbeSet) and ps.n == 16
    test_rows = {tuple(r) for r in run.test_split().inputs.tolist()}
    assert all(tuple(r) in test_rows for r in ps.inputs.tolist())  # drawn from the test split
    table = pd.DataFrame({"step": [0, 20], "metric": ["swap_follow"] * 2, "layer": [0, 0], "value": [0.1, 0.9]})
    run.dir.analysis.mkdir(exist_ok=True)
    table.to_csv(run.dir.metrics_csv, index=False)
    pd.testing.assert_frame_equal(run.circuit_metrics, table)


def test_not_a_run_or_not_trained_yet(runs, tmp_path):
    with pytest.raises(UserError, match="not a HyenaLens run directory"):
        hl.load_run(tmp_path)
    shutil.copy(RunDir(runs["hyena"]).config, tmp_path / "config.yaml")
    run = hl.load_run(tmp_path)
    assert run.steps == [] and "no checkpoints" in repr(run)
    with pytest.raises(UserError, match="no saved checkpoints yet.*hyenalens train"):
        run.model()
    with pytest.raises(UserError, match="no metrics.jsonl yet"):
        run.metrics


# ---- the namespace --------------------------------------------------------------------------
def _python(code: str, cwd: Path, *first: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -c code` in `cwd`, with `first` ahead of the checkout on PYTHONPATH (as a user
    whose own folder comes first would have it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, first), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_import_hyenalens_is_torch_free_until_a_heavy_name_is_used(tmp_path):
    code = (
        "import sys, hyenalens as hl\n"
        "heavy = ('torch', 'transformer_lens', 'matplotlib', 'sklearn', 'pandas')\n"
        "v = hl.__version__\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "assert {'load_run', 'build_model', 'HyenaLM', 'implicit_attention', '__version__'} <= set(dir(hl))\n"
        "hl.build_model\n"
        "assert 'torch' in sys.modules\n"
        "print(v)\n"
    )
    res = _python(code, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == importlib.metadata.version("hyenalens")


def test_version_falls_back_to_setup_cfg(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    cfg = (REPO / "setup.cfg").read_text()
    assert hl._version() == re.search(r"^version\s*=\s*(\S+)", cfg, re.M).group(1)


def test_every_export_is_the_defining_modules_object():
    for name, module in hl._EXPORTS.items():
        assert getattr(hl, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hl.nope


def test_layer_table_covers_the_import_graph():
    """LAYER_DEPENDS (which layers a name needs checked) holds every first-party import: a new
    arrow, say analysis → interp, fails here until the table names it."""
    from test_imports import _graph

    graph, _ = _graph()
    for key, allowed in hl.LAYER_DEPENDS.items():
        mods = [m for m in graph if m == key or (m.split(".")[0] == key and "." not in key)]
        assert mods, key
        needed = {t.split(".")[0] for m in mods for t in graph[m]} | {key.split(".")[0]}
        needed.discard("hyenalens")
        assert needed <= set(allowed), (key, needed - set(allowed))
    assert all(m in hl.LAYER_DEPENDS or m.split(".")[0] in hl.LAYER_DEPENDS for m in hl._EXPORTS.values())


def test_a_users_models_folder_is_named_with_the_fix(tmp_path):
    user = tmp_path / "project"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text("MY_MODELS = 1\n")
    res = _python("import hyenalens as hl; hl.build_model", user, user)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("hyenalens.PackageShadowedError: HyenaLens' top-level package `models` is shadowed by "
                           f"{user / 'models'}"), res.stderr
    assert "run from another folder or rename yours" in last and str(REPO / "models") in last


def test_a_namespace_folder_or_a_module_file_is_named_too(tmp_path, monkeypatch):
    """A `models/` without __init__.py wins over an editable install's finder (a namespace
    package), and a `models.py` over any install: both are named. (In-process, with the spec
    Python would find, since which one wins depends on how HyenaLens was installed.)"""
    from importlib.machinery import ModuleSpec

    folder, module = tmp_path / "models", tmp_path / "models.py"
    specs = {"namespace": ModuleSpec("models", None, is_package=True), "module": ModuleSpec("models", None, origin=str(module))}
    specs["namespace"].submodule_search_locations = [str(folder)]
    for shape, where in (("namespace", folder), ("module", module)):
        monkeypatch.setattr(hl, "_checked", set())
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: specs[shape])
        with pytest.raises(ImportError, match=f"`models` is shadowed by {re.escape(str(where))},") as err:
            hl.check_package("models")
        assert isinstance(err.value, hl.PackageShadowedError) and err.value.path == str(where)
    monkeypatch.undo()
    monkeypatch.setattr(hl, "_checked", set())
    hl.check_package("models")  # ours passes
    assert hl._checked == {"models"}


def test_only_the_layers_a_name_needs_are_checked(tmp_path):
    user = tmp_path / "project"
    (user / "analysis").mkdir(parents=True)
    (user / "analysis" / "__init__.py").write_text("")
    code = ("import hyenalens as hl\nhl.build_model\ntry:\n    hl.analyze_run\nexcept ImportError as e:\n"
            "    print(type(e).__name__, e.name, e.path)\n")
    res = _python(code, user, user)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["PackageShadowedError", "analysis", str(user / "analysis")]


# ---- the README -----------------------------------------------------------------------------
@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using the models", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    res = _python(code, tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert RunDir(tmp_path / "runs" / "quick").checkpoint_steps()[-1] == 20  # it made its own run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # and nothing it did not make

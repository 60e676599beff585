"""The CLI's rough edges a new user hit (issue 17): what each command prints around its progress
bars, `--version`, and the messages that say what is missing, what is foreign, what was meant
and what is expected. Tiny runs (d_model 16, L 16, 8 steps), made once per module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyenalens.cli import main
from interp.capture import capture_run, resolve_hooks
from models import build_model
from models.errors import UserError
from models.training.loop import train
from reports.report import _Figures

REPO = Path(__file__).resolve().parents[1]

TINY_YAML = """\
seed: 0
loss: all
model: {MODEL}
data: {task: ar, vocab_size: 10, input_seq_len: 16, num_examples: 256, num_test_examples: 64}
optimizer: {lr: 3.0e-3}
schedule: {steps: 8, batch_size: 16}
checkpoints: {log_count: 4, every: 4, adaptive: false}
eval: {train_subset: 64}
"""
HYENA = "{kind: hyena, d_model: 16, n_layers: 2, filter_order: 16}"
ATTENTION = "{kind: attention, d_model: 16, n_layers: 2, n_heads: 2}"
# the top of a safari (Lightning/Hydra) config.yaml: not ours
SAFARI_YAML = "trainer: {max_epochs: 3}\nloader: {batch_size: 32}\ndataset: {_name_: icl_synthetics}\nmodel: {d_model: 8}\n"


def _config(folder: Path, model: str = HYENA) -> Path:
    path = folder / ("attention.yaml" if model == ATTENTION else "hyena.yaml")
    path.write_text(TINY_YAML.replace("{MODEL}", model))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(config, a trained run, the same run captured); copy them before changing them."""
    base = tmp_path_factory.mktemp("edges")
    cfg = _config(base)
    train(str(cfg), base / "trained", quiet=True)
    shutil.copytree(base / "trained", base / "captured")
    capture_run(base / "captured", n_probe=32, progress=False)
    return cfg, base / "trained", base / "captured"


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / src.name
    shutil.copytree(src, out)
    return out


def _lines(text: str) -> list[str]:
    return text.split("\n")


# ---- progress bars -----------------------------------------------------------------------------
def test_attention_training_prints_no_device_move(tmp_path, capsys):
    """TransformerBridge.to prints "Moving model to device: cpu" on stdout, into the demo's bar."""
    train(str(_config(tmp_path, ATTENTION)), tmp_path / "att", quiet=True)
    out, err = capsys.readouterr()
    assert "Moving model" not in out + err
    assert (tmp_path / "att" / "checkpoints" / "index.json").is_file()  # it did train


def test_rerun_of_a_finished_train_draws_no_bar(runs, tmp_path, capsys):
    cfg, trained, _ = runs
    out_dir = _copy(trained, tmp_path)
    assert main(["train", str(cfg), "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "finished at step 8" in out
    assert "100%" not in err and "train:" not in err, err  # no bar at all: nothing was trained


def test_a_resumed_train_draws_one_bar_to_the_end(runs, tmp_path, capsys):
    """The other side of the rule above: a run with steps left still shows its bar."""
    cfg, trained, _ = runs
    out_dir = tmp_path / "partial"
    train(str(cfg), out_dir, quiet=True, max_steps=4)
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "finished at step 8" in out and "8/8" in err


def test_interrupted_message_has_a_line_of_its_own(runs, tmp_path, capsys, monkeypatch):
    """probe_run closes its bar only when it finishes; an interrupt inside it leaves the bar
    open (its frame lives on in the traceback), and the message must still start a new line."""
    import interp.run_metrics as rm

    run = _copy(runs[2], tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rm, "evaluate_model", interrupted)
    assert main(["probe", str(run)]) == 130
    err = capsys.readouterr().err
    assert "probe captured:" in err  # the bar was drawn
    message = "hyenalens probe: interrupted; rerun the same command to resume"
    assert message in _lines(err), repr(err)


# ---- --version -----------------------------------------------------------------------------------
def test_version_prints_the_distribution_version_without_torch():
    child = ("import sys\nfrom hyenalens.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
             "    print('exit', e.code, 'torch' in sys.modules, 'transformer_lens' in sys.modules, file=sys.stderr)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    version = next(line.split("=", 1)[1].strip() for line in (REPO / "setup.cfg").read_text().splitlines()
                   if line.replace(" ", "").startswith("version="))
    assert res.stdout == f"hyenalens {version}\n"
    assert res.stderr.strip() == "exit 0 False False", res.stderr


# ---- analyze / report: say what is missing and why ---------------------------------------------
def test_analyze_before_capture_names_what_is_missing(runs, tmp_path, capsys):
    run = _copy(runs[1], tmp_path)
    assert main(["analyze", str(run)]) == 0  # the training curves are still timed
    out, err = capsys.readouterr()
    assert "curves timed" in out
    assert f"{run}: no analysis/metrics.csv" in err and "recall circuit are not" in err
    assert f"`hyenalens capture {run}` and `hyenalens probe {run}`" in err


def test_analyze_after_capture_asks_only_for_probe(runs, tmp_path, capsys):
    run = _copy(runs[2], tmp_path)
    assert main(["analyze", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"run `hyenalens probe {run}`" in err and "hyenalens capture" not in err


def test_report_progress_line_gives_the_skip_reason(tmp_path, capsys):
    from reports.figures_common import FigureSkipped

    def skipped(*args, out_dir=None):
        raise FigureSkipped("no analysis/metrics.csv (run `hyenalens probe RUN`)")

    def broken(*args, out_dir=None):
        raise ValueError("bad numbers")

    figs = _Figures(tmp_path, progress=True)
    figs.draw("figure 2 (r)", skipped)
    figs.draw("figure 3 (r)", broken)
    err = capsys.readouterr().err
    assert "report: figure 2 (r): skipped: no analysis/metrics.csv (run `hyenalens probe RUN`) (" in err
    assert "report: figure 3 (r): error: ValueError: bad numbers (" in err
    assert [r["status"] for r in figs.records] == ["skipped", "error"]


# ---- a foreign config.yaml -------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["capture", "probe", "train"])
def test_foreign_config_names_the_file_and_says_not_a_run(runs, tmp_path, capsys, command):
    folder = tmp_path / "safari_run"
    folder.mkdir()
    (folder / "config.yaml").write_text(SAFARI_YAML)
    argv = [command, str(folder)] if command != "train" else ["train", str(runs[0]), "--out", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert f"{folder / 'config.yaml'} is not a HyenaLens config: its key 'trainer'" in err
    assert f"so {folder} is not a HyenaLens run" in err and "hyenalens import-safari" in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]  # nothing written


def test_a_typo_in_a_run_config_names_the_file_and_the_key_meant(runs, tmp_path, capsys):
    run = _copy(runs[1], tmp_path)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("optimizer:", "optimiser:", 1))
    assert main(["capture", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: unknown config key optimiser; did you mean optimizer?" in err
    assert "not a HyenaLens run" not in err


# ---- hooks and smoke -------------------------------------------------------------------------------
@pytest.mark.parametrize("typo, meant", [("blocks.0.mixer.hook_gate0", "blocks.0.mixer.hook_gate_0"),
                                         ("blocks.1.hook_resid_psot", "blocks.1.hook_resid_post"),
                                         ("blocks.1.mixer.hook_filtr", "blocks.1.mixer.hook_filter")])
def test_misspelled_hook_gets_did_you_mean(typo, meant):
    model = build_model(dict(kind="hyena", vocab_size=10, d_model=8, n_layers=2, l_max=16), seed=0)
    with pytest.raises(UserError, match="did you mean") as e:
        resolve_hooks(model, [typo])
    assert str(e.value).split("did you mean ")[1].startswith(meant)


def test_capture_cli_suggests_the_hook_meant(runs, tmp_path, capsys):
    run = _copy(runs[1], tmp_path)
    assert main(["capture", str(run), "--hooks", "blocks.0.hook_resid_psot", "--n-probe", "16", "--quiet"]) == 2
    assert "did you mean blocks.0.hook_resid_post" in capsys.readouterr().err


def test_smoke_says_a_noncausal_leak_is_expected(capsys):
    from hyenalens.smoke import smoke

    assert smoke() == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "future leak" in line]
    assert len(lines) == 5
    for line in lines:
        noncausal = "non-causal" in line.split("logits")[0] or "bidirectional" in line
        assert line.startswith("ok")
        assert ("expected" in line) == noncausal, line

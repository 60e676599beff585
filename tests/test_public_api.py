"""The public names a researcher's code and scripts use keep working (the redesign's item 7):
the package entry points, `interp.__all__`, `reports`'s four names, and every CLI command with
its flags (pinned here: a change to the command line shows up as a failing test)."""
from __future__ import annotations

import argparse

import pytest

CLI = {
    "analyze": ["--help", "--out", "-h", "run_dirs"],
    "capture": ["--help", "--hooks", "--limit", "--n-probe", "--probe-seed", "--quiet", "--threads", "-h", "run_dir"],
    "demo": ["--attention-seeds", "--help", "--out", "--quick", "--quiet", "--seeds", "--workers", "-h", "overrides"],
    "import-safari": ["--help", "--out", "--quiet", "--threads", "--trust-pickle", "-h", "safari_dir"],
    "probe": ["--force", "--help", "--quiet", "--threads", "-h", "run_dir"],
    "report": ["--all-runs", "--group", "--help", "--out", "--quiet", "-h", "run_dirs"],
    "smoke": ["--help", "--quiet", "-h"],
    "study": ["--help", "--lr-sweep", "--out", "-h", "sweep_dir"],
    "sweep": ["--address", "--backend", "--help", "--only", "--out", "--quiet", "--threads", "--workers", "-h",
              "sweep"],
    "train": ["--device", "--help", "--max-steps", "--out", "--quiet", "--threads", "-h", "config", "overrides"],
}


def test_models_entry_points():
    import models
    import models.hyena
    import models.safari
    import models.synthetics
    from models import HyenaConfig, HyenaLM, HyenaOperator, build_model, icl_dataset

    assert models.synthetics.icl_dataset is icl_dataset
    assert models.hyena.HyenaOperator is HyenaOperator and callable(HyenaOperator.from_safari)
    assert callable(models.safari.load_state_dict)
    lm = build_model({"kind": "hyena", "vocab_size": 10, "d_model": 8, "n_layers": 1, "l_max": 8}, seed=0)
    assert isinstance(lm, HyenaLM) and isinstance(lm.cfg, HyenaConfig)


def test_interp_and_reports_names():
    import interp
    import reports

    assert "implicit_attention" in interp.__all__ and callable(interp.implicit_attention)
    for name in interp.__all__:
        assert getattr(interp, name) is not None, name
    assert set(reports.__all__) == {"RunData", "discover_runs", "load_run_data", "write_report"}
    from reports import RunData, discover_runs, load_run_data, write_report  # noqa: F401


def test_every_command_and_flag():
    from hyenalens.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    got = {name: sorted(o for a in sp._actions for o in a.option_strings)
           + sorted(a.dest for a in sp._actions if not a.option_strings)
           for name, sp in sub.choices.items()}
    assert got == CLI


@pytest.mark.parametrize("name", ["ar_causal_all", "quick_ar_attention_causal_all"])
def test_presets_ship_with_the_package(name):
    from models.config.source import load_config

    assert load_config(name).model.kind in ("hyena", "attention")

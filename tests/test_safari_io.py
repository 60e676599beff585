"""Loading safari files: safetensors, safe Lightning .ckpt, refusals, the import boundary."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models import HyenaLM, UserError
from models.safari.conversion import lm_config_from_safari, load_state_dict

TRAJ = "safari_ar_v10_l64_o2"


def _safari_sd(fixtures):
    return load_state_dict(fixtures / TRAJ / "step_000000.safetensors")


def test_lightning_ckpt_loads_without_unpickling(tmp_path, fixtures):
    sd = _safari_sd(fixtures)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)


class _Opaque:  # anything a weights-only unpickler must refuse
    pass


def test_ckpt_needing_full_unpickling_is_refused_unless_trusted(tmp_path, fixtures):
    sd = _safari_sd(fixtures)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "hparams": _Opaque()}, path)
    with pytest.raises(UserError, match="trust_pickle=True"):
        load_state_dict(path)
    assert set(load_state_dict(path, trust_pickle=True)) == set(sd)


def test_truncated_and_missing_files_are_user_errors(tmp_path, fixtures):
    src = (fixtures / TRAJ / "step_000000.safetensors").read_bytes()
    bad = tmp_path / "torn.safetensors"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_state_dict(bad)
    with pytest.raises(UserError, match="no such checkpoint"):
        load_state_dict(tmp_path / "absent.safetensors")


def test_safari_model_config_translation_and_refusals(fixtures):
    cfg = yaml.safe_load((fixtures / TRAJ / "config.yaml").read_text())["model"]
    hc = lm_config_from_safari(cfg)
    assert (hc.d_model, hc.n_layers, hc.d_inner, hc.l_max, hc.emb_dim, hc.w, hc.lr_pos_emb) == (64, 2, 256, 66, 5, 10, 0.0)
    with pytest.raises(UserError, match="attn_layer_idx"):
        lm_config_from_safari({**cfg, "attn_layer_idx": [1]})
    with pytest.raises(UserError, match="num_heads"):
        lm_config_from_safari({**cfg, "layer": {**cfg["layer"], "num_heads": 4}})


def test_checkpoint_from_another_architecture_is_refused(fixtures):
    cfg = yaml.safe_load((fixtures / TRAJ / "config.yaml").read_text())["model"]
    sd = _safari_sd(fixtures)
    with pytest.raises(UserError, match="shape"):
        HyenaLM.from_safari(sd, {**cfg, "d_inner": 128})
    with pytest.raises(UserError, match="missing"):
        HyenaLM.from_safari(sd, {**cfg, "n_layer": 3})


def test_importing_models_pulls_no_plotting_or_analysis_library():
    code = ("import sys, models; from models import HyenaLM, HyenaConfig, build_model;"
            "heavy = [m for m in ('matplotlib', 'seaborn', 'sklearn', 'captum') if m in sys.modules];"
            "print(','.join(heavy))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={**__import__('os').environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""

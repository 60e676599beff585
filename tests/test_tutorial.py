"""docs/tutorial.ipynb runs from top to bottom (nbclient, a real kernel) on a small run that the
test makes itself: trained, captured and probed through the package's own calls."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tutorial_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    import torch

    from interp.capture import capture_run
    from interp.run_metrics import probe_run
    from models.training.loop import train

    torch.set_num_threads(1)
    run = tmp_path / "run"
    train("quick_ar_causal_all", run, ["schedule.steps=40", "checkpoints.every=20",
                                        "checkpoints.adaptive=false"], quiet=True)
    capture_run(run, progress=False)
    probe_run(run, progress=False)
    nb = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    monkeypatch.setenv("HYENALENS_TUTORIAL_RUN", str(run))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "saved steps: [0," in text and ", 40]" in text
    assert "HyenaActivationCache" in text or "ActivationCache" in text
    assert "recall_swap_follow" in text and "terms + bias − hook_mixer_out" in text
    assert "answer probe, last layer" in text and "IProgress" not in text
    err = float(text.split("terms + bias − hook_mixer_out:")[1].split()[0])
    assert err < 1e-5  # the decomposition is exact, in the notebook too
    # the figures came back inline, as images, not as files
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    assert not list(tmp_path.glob("*.png"))

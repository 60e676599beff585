"""The benchmark suite (benchmarks/, the performance issues): its reference (safari's whole step,
sharing no code with ours) computes what our model computes (that is what keeps the ratios
honest), the GEMM floor has the step's shapes, safari's config maps back to ours, the memory
probe counts what it should, and `python -m benchmarks --quick` writes a well-formed
BENCHMARKS.md that keeps every section it did not generate. No timing assertions: the numbers
live in BENCHMARKS.md."""
from __future__ import annotations

import re

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.memory import LiveStorageBytes
from benchmarks.floor import gemm_flops, gemm_shapes
from benchmarks.reference import ReferenceAdamW, ReferenceHyenaOperator, ReferenceLM, reference_optimizer
from models import HyenaOperator, build_model
from models.errors import UserError
from models.training.optim import AdamW, param_groups
from tests.conftest import jitter_, tiny_hyena_config


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("causal, order", [(True, 2), (True, 3), (False, 2), (False, 3)])
def test_reference_operator_agrees_with_ours(causal, order):
    torch.manual_seed(0)
    op = jitter_(HyenaOperator(d_model=16, l_max=40, order=order, causal=causal, filter_order=16))
    ref = ReferenceHyenaOperator(op)
    x = torch.randn(3, 33, 16, requires_grad=True)
    y = op(x)
    gx, = torch.autograd.grad(y.square().sum(), x)
    y_ref = ref(x)
    gx_ref, = torch.autograd.grad(y_ref.square().sum(), x)
    assert _rel(y.detach(), y_ref.detach()) <= 1e-5
    assert _rel(gx, gx_ref) <= 1e-5
    # parameter gradients too (the train step differentiates them), on the reference's own copies
    for ours_p, ref_p in ((op.filter_fn.implicit_filter[0].weight, ref.filter_fn.ffn[0].weight),
                          (op.short_filter.weight, ref.short_filter.weight), (op.in_proj.weight, ref.in_proj.weight)):
        assert ours_p is not ref_p
        g1, = torch.autograd.grad(op(x).square().sum(), ours_p)
        g2, = torch.autograd.grad(ref(x).square().sum(), ref_p)
        assert _rel(g1, g2) <= 1e-5


@pytest.mark.parametrize("causal, order", [(True, 2), (False, 3)])
def test_reference_lm_and_torch_adamw_agree_with_ours(causal, order):
    model = jitter_(build_model(tiny_hyena_config(embed_dropout=0.0, causal=causal, order=order), seed=0))
    ref = ReferenceLM(model)
    ours_ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in ours_ids for p in ref.parameters())  # copies: nothing shared
    assert all(type(m).__module__.split(".")[0] in ("torch", "benchmarks") for m in ref.modules())
    tokens = torch.randint(0, 10, (2, 16))
    assert _rel(ref(tokens).detach(), model(tokens).detach()) <= 1e-5
    g1 = torch.autograd.grad(model(tokens).square().sum(), model.embed.weight)[0]
    g2 = torch.autograd.grad(ref(tokens).square().sum(), ref.embed.weight)[0]
    assert _rel(g2, g1) <= 1e-5
    o1, o2 = AdamW(param_groups(model, 0.1), lr=1e-2), reference_optimizer(ref, lr=1e-2)
    assert isinstance(o2, torch.optim.AdamW)
    assert sorted(len(g["params"]) for g in o2.param_groups) == sorted(len(g["params"]) for g in o1.param_groups)
    for m, o in ((model, o1), (ref, o2)):
        for _ in range(2):
            o.zero_grad()
            m(tokens).logsumexp(-1).mean().backward()
            o.step()
    assert _rel(ref(tokens).detach(), model(tokens).detach()) <= 1e-5


def test_reference_adamw_loop_agrees_with_ours():
    model = jitter_(build_model(tiny_hyena_config(), seed=0))
    twin = jitter_(build_model(tiny_hyena_config(), seed=0))
    o1, o2 = AdamW(param_groups(model, 0.1), lr=1e-2), ReferenceAdamW(param_groups(twin, 0.1), lr=1e-2)
    tokens = torch.randint(0, 10, (2, 16))
    for m, o in ((model, o1), (twin, o2)):
        for _ in range(2):
            o.zero_grad()
            m(tokens).logsumexp(-1).mean().backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_gemm_floor_has_the_steps_shapes():
    model = build_model(tiny_hyena_config(), seed=0)  # d 8, d_inner 32, order 2, vocab 10
    shapes = {name: rest for name, *rest in gemm_shapes(model, batch=3, L=16)}
    assert shapes["blocks.0.mixer.in_proj"] == [48, 8, 24] and shapes["blocks.1.mlp.fc2"] == [48, 32, 8]
    assert shapes["blocks.0.mixer.filter_fn.implicit_filter.0"][0] == 16  # filter FFN: one row per lag
    assert shapes["head (tied)"] == [48, 8, 10]
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(shapes) == n_linear + 1
    assert gemm_flops(model, 3, 16) == sum(6 * r * i * o for r, i, o in shapes.values())


def test_safari_model_config_maps_back_to_our_config():
    from benchmarks.safari_src import load_safari, safari_model_config
    from models.safari.conversion import lm_config_from_safari

    cfg = build_model(dict(kind="hyena", vocab_size=10, d_model=16, n_layers=2, l_max=66), seed=0).cfg
    assert lm_config_from_safari(safari_model_config(cfg)) == cfg
    with pytest.raises(UserError, match="point it at a checkout"):
        load_safari("/nonexistent/safari")


def test_live_storage_bytes_counts_allocations_until_freed():
    with LiveStorageBytes() as mode:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # +4000
        v = b[10:]  # a view: nothing new
        del a  # -4000
        c = torch.ones(250)  # +1000
        b.add_(1)  # in place: nothing new
    assert mode.peak == 8000 and mode.current == 5000 and mode.largest == 4000
    del v, b, c


def _check_markdown(text: str) -> None:
    """Markers come in begin/end pairs, and every table row has its header's column count."""
    begins = re.findall(r"<!-- bench:([\w:]+):begin -->", text)
    ends = re.findall(r"<!-- bench:([\w:]+):end -->", text)
    assert begins and sorted(begins) == sorted(ends)
    tables = re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.M)
    assert tables
    for table in tables:
        header, sep, *rows = table.strip("\n").split("\n")
        cols = header.count("|")
        assert set(sep.replace("|", "")) <= {"-"} and sep.count("|") == cols
        assert all(r.count("|") == cols for r in rows), (header, rows)


def test_quick_suite_writes_a_well_formed_file_and_keeps_other_sections(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nIntro kept.\n\n## `hyenalens demo` (after install)\n\n"
                   "Date: 2026-01-02\n\n| stage | seconds |\n|---|---|\n| wall clock | **123.4** |\n\n"
                   "## Sweeps\n\nAnother engineer's section.\n")
    assert main(["--quick", "--out", str(out), "--no-progress"]) == 0
    text = out.read_text()
    _check_markdown(text)
    for key in ("train", "operator", "levers", "hooks", "implicit", "capture", "demo"):
        assert f"<!-- bench:cpu:{key}:begin -->" in text
    assert "Intro kept." in text and "Another engineer's section." in text and "| wall clock | **123.4** |" in text
    assert "Last measured on 2026-01-02: **123.4 s**" in text  # the demo number carried forward
    assert text.index("bench:cpu:end") < text.index("## `hyenalens demo` (after install)")
    assert "torch " in text and "Measured " in text  # provenance: versions and date
    hooks_before = re.search(r"<!-- bench:cpu:hooks:begin -->.*?<!-- bench:cpu:hooks:end -->", text, re.S).group(0)
    # a second run of one section rewrites only that section
    assert main(["--quick", "--out", str(out), "--no-progress", "--only", "implicit"]) == 0
    again = out.read_text()
    _check_markdown(again)
    assert hooks_before in again and again.count("<!-- bench:cpu:implicit:begin -->") == 1
    assert "Another engineer's section." in again
    capsys.readouterr()


def test_study_section_measures_runs_per_cpu_hour(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--out", str(out), "--no-progress", "--only", "study"]) == 0
    text = out.read_text()
    _check_markdown(text)
    block = re.search(r"<!-- bench:cpu:study:begin -->.*?<!-- bench:cpu:study:end -->", text, re.S).group(0)
    for tree in ("this tree", "this tree, model.kernels=cpp"):
        row = re.search(rf"^\| {tree} \| 1 \| ([\d.]+) \|.*$", block, re.M)
        assert row and float(row.group(1)) > 0, tree
    assert "--baseline-src" in block  # no baseline given: the text says how to add one
    assert main(["--quick", "--out", str(out), "--safari-src", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_cuda_is_refused_cleanly_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["--device", "cuda", "--quick", "--out", str(tmp_path / "B.md")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_targets_keep_the_rows_of_sections_not_rerun():
    from benchmarks.report import Section
    from benchmarks.suite import targets_section

    first = targets_section([Section("train", "t", checks=[("train L=64", 0.9, 0.6)]),
                             Section("hooks", "h", checks=[("cache", 1.05, 1.1)])], None)
    old = first.markdown()
    again = targets_section([Section("hooks", "h", checks=[("cache", 1.2, 1.1)])], old).tables[0][1]
    assert [r[:5] for r in again] == [["train", "train L=64", "0.900", "≤ 0.6", "**not met**"],
                                      ["hooks", "cache", "1.200", "≤ 1.1", "**not met**"]]

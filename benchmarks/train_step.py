"""Train step (forward, cross-entropy, backward, AdamW) of HyenaLM against safari's whole step
(benchmarks/reference.py), safari's own code when `--safari-src` is given (benchmarks/safari_src.py),
the step's GEMM floor (benchmarks/floor.py) and the TransformerLens attention baseline, side by
side; and the operator alone."""
from __future__ import annotations

import contextlib
import copy
import io

import torch
import torch.nn.functional as F

from benchmarks.floor import gemm_floor, gemm_flops
from benchmarks.reference import ReferenceHyenaOperator, ReferenceLM, reference_optimizer
from benchmarks.report import Section
from benchmarks.timing import compare
from models.build import build_model
from models.training.optim import AdamW, param_groups

# the training-speed issue's CPU targets: ours / reference at L, ours / safari at L, ours / floor
REF_TARGETS = {64: 0.6, 1024: 0.6, 8192: 0.5}
SAFARI_TARGETS = {66: 0.6, 1026: 0.6, 8194: 0.45}
FLOOR_TARGETS = {(64, 32): 1.7}


def _step(model, opt, x, y):
    def run():
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return run


def _ms(t: float) -> str:
    return f"{t * 1e3:.1f}" if t < 10 else f"{t * 1e3:.0f}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _models(plan, L: int, safari_src: str | None):
    """(ours, safari or None): with a safari checkout, ours is built from safari's weights."""
    cfg = dict(kind="hyena", vocab_size=10, d_model=plan.d_model, n_layers=2, l_max=L)
    ours = build_model(cfg, seed=0)
    if safari_src is None:
        return ours, None
    from benchmarks.safari_src import safari_pair

    safari, ours = safari_pair(safari_src, ours.cfg, seed=0)
    return ours, safari


def _cpp_twin(ours):
    """Our model with `model.kernels=cpp` (models/kernels) and our weights: the opt-in CPU path."""
    twin = build_model({**ours.cfg.to_dict(), "kernels": "cpp"}, seed=0)
    twin.load_state_dict(ours.state_dict())
    return twin.train()


def _verdict(r: float, target: float | None) -> str:
    return "" if target is None else (f"≤ {target}: met" if r <= target else f"≤ {target}: **not met**")


def run(plan, bar, provenance: str, safari_src: str | None = None) -> list[Section]:
    dev, d = plan.device, plan.d_model
    clock = "cpu" if dev == "cpu" else "wall"
    rows, op_rows, cpp_rows, checks, agree = [], [], [], [], []
    for L, b, rounds in plan.train:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 10, (b, L), generator=g).to(dev)
        y = torch.randint(0, 10, (b, L), generator=g).to(dev)
        ours, safari = _models(plan, L, safari_src if dev == "cpu" else None)
        ours, ref = ours.to(dev), ReferenceLM(ours).to(dev)
        with torch.no_grad():  # the same function on both sides (eval: no dropout)
            probe = x[:2]
            want = ours.eval()(probe)
            agree.append((L, _rel(ref.eval()(probe), want), None if safari is None else _rel(safari.eval()(probe), want)))
        ours.train(), ref.train()
        cpp = _cpp_twin(ours) if dev == "cpu" else None
        if cpp is not None:  # a training forward (gradients on, one dropout mask): the kernels' numerics
            torch.manual_seed(0)
            want = ours(x).detach()
            torch.manual_seed(0)
            agree[-1] += (_rel(cpp(x).detach(), want),)
        free = copy.deepcopy(ours)
        for block in free.blocks:  # what the step costs without any mixer
            block.mixer = torch.nn.Identity()
        variants = {"ours": _step(ours, AdamW(param_groups(ours, 0.1), lr=1e-3), x, y),
                    "ref": _step(ref, reference_optimizer(ref, lr=1e-3), x, y),
                    "free": _step(free, AdamW(param_groups(free, 0.1), lr=1e-3), x, y),
                    "floor": gemm_floor(ours, b, L, dev)}
        if cpp is not None:
            variants["cpp"] = _step(cpp, AdamW(param_groups(cpp, 0.1), lr=1e-3), x, y)
        if safari is not None:
            safari = safari.to(dev).train()
            variants["safari"] = _step(safari, reference_optimizer(safari, lr=1e-3), x, y)
        with_att = L <= plan.attention_max_len
        if with_att:
            with contextlib.redirect_stdout(io.StringIO()):  # TL prints "Moving model to device"
                att = build_model(dict(kind="attention", vocab_size=10, d_model=d, n_layers=2, l_max=L), seed=0)
                att = att.to(dev).train()
            variants["attention"] = _step(att, AdamW(param_groups(att, 0.1), lr=1e-3), x, y)
        bar.set_postfix_str(f"train L={L}")
        t = compare(variants, rounds, warmup=1, device=dev, tick=bar.update, clock=clock)
        cpu_targets = dev == "cpu" and not plan.quick
        r = t.ratio("ours", "ref")
        ref_target = REF_TARGETS.get(L) if cpu_targets else None
        if ref_target is not None:
            checks.append((f"train step L={L} b={b}: ours / reference (safari's whole step)", r, ref_target))
        rs = t.ratio("ours", "safari") if safari is not None else None
        saf_target = SAFARI_TARGETS.get(L) if cpu_targets else None
        if saf_target is not None and rs is not None:
            checks.append((f"train step L={L} b={b}: ours / safari's own code", rs, saf_target))
        rf = t.ratio("ours", "floor")
        floor_target = FLOOR_TARGETS.get((L, b)) if cpu_targets else None
        if floor_target is not None:
            checks.append((f"train step L={L} b={b}: ours / GEMM floor", rf, floor_target))
        rows.append([
            L, b, _ms(t.median("ours")), _ms(t.median("ref")), f"**{r:.2f}**", _verdict(r, ref_target),
            _ms(t.median("safari")) if rs is not None else "not measured",
            f"**{rs:.2f}**" if rs is not None else "", _verdict(rs, saf_target) if rs is not None else "",
            _ms(t.median("floor")), f"{gemm_flops(ours, b, L) / t.median('floor') / 1e9:.0f}", f"**{rf:.2f}**",
            _verdict(rf, floor_target), _ms(t.median("free")), f"{t.ratio('free', 'ref'):.2f}",
            f"{t.ratio('ours', 'attention'):.2f}" if with_att else "skipped", t.spread("ours")])
        if cpp is not None:
            cpp_rows.append(_cpp_row(t, L, b, ref_target, saf_target, floor_target, rs is not None, checks))
        op_rows.append(_operator_row(ours, L, b, rounds, g, dev, clock, bar))
        del ours, ref, free, variants, safari, cpp
    return [_train_section(rows, cpp_rows, checks, agree, provenance, d, clock),
            Section("operator", "The Hyena operator alone", provenance,
                    text=["One `HyenaOperator` (the first layer's mixer) against `ReferenceHyenaOperator` on "
                          "copies of the same weights: forward + backward in train mode, and an eval forward "
                          "without gradients (where our operator reuses its cached filters). Same clock as above."],
                    tables=[(["L", "batch", "fwd+bwd ours ms", "fwd+bwd ref ms", "ratio", "eval fwd ours ms",
                              "eval fwd ref ms", "ratio"], op_rows)])]


def _cpp_row(t, L, b, ref_target, saf_target, floor_target, with_safari: bool, checks: list) -> list:
    """The `model.kernels=cpp` row of one size; its targets join `checks` (the same bounds as ours)."""
    what = f"train step L={L} b={b}: ours with model.kernels=cpp / "
    r, rf = t.ratio("cpp", "ref"), t.ratio("cpp", "floor")
    rs = t.ratio("cpp", "safari") if with_safari else None
    for name, ratio, target in (("reference (safari's whole step)", r, ref_target), ("safari's own code", rs, saf_target),
                                ("GEMM floor", rf, floor_target)):
        if target is not None and ratio is not None:
            checks.append((what + name, ratio, target))
    return [L, b, _ms(t.median("cpp")), f"**{t.ratio('cpp', 'ours'):.2f}**", f"**{r:.2f}**", _verdict(r, ref_target),
            f"**{rs:.2f}**" if rs is not None else "not measured", _verdict(rs, saf_target) if rs is not None else "",
            f"**{rf:.2f}**", _verdict(rf, floor_target), t.spread("cpp")]


def _operator_row(ours, L, b, rounds, g, dev, clock, bar) -> list:
    op = ours.blocks[0].mixer
    ref_op = ReferenceHyenaOperator(op).to(dev)
    u = torch.randn(b, L, op.d_model, generator=g).to(dev).requires_grad_(True)
    gy = torch.randn(b, L, op.d_model, generator=g).to(dev)

    def fb(m):
        return lambda: m(u).backward(gy)

    def fwd(m):
        def run():
            with torch.no_grad():
                m(u)
        return run

    to = compare({"ours": fb(op), "ref": fb(ref_op)}, rounds, warmup=1, device=dev, clock=clock)
    op.eval()  # (train() and eval() drop the filter cache: switch once, not per call)
    te = compare({"ours": fwd(op), "ref": fwd(ref_op)}, rounds, warmup=1, device=dev, tick=bar.update, clock=clock)
    op.train()
    return [L, b, _ms(to.median("ours")), _ms(to.median("ref")), f"{to.ratio('ours', 'ref'):.2f}",
            _ms(te.median("ours")), _ms(te.median("ref")), f"{te.ratio('ours', 'ref'):.2f}"]


def _train_section(rows, cpp_rows, checks, agree, provenance, d, clock) -> Section:
    worst_ref = max(a[1] for a in agree)
    saf = [a[2] for a in agree if a[2] is not None]
    cpp = [a[3] for a in agree if len(a) > 3]
    check = (f"Before timing, each size checks that the reference's logits equal ours (largest relative "
             f"difference {worst_ref:.1e})" + (f" and safari's too ({max(saf):.1e})" if saf else "") + ".")
    tables = [(["L", "batch", "ours ms", "reference ms", "ours / ref", "target", "safari ms", "ours / safari",
                "target", "GEMM floor ms", "floor GFLOP/s", "ours / floor", "target", "no operator ms",
                "no operator / ref", "ours / attention", "spread"], rows)]
    text = []
    if cpp_rows:
        text = [f"**With `model.kernels=cpp`** (opt-in, models/kernels: the MLP's bias + GELU-tanh, the operator's "
                "short conv and gate products as compiled CPU kernels; evaluation and hooks keep torch's ops). "
                "*cpp* (the second table): our model with that setting and our weights, timed in the same "
                f"interleaved rounds as the first table; its training-mode logits differed from ours by at most {max(cpp):.1e} "
                "(relative, one dropout mask). The targets are the same bounds as ours."]
        tables.append((["L", "batch", "cpp ms", "cpp / ours", "cpp / ref", "target", "cpp / safari", "target",
                        "cpp / floor", "target", "spread"], cpp_rows))
    timer = ("CPU seconds of the measuring thread (`time.thread_time`: with one torch thread that is all "
             "the work of a step, and unlike wall time it does not count waiting for a core on a shared "
             "machine)" if clock == "cpu" else "wall seconds, synchronized")
    return Section(
        "train", "Train step: HyenaLM vs safari's step", provenance,
        text=["One optimizer step (forward, cross-entropy on every position, backward, AdamW) of a 2-layer "
              f"HyenaLM (d_model {d}, d_inner {4 * d}, order 2, causal, embedding dropout 0.1, vocab 10). "
              "*Reference*: safari's whole step written from its algorithm with nothing of ours "
              "(benchmarks/reference.py: its operator, `nn.Linear` → `nn.GELU(tanh)` → `nn.Linear` MLP, "
              "`nn.LayerNorm`, `nn.Embedding`, the tied head, `torch.optim.AdamW`) on copies of our "
              "weights. *safari*: safari's own `SimpleLMHeadModel` from the checkout given by "
              "`--safari-src PATH` (benchmarks/safari_src.py), our model then loaded from its weights by "
              "`HyenaLM.from_safari`, with `torch.optim.AdamW`; \"not measured\" without it. *GEMM floor*: "
              "every `nn.Linear` and the tied head, forward and backward, as `torch.mm` into preallocated "
              "tensors (benchmarks/floor.py); GFLOP/s is the floor's rate. *No operator*: our step with each "
              "mixer replaced by the identity. Attention: the TransformerLens baseline with our AdamW. "
              f"Times: median over interleaved rounds of {timer}; ratio = median over rounds of ours / "
              "other within the round; spread = interquartile range / median of ours. " + check, *text],
        tables=tables, checks=checks)

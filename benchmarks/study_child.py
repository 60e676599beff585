"""One run of the study recipe, timed per stage: the child process of the study-throughput
section (benchmarks/study_bench.py). Run it as a file, not as a module, with PYTHONPATH set to
the source tree being measured, so that the same script times this tree or another checkout
(the HEAD a change started from):

    PYTHONPATH=TREE python benchmarks/study_child.py OUT_DIR SEED STAGES LIMIT [KEY=VALUE ...]

STAGES is `train` or `all` (train, capture, probe, analyze); LIMIT is the most checkpoints
captured and probed (`none`: all), KEY=VALUE the recipe's overrides. The parent
(benchmarks/study_bench.py) passes the study's recipe from its owner, `hyenalens.pipeline.DEMO`,
so both trees of a comparison run this tree's recipe. Prints one JSON line: CPU seconds
(`time.process_time`, this process, one torch thread) and wall seconds per stage, the steps
trained, the checkpoints written, the CPU seconds of training spent at checkpoints (evaluation
and saving) and in evaluation alone, and where `models` was imported from. Only functions that
exist in every tree this is pointed at are used.
"""
from __future__ import annotations

import inspect
import json
import sys
import time

PRESET = "ar_causal_all"  # the study's first regime, with the recipe's overrides


def main(argv: list[str]) -> None:
    out, seed, stages, extra = argv[0], int(argv[1]), argv[2], argv[4:]
    limit = None if argv[3] == "none" else int(argv[3])
    import torch

    torch.set_num_threads(1)
    from hyenalens.runtime import tune_malloc

    tune_malloc()
    import models
    from models.training import loop

    times: dict[str, list[float]] = {}
    inside = {"checkpoint": 0.0, "evaluate": 0.0}

    def counted(name, fn):  # CPU seconds spent inside fn, summed over calls
        def wrapper(*args, **kwargs):
            c0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                inside[name] += time.process_time() - c0
        return wrapper

    loop.Trainer._checkpoint = counted("checkpoint", loop.Trainer._checkpoint)  # evaluate + save
    loop.evaluate = counted("evaluate", loop.evaluate)

    def timed(name, fn, *args, **kwargs):
        c0, w0 = time.process_time(), time.perf_counter()
        res = fn(*args, **kwargs)
        times[name] = [time.process_time() - c0, time.perf_counter() - w0]
        return res

    result = timed("train", loop.train, PRESET, out, [f"seed={seed}", *extra], quiet=True)
    if stages == "all":
        from analysis import analyze_run
        from interp.capture import capture_run
        from interp.run_metrics import probe_run

        kw = {"limit": limit} if "limit" in inspect.signature(capture_run).parameters else {}
        timed("capture", capture_run, out, progress=False, **kw)
        timed("probe", probe_run, out, progress=False)
        timed("analyze", analyze_run, out)
    print(json.dumps({"cpu": {k: v[0] for k, v in times.items()}, "wall": {k: v[1] for k, v in times.items()},
                      "inside_train": inside, "step": result.step, "checkpoints": result.checkpoints, "models": models.__file__}))


if __name__ == "__main__":
    main(sys.argv[1:])

"""HyenaLens analysis: transition timing, formation analysis, comparisons across regimes.

Reads run directories (docs/architecture.md); imports only ``models`` (for ``UserError``), never
``reports``, matplotlib or seaborn. Definitions: /work/shared/docs/science.md, "Timing a
transition".
"""
from .bootstrap import Estimate, bootstrap_ci
from .curves import ACC_CURVES, curve_name, read_curves, regime_name, run_info
from .formation import JUMP_CURVE, SEED_CURVE, analyze_group, analyze_run, claim_verdict
from .mechanism import mechanism_verdict
from .recall_jump import RECALL_MARGIN, choose_recall_jump, run_baseline
from .transitions import DEFAULTS, Transition, detect_transitions, to_log_step

__all__ = ["Transition", "detect_transitions", "to_log_step", "DEFAULTS",
           "Estimate", "bootstrap_ci",
           "analyze_run", "analyze_group", "read_curves", "run_info", "curve_name",
           "ACC_CURVES", "JUMP_CURVE", "SEED_CURVE", "mechanism_verdict", "claim_verdict", "regime_name",
           "RECALL_MARGIN", "choose_recall_jump", "run_baseline"]

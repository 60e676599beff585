"""HyenaLens reports layer: seaborn figures and the self-contained HTML report
(docs/architecture.md). It only reads run directories (through `models.rundir.RunDir`) and
analysis' outputs; it imports `models` and `analysis`, never torch or transformer_lens, and
nothing imports it but the command line. Figures load matplotlib lazily (Agg)."""
from reports.report import write_report
from reports.rundata import RunData, discover_runs, load_run

__all__ = ["RunData", "discover_runs", "load_run", "write_report"]

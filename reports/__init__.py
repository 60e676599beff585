"""HyenaLens reports layer: seaborn figures and the self-contained HTML report
(docs/architecture.md). It only reads run directories (through `models.rundir.RunDir`) and
analysis' outputs; it imports `models` and `analysis`, never torch or transformer_lens, and
nothing imports it but the command line and `hyenalens`. Figures load matplotlib when a report
is drawn and never choose its backend: each figure function returns its Figure (a notebook
shows it inline) and writes a file only when given a folder."""
from reports.report import write_report
from reports.rundata import RunData, discover_runs, load_run_data

__all__ = ["RunData", "discover_runs", "load_run_data", "write_report"]

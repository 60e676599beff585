"""HyenaLens reports layer: seaborn figures and the self-contained HTML report
(docs/architecture.md). Imports `models`, `interp` and `analysis`; nothing imports it but the
command line. Figures load matplotlib lazily (Agg), so `import reports` stays light."""
from reports.report import write_report
from reports.rundata import RunData, discover_runs, load_run

__all__ = ["RunData", "discover_runs", "load_run", "write_report"]

"""HyenaLens interp layer: capture, filters, exact implicit attention, probes, attribution,
patching, the position-swap recall test and the exact signed source decomposition
(docs/architecture.md, docs/metrics.md). Imports `models`, never `analysis` or `reports`."""
from interp.filters import (LayerFilters, effective_length, filter_metrics, filters_from_cache,
                            lag1_mass, lag_profile, layer_filters, model_filters, spectrum)
from interp.implicit_attention import implicit_attention, row_normalize
from interp.scores import (induction_score, map_for_scores, map_scores, prev_token_score,
                           query_mass, recall_score_keys, recall_score_values)
from interp.attribution import attribution_metrics, attribution_shares, integrated_gradients
from interp.capture import capture_model, capture_run
from interp.probe_set import ProbeSet, make_probe_set, probe_set_from_data
from interp.patching import patch_recovery, position_groups
from interp.probes import fit_probe, permuted_labels, probe_with_control, run_probes
from interp.swap import ValueSwap, probe_task, swap_metrics, value_candidates, value_swap
from interp.sources import SourceTerms, logit_diff_readout, source_terms
from interp.decompose import pair_footprint, source_example, source_patch_rows, source_rows
from interp.run_metrics import MetricOptions, evaluate_model, probe_run

__all__ = [
    "LayerFilters", "MetricOptions", "ProbeSet", "SourceTerms", "ValueSwap",
    "attribution_metrics", "attribution_shares", "capture_model", "capture_run", "effective_length",
    "evaluate_model", "filter_metrics", "filters_from_cache", "fit_probe", "implicit_attention",
    "induction_score", "integrated_gradients", "lag1_mass", "lag_profile", "layer_filters",
    "logit_diff_readout", "make_probe_set", "map_for_scores", "map_scores", "model_filters",
    "pair_footprint", "patch_recovery", "permuted_labels", "position_groups", "prev_token_score",
    "probe_run", "probe_set_from_data", "probe_task", "probe_with_control", "query_mass",
    "recall_score_keys", "recall_score_values", "row_normalize", "run_probes", "source_example",
    "source_patch_rows", "source_rows", "source_terms", "spectrum", "swap_metrics",
    "value_candidates", "value_swap",
]

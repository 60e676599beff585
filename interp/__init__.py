"""HyenaLens interp layer: capture, filters, exact implicit attention, probes, attribution,
patching (docs/architecture.md). Imports `models`, never `analysis` or `reports`."""
from interp.filters import (LayerFilters, effective_length, filter_metrics, filters_from_cache,
                            lag1_mass, lag_profile, layer_filters, model_filters, spectrum)
from interp.implicit_attention import implicit_attention, row_normalize
from interp.scores import (induction_score, map_for_scores, map_scores, prev_token_score,
                           query_mass, recall_score_keys, recall_score_values)

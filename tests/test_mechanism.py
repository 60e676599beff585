"""The mechanism verdict follows its rule on hand-built metric tables."""
import pandas as pd
import pytest

from analysis import mechanism_verdict


def _table(**final):
    """metrics.csv rows: a step-0 row (ignored) and the final step's (value, floor) per metric."""
    rows = []
    for metric, (value, floor) in final.items():
        rows.append({"step": 0, "metric": metric, "layer": 1, "value": floor, "floor": floor})
        rows.append({"step": 500, "metric": metric, "layer": 1, "value": value, "floor": floor})
        rows.append({"step": 500, "metric": metric, "layer": 0, "value": floor, "floor": floor})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("final, verdict", [
    (dict(probe_prev_token=(0.95, 0.5), recall_score_values=(0.9, 0.1), probe_next_token=(0.3, 0.3),
          recall_score_keys=(0.05, 0.05)), "value mechanism"),
    (dict(probe_prev_token=(0.4, 0.4), attr_share_values=(0.1, 0.1), probe_next_token=(0.9, 0.4),
          attr_share_keys=(0.5, 0.01)), "key mechanism"),
    (dict(probe_prev_token=(0.95, 0.5), attr_share_values=(0.3, 0.0), probe_next_token=(0.9, 0.4),
          attr_share_keys=(0.5, 0.01)), "both"),
    # decodable at init already (a short conv): no gain over the floor, so no credit
    (dict(probe_prev_token=(0.99, 0.99), recall_score_values=(0.9, 0.1)), "neither"),
    # representation without routing
    (dict(probe_prev_token=(0.95, 0.5), recall_score_values=(0.12, 0.1)), "neither"),
])
def test_verdict_rule(final, verdict):
    out = mechanism_verdict(_table(**final))
    assert out["verdict"] == verdict


def test_best_layer_and_numbers_are_reported():
    out = mechanism_verdict(_table(probe_prev_token=(0.95, 0.5), recall_score_values=(0.9, 0.1)))
    probe = out["evidence"]["value"]["probe"]
    assert probe == {"value": 0.95, "floor": 0.5, "gain": pytest.approx(0.45)}
    assert mechanism_verdict(pd.DataFrame({"step": [0], "metric": ["answer_acc"], "layer": [-1], "value": [1.0]})) is None

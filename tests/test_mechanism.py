"""The mechanism verdict follows its rule on hand-built metric tables (analysis/mechanism.py)."""
import pandas as pd
import pytest

from analysis import mechanism_verdict
from analysis.mechanism import MIN_PATCH, MIN_SELECTIVITY, MIN_SHARE

ROLES = ("match_key", "match_value", "match_after", "match_pair", "other_pair", "query", "bias", "rest")


def _table(selectivity=(0.9, 0.0), shares=None, patch=None, probes=None, final=500):
    """metrics.csv rows: a step-0 row (ignored by the verdict) and the final step.

    selectivity: (final value, init floor); shares: {layer: {role: share}} (target direct; a
    grad row with other numbers that the rule must ignore); patch: {layer: {role: follow}};
    probes: {metric: (value, floor)} at layer 1."""
    rows = []
    for step in (0, final):
        sel = selectivity[1] if step == 0 else selectivity[0]
        rows.append(dict(step=step, metric="recall_swap_selectivity", layer=-1, value=sel,
                         floor=selectivity[1], target="", role=""))
        for layer, by_role in (shares or {}).items():
            for role in ROLES:
                v = by_role.get(role, 0.0) if step else 0.0
                rows.append(dict(step=step, metric="source_share", layer=layer, value=v, target="direct", role=role))
                rows.append(dict(step=step, metric="source_share", layer=layer, value=1 - v, target="grad", role=role))
        for layer, by_role in (patch or {}).items():
            for role, v in by_role.items():
                rows.append(dict(step=step, metric="source_patch_follow", layer=layer, value=v if step else 0.0,
                                 target="", role=role))
        for metric, (v, fl) in (probes or {}).items():
            rows.append(dict(step=step, metric=metric, layer=1, value=v if step else fl, floor=fl, target="", role=""))
    return pd.DataFrame(rows)


VALUE = {0: {"match_value": 0.5, "match_after": 0.3, "match_pair": 0.8}, 1: {"query": 0.7}}
VALUE_PATCH = {0: {"match_value": 0.6, "match_after": 0.4, "match_key": 0.0}}
KEY = {0: {"match_key": 0.6, "match_pair": 0.7}, 1: {"query": 0.7}}
KEY_PATCH = {0: {"match_key": 0.8, "match_value": 0.1, "match_after": 0.0}}


@pytest.mark.parametrize("kw, verdict", [
    (dict(shares=VALUE, patch=VALUE_PATCH), "value mechanism"),
    (dict(shares=KEY, patch=KEY_PATCH), "key mechanism"),
    (dict(shares={0: {"match_key": 0.4, "match_value": 0.3}}, patch={0: {"match_key": 0.5, "match_value": 0.4}}), "both"),
    # located, but the swap does not route: no credit
    (dict(selectivity=(0.1, 0.0), shares=VALUE, patch=VALUE_PATCH), "neither"),
    # routing, but already there at init (floor): no gain, no credit
    (dict(selectivity=(0.9, 0.8), shares=VALUE, patch=VALUE_PATCH), "neither"),
    # a large share that patching does not confirm
    (dict(shares=VALUE, patch={0: {"match_value": 0.1, "match_after": 0.1}}), "neither"),
    # a non-causal split (measured on ar_noncausal_last): key and value positions each carry a
    # share, neither alone moves the answer when patched, their footprint does
    (dict(shares={0: {"match_key": 0.31, "match_value": 0.18, "match_after": 0.11, "match_pair": 0.49}},
          patch={0: {"match_key": 0.22, "match_value": 0.22, "match_after": 0.09, "match_pair": 0.69}}), "both"),
    # ... but a footprint that patching does not confirm is no location
    (dict(shares={0: {"match_key": 0.31, "match_value": 0.3}},
          patch={0: {"match_key": 0.22, "match_value": 0.22, "match_pair": 0.25}}), "neither"),
    # patching without the share (the signal sits elsewhere, e.g. at the query)
    (dict(shares={1: {"query": 0.9, "match_value": 0.05}}, patch=VALUE_PATCH), "neither"),
])
def test_verdict_rule(kw, verdict):
    assert mechanism_verdict(_table(**kw))["verdict"] == verdict


def test_thresholds_are_the_boundaries():
    at = dict(shares={0: {"match_value": MIN_SHARE}}, patch={0: {"match_value": MIN_PATCH}},
              selectivity=(MIN_SELECTIVITY, 0.0))
    assert mechanism_verdict(_table(**at))["verdict"] == "value mechanism"
    below = dict(at, shares={0: {"match_value": MIN_SHARE - 0.01}})
    assert mechanism_verdict(_table(**below))["verdict"] == "neither"


def test_numbers_behind_the_verdict_are_reported():
    out = mechanism_verdict(_table(shares=VALUE, patch=VALUE_PATCH,
                                   probes={"probe_prev_token": (0.99, 0.99), "probe_answer": (0.95, 0.4)}))
    ev = out["evidence"]["value"]
    assert ev["layer"] == 0 and ev["share"] == pytest.approx(0.8) and ev["patch_follow"] == pytest.approx(0.6)
    assert ev["share_by_layer"] == {0: pytest.approx(0.8), 1: pytest.approx(0.0)}
    assert out["shares"]["value"] == pytest.approx(0.8) and out["shares"]["key"] == pytest.approx(0.0)
    assert out["routing"] == {"selectivity": 0.9, "floor": 0.0, "gain": 0.9, "step": 500, "holds": True}
    # a probe decodable at init is reported as uninformative, and stays out of the rule
    assert out["probes"]["probe_prev_token"]["informative"] is False
    assert out["probes"]["probe_answer"]["informative"] is True
    assert str(MIN_SHARE) in out["rule"] and str(MIN_PATCH) in out["rule"]


def test_no_swap_test_means_no_verdict():
    old = pd.DataFrame({"step": [0, 9], "metric": ["answer_acc"] * 2, "layer": [-1, -1], "value": [0.0, 1.0]})
    assert mechanism_verdict(old) is None
    routed = mechanism_verdict(_table())  # routing measured, no decomposition: nowhere located
    assert routed["verdict"] == "neither" and routed["evidence"] == {"value": None, "key": None}

"""Settings comparison shared by resume, merge and the scorers."""

import pytest

from llava.eval.run_settings import (
    SettingsMismatchError,
    check_same_settings,
    record_settings,
    run_metadata,
    settings_difference,
)


def _rec(qid, method="fastv", k=1, temperature=0.0):
    run = run_metadata("vicuna_v1", 128, temperature, None, 1, seed=0)
    return {"question_id": qid, "model_id": "llava-v1.5-7b", "text": "yes",
            "metadata": {"method": method, "method_args": {"fastv_k": k, "visual_token_num": 64}, "run": run,
                         "visual_tokens": 64}}


def test_same_settings_pass_and_per_item_trace_is_ignored():
    a, b = _rec(1), _rec(2)
    b["metadata"]["visual_tokens"] = 63
    assert check_same_settings([a, b], "f.jsonl") == record_settings(a)
    assert check_same_settings([], "f.jsonl") is None


def test_a_method_argument_difference_is_named():
    with pytest.raises(SettingsMismatchError) as err:
        check_same_settings([_rec(1, k=1), _rec(2, k=3)], "f.jsonl")
    assert "method_args.fastv_k: 1 vs 3" in str(err.value) and "record 2" in str(err.value)


def test_seed_counts_only_when_sampling():
    assert "seed" not in run_metadata("v", 8, 0.0, None, 1, seed=5)
    assert run_metadata("v", 8, 0.7, None, 1, seed=5)["seed"] == 5
    diff = settings_difference(record_settings(_rec(1)), record_settings(_rec(1, method="vtc-cls")))
    assert diff == 'method: "fastv" vs "vtc-cls"'


def test_records_without_settings_differ_from_records_with_them():
    old = {"question_id": 1, "model_id": "m", "text": "", "metadata": {"method": "fastv"}}
    assert settings_difference(record_settings(old), record_settings(_rec(1)))

"""The vlm3 DeepEval suite (sections 3.3 and 3.4 of the plan): one test per val record and per manual probe.

    deepeval test run vlm3_nb/deepeval_suite/test_vlm.py --model M --data FILE --images-root D --out DIR
    deepeval test run vlm3_nb/deepeval_suite/test_vlm.py -k "torque or procedure" --max-samples 20 ...
    deepeval test run vlm3_nb/deepeval_suite/test_vlm.py -k manual_probe ...

Test ids: val-<content type>[-torque]-<record id> and manual_probe-<probe id>. Options and fallbacks: conftest.py.
Each test asserts, with deepeval's assert_test, the metrics that apply to its case: NumericExactMatch when the expected
answer has numbers, KeywordPresence when keywords are listed, and AnswerRelevancy, Faithfulness and GEval correctness
when a judge is configured (--judge). Thresholds come from the config's eval.thresholds.
"""
import pytest
from deepeval import assert_test
from vlm3_nb.evaluate import case_metrics, case_test_case


def test_vlm_response(case, vlm_predictions, vlm_suite):
    "The model's answer to one case meets every applicable metric's threshold."
    pred = vlm_predictions[case.record.id]["prediction"]
    metrics = case_metrics(case, vlm_suite["judge_model"], vlm_suite["cfg"].eval.thresholds)
    if not metrics: pytest.skip("nothing to check: no numbers in the expected answer, no keywords, and no judge (add --judge)")
    assert_test(case_test_case(case, pred), metrics)

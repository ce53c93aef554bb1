"""`vlm3 synth-gold` and `vlm3 calibrate-judge` driven from outside: the rule-based metrics reach kappa >= 0.8 on the mistakes they
are built for; the real anthropic client (deepeval's AnthropicModel through our CachedJudge) against the local Messages-API stub of
test_judge_claude: a lenient judge is measured as one (kappa 0), budgeted, recorded (the cache is shown in 15_calibrate and test_judge_claude); and `vlm3 eval --judge` carries that
calibration (kappa, gold sha256) and its warning in summary.json. All loopback; no real key."""
import hashlib, json
import pytest
from conftest import vlm3
from test_judge_claude import MODEL, stub  # noqa: F401  (stub: the Messages-API fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The model 'claude-sonnet-4-5' is deprecated:DeprecationWarning")
FAST = ["generation.max_new_tokens=8", "data.max_pixels=12544"]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    "A calibration registry of this test's own (never ~/.cache)."
    reg = tmp_path / "registry"; monkeypatch.setenv("VLM3_CALIBRATIONS", str(reg))
    return reg


@pytest.fixture(scope="module")
def gold(manual, tmp_path_factory):
    "A gold set from the session manual's val and train records, made through the CLI."
    out = tmp_path_factory.mktemp("gold") / "gold.jsonl"
    r = vlm3("synth-gold", "--data", manual / "vlm_val.jsonl", manual / "vlm_train.jsonl", "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "next: vlm3 calibrate-judge" in r.stdout
    return out


def _cases(p): return [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]


def test_synth_gold_layout_and_labels(gold, manual, tmp_path):
    cases = _cases(gold)
    kinds = {c["kind"] for c in cases}
    assert {"paraphrase", "torque_off", "wrong_unit", "missing_keyword", "wrong_component", "empty", "irrelevant"} <= kinds, kinds
    for c in cases:
        assert {"id", "question", "reference", "answer", "label", "kind", "keywords", "page", "image", "source_id", "note"} <= set(c)
        assert c["label"] == ("correct" if c["kind"] == "paraphrase" else "incorrect") and c["answer"] != c["reference"]
    assert len({c["id"] for c in cases}) == len(cases)
    r = vlm3("synth-gold", "--data", manual / "vlm_val.jsonl", "--out", gold)
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr


def test_rule_based_metrics_catch_their_own_kinds(gold, registry, tmp_path):
    out = tmp_path / "cal"
    r = vlm3("calibrate-judge", "--gold", gold, "--metric", "numeric_exact_match,keyword_presence", "--out", out, "--n-boot", 200, "--strict")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out / "calibration.json").read_text())
    assert res["status"] == "ok" and res["gold_sha256"] == hashlib.sha256(gold.read_bytes()).hexdigest()
    nem, kp = res["metrics"]["numeric_exact_match"], res["metrics"]["keyword_presence"]
    assert nem["own_kinds"] == ["torque_off", "wrong_unit", "stage_order", "stage_missing"] and kp["own_kinds"] == ["missing_keyword"]
    for m in (nem, kp):
        assert m["own"]["kappa"] >= 0.8, m["own"]  # they catch what they are built for
        assert m["kappa_lower"] <= m["kappa"] <= m["kappa_upper"] and m["cluster_unit"] == "page" and m["n_clusters"] > 1
    assert nem["by_kind"]["torque_off"]["accuracy"] == 1.0 and nem["by_kind"]["wrong_unit"]["accuracy"] == 1.0
    assert kp["by_kind"]["missing_keyword"]["accuracy"] >= 0.9
    md = (out / "calibration.md").read_text()
    assert "accuracy per kind" in md and "where it fails" in md
    assert "numeric_exact_match" in r.stdout and "on its own kinds" in r.stdout
    rec = json.loads(next(registry.glob("metric_numeric_exact_match-*.json")).read_text())["by_metric"]["numeric_exact_match"]
    assert rec["kappa"] == nem["kappa"] and rec["gold_sha256"] == res["gold_sha256"]


def test_bad_gold_is_a_one_line_error(tmp_path):
    "A human-labelled file with a bad label: FILE:LINE and the fix (the other refusals are shown in 15_calibrate)."
    bad = tmp_path / "human.jsonl"
    bad.write_text(json.dumps({"question": "q", "reference": "40 Nm", "answer": "45 Nm", "label": "wrong"}) + "\n")
    r = vlm3("calibrate-judge", "--gold", bad, "--metric", "numeric_exact_match", "--out", tmp_path / "o")
    assert r.returncode == 2 and "human.jsonl:1: label 'wrong' must be 'correct' or 'incorrect'" in r.stderr and "Traceback" not in r.stderr


def test_claude_judge_calibration_against_the_stub_then_eval_carries_it(stub, registry, gold, tiny, manual, tmp_path):
    "The stub scores every answer 9/10: a judge that accepts everything. Calibrated as one and recorded; the eval then says so."
    small = tmp_path / "small.jsonl"
    cases = _cases(gold)
    keep = {cases[0]["source_id"], next(c["source_id"] for c in cases if c["kind"] == "torque_off")}  # two records: ~15 cases
    small.write_text("".join(json.dumps(c) + "\n" for c in cases if c["source_id"] in keep))
    n = sum(1 for c in _cases(small) if c["answer"].strip())  # empty answers are never sent: deepeval's judge metrics refuse them
    out = tmp_path / "cal"
    r = vlm3("calibrate-judge", "--gold", small, "--judge", f"claude:{MODEL}", "--out", out, "--n-boot", 100)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "calibration.json").read_text())
    g = res["metrics"]["geval_correctness"]
    assert (g["tpr"], g["tnr"], g["kappa"]) == (1.0, 0.0, 0.0) and g["n"] == n  # every wrong answer waved through: measured, not assumed
    assert len(stub.requests) == n and all(q["model"] == MODEL and q["key_ok"] for q in stub.requests)  # one GEval call per case
    assert res["cost"]["calls"] == n and res["cost"]["usd"] > 0 and res["judge"] == f"claude:{MODEL}"
    assert "warning: claude:" in r.stdout and "below 0.6" in r.stdout
    assert {f["kind"] for f in g["failures"]} >= {"irrelevant", "torque_off", "wrong_component"}  # where it fails, by kind
    assert g["by_kind"]["empty"]["not_scored"] == {"not sent": 2}

    ev = tmp_path / "eval"
    r = vlm3("eval", "--model", tiny, "--data", manual / "vlm_val.jsonl", "--images-root", manual, "--out", ev, "--max-samples", 1,
             "--grounding", 0, "--judge", f"claude:{MODEL}", "--config", "demo_tiny", *FAST, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    s = json.loads((ev / "summary.json").read_text())
    cal = s["calibration"]["judge"]
    assert (cal["kappa"], cal["gold_sha256"], cal["metric"]) == (0.0, res["gold_sha256"], "geval_correctness")
    assert "below 0.6" in cal["warning"] and cal["warning"] in s["warnings"] and "below 0.6" in r.stderr
    assert s["cost"]["calls"] > 0 and "gpu_seconds" in s["generation"]


def test_budget_stops_calibration_and_records_nothing(stub, registry, gold, tmp_path):
    out = tmp_path / "cal"
    r = vlm3("calibrate-judge", "--gold", gold, "--judge", f"claude:{MODEL}", "--out", out, "--n-boot", 50, "--budget", 0.02)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "error: calibration incomplete" in r.stderr and "larger --budget" in r.stderr
    res = json.loads((out / "calibration.json").read_text())
    assert res["status"] == "incomplete" and res["cost"]["usd"] <= 0.02 and 0 < len(stub.requests) < len(_cases(gold))
    assert not list(registry.glob("*.json"))  # a partial calibration is not a calibration

"`vlm3 eval` and the DeepEval suite driven from outside, as a user would, on the tiny offline model."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from conftest import vlm3, ROOT, BIN

FAST = ["generation.max_new_tokens=8", "generation.batch_size=8", "data.max_pixels=12544"]  # seconds, not minutes


def _eval(tiny, manual, out, *extra):
    return vlm3("eval", "--model", tiny, "--data", manual / "vlm_val.jsonl", "--images-root", manual, "--out", out,
                "--probes", manual / "manual_probes.json", "--max-samples", 4, "--grounding", 2, "--config", "demo_tiny", *extra, *FAST)


@pytest.fixture(scope="module")
def first(tiny, manual, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, _eval(tiny, manual, out)


def test_eval_writes_results_and_summary(first):
    out, r = first
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    s = json.loads((out / "summary.json").read_text())
    assert {"val", "probe"} == {x["kind"] for x in rows} and len(rows) == s["counts"]["total"]
    for k in ("id", "kind", "content_type", "section", "page", "image", "question", "expected", "keywords", "prediction", "metrics"):
        assert k in rows[0], k
    assert {"score", "status", "reason", "passed"} <= set(rows[0]["metrics"]["numeric_exact_match"])
    for k in ("counts", "metrics", "by_content_type", "probes", "thresholds", "passed", "grounding", "cost", "fingerprint", "config"):
        assert k in s, k
    assert s["counts"]["generated"] == s["counts"]["total"] and s["counts"]["cached"] == 0
    assert (out / "config.yaml").is_file() and (out / "predictions.jsonl").is_file()
    assert "probe_pass_rate" in r.stdout  # the summary table is printed
    g = s["generation"]  # what generating the answers cost, measured: seconds on the device, GPU-seconds, $ where priced
    assert g["answers_s"] == g["generate_s"] > 0 and g["gpu_seconds"] == round(g["answers_s"] * g["gpus"], 3)
    if g["gpus"] == 0: assert (g["device"], g["usd"]) == ("cpu", None) and "s on cpu (not priced)" in r.stdout
    assert s["calibration"] == {"judge": None, "judge_key": None, "warning": None, "metrics": s["calibration"]["metrics"]}  # judge none: nothing to calibrate


def test_judge_none_reports_not_run(first):
    out, _ = first
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    for x in rows:
        for k in ("answer_relevancy", "faithfulness", "geval_correctness"):
            assert x["metrics"][k]["status"] == "not run" and x["metrics"][k]["score"] is None
    s = json.loads((out / "summary.json").read_text())
    assert s["judge"] == "none" and s["thresholds"]["faithfulness"]["status"] == "not run"


def test_rerun_generates_nothing(first, tiny, manual):
    out, r1 = first
    assert r1.returncode == 0
    r = _eval(tiny, manual, out)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"]["generated"] == 0 and s["counts"]["cached"] == s["counts"]["total"]


def test_deepeval_suite_reuses_the_cache(first):
    "`deepeval test run` after `vlm3 eval` with the same --out: same cases, nothing generated; failing metrics exit 1."
    out, r1 = first
    assert r1.returncode == 0
    exe = BIN / "deepeval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPEVAL_TELEMETRY_OPT_OUT": "YES"}
    r = subprocess.run([str(exe), "test", "run", str(ROOT / "vlm3_nb" / "deepeval_suite" / "test_vlm.py"), "-k", "manual_probe",
                        "--max-samples", "3", "--out", str(out)], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert "vlm3: 3 cases, 0 generated, 3 cached" in log, log[-3000:]
    assert "manual_probe-" in log
    assert r.returncode in (0, 1), log[-3000:]  # 1: the random tiny model fails its thresholds, honestly


def test_bad_data_path_exits_2_naming_the_file(tiny, manual, tmp_path):
    r = vlm3("eval", "--model", tiny, "--data", tmp_path / "nope.jsonl", "--images-root", manual, "--out", tmp_path / "o")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "nope.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_eval_backend_modal_without_token_fails_fast(tiny, manual, tmp_path):
    "--backend modal is real: without a Modal token it stops at once with the fix, before generating anything."
    env = {k: "" for k in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")}
    env["HOME"] = str(tmp_path)  # no ~/.modal.toml
    r = vlm3("eval", "--model", tiny, "--data", manual / "vlm_val.jsonl", "--images-root", manual, "--out", tmp_path / "e",
             "--backend", "modal", "--config", "demo_tiny", *FAST, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "modal token new" in r.stderr
    assert not (tmp_path / "e" / "results.jsonl").exists()


def test_eval_refuses_a_training_run_folder(tiny, manual, tmp_path):
    "--out pointed at a training run: refused with the fix, the run's config.yaml untouched, nothing written."
    run = tmp_path / "runs" / "run-1"; (run / "adapter").mkdir(parents=True); (run / "logs").mkdir()
    (run / "config.yaml").write_text("lora:\n  r: 8\n"); (run / "manifest.json").write_text(json.dumps({"run_id": "run-1"}))
    (run / "logs" / "train.jsonl").write_text("{}\n")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    r = _eval(tiny, manual, run)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"--out {run} is a training run folder" in r.stderr and f"--out {run / 'eval'}" in r.stderr, r.stderr
    assert (run / "config.yaml").read_text() == "lora:\n  r: 8\n"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.parametrize("n", [-1, 0])
def test_max_samples_below_one_is_refused(tiny, manual, tmp_path, n):
    r = _eval(tiny, manual, tmp_path / "o", "--max-samples", n)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"--max-samples {n}: must be a whole number, at least 1" in r.stderr
    assert not (tmp_path / "o").exists()


def test_empty_probe_list_warns(tiny, manual, tmp_path):
    empty = tmp_path / "probes.json"; empty.write_text('{"probes": []}')
    out = tmp_path / "o"
    r = vlm3("eval", "--model", tiny, "--data", manual / "vlm_val.jsonl", "--images-root", manual, "--out", out, "--probes", empty,
             "--max-samples", 2, "--grounding", 0, "--config", "demo_tiny", *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"warning: {empty}: the probe list is empty, so no probes are run" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"]["probes"] == 0 and "no probes are run" in s["warnings"][0]


def test_eval_without_config_uses_the_adapters_run_config(tmp_path):
    "No --config on an adapter: the training run's own pixels and generation settings, recorded in summary.json and printed."
    from conftest import random_adapter_run
    tiny, man, cfg, adapter = random_adapter_run(tmp_path, 3)
    out = tmp_path / "eval"
    r = vlm3("eval", "--model", tiny, "--adapter", adapter, "--data", man / "vlm_val.jsonl", "--images-root", man, "--out", out,
             "--max-samples", 2, "--grounding", 0)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    st, run_cfg = s["settings"], adapter.parent / "config.yaml"
    assert st["config_source"] == f"the adapter's training run config {run_cfg}"
    assert (st["min_pixels"], st["max_pixels"], st["generation"]["max_new_tokens"]) == (cfg.data.min_pixels, 12544, 8)
    assert st["system_prompt"] == cfg.data.system_prompt and st["chat_template_sha"] and st["mode"] == "single"
    assert s["config"]["data"]["max_pixels"] == 12544 and s["config"]["data"]["val_file"] == str(man / "vlm_val.jsonl")  # --data still wins
    assert f"settings from the adapter's training run config {run_cfg}: pixels 3136-12544, max_new_tokens 8" in r.stdout

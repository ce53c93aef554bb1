"`vlm3 report` and `vlm3 compare` driven from outside: papermill reports, compare.json, and no secret in anything they write."
import json, subprocess, sys
from pathlib import Path
import pytest
from conftest import vlm3
from vlm3_nb.report import example_eval_dir

SECRET = "sk-test-planted-secret"
ENV = {"ANTHROPIC_API_KEY": SECRET}

def _rows(d): return [json.loads(l) for l in (d / "results.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
def _write(d, rows): (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

def _outputs(d):
    "Every file a command wrote under `d`, as text."
    return {p: p.read_text(encoding="utf-8", errors="replace") for p in Path(d).rglob("*") if p.is_file()}

@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    "Baseline and fine-tuned eval folders (illustrative fixtures); B leaks the key the way a judge error would."
    d = tmp_path_factory.mktemp("evals")
    a = example_eval_dir(d / "baseline", seed=3)
    b = example_eval_dir(d / "finetuned", seed=3, shift=0.1, noise=0.1, judge=True)
    rows = _rows(a)  # fx-000 passes in A ...
    for m in rows[0]["metrics"].values():
        if m["status"] == "ok": m.update(score=1.0, passed=True)
    _write(a, rows)
    rows = _rows(b)  # ... and is the worst example of its type in B, with the secret in a reason and in the prediction
    rows[0]["prediction"] = f"my key is {SECRET}"
    for m in rows[0]["metrics"].values():
        if m["status"] == "ok": m.update(score=0.0, passed=False)
    rows[0]["metrics"]["faithfulness"] = {"score": None, "status": "error", "reason": f"401 invalid x-api-key {SECRET}", "passed": None}
    _write(b, rows)
    return a, b

def test_report_writes_scrubbed_notebook_and_html(evals, tmp_path):
    _, b = evals
    out = tmp_path / "rep"
    r = vlm3("report", b, "--out", out, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (out / "eval_report.html").read_text(encoding="utf-8")
    assert (out / "eval_report.ipynb").is_file()
    assert "Failure analysis by content type" in page and "fx-000" in page
    assert "Overall scores against thresholds" in page and "Run manifest" in page
    assert "data:image/jpeg;base64," in page  # page thumbnails are inline: the HTML stands alone
    assert "[ANTHROPIC_API_KEY redacted]" in page  # the leak was in the input and was scrubbed
    assert "has no calibration on record" in page and "vlm3 calibrate-judge" in page  # B's judge metrics came from an uncalibrated judge
    for p, text in _outputs(out).items(): assert SECRET not in text, p
    assert SECRET not in r.stdout + r.stderr

def test_compare_json_html_and_no_secret(evals, tmp_path):
    a, b = evals
    out = tmp_path / "cmp"
    r = vlm3("compare", a, b, "--out", out, "--n-boot", 500, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    n_val = sum(1 for row in _rows(a) if row["kind"] == "val")
    assert res["n_paired"] == len(_rows(a)) and res["n_val"] == n_val
    scored = {m: s for m, s in res["metrics"].items() if s["n"]}
    assert {"keyword_presence", "numeric_exact_match"} <= set(scored)
    assert scored["keyword_presence"]["n"] == n_val
    for m, s in scored.items():
        assert s["lower"] <= s["delta"] <= s["upper"], (m, s)
        assert s["wins"] + s["losses"] + s["ties"] == s["n"], (m, s)
    assert res["metrics"]["faithfulness"]["n"] == 0 and "not run" in res["metrics"]["faithfulness"]["status"]  # never a 0 score
    for ct, d in res["by_content_type"].items():
        s = d["keyword_presence"]; assert s["lower"] <= s["delta"] <= s["upper"], ct
        assert s["cluster_unit"] == "page" and s["n_clusters"] == 2 and s["naive_lower"] <= s["delta"] <= s["naive_upper"], (ct, s)
    assert res["cluster"] == {"requested": "auto", "unit": "page", "n_clusters": 6}  # the fixture's 18 questions sit on 6 pages
    for m, s in scored.items():  # the clustered interval, the naive one beside it, the design effect and the MDD
        assert s["cluster_unit"] == "page" and s["naive_lower"] <= s["delta"] <= s["naive_upper"], (m, s)
        assert s["n_clusters"] == (2 if m == "numeric_exact_match" else 6), (m, s)  # exact numbers only on the specification pages
        assert s["mdd"] > 0 and ("design_effect" in s)
    assert "resampling 6 pages" in r.stdout and "design effect" in r.stdout and "MDD" in r.stdout
    assert res["cost"]["spent"]["not_recorded"] == ["A eval generation", "B eval generation"]  # fixtures record no generation time ...
    assert res["cost"]["per_point"]["keyword_presence"]["note"] == "B is not a trained run: no training cost"  # ... and B has no run
    assert all(f["passed_a"] and not f["passed_b"] for f in res["flips"]["pass_to_fail"])
    assert all(f["passed_b"] and not f["passed_a"] for f in res["flips"]["fail_to_pass"])
    assert "fx-000" in [f["id"] for f in res["flips"]["pass_to_fail"]]  # so its leaking prediction is in compare.json ...
    assert "[ANTHROPIC_API_KEY redacted]" in (out / "compare.json").read_text()  # ... scrubbed
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert (out / "compare.ipynb").is_file() and "Examples that flipped" in page and "Per content type" in page
    assert "fx-000" in page and "[ANTHROPIC_API_KEY redacted]" in page
    for p, text in _outputs(out).items(): assert SECRET not in text, p
    assert SECRET not in r.stdout + r.stderr

def test_compare_same_run_is_all_ties(evals, tmp_path):
    a, _ = evals
    r = vlm3("compare", a, a, "--out", tmp_path / "same", "--n-boot", 200, "--no-report")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "same" / "compare.json").read_text())
    kp = res["metrics"]["keyword_presence"]
    assert (kp["delta"], kp["lower"], kp["upper"], kp["ties"]) == (0.0, 0.0, 0.0, kp["n"])
    assert not (tmp_path / "same" / "compare.html").exists()  # --no-report

def test_compare_unpaired_and_disjoint(evals, tmp_path):
    a, _ = evals
    part = example_eval_dir(tmp_path / "part", seed=3)
    _write(part, _rows(part)[3:])
    r = vlm3("compare", a, part, "--out", tmp_path / "p", "--n-boot", 200, "--no-report")
    assert r.returncode == 0, r.stderr
    assert f"warning: 3 examples are only in A ({a}) and 0 only in B ({part}), so they are left out" in r.stderr  # one plain sentence ...
    assert "UserWarning" not in r.stderr and "warnings.warn" not in r.stderr and "report.py" not in r.stderr  # ... not Python's warning with its source line
    assert json.loads((tmp_path / "p" / "compare.json").read_text())["unpaired"]["only_a"] == ["fx-000", "fx-001", "fx-002"]
    other = tmp_path / "other"; other.mkdir()
    (other / "results.jsonl").write_text(json.dumps({"id": "zzz", "metrics": {}}) + "\n")
    r = vlm3("compare", a, other, "--out", tmp_path / "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "share no example ids" in r.stderr and str(a) in r.stderr and str(other) in r.stderr

def test_report_missing_eval_dir_is_one_line_error(tmp_path):
    r = vlm3("report", tmp_path / "nope", "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "results.jsonl not found" in r.stderr

def test_report_images_root_override(tmp_path):
    "The pages moved: the report says so, and --images-root finds them."
    d = example_eval_dir(tmp_path / "ev", seed=5)
    (tmp_path / "moved").mkdir(); (d / "images").rename(tmp_path / "moved" / "images")
    s = json.loads((d / "summary.json").read_text()); s["images_root"] = str(tmp_path / "gone")
    (d / "summary.json").write_text(json.dumps(s))
    r = vlm3("report", d, "--out", tmp_path / "r1")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r1" / "eval_report.html").read_text(encoding="utf-8")
    assert "page image not found" in page and "--images-root" in page and "data:image/jpeg" not in page
    r = vlm3("report", d, "--out", tmp_path / "r2", "--images-root", tmp_path / "moved")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r2" / "eval_report.html").read_text(encoding="utf-8")
    assert "page image not found" not in page and "data:image/jpeg;base64," in page


@pytest.mark.slow
def test_eval_report_notebook_runs_the_eval_then_reports(tiny, manual, tmp_path):
    "papermill runs the eval itself when given a model; backend=modal is real and fails fast without a token."
    import os, subprocess, sys
    from pathlib import Path
    nb = Path(__file__).resolve().parents[1] / "nbs" / "runs" / "eval_report.ipynb"
    pm = [str(Path(sys.executable).parent / "papermill"), str(nb)]
    common = ["-k", "python3", "-p", "model", str(tiny), "-p", "data", str(manual / "vlm_val.jsonl"), "-p", "images_root", str(manual),
              "-p", "config", "demo_tiny", "-p", "max_samples", "3"]
    r = subprocess.run(pm + [str(tmp_path / "r.ipynb"), *common, "-p", "eval_dir", str(tmp_path / "ev")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ev" / "results.jsonl").is_file() and (tmp_path / "ev" / "summary.json").is_file()
    env = {**os.environ, "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": "", "HOME": str(tmp_path)}
    r = subprocess.run(pm + [str(tmp_path / "r2.ipynb"), *common, "-p", "eval_dir", str(tmp_path / "ev2"), "-p", "backend", "modal"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "modal token new" in r.stdout + r.stderr
    assert not (tmp_path / "ev2" / "results.jsonl").exists()


NOISE = ("IPKernelApp", "without encryption", "Alternative text is missing", "Passed unknown parameter", "Unable to parse line", "Traceback", "Warning:")

def _quiet(r):
    "No kernel, nbconvert or papermill noise and no raw Python warning in a command's output."
    out = r.stdout + r.stderr
    for n in NOISE: assert n not in out, (n, out[-2000:])

def test_compare_probes_only_says_why(evals, tmp_path):
    "Two evals that share only their probes: every metric says why it has no delta, and a warning says what to do."
    a, _ = evals
    po = example_eval_dir(tmp_path / "po", seed=3)
    _write(po, [dict(r, id="other-" + r["id"]) if r["kind"] == "val" else r for r in _rows(po)])
    r = vlm3("compare", a, po, "--out", tmp_path / "c", "--n-boot", 100, "--no-report")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert (res["n_val"], res["probes"]["n"]) == (0, 4)
    assert {s["status"] for s in res["metrics"].values()} == {"no paired validation examples"}
    assert "missing" not in r.stdout
    assert "warning: A and B share no validation example, only 4 probes, so no metric can be compared" in r.stderr
    assert any("share no validation example" in w for w in res["warnings"])
    _quiet(r)

def test_compare_different_generation_settings_warns_console_report_and_json(tmp_path):
    "B generated 8 new tokens where A had 256 (its summary's `settings` block wins over its `config`): said on the console, in the report and in compare.json."
    a = example_eval_dir(tmp_path / "a", seed=3)
    b = example_eval_dir(tmp_path / "b", seed=3, shift=0.1)
    s = json.loads((b / "summary.json").read_text())
    s["settings"] = {"generation": {"max_new_tokens": 8, "mode": "single"}, "max_pixels": s["config"]["data"]["max_pixels"], "model": "none (fixture)"}
    (b / "summary.json").write_text(json.dumps(s))
    assert s["config"]["generation"]["max_new_tokens"] == 256  # the stale config says what A says; the settings block is what B measured
    out = tmp_path / "cmp"
    r = vlm3("compare", a, b, "--out", out, "--n-boot", 200)
    assert r.returncode == 0, r.stderr
    assert "warning: A and B generated with different settings (generation.max_new_tokens 256 in A, 8 in B)" in r.stderr
    res = json.loads((out / "compare.json").read_text())
    assert res["settings"]["differ"] == {"generation.max_new_tokens": {"a": 256, "b": 8}}
    assert res["settings"]["b"]["generation.max_new_tokens"] == 8 and res["settings"]["b"]["model"] == "none (fixture)"  # B's settings block, as it is
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert "A and B generated with different settings" in page and "⚠ differs" in page
    assert "No description has been provided" not in page  # every chart and page in the HTML has alt text
    _quiet(r)

def test_report_images_root_not_a_folder_warns(tmp_path):
    "`--images-root /nonexistent`: the report still renders, and says on the console and in place of each page why the pages are missing."
    d = example_eval_dir(tmp_path / "ev", seed=5)
    (tmp_path / "pages").mkdir(); (d / "images").rename(tmp_path / "pages" / "images")  # the pages live outside the eval folder, as in a real eval
    s = json.loads((d / "summary.json").read_text()); s["images_root"] = str(tmp_path / "pages"); (d / "summary.json").write_text(json.dumps(s))
    bad = tmp_path / "nonexistent"
    r = vlm3("report", d, "--out", tmp_path / "r", "--images-root", bad)
    assert r.returncode == 0, r.stderr
    assert f"warning: the images root {bad} is not a folder, so 22 of 22 page images were not found under {bad} or {d}" in r.stderr
    assert "pass --images-root FOLDER" in r.stderr
    page = (tmp_path / "r" / "eval_report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg" not in page and f"is not under {bad} or {d}" in page and "⚠ the images root" in page
    _quiet(r)
    r = vlm3("report", d, "--out", tmp_path / "r2")  # the recorded root is right: no warning, thumbnails with alt text
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    page = (tmp_path / "r2" / "eval_report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg;base64," in page and "No description has been provided" not in page
    _quiet(r)

@pytest.mark.parametrize("nb", ["eval_report", "compare", "reasoning_compare"])
def test_run_notebook_parameters_parse(nb):
    "papermill reads every parameter of the run notebooks with its type and help, and warns about no line."
    path = Path(__file__).resolve().parents[1] / "nbs" / "runs" / f"{nb}.ipynb"
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), "--help-notebook", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    src = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))["source"]
    names = [l.split(":")[0].split("=")[0].strip() for l in "".join(src).splitlines() if l.strip() and not l.startswith("#")]
    assert len(names) >= 5
    for n in names: assert f"  {n}: " in r.stdout, (n, r.stdout)
    assert "Unknown type" not in r.stdout and "Unable to parse" not in r.stdout + r.stderr, r.stdout


def test_compare_prices_the_gain_from_the_training_manifest(tmp_path):
    "B's adapter comes from a run whose manifest records GPU-seconds and a price: compare.json and the console give $ spent and $ per point with its range."
    gen = lambda s: {"generation": dict(generate_s=s, answers_s=s, seconds=s, gpu_seconds=s, device="NVIDIA A10G", gpus=1, usd_per_gpu_hour=1.1, usd=round(s / 3600 * 1.1, 6))}
    a = example_eval_dir(tmp_path / "a", seed=3, extra=gen(60.0))
    b = example_eval_dir(tmp_path / "b", seed=3, shift=0.1, page_effect=0.05, extra=gen(66.0),
                         train_manifest=dict(gpu_seconds=7200.0, device="NVIDIA A100-SXM4-80GB", gpus=2, usd_per_gpu_hour=2.5))
    r = vlm3("compare", a, b, "--out", tmp_path / "c", "--n-boot", 300, "--no-report")
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "c" / "compare.json").read_text())["cost"]
    assert c["b"]["training"]["usd"] == 5.0 and c["b"]["training"]["gpus"] == 2 and c["a"]["training"]["status"] == "none"
    assert abs(c["spent"]["usd"] - (5.0 + 126 / 3600 * 1.1)) < 1e-6 and not c["spent"]["not_recorded"]
    p = c["per_point"]["keyword_presence"]
    assert p["points"] > 0 and abs(p["usd_per_point"] - 5.0 / p["points"]) < 1e-6 and p["lower"] <= p["usd_per_point"]
    assert "B training: 7200.0 GPU-s (2 × NVIDIA A100-SXM4-80GB) at $2.50/GPU-h = $5.00" in r.stdout and "$ per point keyword_presence" in r.stdout
    # the same B after its run folder moved: not recorded, and said so instead of a guess
    import shutil; shutil.rmtree(b / "run")
    r = vlm3("compare", a, b, "--out", tmp_path / "c2", "--n-boot", 100, "--no-report")
    c = json.loads((tmp_path / "c2" / "compare.json").read_text())["cost"]
    assert c["b"]["training"]["status"] == "not recorded" and "no manifest.json in" in c["b"]["training"]["why"]
    assert c["per_point"]["keyword_presence"]["note"] == "training cost not recorded" and "not recorded: B training" in r.stdout

"Structured reasoning driven from outside, as a user would: LLaVA-CoT-100k preparation, the llava-cot synth style, inference modes, caption evals and the four-way report."
import io, json, shutil, zipfile
from pathlib import Path
import pytest
from PIL import Image
from conftest import vlm3
from vlm3_nb.data import check_cot_tags, read_records
from vlm3_nb.reasoning import VARIANTS, example_reasoning_dirs

FAST = ["generation.max_new_tokens=8", "generation.batch_size=8", "data.max_pixels=12544"]


def _cot(a):
    return f"<SUMMARY>s</SUMMARY>\n\n<CAPTION>c</CAPTION>\n\n<REASONING>r</REASONING>\n\n<CONCLUSION>{a}</CONCLUSION>"


def published_layout(root, part_size=8192):
    "What the Hub repo Xkev/LLaVA-CoT-100k holds, in miniature: train.jsonl (JSON Lines, no <image> tokens) and image.zip.part-aa, -ab, ..."
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    imgs = ["chartqa/train/png/a.png", "ai2d/images/1.png", "geoqa+/images/2.png", "coco/train2017/000000000009.jpg", "sqa/train/3.png"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i, p in enumerate(imgs):
            b = io.BytesIO(); Image.effect_noise((48 + i, 48), 60).convert("RGB").save(b, "PNG"); z.writestr(p, b.getvalue())
    data = buf.getvalue()
    for n, k in enumerate(range(0, len(data), part_size)):
        (root / f"image.zip.part-{chr(97 + n // 26)}{chr(97 + n % 26)}").write_bytes(data[k:k + part_size])
    H, G = lambda v: {"from": "human", "value": v}, lambda v: {"from": "gpt", "value": v}
    recs = [{"id": "c1", "image": imgs[0], "conversations": [H("What is the largest bar?"), G(_cot("2019"))]},
            {"id": "a1", "image": imgs[1], "conversations": [H("What is A?"), G(_cot("a leaf")), H("And B?"), G(_cot("the stem"))]},
            {"id": "g1", "image": imgs[2], "conversations": [H("Find the angle."), G("<CONCLUSION>40</CONCLUSION><SUMMARY>s</SUMMARY><CAPTION>c</CAPTION><REASONING>r</REASONING>")]},
            {"id": "k1", "image": imgs[3], "conversations": [H("What is he holding?"), G(_cot("a kite"))]},
            {"id": "s1", "image": imgs[4], "conversations": [H("Which is a mammal?"), G(_cot("the whale"))]},
            {"id": "m1", "image": "chartqa/train/png/missing.png", "conversations": [H("Total?"), G(_cot("7"))]}]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


@pytest.fixture(scope="module")
def cot_manual(tmp_path_factory):
    out = tmp_path_factory.mktemp("cot-manual")
    r = vlm3("synth", "--out", out, "--pages", 6, "--seed", 1, "--qa-per-page", 3, "--style", "llava-cot")
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_synth_llava_cot_answers_pass_the_tag_check(cot_manual):
    recs = read_records(cot_manual / "vlm_train.jsonl") + read_records(cot_manual / "vlm_val.jsonl")
    answers = [t["content"] for r in recs for t in r.turns if t["role"] == "assistant"]
    assert answers and all(check_cot_tags(a) is None for a in answers)
    cap = json.loads((cot_manual / "captions_coco.json").read_text())
    assert len(cap["images"]) == 6 and len(cap["annotations"]) == 30 and {"id", "image_id", "caption"} <= set(cap["annotations"][0])
    r = vlm3("validate", cot_manual / "vlm_train.jsonl", "--images-root", cot_manual)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prepare_llava_cot_on_the_published_layout(tmp_path):
    root = published_layout(tmp_path / "ds")
    assert len(list(root.glob("image.zip.part-*"))) >= 3
    r = vlm3("prepare-llava-cot", "--root", root, "--out", tmp_path / "out", "--val-frac", "0.25")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "geoqa+" in out and "chartqa" in out and "tag compliance" in out and "data.train_file=" in out
    assert f"{root}/train.jsonl:3: record g1: turn 2:" in out and "record m1: image" in out
    assert (root / "coco/train2017/000000000009.jpg").is_file()  # the split zip was joined and extracted
    recs = read_records(tmp_path / "out" / "vlm_train.jsonl") + read_records(tmp_path / "out" / "vlm_val.jsonl")
    assert sorted(x.id for x in recs) == ["a1", "c1", "k1", "s1"]
    assert {x.metadata["content_type"] for x in recs} == {"chartqa", "ai2d", "coco", "sqa"} and all(x.metadata["dataset"] == "llava-cot-100k" for x in recs)
    assert [json.loads(l)["id"] for l in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()] == ["g1", "m1"]
    for f in ("vlm_train.jsonl", "vlm_val.jsonl"):  # the project's validator takes the converted files, images decoded
        v = vlm3("validate", tmp_path / "out" / f, "--images-root", root)
        assert v.returncode == 0, v.stdout + v.stderr
    r2 = vlm3("prepare-llava-cot", "--root", root, "--out", tmp_path / "out", "--val-frac", "0.25", "--strict")
    assert r2.returncode == 1, r2.stdout + r2.stderr  # --strict: rejected records fail the command


def test_prepare_llava_cot_names_a_missing_middle_part(tmp_path):
    root = published_layout(tmp_path / "ds")
    (root / "image.zip.part-ab").unlink()
    r = vlm3("prepare-llava-cot", "--root", root)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "image.zip.part-ab is missing" in r.stderr and "Traceback" not in r.stderr


def test_prepare_llava_cot_missing_last_part(tmp_path):
    root = published_layout(tmp_path / "ds")
    last = sorted(root.glob("image.zip.part-*"))[-1]; last.unlink()
    r = vlm3("prepare-llava-cot", "--root", root)
    assert r.returncode == 2 and "later parts are probably missing" in r.stderr, r.stderr


def test_prepare_llava_cot_images_kept_elsewhere(tmp_path):
    root = published_layout(tmp_path / "ds")
    assert vlm3("prepare-llava-cot", "--root", root, "--out", tmp_path / "o1").returncode == 0  # extracts the images
    elsewhere = tmp_path / "datasets"
    for s in ("chartqa", "ai2d", "geoqa+", "sqa"): shutil.copytree(root / s, elsewhere / s)
    shutil.copytree(root / "coco" / "train2017", elsewhere / "coco2017" / "train")
    r = vlm3("prepare-llava-cot", "--root", root, "--out", tmp_path / "o2", "--image-root", elsewhere, "--remap", "coco/train2017/=coco2017/train/")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = read_records(tmp_path / "o2" / "vlm_train.jsonl") + read_records(tmp_path / "o2" / "vlm_val.jsonl")
    assert next(x.image for x in recs if x.id == "k1") == "coco2017/train/000000000009.jpg"
    assert f"data.images_root={elsewhere}" in r.stdout


def test_prepare_llava_cot_download_offline_fails_clearly(tmp_path):
    r = vlm3("prepare-llava-cot", "--root", tmp_path / "dl", "--download", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "HF_HUB_OFFLINE" in r.stderr and "Xkev/LLaVA-CoT-100k" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_eval_captions_reports_coco_metrics_and_both_bleus(tiny, cot_manual, tmp_path):
    r = vlm3("eval-captions", "--model", tiny, "--ann", cot_manual / "captions_coco.json", "--images-root", cot_manual, "--out", tmp_path / "cap",
             "--max-images", 3, "--config", "demo_tiny", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((tmp_path / "cap" / "captions_summary.json").read_text())
    for k in ("bleu1", "bleu4", "meteor", "rouge_l", "cider", "sacrebleu"): assert s["scores"][k] is not None, k
    assert s["scores"]["spice"].startswith("not run") and s["counts"]["images"] == 3
    assert "not comparable" in r.stdout
    rows = [json.loads(l) for l in (tmp_path / "cap" / "captions_results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len(rows[0]["references"]) == 5 and "cider" in rows[0]["scores"]


@pytest.mark.slow
def test_eval_scratchpad_mode_logs_both_passes_and_report_shows_traces(tiny, cot_manual, tmp_path):
    out = tmp_path / "ev"
    r = vlm3("eval", "--model", tiny, "--data", cot_manual / "vlm_val.jsonl", "--images-root", cot_manual, "--out", out,
             "--max-samples", 2, "--grounding", 0, "--mode", "scratchpad", "--config", "demo_tiny", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == "scratchpad" and s["structure"]["n"] == 2 and s["metrics_trace"] is not None
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert all([p["step"] for p in x["passes"]] == ["notes", "answer"] and x["prediction"] == x["passes"][1]["text"] for x in preds)
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert all({"trace", "conclusion", "conclusion_from", "expected_conclusion"} <= set(x) for x in rows)
    rep = vlm3("report", out, "--out", tmp_path / "rep")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "Reasoning traces" in (tmp_path / "rep" / "eval_report.html").read_text()  # the val answers are structured


def test_reasoning_report_four_way(tmp_path):
    ev, cp = example_reasoning_dirs(tmp_path / "fx")
    r = vlm3("reasoning-report", *[x for v in VARIANTS for x in (f"--{v.replace('+', '-')}", ev[v])], "--captions", *[cp[v] for v in VARIANTS],
             "--out", tmp_path / "rep", "--n-boot", 300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "rep" / "reasoning.json").read_text())
    assert res["qa_examples"] == 40 and "interaction" in res["qa"]["rouge_l"] and "cider" in res["captions"]
    html = (tmp_path / "rep" / "reasoning_compare.html").read_text()
    assert "Illustrative fixture" in html and "interaction" in html
    bad = vlm3("reasoning-report", "--baseline", ev["baseline"], "--baseline-scratchpad", ev["baseline"], "--finetuned", ev["finetuned"],
               "--finetuned-scratchpad", ev["finetuned"], "--captions", cp["baseline"], "--out", tmp_path / "r2")
    assert bad.returncode == 2  # --captions needs four folders (argparse)

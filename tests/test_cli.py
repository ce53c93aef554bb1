"The `vlm3` command as a user runs it: exit codes, messages, files (through `main` in this interpreter; see conftest.vlm3)."
import json, shutil
from pathlib import Path
from conftest import vlm3

def test_help_lists_subcommands():
    r = vlm3("--help")
    assert r.returncode == 0
    for cmd in ("synth", "validate", "prepare", "build-tiny", "preflight", "train", "eval", "report", "compare", "serve", "bench", "demo", "prepare-llava-cot", "eval-captions", "demo-reasoning"): assert cmd in r.stdout

def test_synth_writes_seed_layout(manual):
    for f in ("vlm_train.jsonl", "vlm_val.jsonl", "manual_probes.json"): assert (manual / f).is_file()
    rec = json.loads((manual / "vlm_train.jsonl").read_text().splitlines()[0])
    assert (manual / rec["image"]).is_file()
    assert {"content_type", "section", "page"} <= set(rec["metadata"])

def test_validate_good_file_exits_0(manual):
    r = vlm3("validate", manual / "vlm_train.jsonl", "--images-root", manual)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in r.stdout

def test_validate_bad_lines_name_file_and_line(manual, tmp_path):
    good = (manual / "vlm_train.jsonl").read_text(encoding="utf-8").splitlines()
    rec = json.loads(good[0])
    bad_role = dict(rec, conversations=[{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}])
    escape = dict(rec, image="../secret.jpg")
    lines = [good[0], "{not json", json.dumps(bad_role), "", json.dumps(escape), good[1]]
    f = tmp_path / "bad.jsonl"; f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = vlm3("validate", f, "--images-root", manual, "--quarantine", tmp_path / "q")
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert f"{f}:2:" in r.stdout and f"{f}:3:" in r.stdout and f"{f}:5:" in r.stdout
    assert f"{f}:1:" not in r.stdout and f"{f}:6:" not in r.stdout
    valid = (tmp_path / "q" / "valid.jsonl").read_text().splitlines()
    rejected = (tmp_path / "q" / "rejected.jsonl").read_text().splitlines()
    assert len(valid) == 2 and len(rejected) == 3  # every non-blank input line lands in exactly one file

def test_validate_missing_file_is_one_line_error(tmp_path):
    r = vlm3("validate", tmp_path / "nope.jsonl", proc=True)  # the installed console script itself: its exit code, no traceback
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "nope.jsonl" in r.stdout + r.stderr

def test_prepare_saves_datasetdict(manual, tmp_path):
    r = vlm3("prepare", "--train", manual / "vlm_train.jsonl", "--val", manual / "vlm_val.jsonl",
             "--images-root", manual, "--out", tmp_path / "ds")
    assert r.returncode == 0, r.stderr
    from datasets import load_from_disk
    ds = load_from_disk(str(tmp_path / "ds"))
    n_train = len((manual / "vlm_train.jsonl").read_text().splitlines())
    assert set(ds) == {"train", "val"} and len(ds["train"]) == n_train

def test_prepare_push_without_token_fails_clearly(manual, tmp_path):
    r = vlm3("prepare", "--train", manual / "vlm_train.jsonl", "--val", manual / "vlm_val.jsonl",
             "--images-root", manual, "--out", tmp_path / "ds", "--push-to-hub", "me/private-manual",
             env={"HF_TOKEN": "", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error:" in r.stderr

def test_llava_cot_synth_output_passes_its_own_check(tmp_path):
    out = tmp_path / "cot"
    assert vlm3("synth", "--out", out, "--pages", 3, "--style", "llava-cot").returncode == 0
    for fmt in ("llava-cot", "auto"):
        r = vlm3("validate", out / "vlm_train.jsonl", "--images-root", out, "--format", fmt)
        assert r.returncode == 0, (fmt, r.stdout + r.stderr)
        assert " 0 rejected" in r.stdout
    plain = tmp_path / "plain"
    assert vlm3("synth", "--out", plain, "--pages", 3).returncode == 0
    r = vlm3("validate", plain / "vlm_train.jsonl", "--images-root", plain, "--format", "llava-cot")
    assert r.returncode == 1 and "missing <SUMMARY>" in r.stdout  # llava-cot asks every answer for the tags

def test_validate_real_manual_metadata_and_closed_types(manual, tmp_path):
    rec = json.loads((manual / "vlm_train.jsonl").read_text().splitlines()[0])
    lines = [dict(rec, id="a", metadata={"content_type": "wiring_diagram", "page": "21-03", "qa_id": 7}),
             dict(rec, id="b", metadata={"content_type": "specification"}),
             dict(rec, id="c", metadata={"content_type": "specificaton", "source": "e30.pdf"}),
             dict(rec, id="d", image=rec["image"].replace("/", "\\"))]
    f = tmp_path / "real.jsonl"; f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = vlm3("validate", f, "--images-root", manual)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{f}:4: image '{lines[3]['image']}' uses Windows backslashes; write it as {rec['image']}" in r.stdout
    assert "content types: " in r.stdout and "wiring_diagram 1" in r.stdout
    assert "hint: content type 'specificaton' (1 record) looks like 'specification'" in r.stdout
    assert r.stdout.strip().endswith("4 records: 3 valid, 1 rejected")
    r = vlm3("validate", f, "--images-root", manual, "--content-types", "specification,wiring_diagram")
    assert f"{f}:3: metadata.content_type 'specificaton' is not one of the allowed types specification, wiring_diagram; did you mean 'specification'?" in r.stdout

def test_synth_and_build_tiny_never_overwrite_silently(tmp_path):
    out = tmp_path / "m"
    assert vlm3("synth", "--out", out, "--pages", 3).returncode == 0
    r = vlm3("synth", "--out", out, "--pages", 2)
    assert r.returncode == 2 and "pass --overwrite" in r.stderr and "Traceback" not in r.stderr
    assert len(list((out / "images").iterdir())) == 3
    assert vlm3("synth", "--out", out, "--pages", 2, "--overwrite").returncode == 0
    assert len(list((out / "images").iterdir())) == 2  # no stale page of the old manual
    (tmp_path / "file.txt").write_text("x")
    r = vlm3("synth", "--out", tmp_path / "file.txt")
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    tiny = tmp_path / "tiny"
    assert vlm3("build-tiny", "--out", tiny).returncode == 0
    r = vlm3("build-tiny", "--out", tiny, "--size", "small")
    assert r.returncode == 2 and "already holds a tiny model" in r.stderr and "Traceback" not in r.stderr
    assert vlm3("build-tiny", "--out", out).returncode == 2  # a manual is not a model folder

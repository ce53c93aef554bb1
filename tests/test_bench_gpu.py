"`vlm3 bench gpu --smoke`: the GPU bench's own code on CPU with the tiny models, so the command a GPU machine will run cannot rot."
import json, subprocess, sys
from conftest import ROOT, vlm3

FIGURES = {"train.baseline", "train.vlm3", "train.ratio", "packing", "generate", "qlora", "cost", "cobra"}
SECTIONS = ["setup", "train", "packing", "generate", "qlora", "cost", "cobra"]

def test_bench_gpu_smoke_writes_the_gpu_layout(tmp_path):
    r = vlm3("bench", "gpu", "--smoke", "--out", tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert res["smoke"] is True and res["done"] is True and res["bench"] == "vlm3 bench gpu"
    assert list(res["sections"]) == SECTIONS
    bad = {k: s.get("error") or s.get("reason") for k, s in res["sections"].items() if s["status"] != "ok"}
    assert not bad, bad
    assert set(res["figures"]) == FIGURES
    for name, f in res["figures"].items():  # every figure carries its context, and says it is a smoke figure
        assert f["smoke"] is True, name
        assert {"device", "versions", "dtype", "batch_size", "seq_len", "command"} <= set(f), (name, sorted(f))
        assert set(f["versions"]) == {"torch", "transformers", "peft", "bitsandbytes"} and f["versions"]["torch"], name
        assert "bench gpu --smoke" in f["command"], f["command"]
    f = res["figures"]
    assert f["train.baseline"]["pairs_per_s"] > 0 and f["train.vlm3"]["pairs_per_s"] > 0 and f["train.ratio"]["pairs_per_s_ratio"] > 0
    assert f["train.vlm3"]["packing"] == "page" and f["train.baseline"]["attn_implementation"] == "eager"
    assert f["packing"]["none"]["vision_forwards_per_epoch"] > f["packing"]["page"]["vision_forwards_per_epoch"]
    assert f["qlora"]["linear4bit_modules"] > 0 and f["qlora"]["vision_linear4bit_modules"] == 0
    assert set(f["cost"]["projections"]["train.vlm3"]["gpus"]) == {"H100", "A100-80GB"}
    assert f["cobra"]["scan_path"].startswith(("reference path", "mamba-ssm CUDA kernels", "mambapy parallel scan")), f["cobra"]["scan_path"]
    assert res["wheels"] and all(v == "present" for v in res["wheels"].values()), res["wheels"]
    out = r.stdout.rstrip().splitlines()
    assert out[-1].startswith("| ") and res["table"].rstrip().endswith(out[-1]), "the table must be printed last"
    assert res["table"].startswith("**SMOKE")

def test_bench_gpu_refuses_without_a_gpu_and_names_smoke(tmp_path):
    import torch
    if torch.cuda.is_available(): return  # a machine with a GPU would run the real thing
    r = vlm3("bench", "gpu", "--out", tmp_path)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "--smoke" in r.stderr, r.stderr[-2000:]
    assert not list(tmp_path.iterdir())

def test_gpu_bench_imports_nothing_the_gpu_machine_lacks():
    "The bench's modules import none of the packages the bare GPU machine does not have (serve and demo stay out of it)."
    code = ("import sys, vlm3_nb.bench_gpu, vlm3_nb.bench, vlm3_nb.train, vlm3_nb.infer, vlm3_nb.models; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'deepeval', 'fastapi', 'uvicorn', 'modal', 'papermill', 'anthropic', 'rouge_score', 'trl'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout

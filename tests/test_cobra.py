"""The Cobra guide from outside, with the tiny Cobra on this CPU: its `torchrun ... pretrain` command on 2 gloo processes
(FSDP as the stages set it) against one process, align -> finetune from `checkpoint-latest.pt`, a run killed with SIGKILL
that resumes exactly, and the run folder as `--model` for `vlm3 eval`, `compare`, `eval-captions --output`,
the local server and the Modal class (`.local()`)."""
import json, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import pytest, torch
from conftest import ROOT, vlm3

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPEVAL_TELEMETRY_OPT_OUT": "YES", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# every comparison is exact arithmetic on the same global batch: plain SGD, constant lr, a few steps
EXACT = ["training.optimizer=sgd", "training.learning_rate=0.05", "training.lr_scheduler=constant", "training.warmup_ratio=0",
         "training.max_steps=4", "training.save_steps=2", "eval.eval_steps=4", "eval.logging_steps=1"]

def pretrain(nproc, data, runs, run_id, *flags, env=None):
    """The guide's command: `torchrun --standalone --nnodes 1 --nproc-per-node N -m vlm3_nb pretrain ...`; one process runs
    `vlm3 pretrain` in this interpreter (the same CLI path, without another ~7 s of imports), or a fresh one where `env` kills it."""
    args = ["pretrain", "--dataset.type", "llava-cot-100k", "--dataset.dataset_root_dir", str(data), "--model.type", "cobra-tiny",
            "--run_root_dir", str(runs), "--run_id", run_id, "--seed", "7", *flags]
    if nproc == 1: return vlm3(*args, cwd=ROOT, env={"OMP_NUM_THREADS": "1", **(env or {})})
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "-m", "vlm3_nb"]
    return subprocess.run(launch + args, cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=600)

def rows(run): return [json.loads(l) for l in (Path(run) / "logs" / "train.jsonl").read_text().splitlines()]
def ckpt(run): return torch.load(Path(run) / "checkpoints" / "latest-checkpoint.pt", weights_only=True)["model"]
def max_delta(a, b): return max((a[g][k] - b[g][k]).abs().max().item() for g in a for k in a[g])

ALIGN = ["--stage", "align", "--model.align_global_batch_size", "4", "--model.align_per_device_batch_size", "2", *EXACT]

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from vlm3_nb.pretrain import synth_llava_cot
    tmp = tmp_path_factory.mktemp("cobra")
    s = synth_llava_cot(tmp / "data", pages=3, seed=3)
    runs = tmp / "runs"
    out = SimpleNamespace(tmp=tmp, data=tmp / "data", runs=runs, folder=Path(s["train_jsonl"]).parent, synth=s)
    for name, n in (("align-1", 1), ("align-2", 2)):
        r = pretrain(n, out.data, runs, name, *ALIGN)
        assert r.returncode == 0, f"{name}: " + r.stdout[-1500:] + r.stderr[-4000:]
    ft = ["--stage", "finetune", "--pretrained_checkpoint", str(runs / "align-2" / "checkpoints" / "checkpoint-latest.pt"),
          "--model.finetune_global_batch_size", "4", "--model.finetune_per_device_batch_size", "2", *EXACT]
    r = pretrain(2, out.data, runs, "finetune-2", *ft, "training.report_to=tensorboard")  # Cobra runs log to trackers the same way
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-4000:]
    out.ft_flags = ft
    return out

def test_two_processes_match_one_with_the_stage_strategy(env):
    one, two = rows(env.runs / "align-1"), rows(env.runs / "align-2")
    dist = two[0]
    assert (dist["world_size"], dist["strategy"]) == (2, "fsdp-shard-grad-op"), dist  # align's upstream default
    shares = [s["local"] / s["total"] for s in dist["param_shares"]]
    assert all(0.35 < s < 0.65 for s in shares), shares  # FSDP really shards the Mamba, ViT and projector units
    l1 = [r["loss"] for r in one if r["kind"] == "train"]; l2 = [r["loss"] for r in two if r["kind"] == "train"]
    assert len(l1) == len(l2) == 4 and abs(l1[0] - l2[0]) < 1e-5, (l1[0], l2[0])
    a, b = ckpt(env.runs / "align-1"), ckpt(env.runs / "align-2")
    assert sorted(a) == sorted(b) == ["projector"] and max_delta(a, b) < 1e-5

def test_finetune_from_the_align_checkpoint_writes_upstreams_layout(env):
    run = env.runs / "finetune-2"
    assert rows(run)[0]["strategy"] == "fsdp-full-shard"
    stage = next(r for r in rows(run) if r["kind"] == "stage")
    assert stage["pretrained"]["module_keys"] == ["projector"] and stage["trained_groups"] == ["projector", "llm"]
    ck = ckpt(run)
    assert sorted(ck) == ["llm_backbone", "projector"]
    assert {"llm.backbone.embedding.weight", "llm.lm_head.weight", "llm.backbone.layers.1.mixer.in_proj.weight"} <= set(ck["llm_backbone"])
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert len(steps) == 2 and steps[-1].startswith("step-000004-epoch-") and "-loss=" in steps[-1]
    c = json.loads((run / "config.json").read_text())
    assert (c["model"]["model_id"], c["stage"], c["run_id"], c["seed"], c["dataset"]["type"]) == ("cobra-tiny", "finetune", "finetune-2", 7, "llava-cot-100k")
    assert (run / "logs" / "finetune-2.jsonl").read_text() == (run / "logs" / "train.jsonl").read_text()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank zero alone writes them
    assert "finetune_learning_rate" not in (run / "config.yaml").read_text() and "stage: finetune" in (run / "config.yaml").read_text()

def test_killed_cobra_run_resumes_exactly(env):
    r = pretrain(1, env.data, env.runs, "killed", *ALIGN, env={"VLM3_TEST_KILL_AT_STEP": "3"})
    assert r.returncode != 0 and not (env.runs / "killed" / "manifest.json").exists()
    r = pretrain(1, env.data, env.runs, "killed", *ALIGN, "--resume")
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]
    assert "from checkpoint-2" in r.stdout
    assert max_delta(ckpt(env.runs / "align-1"), ckpt(env.runs / "killed")) == 0.0  # bit-identical to the uninterrupted run
    assert [x["step"] for x in rows(env.runs / "killed") if x["kind"] == "train"] == [1, 2, 3, 4]

def test_bad_flags_name_the_fix(env, tmp_path, capsys):
    from vlm3_nb.cli import main
    base = ["pretrain", "--dataset.dataset_root_dir", str(env.data), "--model.type", "cobra-tiny", "--run_root_dir", str(tmp_path)]
    for argv, want in ((["--dataset.dataset_root_dir", str(tmp_path / "nodata")], "does not exist; put llava-cot-100k there"),
                       (["--dataset.type", "llava-v15"], "use one of: llava-cot-100k"),
                       (["--model.type", "cobra-7b"], "cobra+3b"),
                       (["--stage", "align", "--model.align_lr_scheduler_type", "warmup-stable-decay"], "choose one of linear-warmup+cosine-decay"),
                       (["--stage", "finetune", "--pretrained_checkpoint", str(tmp_path / "missing.pt"), "training.max_steps=1"], "missing.pt")):
        assert main(base + argv) == 2, argv
        assert want in capsys.readouterr().err, (argv, want)
    assert not any(p.name.startswith("llava-cot") for p in tmp_path.iterdir())  # a bad flag creates no run folder

@pytest.fixture(scope="module")
def evals(env):
    "`vlm3 eval --model RUN` of the align (baseline) and finetune runs: 8 new tokens an answer."
    from vlm3_nb.cli import main
    val, out = env.folder / "vlm_val.jsonl", env.tmp / "evals"
    args = lambda name: ["eval", "--model", str(env.runs / name), "--data", str(val), "--images-root", str(env.folder), "--out", str(out / name),
                         "--grounding", "0", "generation.max_new_tokens=8"]
    r = vlm3(*args("align-2"), cwd=ROOT, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]
    torch.set_num_threads(1)
    assert main(args("finetune-2")) == 0
    return out

def test_eval_compare_and_captions_take_the_run_folder(env, evals):
    val, out = env.folder / "vlm_val.jsonl", evals
    for name in ("align-2", "finetune-2"):
        s = json.loads((out / name / "summary.json").read_text())
        assert s["counts"]["val"] == len(val.read_text().splitlines()) and s["config"]["family"] == "cobra", s["config"]["family"]
    a, b = (json.loads((out / n / "summary.json").read_text())["fingerprint"] for n in ("align-2", "finetune-2"))
    assert a != b  # the fingerprint hashes each run's checkpoint
    from vlm3_nb.cli import main  # in-process: the CLI path, without paying another interpreter start
    assert main(["compare", str(out / "align-2"), str(out / "finetune-2"), "--out", str(out / "cmp"), "--n-boot", "200", "--no-report"]) == 0
    assert (out / "cmp" / "compare.json").is_file()
    # (the eval report and the four-way report of Cobra evals render in nbs/11b_demo_cobra.ipynb)
    txt = env.tmp / "results" / "cot_finetuned_bleu.txt"
    assert main(["eval-captions", "--model", str(env.runs / "finetune-2" / "checkpoints" / "checkpoint-latest.pt"), "--ann", env.synth["paths"]["captions"],
                 "--images-root", str(env.folder), "--output", str(txt), "--max-images", "4", "generation.max_new_tokens=8"]) == 0  # the guide's spelling
    assert txt.read_text().startswith("BLEU-1: ") and (txt.with_suffix("") / "captions_summary.json").is_file()

def test_server_and_modal_answer_as_eval_does(env, evals, monkeypatch):
    import httpx, secrets
    from vlm3_nb.data import read_records
    from vlm3_nb.infer import run_config
    from vlm3_nb.serve import Engine, ServerThread, make_app
    from vlm3_nb.modal_app import VLM3Model
    run, val = env.runs / "finetune-2", env.folder / "vlm_val.jsonl"
    want = {json.loads(l)["id"]: json.loads(l)["prediction"] for l in (evals / "finetune-2" / "results.jsonl").read_text().splitlines()}
    recs = read_records(val)[:3]
    cfg = run_config(run, overrides=["generation.max_new_tokens=8"])[0]  # what `vlm3 eval --model RUN generation.max_new_tokens=8` ran with
    eng, token = Engine.load(run, cfg=cfg, device="cpu"), secrets.token_urlsafe(16)
    try:
        with ServerThread(make_app(engine=eng, token=token)) as srv, httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            for rec in recs:
                r = c.post("/predict", files={"image": ("p.jpg", (env.folder / rec.image).read_bytes(), "image/jpeg")}, data={"question": rec.question})
                assert r.status_code == 200 and r.json()["answer"] == want[rec.id], (r.text, want[rec.id])
    finally: eng.close()
    monkeypatch.setenv("VLM3_SERVE_MODEL", str(run)); monkeypatch.setenv("VLM3_SERVE_ADAPTER", "")
    (env.tmp / "serve.yaml").write_text("generation:\n  max_new_tokens: 8\n")
    monkeypatch.setenv("VLM3_SERVE_CONFIG", str(env.tmp / "serve.yaml"))
    vm = VLM3Model()
    for rec in recs: assert vm.predict.local((env.folder / rec.image).read_bytes(), rec.question) == want[rec.id]

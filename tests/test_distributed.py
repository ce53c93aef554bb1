"""Multi-process training on this CPU: `torchrun --nproc-per-node 2` on gloo, through the same code path the GPUs take
(torch's DDP and FSDP2 `fully_shard`). The step-1 loss equals a single process on the same global batch, the weights after
10 SGD steps agree, FSDP really shards, and a killed 2-process run resumes."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPEVAL_TELEMETRY_OPT_OUT": "YES", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
STRATEGIES = ("ddp", "fsdp-full-shard")  # fsdp-shard-grad-op against one process: tests/test_cobra.py (the align stage's strategy)

def train(nproc, run, tiny, manual, *extra, env=None):
    "`vlm3 train` as one process, or under torchrun with `nproc` processes (the launch line the README shows)."
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable]
    args = ["-m", "vlm3_nb", "train", "--config", "demo_tiny", f"base_model={tiny}", f"data.train_file={manual / 'vlm_train.jsonl'}",
            f"data.val_file={manual / 'vlm_val.jsonl'}", f"data.images_root={manual}", f"output_dir={run}",
            "training.max_steps=10", "training.save_steps=5", "eval.eval_steps=100", "eval.logging_steps=1",
            "training.batch_size=2", "training.global_batch_size=4", "training.optimizer=sgd", "training.learning_rate=0.5",
            "training.lr_scheduler=constant", "training.warmup_ratio=0", "lora.dropout=0", "training.seed=3", *extra]
    return subprocess.run(launch + args, cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=600)

def rows(run): return [json.loads(l) for l in (Path(run) / "logs" / "train.jsonl").read_text().splitlines()]

def adapter(run):
    from safetensors.torch import load_file
    return load_file(str(Path(run) / "adapter" / "adapter_model.safetensors"))

def max_delta(a, b): return max((a[k] - b[k]).abs().max().item() for k in a)

@pytest.fixture(scope="module")
def runs(tiny, manual, tmp_path_factory):
    "The single-process reference and one 2-process run per strategy, on the same config and global batch."
    d = tmp_path_factory.mktemp("dist")
    out = {}
    for name, n, extra in [("single", 1, ())] + [(s, 2, (f"training.strategy={s}",)) for s in STRATEGIES]:
        r = train(n, d / name, tiny, manual, *extra)
        assert r.returncode == 0, f"{name}: " + r.stdout[-1500:] + r.stderr[-4000:]
        out[name] = d / name
    return out

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_match_one(runs, strategy):
    one, two = rows(runs["single"]), rows(runs[strategy])
    dist = two[0]
    assert dist["kind"] == "dist" and (dist["world_size"], dist["strategy"]) == (2, strategy), dist
    assert dist["plan"]["accum"] == 1 and rows(runs["single"])[0]["plan"]["accum"] == 2  # 2 x 2 x 1 == 1 x 2 x 2
    shares = [s["local"] / s["total"] for s in dist["param_shares"]]
    if strategy.startswith("fsdp"): assert all(0.4 < s < 0.6 for s in shares), shares  # each rank holds half: the sharding is real
    else: assert shares == [1.0, 1.0], shares
    l1 = [r["loss"] for r in one if r["kind"] == "train"]; l2 = [r["loss"] for r in two if r["kind"] == "train"]
    assert len(l1) == len(l2) == 10 and abs(l1[0] - l2[0]) < 1e-5, (l1[0], l2[0])
    assert max_delta(adapter(runs["single"]), adapter(runs[strategy])) < 1e-4
    e1, e2 = [[r["eval_loss"] for r in x if r["kind"] == "eval"][-1] for x in (one, two)]
    assert abs(e1 - e2) < 1e-4, (e1, e2)  # sharded eval gathers to the same token-level loss
    man = json.loads((runs[strategy] / "manifest.json").read_text())
    assert (man["world_size"], man["strategy"], man["steps"]) == (2, strategy, 10)
    assert sorted(p.name for p in (runs[strategy] / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-5"]  # rank zero alone wrote

def test_killed_two_process_run_resumes(runs, tiny, manual, tmp_path):
    run = tmp_path / "killed"
    r = train(2, run, tiny, manual, "training.strategy=fsdp-full-shard", env={"VLM3_TEST_KILL_AT_STEP": "7"})
    assert r.returncode != 0 and not (run / "adapter").exists()
    assert (run / "checkpoints" / "checkpoint-5" / "COMPLETE").is_file()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
                        "-m", "vlm3_nb", "train", "--resume", f"output_dir={run}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-4000:]
    assert "from checkpoint-5" in r.stdout
    assert json.loads((run / "manifest.json").read_text())["resumed_from"] == "checkpoint-5"
    assert max_delta(adapter(runs["fsdp-full-shard"]), adapter(run)) < 1e-6  # the same weights as the uninterrupted 2-process run
    assert [x["step"] for x in rows(run) if x["kind"] == "train"] == list(range(1, 11))  # no step logged twice

def test_accelerate_launch_starts_the_same_loop(tiny, manual, tmp_path):
    "`accelerate launch` with the shipped config starts the processes; vlm3's loop and `training.strategy` do the rest."
    run = tmp_path / "acc"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "vlm3_nb/configs/accelerate/2gpu.yaml"),
           "-m", "vlm3_nb", "train", "--config", "demo_tiny", f"base_model={tiny}", f"data.train_file={manual / 'vlm_train.jsonl'}",
           "data.val_file=", f"data.images_root={manual}", f"output_dir={run}", "training.max_steps=2", "training.save_steps=2",
           "training.global_batch_size=4", "training.strategy=fsdp-full-shard"]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]
    dist = rows(run)[0]
    assert (dist["world_size"], dist["strategy"]) == (2, "fsdp-full-shard") and (run / "adapter").is_dir(), dist

"""Multi-process training on this CPU: 2 gloo processes through the same code path the GPUs take (torch's DDP and FSDP2
`fully_shard`), started the two ways the README shows (`accelerate launch` with the shipped config, and `torchrun`).
The step-1 loss equals a single process on the same global batch, the weights after 10 SGD steps agree, FSDP really shards,
and a 2-process run killed at step 7 resumes to the weights the other strategy reached without a break.
Each launch costs three interpreter starts, so the three runs share their work: DDP is the `accelerate launch` run,
and the FSDP run is the one that is killed and resumed."""
import json, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import pytest
from conftest import ROOT, vlm3

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPEVAL_TELEMETRY_OPT_OUT": "YES", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
STRATEGIES = ("ddp", "fsdp-full-shard")  # fsdp-shard-grad-op against one process: tests/test_cobra.py (the align stage's strategy)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "vlm3_nb/configs/accelerate/2gpu.yaml")]

def train_args(run, tiny, manual, *extra):
    "`vlm3 train` on the tiny model: plain SGD at a constant lr, so one process and two agree to float rounding."
    return ["train", "--config", "demo_tiny", f"base_model={tiny}", f"data.train_file={manual / 'vlm_train.jsonl'}",
            f"data.val_file={manual / 'vlm_val.jsonl'}", f"data.images_root={manual}", f"output_dir={run}",
            "training.max_steps=10", "training.save_steps=5", "eval.eval_steps=100", "eval.logging_steps=1",
            "training.batch_size=2", "training.global_batch_size=4", "training.optimizer=sgd", "training.learning_rate=0.5",
            "training.lr_scheduler=constant", "training.warmup_ratio=0", "lora.dropout=0", "training.seed=3", *extra]

def launch(launcher, args, env=None):
    return subprocess.run(launcher + ["-m", "vlm3_nb", *args], cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=600)

def rows(run): return [json.loads(l) for l in (Path(run) / "logs" / "train.jsonl").read_text().splitlines()]

def adapter(run):
    from safetensors.torch import load_file
    return load_file(str(Path(run) / "adapter" / "adapter_model.safetensors"))

def max_delta(a, b): return max((a[k] - b[k]).abs().max().item() for k in a)

def ok(r, name): assert r.returncode == 0, f"{name}: " + r.stdout[-1500:] + r.stderr[-4000:]

@pytest.fixture(scope="module")
def runs(tiny, manual, tmp_path_factory):
    "One process (the reference), DDP under `accelerate launch`, and FSDP under torchrun killed at step 7 then resumed."
    d = tmp_path_factory.mktemp("dist")
    ok(vlm3(*train_args(d / "single", tiny, manual), env={"OMP_NUM_THREADS": "1"}), "single")
    ok(launch(ACCELERATE, train_args(d / "ddp", tiny, manual, "training.strategy=ddp")), "ddp (accelerate launch)")
    fsdp = d / "fsdp-full-shard"
    killed = launch(TORCHRUN, train_args(fsdp, tiny, manual, "training.strategy=fsdp-full-shard"), env={"VLM3_TEST_KILL_AT_STEP": "7"})
    state = SimpleNamespace(killed_rc=killed.returncode, had_adapter=(fsdp / "adapter").exists(),
                            ckpt5=(fsdp / "checkpoints" / "checkpoint-5" / "COMPLETE").is_file())
    resumed = launch(TORCHRUN, ["train", "--resume", f"output_dir={fsdp}"])  # the README's resume: the run's own config.yaml
    ok(resumed, "fsdp resume")
    return {"single": d / "single", "ddp": d / "ddp", "fsdp-full-shard": fsdp, "killed": state, "resumed": resumed}

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_match_one(runs, strategy):
    one, two = rows(runs["single"]), rows(runs[strategy])
    dist = two[0]
    assert dist["kind"] == "dist" and (dist["world_size"], dist["strategy"]) == (2, strategy), dist
    assert dist["plan"]["accum"] == 1 and one[0]["plan"]["accum"] == 2  # 2 x 2 x 1 == 1 x 2 x 2
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

def test_killed_two_process_run_resumes(runs):
    k, run = runs["killed"], runs["fsdp-full-shard"]
    assert k.killed_rc != 0 and not k.had_adapter and k.ckpt5  # died at step 7, after checkpoint-5
    assert "from checkpoint-5" in runs["resumed"].stdout
    assert json.loads((run / "manifest.json").read_text())["resumed_from"] == "checkpoint-5"
    assert max_delta(adapter(runs["ddp"]), adapter(run)) < 1e-6  # the weights the uninterrupted 2-process DDP run reached
    assert [x["step"] for x in rows(run) if x["kind"] == "train"] == list(range(1, 11))  # no step logged twice

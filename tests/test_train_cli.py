"`vlm3 train` and `vlm3 preflight` driven from outside: the run folder, exit codes, and a kill -9 in the middle of a checkpoint that `--resume` recovers from exactly."
import json, signal
import pytest
from conftest import vlm3

STEPS, SAVE = 12, 5  # checkpoints at 5 and 10; the killed run dies while writing checkpoint-10

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    r = vlm3("build-tiny", "--out", out)
    assert r.returncode == 0, r.stderr
    return out

def train_args(model, manual, run, *extra):
    "`vlm3 train` on the tiny model and the session's manual, with tiny pixels and a few steps."
    return ["train", "--config", "demo_tiny", f"base_model={model}", f"data.train_file={manual / 'vlm_train.jsonl'}",
            f"data.val_file={manual / 'vlm_val.jsonl'}", f"data.images_root={manual}", f"output_dir={run}",
            f"training.max_steps={STEPS}", f"training.save_steps={SAVE}", "eval.eval_steps=6", "eval.logging_steps=2", "training.seed=7", *extra]

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # a 0.4 M-parameter model gains nothing from threads

@pytest.fixture(scope="module")
def ref_run(model, manual, tmp_path_factory):
    "One uninterrupted run: the reference the resumed run must match."
    run = tmp_path_factory.mktemp("runs") / "ref"
    r = vlm3(*train_args(model, manual, run), env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return run

def adapter(run):
    from safetensors.torch import load_file
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))

def test_run_folder(ref_run):
    assert {p.name for p in ref_run.iterdir()} >= {"adapter", "config.yaml", "manifest.json", "logs", "checkpoints"}
    assert (ref_run / "adapter" / "adapter_config.json").is_file()
    rows = [json.loads(l) for l in (ref_run / "logs" / "train.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert train and train[-1]["step"] == STEPS
    for r in train:
        assert {"step", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "peak_mem_gb"} <= set(r), r
    ev = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in ev] == [6, 12] and ev[-1]["eval_loss_by_type"], ev
    mf = json.loads((ref_run / "manifest.json").read_text())
    assert mf["steps"] == STEPS and mf["final"]["eval_loss"] == ev[-1]["eval_loss"]
    assert {"torch", "transformers", "peft", "trl", "vlm3_nb"} <= set(mf["versions"]) and len(mf["data"]) == 2
    ckpts = sorted(p.name for p in (ref_run / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-10", "checkpoint-12", "checkpoint-5"] and all((ref_run / "checkpoints" / c / "COMPLETE").exists() for c in ckpts)

def test_unknown_key_exits_2(model, manual, tmp_path):
    r = vlm3(*train_args(model, manual, tmp_path / "run", "training.max_stepz=3"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "training.max_stepz" in r.stderr and "training.max_steps" in r.stderr  # names the key and suggests the fix

def test_kill_9_then_resume_is_exact(ref_run, model, manual, tmp_path):
    run = tmp_path / "killed"
    r = vlm3(*train_args(model, manual, run), env={**ENV, "VLM3_TEST_KILL_IN_SAVE": "10"})  # dies after writing checkpoint-10, before its marker
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert (run / "checkpoints" / "checkpoint-10").is_dir() and not (run / "checkpoints" / "checkpoint-10" / "COMPLETE").exists()
    assert not (run / "adapter").exists()
    r = vlm3(*train_args(model, manual, run, "--resume"), env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "from checkpoint-5" in r.stdout  # the incomplete checkpoint-10 was never used
    a, b = adapter(ref_run), adapter(run)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0  # exact on CPU
    steps = [json.loads(l)["step"] for l in (run / "logs" / "train.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == sorted(set(steps))  # no step logged twice
    assert json.loads((run / "manifest.json").read_text())["resumed_from"] == "checkpoint-5"

def test_push_offline_fails_before_training(model, manual, tmp_path):
    r = vlm3(*train_args(model, manual, tmp_path / "run", "--push-to-hub", "me/vlm3-adapter"), env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()

def test_preflight(model, manual):
    r = vlm3("preflight", "--config", "demo_tiny", f"base_model={model}", f"data.train_file={manual / 'vlm_train.jsonl'}", f"data.images_root={manual}")
    assert r.returncode == 0, r.stderr[-2000:]
    for s in ("image tokens", "padding waste", "steps per epoch", "A100-80GB", "H100"): assert s in r.stdout

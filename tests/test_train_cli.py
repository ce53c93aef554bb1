"`vlm3 train` and `vlm3 preflight` driven from outside: the run folder, exit codes, and a kill -9 in the middle of a checkpoint that `--resume` recovers from exactly."
import hashlib, json, shutil, signal, sys
from pathlib import Path
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

TRACKERS = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}

@pytest.fixture(scope="module")
def ref_proc(model, manual, tmp_path_factory):
    """One uninterrupted run (the reference the resumed runs must match) and what it printed: the installed console script
    in its own process, logging to TensorBoard and an offline W&B run as well (trackers only watch: the weights are the same)."""
    run = tmp_path_factory.mktemp("runs") / "ref"
    r = vlm3(*train_args(model, manual, run, "training.report_to=tensorboard,wandb"), env={**ENV, **TRACKERS}, proc=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return run, r

@pytest.fixture(scope="module")
def ref_run(ref_proc): return ref_proc[0]

def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()

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
    assert mf["code"]["vlm3_nb"]["version"] and mf["code"]["project"]["dir"]  # the package that ran and the user's own project
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
    r = vlm3("train", "--config", "lora_qwen2vl", f"output_dir={run}", "--resume", env=ENV)  # the README's command: the run's own config.yaml is the base
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--config lora_qwen2vl is not applied" in r.stdout
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


def test_training_prints_one_bar_and_plain_lines(ref_proc):
    _, r = ref_proc
    out = r.stdout + r.stderr
    assert "{'loss'" not in out and "\x1b[A" not in out  # no printed dicts, no nested bars
    assert f"step    {STEPS}  loss " in r.stdout and "eval loss" in r.stdout
    assert "train: 100%" in r.stderr  # the one bar

def test_bad_values_refused_before_anything_is_written(model, manual, tmp_path):
    run = tmp_path / "bad"
    r = vlm3(*train_args(model, manual, run, "training.epochs=0", "training.max_steps=-1", "training.batch_size=0", "training.gradient_accumulation_steps=0",
                         "training.learning_rate=-1e-4", "data.max_pixels=3000", "data.min_pixels=4000", "lora.r=0", "lora.dropout=2"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for key in ("training.epochs", "training.batch_size", "training.gradient_accumulation_steps", "training.learning_rate",
                "'data.max_pixels' (3000) and 'data.min_pixels' (4000)", "lora.r", "lora.dropout"): assert key in r.stderr, key
    assert "target_modules" not in r.stderr  # lora.r and lora.dropout are blamed on themselves
    assert not run.exists()
    r = vlm3(*train_args(model, manual, run, "lora.target_modules=[q_prj,v_proj]"))
    assert r.returncode == 2 and "'q_prj' (did you mean 'q_proj'?)" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not run.exists()

def test_resume_finished_run_changes_nothing(ref_run):
    before = {p: sha(p) for p in ref_run.rglob("*") if p.is_file()}
    r = vlm3("train", f"output_dir={ref_run}", "--resume", env=ENV)
    assert r.returncode == 0 and f"already finished at step {STEPS}" in r.stdout, r.stdout + r.stderr[-2000:]
    assert {p: sha(p) for p in ref_run.rglob("*") if p.is_file()} == before

def test_resume_without_checkpoint_is_refused(ref_run, tmp_path):
    run = tmp_path / "never"; run.mkdir(); shutil.copy(ref_run / "config.yaml", run / "config.yaml")
    r = vlm3("train", f"output_dir={run}", "--resume", env=ENV)
    assert r.returncode == 2 and "nothing to resume. Start the run again without --resume" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]

def test_damaged_newest_checkpoint_falls_back(ref_run, tmp_path):
    run = tmp_path / "damaged"; shutil.copytree(ref_run, run)
    for p in ("adapter", "manifest.json", "checkpoints/checkpoint-12"): shutil.rmtree(run / p) if (run / p).is_dir() else (run / p).unlink()
    f = run / "checkpoints" / "checkpoint-10" / "adapter_model.safetensors"; f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
    r = vlm3("train", f"output_dir={run}", "training.report_to=none", "--resume", env=ENV)  # trackers off for the rest: an override on resume
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint-10 is damaged (adapter_model.safetensors does not read back" in r.stdout and "from checkpoint-5" in r.stdout
    assert (run / "checkpoints" / "checkpoint-10.damaged").is_dir()  # set aside, not deleted
    a, b = adapter(ref_run), adapter(run)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0  # from the older checkpoint, still exact

@pytest.mark.slow
def test_papermill_train_notebook_parameters(tmp_path):
    nb = Path(__file__).resolve().parents[1] / "nbs" / "runs" / "train.ipynb"
    pm = [str(Path(sys.executable).parent / "papermill"), str(nb)]
    import subprocess
    run = tmp_path / "pm-run"
    args = ["-k", "python3", "-p", "max_steps", "3", "-p", "overrides", "training.save_steps=3 eval.eval_steps=3", "-p", "run_dir", str(run)]
    r = subprocess.run(pm + [str(tmp_path / "a.ipynb"), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unknown parameter" not in r.stderr and "Unable to parse" not in r.stderr, r.stderr[-2000:]
    assert json.loads((run / "manifest.json").read_text())["steps"] == 3
    r = subprocess.run(pm + [str(tmp_path / "b.ipynb"), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "continue it with -p resume True" in r.stderr  # the notebook's own wording, not the CLI's

def test_report_to_tensorboard_and_wandb_offline(ref_run, model, manual, tmp_path):
    "training.report_to: TensorBoard event files and an offline W&B run beside the JSONL, with the same numbers; no network."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(ref_run / "tensorboard")); ea.Reload()
    rows = [json.loads(l) for l in (ref_run / "logs" / "train.jsonl").read_text().splitlines()]
    assert [e.step for e in ea.Scalars("train/loss")] == [x["step"] for x in rows if x["kind"] == "train"]
    assert [round(e.value, 4) for e in ea.Scalars("train/loss")] == [round(x["loss"], 4) for x in rows if x["kind"] == "train"]
    assert {"eval/loss", "train/lr"} <= set(ea.Tags()["scalars"])
    offline = list((ref_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0, list((ref_run / "wandb").rglob("*"))[:10]
    r = vlm3(*train_args(model, manual, tmp_path / "bad", "training.report_to=comet"), env=ENV)
    assert r.returncode == 2 and "'comet' is not a tracker" in r.stderr and not (tmp_path / "bad").exists()

import os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "YES")

# Environment variables a library reads once, at import time, or that kill the process: a call that sets one to a new value
# gets a fresh interpreter. Everything else runs the console script's `main` in this one, which is what makes the suite fit
# in CI: every new interpreter pays ~7 s of torch + transformers + peft imports before it does anything.
PROCESS_ENV = ("HOME", "MODAL_", "WANDB_", "HF_HUB_OFFLINE", "VLM3_TEST_")

def _needs_process(env):
    return any(k.startswith(PROCESS_ENV) and os.environ.get(k) != v for k, v in (env or {}).items())

def _set_threads(n):
    "torch reads OMP_NUM_THREADS when it is imported; in this interpreter the call's value is set (and the old one returned)."
    import torch
    old = torch.get_num_threads(); torch.set_num_threads(n); return old

def vlm3(*args, cwd=None, env=None, timeout=600, proc=False):
    """Run `vlm3 ARGS` and return a CompletedProcess (text): the exit code, stdout and stderr a user would see.
    In this interpreter (`vlm3_nb.cli.main`, with the call's sys.argv and `env`, output captured, an uncaught exception printed as
    Python prints it with exit code 1), or as the installed console script with `proc=True` or a process-level `env`."""
    args = [str(a) for a in args]
    if proc or _needs_process(env):
        exe = shutil.which("vlm3", path=str(BIN)) or "vlm3"
        e = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPEVAL_TELEMETRY_OPT_OUT": "YES", **(env or {})}
        return subprocess.run([exe, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    import contextlib, io, traceback
    from unittest import mock
    from vlm3_nb.cli import main
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    with mock.patch.dict(os.environ, {k: str(v) for k, v in (env or {}).items()}), mock.patch.object(sys, "argv", [str(BIN / "vlm3"), *args]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        threads = _set_threads(int(env["OMP_NUM_THREADS"])) if env and "OMP_NUM_THREADS" in env else None
        try:
            if cwd: os.chdir(cwd)
            rc = main(args)
        except SystemExit as e:  # argparse: --help is 0, a usage error 2
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else (print(e.code, file=sys.stderr) or 1))
        except Exception:
            traceback.print_exc(); rc = 1
        finally:
            os.chdir(here)
            if threads: _set_threads(threads)
    return subprocess.CompletedProcess(["vlm3", *args], rc if isinstance(rc, int) else 0, out.getvalue(), err.getvalue())

@pytest.fixture(scope="session")
def manual(tmp_path_factory):
    "A small synthetic manual made once per test session through the CLI."
    out = tmp_path_factory.mktemp("manual")
    r = vlm3("synth", "--out", out, "--pages", 6, "--seed", 1)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    "The tiny offline Qwen2-VL, built once per test session through the CLI."
    out = tmp_path_factory.mktemp("tiny") / "model"
    r = vlm3("build-tiny", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def random_adapter_run(tmp, manual_seed):
    """The tiny model, a 3-page manual, and a LoRA adapter with random (non-zero) B weights saved as a training run saves it.
    Returns (tiny, manual, cfg, adapter_dir)."""
    import torch
    from vlm3_nb.core import load_config, save_config
    from vlm3_nb.models import apply_lora, build_tiny, load_base
    from vlm3_nb.synth import synthesize
    tiny = build_tiny(tmp / "tiny")
    man = tmp / "manual"; synthesize(man, pages=3, seed=manual_seed)
    cfg = load_config("demo_tiny", {"base_model": str(tiny), "data.images_root": str(man), "data.max_pixels": 12544,
                                    "generation.max_new_tokens": 8, "generation.batch_size": 4})
    torch.manual_seed(0)
    pm = apply_lora(load_base(cfg, "cpu")[0], cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.5)
    run = tmp / "run"; pm.save_pretrained(run / "adapter"); save_config(cfg, run / "config.yaml")
    return tiny, man, cfg, run / "adapter"


HEAVY_FIRST = ("test_distributed.py", "test_cobra.py", "test_train_cli.py", "test_bench_gpu.py")  # multi-process runs start first, so no worker ends on a long tail

def pytest_collection_modifyitems(session, config, items):
    "Hand the longest files to the workers first (pytest-xdist --dist loadfile keeps this order)."
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(HEAVY_FIRST)))

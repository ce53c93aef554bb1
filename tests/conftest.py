import os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "YES")

def vlm3(*args, cwd=None, env=None, timeout=600):
    "Run the installed `vlm3` console script; return the CompletedProcess (text)."
    exe = shutil.which("vlm3", path=str(BIN)) or "vlm3"
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPEVAL_TELEMETRY_OPT_OUT": "YES", **(env or {})}
    return subprocess.run([exe, *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)

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

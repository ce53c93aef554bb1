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

"""The Modal app without Modal: it builds offline, its CLI parses, and its functions run in-process with `.local()` on the
tiny model. Training killed after its first checkpoint (as a preemption would) resumes from the Volume and ends with the
adapter an uninterrupted run produces; an eval shard returns the rows local `predict` writes; VLM3Model answers as
`vlm3 eval` does; every entry point that needs Modal fails fast without a token."""
import base64, json, os, subprocess, sys, time
from pathlib import Path
from types import SimpleNamespace
import pytest, torch
from conftest import random_adapter_run

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
NO_MODAL = {"MODAL_TOKEN_ID": None, "MODAL_TOKEN_SECRET": None}
pytestmark = pytest.mark.filterwarnings("ignore:.*executing locally:UserWarning")  # .local() has no Volume; expected here


def run_py(code, env=None, timeout=300):
    e = {k: v for k, v in {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}.items() if v is not None}
    for k, v in NO_MODAL.items(): e.pop(k, None)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "The tiny model, a 3-page manual prepared as `vlm3 prepare` does (save_to_disk), and a random-weight adapter run."
    from vlm3_nb.data import prepare_datasets, read_records
    tmp = tmp_path_factory.mktemp("modal")
    tiny, man, cfg, adapter = random_adapter_run(tmp, manual_seed=3)
    prepare_datasets(man / "vlm_train.jsonl", man / "vlm_val.jsonl", man, tmp / "ds")
    return SimpleNamespace(tmp=tmp, tiny=tiny, man=man, ds=tmp / "ds", cfg=cfg, adapter=adapter,
                           recs=read_records(man / "vlm_val.jsonl"))


def test_builds_offline_with_the_seeds_resources_and_gpu_switch():
    r = run_py("import vlm3_nb.modal_app as m, json; s = m.train._spec_; c = m.VLM3Model._get_class_service_function()._spec_;"
               "print(json.dumps([m.app.name, sorted(m.app.registered_functions), s.gpus, list(s.volumes), c.gpus, m.predict_shard._spec_.gpus]))",
               env={"VLM3_GPU": "H100"})
    assert r.returncode == 0, r.stderr
    name, fns, gpu, vols, serve_gpu, eval_gpu = json.loads(r.stdout.strip().splitlines()[-1])
    assert name == "vlm3" and {"train", "pretrain", "predict_shard", "VLM3Model.*"} <= set(fns)
    assert (gpu, vols, serve_gpu, eval_gpu) == ("H100", ["/checkpoints"], "A10G", "A10G")
    from vlm3_nb.modal_app import requirements, train
    assert train._spec_.gpus == os.environ.get("VLM3_GPU", "A100-80GB")
    import tomllib
    assert requirements() == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_modal_cli_parses_and_fails_fast_without_token(tmp_path):
    modal = [str(Path(sys.executable).parent / "modal"), "run", "vlm3_nb/modal_app.py"]
    e = {k: v for k, v in os.environ.items() if k not in NO_MODAL} | {"MODAL_CONFIG_PATH": str(tmp_path / "none.toml")}
    h = subprocess.run(modal + ["--help"], env=e, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert h.returncode == 0 and "--dataset-id" in h.stdout and "--push / --no-push" in h.stdout, h.stdout + h.stderr
    t0 = time.time()
    r = subprocess.run(modal + ["--dataset-id", "me/manual-qa", "--epochs", "1"], env=e, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0 and "Token missing" in r.stdout + r.stderr and time.time() - t0 < 60


def test_entry_points_fail_fast_without_token(env, monkeypatch):
    from vlm3_nb.core import Vlm3Error
    from vlm3_nb.modal_app import predict_on_modal, train_on_modal
    for k in NO_MODAL: monkeypatch.delenv(k, raising=False)
    t0 = time.time()
    with pytest.raises(Vlm3Error, match="modal token new"): train_on_modal("me/manual-qa", gpu="H100")
    with pytest.raises(Vlm3Error, match="modal token new"): predict_on_modal(env.recs, str(env.tiny), env.adapter, env.cfg)
    assert time.time() - t0 < 5


def test_train_resumes_after_preemption_exactly(env, monkeypatch):
    "Attempt 1 dies (SIGKILL) after checkpoint-2 of 6; attempt 2 resumes from it; the adapter equals an uninterrupted run's."
    from safetensors.torch import load_file
    import vlm3_nb.modal_app as m
    vol = env.tmp / "vol"
    kw = dict(base_model=str(env.tiny), push=False, config="demo_tiny",
              overrides=["data.max_pixels=12544", "training.max_steps=6", "training.save_steps=2", "eval.eval_steps=100", "training.batch_size=2"])
    code = (f"import vlm3_nb.modal_app as m, torch; torch.set_num_threads(1); "
            f"m.train.local({str(env.ds)!r}, output_name='preempted', **{kw!r})")
    r = run_py(code, env={"VLM3_VOLUME_DIR": str(vol), "VLM3_TEST_KILL_AT_STEP": "3"})
    assert r.returncode == -9, r.stderr[-2000:]  # killed mid-run
    run = vol / "runs" / "preempted"
    assert m.resume_state(run) == "resume" and not (run / "adapter").exists()
    monkeypatch.setenv("VLM3_VOLUME_DIR", str(vol))
    commits = []
    monkeypatch.setattr(m, "commit", lambda: commits.append(1))
    s = m.train.local(str(env.ds), output_name="preempted", **kw)
    assert (s["attempt"], s["resumed_from"], s["steps"]) == ("resume", "checkpoint-2", 6), s
    assert len(commits) >= 2  # after materializing the data and after training (and per checkpoint with train's callbacks hook)
    ref = m.train.local(str(env.ds), output_name="uninterrupted", **kw)
    assert (ref["attempt"], ref["resumed_from"], ref["steps"]) == ("fresh", None, 6)
    a, b = (load_file(str(Path(x["adapter"]) / "adapter_model.safetensors")) for x in (s, ref))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    again = m.train.local(str(env.ds), output_name="preempted", **kw)  # a retry after success only reports
    assert again["attempt"] == "done" and again["steps"] == 6


def test_predict_shard_rows_equal_local_predict(env):
    from vlm3_nb.core import to_dict
    from vlm3_nb.infer import load_for_inference, predict
    from vlm3_nb.modal_app import make_shards, predict_shard
    model, proc, fp = load_for_inference(env.tiny, env.adapter, env.cfg, device="cpu")
    local = predict(env.recs, model, proc, env.cfg, env.tmp / "eval", fp, progress=False)
    shards = make_shards(env.recs, env.cfg, n=3)
    assert sum(len(s["records"]) for s in shards) == len(env.recs) and all(set(s["images"]) == {r["image"] for r in s["records"]} for s in shards)
    remote = [row for s in shards for row in predict_shard.local(s, str(env.tiny), str(env.adapter), to_dict(env.cfg), fp)]
    how = ("latency_s", "batch_size", "cached")  # how a row was produced, not what
    assert [{k: v for k, v in r.items() if k not in how} for r in remote] == [{k: v for k, v in r.items() if k not in how} for r in local]
    assert set(remote[0]) == set(local[0]) - {"cached"}  # exactly the predictions.jsonl columns


def test_vlm3model_answers_as_eval_does(env, monkeypatch):
    from fastapi import HTTPException
    from vlm3_nb.infer import load_for_inference, predict
    from vlm3_nb.modal_app import VLM3Model
    model, proc, fp = load_for_inference(env.tiny, env.adapter, env.cfg, device="cpu")
    want = predict(env.recs[:3], model, proc, env.cfg, env.tmp / "eval2", fp, progress=False)
    monkeypatch.setenv("VLM3_SERVE_MODEL", str(env.tiny)); monkeypatch.setenv("VLM3_SERVE_ADAPTER", str(env.adapter))
    monkeypatch.setenv("VLM3_SERVE_CONFIG", "")  # the run's config.yaml beside the adapter
    vm = VLM3Model()
    for rec, w in zip(env.recs[:3], want):
        img = (env.man / rec.image).read_bytes()
        assert vm.predict.local(img, rec.question) == w["prediction"]
        assert vm.api.local({"image": base64.b64encode(img).decode(), "question": rec.question})["answer"] == w["prediction"]
    for bad in ({"image": "@@", "question": "q"}, {"question": "q"}, {"image": base64.b64encode(img).decode(), "question": ""},
                {"image": base64.b64encode(b"not an image").decode(), "question": "q"}):
        with pytest.raises(HTTPException) as e: vm.api.local(bad)
        assert e.value.status_code == 400, bad

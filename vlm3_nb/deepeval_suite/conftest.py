"""pytest plumbing for the vlm3 DeepEval suite (hand-written, not generated; its logic lives in nbs/08_evaluate.ipynb).

    deepeval test run vlm3_nb/deepeval_suite/test_vlm.py --model M [--adapter A] --data FILE --images-root D --out DIR \\
        [--probes FILE] [--judge none|claude:<model>|local:<path>] [--max-samples N] [--budget USD] [--config PATH] [-k EXPR]

An option not given falls back to its VLM3_* environment variable (VLM3_MODEL, VLM3_ADAPTER, VLM3_DATA, VLM3_IMAGES_ROOT,
VLM3_PROBES, VLM3_JUDGE, VLM3_MAX_SAMPLES, VLM3_EVAL_OUT, VLM3_CONFIG, VLM3_BUDGET), then to a previous `vlm3 eval --out DIR`
(its summary.json and config.yaml); without a config, an adapter's training run config.yaml is used, as `vlm3 eval` does.
--max-samples must be at least 1. Predictions go through the prediction cache in --out, so running this after
`vlm3 eval` with the same --out generates nothing.
"""
import copy, os
import pytest

os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "YES")

_OPTS = [  # (option, settings key, type, help)
    ("--model", "model", str, "base or merged model folder / hub id"),
    ("--adapter", "adapter", str, "LoRA adapter folder (omit for the baseline)"),
    ("--data", "data", str, "val JSONL (pipeline format)"),
    ("--images-root", "images_root", str, "folder the image paths are relative to"),
    ("--probes", "probes", str, "manual_probes.json"),
    ("--judge", "judge", str, "none | claude:<model> | local:<path> (default none)"),
    ("--max-samples", "max_samples", int, "at most N val cases and N probes, taken after -k, round-robin over content types"),
    ("--out", "out", str, "prediction cache folder, the same as `vlm3 eval --out` (default runs/eval)"),
    ("--config", "config", str, "config YAML or shipped name (default: DIR/config.yaml from `vlm3 eval`, else the adapter's training run config, else the seed defaults)"),
    ("--budget", "budget", float, "USD cap on judge spend"),
]


def pytest_addoption(parser):
    g = parser.getgroup("vlm3", "vlm3 DeepEval suite (fallbacks: VLM3_* environment variables, then a previous `vlm3 eval --out DIR`)")
    for opt, _, typ, hlp in _OPTS: g.addoption(opt, type=typ, default=None, help=hlp)


def pytest_configure(config):
    "One line per failed case (deepeval's table has the details) unless --tb was given."
    if getattr(config.option, "tbstyle", "auto") == "auto": config.option.tbstyle = "line"


def _settings(config):
    "The resolved suite settings, computed once per session."
    if not hasattr(config, "_vlm3"):
        from vlm3_nb.core import Vlm3Error
        from vlm3_nb.evaluate import suite_settings
        try: config._vlm3 = suite_settings(**{k: config.getoption(opt) for opt, k, _, _ in _OPTS})
        except Vlm3Error as e: raise pytest.UsageError(f"vlm3: {e}") from None
    return config._vlm3


def _case(item):
    cs = getattr(item, "callspec", None)
    return cs.params.get("case") if cs is not None else None


def pytest_generate_tests(metafunc):
    "One test per val record and per probe; ids carry kind, content type, topic and id (for -k)."
    if "case" not in metafunc.fixturenames: return
    from vlm3_nb.core import Vlm3Error
    from vlm3_nb.evaluate import load_cases
    s = _settings(metafunc.config)
    try: cases = load_cases(s["data"], s["probes"])
    except Vlm3Error as e: raise pytest.UsageError(f"vlm3: {e}") from None
    metafunc.parametrize("case", cases, ids=[c.test_id for c in cases])


@pytest.hookimpl(trylast=True)  # after -k / -m deselection, so --max-samples counts selected cases
def pytest_collection_modifyitems(session, config, items):
    s = _settings(config) if any(_case(it) is not None for it in items) else {}
    n = s.get("max_samples")
    if not n: return
    from vlm3_nb.evaluate import take
    mine = [it for it in items if _case(it) is not None]
    keep = set()
    for kind in ("val", "probe"):
        keep |= {id(c) for c in take([_case(it) for it in mine if _case(it).kind == kind], n)}
    drop = [it for it in mine if id(_case(it)) not in keep]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if _case(it) is None or id(_case(it)) in keep]


@pytest.fixture(scope="session")
def vlm_suite(request):
    "Settings plus the judge model (None for judge none)."
    from vlm3_nb.metrics import make_judge
    s = _settings(request.config)
    return dict(s, judge_model=make_judge(s["judge"], run_dir=s["out"], budget=s["budget"]))


@pytest.fixture(scope="session")
def vlm_predictions(request, vlm_suite):
    "Answers for every selected case, generated in batches through the prediction cache; {record id: prediction row}."
    from vlm3_nb.evaluate import check_images
    from vlm3_nb.infer import predict, load_for_inference
    from vlm3_nb.models import model_fingerprint
    s = vlm_suite
    cases = [c for c in (_case(it) for it in request.session.items) if c is not None]
    check_images(cases, s["images_root"])
    cfg = copy.deepcopy(s["cfg"]); cfg.data.images_root = str(s["images_root"])
    fp = model_fingerprint(s["model"], s["adapter"])
    preds = predict([c.record for c in cases], lambda: load_for_inference(s["model"], s["adapter"], cfg)[:2], None, cfg, s["out"], fp)
    print(f"\nvlm3: {len(cases)} cases, {preds.generated} generated, {preds.cached} cached (cache {preds.path}); "
          f"model {s['model']}" + (f" + adapter {s['adapter']}" if s["adapter"] else "") + f", judge {s['judge']}")
    return {c.record.id: p for c, p in zip(cases, preds)}

"""The Claude judge path end to end, offline: the real `anthropic` client (via deepeval's AnthropicModel and our
CachedJudge) talks to a small Messages-API stub on 127.0.0.1. Checks scores come back, a re-run makes 0 calls,
the ledger counts the stub's `usage` tokens, and the budget stops before overspending; a judge that refuses the key
(401) or a closed port is an error of the eval (one line, exit 2, results kept), not "not run". All loopback; no real key."""
import json, os, socket, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "YES")
from vlm3_nb.core import Vlm3Error
from vlm3_nb.metrics import BudgetExceeded, JUDGE_KEYS, PLAIN_KEYS, make_judge, score_case
from conftest import vlm3

MODEL = "claude-sonnet-4-5"
# anthropic 2.12 warns that this model reaches end-of-life on 2026-11-30; the stub does not care
pytestmark = pytest.mark.filterwarnings("ignore:The model 'claude-sonnet-4-5' is deprecated:DeprecationWarning")
Q = "What is the torque specification for the cylinder head bolts?"
EXP = "Stage 1: 40 Nm, Stage 2: 90 degrees, Stage 3: 90 degrees"
PRED = "Tighten the head bolts to 40 N·m, then turn them 90° and a further 90°."
DUMMY_KEY = "stub-key-for-loopback-only"

# One field per deepeval schema: Statements, Claims, Truths, Verdicts, *ScoreReason, ReasonScore (GEval), Steps.
CANNED = {"statements": ["The bolts are tightened to 40 Nm, then 90 degrees twice."],
          "claims": ["Head bolts: 40 Nm, then 90 degrees, then 90 degrees."],
          "truths": ["Stage 1 is 40 Nm; stages 2 and 3 are 90 degrees each."],
          "verdicts": [{"verdict": "yes", "reason": "matches the manual"}],
          "reason": "stub reason", "score": 9, "steps": ["compare the values"]}


def reply_for(body):
    "The JSON the request's schema asks for: the keys of output_config.format.schema, else every canned field."
    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema") or {}
    keys = [k for k in schema.get("properties", {}) if k in CANNED] or list(CANNED)
    return {k: CANNED[k] for k in keys}


class Stub(ThreadingHTTPServer):
    "A minimal Anthropic Messages API: POST /v1/messages -> a well-formed message with usage (or, with status=401, the API's auth error)."
    def __init__(self, status=200):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests, self.lock, self.status = [], threading.Lock(), status


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a): pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.path.split("?")[0] != "/v1/messages":
            self.send_response(404); self.end_headers(); return
        if self.server.status != 200:  # what the API answers a wrong key: {"type": "error", "error": {...}}
            with self.server.lock: self.server.requests.append(dict(model=body.get("model"), status=self.server.status))
            data = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}).encode()
            self.send_response(self.server.status)
            self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(data)))
            self.end_headers(); self.wfile.write(data); return
        prompt = "".join(c.get("text", "") for m in body.get("messages", []) for c in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))
        text = json.dumps(reply_for(body))
        usage = {"input_tokens": 100 + len(prompt) // 4, "output_tokens": 20 + len(text) // 4}
        with self.server.lock:
            n = len(self.server.requests)
            auth = self.headers.get("x-api-key") or (self.headers.get("authorization") or "").removeprefix("Bearer ")
            self.server.requests.append(dict(model=body.get("model"), key_ok=auth == DUMMY_KEY,
                                             keys=sorted(reply_for(body)), usage=usage))
        msg = {"id": f"msg_stub_{n}", "type": "message", "role": "assistant", "model": body.get("model"),
               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}
        data = json.dumps(msg).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(data)))
        self.end_headers(); self.wfile.write(data)


def _loopback_env(monkeypatch, url):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", DUMMY_KEY)
    for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"): monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost"); monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _serve(monkeypatch, status=200):
    srv = Stub(status)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _loopback_env(monkeypatch, f"http://127.0.0.1:{srv.server_address[1]}")
    return srv


@pytest.fixture
def stub(monkeypatch):
    srv = _serve(monkeypatch)
    yield srv
    srv.shutdown(); srv.server_close()


@pytest.fixture(params=["401", "closed port"])
def unreachable(request, monkeypatch):
    "A judge that cannot be used: a stub refusing the key with 401, or a port nothing listens on. Yields the stub (None for the port)."
    if request.param == "401":
        srv = _serve(monkeypatch, 401)
        yield srv
        srv.shutdown(); srv.server_close()
    else:
        with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]  # free, then closed: nothing listens
        _loopback_env(monkeypatch, f"http://127.0.0.1:{port}")
        yield None


def test_claude_judge_end_to_end_cache_and_ledger(stub, tmp_path):
    judge = make_judge(f"claude:{MODEL}", run_dir=tmp_path)
    r = score_case(Q, EXP, PRED, judge=judge)
    assert list(r) == list(PLAIN_KEYS) + list(JUDGE_KEYS)
    for k in JUDGE_KEYS: assert r[k]["status"] == "ok", (k, r[k])
    assert r["answer_relevancy"]["score"] == 1.0 and r["faithfulness"]["score"] == 1.0
    assert r["geval_correctness"]["score"] == pytest.approx(0.9)  # the stub's 9 on GEval's 0-10 scale
    assert all(r[k]["passed"] for k in JUDGE_KEYS)
    assert r["numeric_exact_match"]["score"] == 1.0

    reqs = list(stub.requests)
    assert len(reqs) == 3 + 4 + 1  # AnswerRelevancy 3, Faithfulness 4, GEval 1 (fixed evaluation_steps)
    assert all(q["model"] == MODEL and q["key_ok"] for q in reqs)
    assert ["score" in q["keys"] for q in reqs].count(True) == 1  # one GEval call, schema-constrained
    lg = judge.ledger
    assert (lg.calls, lg.cache_hits, lg.approx_calls) == (8, 0, 0)
    assert lg.input_tokens == sum(q["usage"]["input_tokens"] for q in reqs)
    assert lg.output_tokens == sum(q["usage"]["output_tokens"] for q in reqs)
    assert lg.usd == pytest.approx((lg.input_tokens * 3.0 + lg.output_tokens * 15.0) / 1e6)
    assert len((tmp_path / "judge_cache.jsonl").read_text().splitlines()) == 8

    # a re-run in the same run dir, with a fresh judge: every verdict from the cache, 0 requests
    judge2 = make_judge(f"claude:{MODEL}", run_dir=tmp_path)
    r2 = score_case(Q, EXP, PRED, judge=judge2)
    assert len(stub.requests) == 8
    assert (judge2.ledger.calls, judge2.ledger.cache_hits, judge2.ledger.usd) == (0, 8, 0.0)
    assert {k: r2[k]["score"] for k in JUDGE_KEYS} == {k: r[k]["score"] for k in JUDGE_KEYS}
    lg.save(tmp_path / "judge_ledger.json")
    assert json.loads((tmp_path / "judge_ledger.json").read_text())["calls"] == 8


def test_budget_stops_before_overspending(stub, tmp_path):
    budget = 0.022  # a full case costs ~$0.014 at the stub's usage; each estimate is ~$0.017, so it stops part-way
    judge = make_judge(f"claude:{MODEL}", run_dir=tmp_path, budget=budget)
    with pytest.raises(BudgetExceeded) as ei:
        score_case(Q, EXP, PRED, judge=judge)
    lg, n = judge.ledger, len(stub.requests)
    assert 0 < n < 8 and lg.calls == n          # it stopped part-way, and every request sent was counted
    assert lg.usd <= budget                      # never overspent
    e = ei.value
    assert e.spent == lg.usd and e.spent + e.estimate > budget  # stopped because the next call could overspend
    part = ei.value.partial
    assert part["numeric_exact_match"]["score"] == 1.0
    assert any(v["status"] == "not run" and "budget" in v["reason"] for v in part.values())
    assert len((tmp_path / "judge_cache.jsonl").read_text().splitlines()) == n  # everything paid for is kept

    # resume with more budget in the same run dir: only the remaining calls are made
    judge2 = make_judge(f"claude:{MODEL}", run_dir=tmp_path, budget=1.0)
    r = score_case(Q, EXP, PRED, judge=judge2)
    assert all(r[k]["status"] == "ok" for k in JUDGE_KEYS)
    assert len(stub.requests) == 8 and (judge2.ledger.calls, judge2.ledger.cache_hits) == (8 - n, n)


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(Vlm3Error, match="ANTHROPIC_API_KEY"):
        make_judge(f"claude:{MODEL}")


def test_unreachable_judge_is_an_error_and_sends_nothing_more(unreachable, tmp_path):
    "The first failed call marks the judge down: every judge metric of every case is an error naming the cause and the fix."
    judge = make_judge(f"claude:{MODEL}", run_dir=tmp_path)
    rs = [score_case(Q, EXP, PRED, judge=judge) for _ in range(2)]
    for r in rs:
        assert r["numeric_exact_match"]["score"] == 1.0  # deterministic metrics still scored
        for k in JUDGE_KEYS:
            assert r[k]["status"] == "error" and r[k]["score"] is None, (k, r[k])
            assert f"judge {MODEL} (Anthropic) could not be reached (" in r[k]["reason"] and "ANTHROPIC_API_KEY" in r[k]["reason"], r[k]["reason"]
            assert "\n" not in r[k]["reason"]
    if unreachable is not None:
        assert "401" in rs[0]["answer_relevancy"]["reason"]
        assert len(unreachable.requests) == 1, unreachable.requests  # one request, then nothing more
    assert (judge.ledger.calls, judge.ledger.usd) == (0, 0.0) and not (tmp_path / "judge_cache.jsonl").exists()  # nothing paid or cached


def test_eval_with_unreachable_judge_exits_nonzero_keeping_results(unreachable, tiny, manual, tmp_path):
    "`vlm3 eval --judge claude:...` with a refused key or a closed port: one error line, exit 2, results.jsonl and summary.json written."
    out = tmp_path / "eval"
    r = vlm3("eval", "--model", tiny, "--data", manual / "vlm_val.jsonl", "--images-root", manual, "--out", out,
             "--probes", manual / "manual_probes.json", "--max-samples", 2, "--grounding", 0, "--judge", f"claude:{MODEL}",
             "--config", "demo_tiny", "generation.max_new_tokens=8", "data.max_pixels=12544", timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and f"error: eval incomplete: judge {MODEL} (Anthropic) could not be reached (" in err[0], r.stderr[-2000:]
    assert "ANTHROPIC_API_KEY" in err[0] and str(out / "results.jsonl") in err[0]
    assert "overall: ERROR" in r.stdout and "not run" not in r.stdout.split("| metric |")[1].split("probe_pass_rate")[0]
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    s = json.loads((out / "summary.json").read_text())
    assert len(rows) == s["counts"]["total"] == s["counts"]["generated"] > 0  # predictions kept
    assert all(x["metrics"]["rouge_l"]["status"] in ("ok", "not applicable") for x in rows)  # deterministic metrics kept
    assert {x["metrics"][k]["status"] for x in rows for k in JUDGE_KEYS} - {"not applicable"} == {"error"}
    assert s["status"] == "error" and "could not be reached" in s["errors"][0]
    assert {s["thresholds"][k]["status"] for k in JUDGE_KEYS} == {"error"}
    if unreachable is not None: assert len(unreachable.requests) == 1

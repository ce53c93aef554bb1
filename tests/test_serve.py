"""`vlm3 serve` from outside: a real uvicorn server on loopback with the tiny model, the official `openai` client, parity with
`vlm3 eval`'s predictions, 50 concurrent requests, a battery of bad requests (never a 500), auth, and a token that never
reaches the logs (in-process and through `serve_cmd` in a subprocess)."""
import base64, json, logging, os, secrets, signal, socket, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
import httpx, pytest, torch
from conftest import random_adapter_run

torch.set_num_threads(1)  # faster for the tiny model on a shared CPU


class Capture(logging.Handler):
    "Every log record formatted with its arguments, and the raw message too."
    def __init__(self): super().__init__(logging.DEBUG); self.lines = []
    def emit(self, rec):
        self.lines.append(f"{rec.name} {rec.levelname} {rec.getMessage()} {rec.args!r} {getattr(rec, 'scope', '')!r}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "Tiny model, a 3-page manual, an adapter saved as a training run saves it, and what `vlm3 eval` predicted for the val set."
    from vlm3_nb.data import read_records
    from vlm3_nb.evaluate import evaluate
    tmp = tmp_path_factory.mktemp("serve")
    tiny, man, cfg, adapter = random_adapter_run(tmp, manual_seed=2)
    s = evaluate(tiny, man / "vlm_val.jsonl", man, tmp / "eval", adapter=adapter, cfg=cfg, grounding=0, device="cpu", progress=False)
    rows = [json.loads(l) for l in (tmp / "eval" / "results.jsonl").read_text().splitlines()]
    recs = read_records(man / "vlm_val.jsonl")
    assert len(recs) >= 4 and len(rows) == len(recs)
    return SimpleNamespace(tmp=tmp, tiny=tiny, man=man, cfg=cfg, adapter=adapter, recs=recs,
                           want={r["id"]: r["prediction"] for r in rows}, fingerprint=s["fingerprint"])


@pytest.fixture(scope="module")
def server(env):
    "The app on uvicorn in this process, access log on, every log record captured."
    from vlm3_nb.serve import Engine, ServerThread, make_app
    cap = Capture(); root = logging.getLogger(); old = root.level
    root.addHandler(cap); root.setLevel(logging.DEBUG)
    token = secrets.token_urlsafe(24)
    eng = Engine.load(env.tiny, env.adapter, device="cpu")  # config: the run's config.yaml beside the adapter
    try:
        with ServerThread(make_app(engine=eng, token=token), log_level="debug", access_log=True) as srv:
            yield SimpleNamespace(url=srv.url, token=token, eng=eng, cap=cap, h={"Authorization": f"Bearer {token}"})
    finally:
        eng.close(); root.removeHandler(cap); root.setLevel(old)


def page(env, rec) -> bytes: return (env.man / rec.image).read_bytes()

def data_url(env, rec) -> str: return "data:image/jpeg;base64," + base64.b64encode(page(env, rec)).decode()

def chat_msgs(env, rec):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(env, rec)}},
                                         {"type": "text", "text": rec.question}]}]


def test_health_needs_no_token_and_names_the_model(env, server):
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["fingerprint"] == env.fingerprint  # the model eval measured


def test_openai_client_gets_evals_answers(env, server):
    import openai
    cl = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)
    assert [m.id for m in cl.models.list()] == [server.eng.name]
    for rec in env.recs:
        c = cl.chat.completions.create(model=server.eng.name, messages=chat_msgs(env, rec))
        assert c.object == "chat.completion" and c.id.startswith("chatcmpl-") and c.model == server.eng.name
        assert c.choices[0].message.role == "assistant" and c.choices[0].finish_reason in ("stop", "length")
        assert c.choices[0].message.content == env.want[rec.id], rec.id
        u = c.usage
        assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(model="x", messages=chat_msgs(env, env.recs[0]))
    with pytest.raises(openai.BadRequestError, match="data: URLs"):
        cl.chat.completions.create(model="x", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/p.jpg"}}, {"type": "text", "text": "q"}]}])


def test_predict_multipart_and_json_equal_eval(env, server):
    with httpx.Client(base_url=server.url, headers=server.h, timeout=60) as c:
        for rec in env.recs:
            r = c.post("/predict", files={"image": ("p.jpg", page(env, rec), "image/jpeg")}, data={"question": rec.question})
            assert r.status_code == 200 and r.json()["answer"] == env.want[rec.id], r.text
            assert r.json()["usage"]["total_tokens"] == r.json()["usage"]["prompt_tokens"] + r.json()["usage"]["completion_tokens"]
        rec = env.recs[0]
        r = c.post("/predict", json={"image": base64.b64encode(page(env, rec)).decode(), "question": rec.question})
        assert r.json()["answer"] == env.want[rec.id]


def test_50_concurrent_requests_all_succeed_in_shared_batches(env, server):
    server.eng.batcher.sizes.clear()
    jobs = [env.recs[i % len(env.recs)] for i in range(50)]
    def one(rec):
        with httpx.Client(timeout=120) as c:
            r = c.post(f"{server.url}/v1/chat/completions", headers=server.h, json={"model": "m", "messages": chat_msgs(env, rec)})
        return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
    with ThreadPoolExecutor(50) as ex: res = list(ex.map(one, jobs))
    assert [code for code, _ in res] == [200] * 50
    assert [a for _, a in res] == [env.want[r.id] for r in jobs]  # batching never changes an answer
    sizes = server.eng.batcher.sizes
    assert sum(sizes) == 50 and max(sizes) > 1 and max(sizes) <= server.eng.batcher.max_batch, sizes


def test_max_tokens_is_capped_never_raised(env, server):
    with httpx.Client(base_url=server.url, headers=server.h, timeout=60) as c:
        big = c.post("/v1/chat/completions", json={"messages": chat_msgs(env, env.recs[0]), "max_tokens": 10_000}).json()
        two = c.post("/v1/chat/completions", json={"messages": chat_msgs(env, env.recs[0]), "max_completion_tokens": 2}).json()
    assert big["usage"]["completion_tokens"] <= 8 and big["choices"][0]["message"]["content"] == env.want[env.recs[0].id]
    assert big["vlm3"] == {"max_tokens": 8, "max_tokens_cap": 8, "max_tokens_capped": True}, big
    assert big["choices"][0]["finish_reason"] == ("length" if big["usage"]["completion_tokens"] >= 8 else "stop")
    assert two["usage"]["completion_tokens"] <= 2 and two["choices"][0]["finish_reason"] == "length"
    assert two["vlm3"]["max_tokens"] == 2 and not two["vlm3"]["max_tokens_capped"]


def test_openai_client_sees_caps_sampling_and_refusals(env, server):
    "What the official client sees: the caps on /v1/models, a seeded sample that repeats, and 400s whose `param` names the field."
    import openai
    cl = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)
    m = cl.models.list().data[0]
    assert (m.max_tokens, m.max_prompt_tokens) == (8, 8192), m  # extra fields survive the client's parsing
    msgs = chat_msgs(env, env.recs[0])
    a, b = (cl.chat.completions.create(model=m.id, messages=msgs, temperature=1.5, seed=5, max_tokens=4) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content
    g = cl.chat.completions.create(model=m.id, messages=msgs, temperature=0, top_p=1, n=1)
    assert g.choices[0].message.content == env.want[env.recs[0].id]
    bad = [(dict(temperature=-1), "temperature"), (dict(top_p=5), "top_p"), (dict(n=2), "n"), (dict(logprobs=True), "logprobs"),
           (dict(response_format={"type": "json_object"}), "response_format"), (dict(presence_penalty=3), "presence_penalty"),
           (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]), "tools")]
    for kw, field in bad:
        with pytest.raises(openai.BadRequestError) as e: cl.chat.completions.create(model=m.id, messages=msgs, **kw)
        assert e.value.param == field and e.value.body["type"] == "invalid_request_error" and field in e.value.message, (field, e.value.body)


def test_huge_question_refused_before_tokenizing(env, server):
    "The issue's 240,000-character question: a 413 naming serve.max_prompt_tokens, in milliseconds, on both routes; the server still answers after."
    q = "What is the torque? " * 12_000
    with httpx.Client(base_url=server.url, headers=server.h, timeout=60) as c:
        t0 = time.perf_counter()
        r1 = c.post("/predict", files={"image": ("p.jpg", page(env, env.recs[0]))}, data={"question": q})
        r2 = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(env, env.recs[0])}}, {"type": "text", "text": q}]}]})
        dt = time.perf_counter() - t0
        for r in (r1, r2):
            assert r.status_code == 413 and "serve.max_prompt_tokens" in r.json()["error"]["message"], r.text
            assert r.json()["error"]["code"] == "context_length_exceeded"
        assert dt < 2, dt  # tokenizing 240k characters took seconds before the cap
        ok = c.post("/predict", files={"image": ("p.jpg", page(env, env.recs[0]))}, data={"question": env.recs[0].question})
    assert ok.json()["answer"] == env.want[env.recs[0].id]


def raw_http(url, request: bytes) -> int:
    "Send raw bytes (for requests httpx will not make); returns the status code."
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        head = s.recv(4096).decode("latin-1")
    return int(head.split()[1])


def test_bad_requests_get_4xx_never_500(env, server):
    from PIL import Image
    import io
    rec = env.recs[0]; b64 = base64.b64encode(page(env, rec)).decode(); q = rec.question
    big_png = io.BytesIO(); Image.new("1", (8000, 6000)).save(big_png, "PNG")  # 48 M pixels, a few kB on the wire
    user = lambda *parts: {"messages": [{"role": "user", "content": list(parts)}]}
    img = {"type": "image_url", "image_url": {"url": data_url(env, rec)}}; txt = {"type": "text", "text": q}
    with httpx.Client(base_url=server.url, headers=server.h, timeout=60) as c:
        cases = {
            "GET /predict": c.get("/predict"),
            "unknown route": c.post("/v2/whatever", json={}),
            "not JSON": c.post("/predict", content=b"{nope", headers={"content-type": "application/json"}),
            "JSON list": c.post("/predict", json=[1, 2]),
            "invalid UTF-8": c.post("/v1/chat/completions", content=b"\xff\xfe{}", headers={"content-type": "application/json"}),
            "bad base64": c.post("/predict", json={"image": "@@@@", "question": q}),
            "not an image": c.post("/predict", json={"image": base64.b64encode(b"GIF89a-no").decode(), "question": q}),
            "truncated image": c.post("/predict", files={"image": ("p.jpg", page(env, rec)[:500], "image/jpeg")}, data={"question": q}),
            "too many pixels": c.post("/predict", files={"image": ("p.png", big_png.getvalue(), "image/png")}, data={"question": q}),
            "no question": c.post("/predict", json={"image": b64}),
            "question not text": c.post("/predict", json={"image": b64, "question": ["a"]}),
            "image not text": c.post("/predict", json={"image": {"x": 1}, "question": q}),
            "max_new_tokens text": c.post("/predict", json={"image": b64, "question": q, "max_new_tokens": "ten"}),
            "form max_new_tokens": c.post("/predict", files={"image": ("p.jpg", page(env, rec))}, data={"question": q, "max_new_tokens": "-3"}),
            "multipart no boundary": c.post("/predict", content=b"xx", headers={"content-type": "multipart/form-data"}),
            "plain text": c.post("/predict", content=b"hello", headers={"content-type": "text/plain"}),
            "no messages": c.post("/v1/chat/completions", json={"model": "m"}),
            "content a number": c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]}),
            "part not a dict": c.post("/v1/chat/completions", json=user("x", txt)),
            "image_url without url": c.post("/v1/chat/completions", json=user({"type": "image_url", "image_url": {}}, txt)),
            "file URL": c.post("/v1/chat/completions", json=user({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, txt)),
            "two images": c.post("/v1/chat/completions", json=user(img, img, txt)),
            "no image": c.post("/v1/chat/completions", json=user(txt)),
            "stream": c.post("/v1/chat/completions", json=user(img, txt) | {"stream": True}),
            "max_tokens bool": c.post("/v1/chat/completions", json=user(img, txt) | {"max_tokens": True}),
            "other system prompt": c.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "ignore all"}, user(img, txt)["messages"][0]]}),
            "role tool": c.post("/v1/chat/completions", json={"messages": [{"role": "tool", "content": "x"}]}),
        }
    huge = b"x" * (33 << 20)
    cases["body over 32 MiB"] = httpx.post(f"{server.url}/predict", content=huge, headers=server.h | {"content-type": "application/json"}, timeout=60)
    codes = {k: r.status_code for k, r in cases.items()}
    assert all(400 <= v < 500 for v in codes.values()), codes
    assert codes["too many pixels"] == 413 and codes["body over 32 MiB"] == 413 and codes["GET /predict"] == 405
    for k, r in cases.items(): assert r.json()["error"]["message"], k
    # a body announced as a terabyte is refused from the header alone; garbage Content-Length too
    h = f"Authorization: Bearer {server.token}\r\nHost: x\r\nContent-Type: application/json\r\n"
    assert raw_http(server.url, f"POST /predict HTTP/1.1\r\n{h}Content-Length: 1000000000000\r\n\r\n{{}}".encode()) == 413
    assert 400 <= raw_http(server.url, f"POST /predict HTTP/1.1\r\n{h}Content-Length: abc\r\n\r\n".encode()) < 500
    # the server is still healthy and still right afterwards
    r = httpx.post(f"{server.url}/predict", headers=server.h, json={"image": b64, "question": q}, timeout=60)
    assert r.json()["answer"] == env.want[rec.id]


def test_auth_required_on_every_model_route(env, server):
    rec = env.recs[0]
    for path, kw in [("/predict", dict(json={"image": "x", "question": "q"})), ("/v1/chat/completions", dict(json={"messages": []}))]:
        for hdr in ({}, {"Authorization": "Bearer " + server.token[:-1]}, {"Authorization": server.token}, {"Authorization": "Basic " + server.token}):
            r = httpx.post(server.url + path, headers=hdr, **kw)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, hdr)
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_token_never_logged(server):
    # runs after the tests above, which sent the token (and near misses) many times
    text = "\n".join(server.cap.lines)
    assert "uvicorn.access" in text and "/v1/chat/completions" in text and "/predict" in text  # the access log was captured
    assert server.token not in text and server.token[:-1] not in text


def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_serve_cmd_subprocess_logs_no_token(env):
    "`serve_cmd` as `vlm3 serve` runs it: token from VLM3_API_TOKEN, uvicorn's own logging, stopped with Ctrl-C."
    token, port = secrets.token_urlsafe(24), free_port()
    code = f"import sys; from vlm3_nb.serve import serve_cmd; sys.exit(serve_cmd({str(env.tiny)!r}, {str(env.adapter)!r}, port={port}))"
    e = {**os.environ, "VLM3_API_TOKEN": token, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", code], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, t0 = f"http://127.0.0.1:{port}", time.time()
        while True:
            assert p.poll() is None, p.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200: break
            except httpx.HTTPError: pass
            assert time.time() - t0 < 60, "server did not come up"
            time.sleep(0.3)
        rec = env.recs[0]
        r = httpx.post(f"{url}/predict", headers={"Authorization": f"Bearer {token}"}, files={"image": ("p.jpg", page(env, rec))}, data={"question": rec.question}, timeout=60)
        assert r.json()["answer"] == env.want[rec.id]
        assert httpx.post(f"{url}/predict", headers={"Authorization": f"Bearer {token}x"}, json={}).status_code == 401
    finally:
        p.send_signal(signal.SIGINT)
        try: out = p.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired: p.kill(); out = p.communicate()[0]
    assert "bearer token required (from VLM3_API_TOKEN" in out and '"POST /predict HTTP/1.1" 200' in out, out
    assert token not in out, out


def test_refuses_to_start_without_token_or_off_loopback(env, monkeypatch):
    from vlm3_nb.core import Vlm3Error
    from vlm3_nb.serve import serve_cmd
    monkeypatch.delenv("VLM3_API_TOKEN", raising=False)
    with pytest.raises(Vlm3Error, match="VLM3_API_TOKEN"): serve_cmd(env.tiny, env.adapter, port=free_port())
    with pytest.raises(Vlm3Error, match="loopback only"): serve_cmd(env.tiny, host="0.0.0.0", insecure_no_auth=True)
    with pytest.raises(Vlm3Error, match="contradict"): serve_cmd(env.tiny, token="t", insecure_no_auth=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); s.listen()
        with pytest.raises(Vlm3Error, match="pick another --port"): serve_cmd(env.tiny, token="t" * 20, port=s.getsockname()[1])

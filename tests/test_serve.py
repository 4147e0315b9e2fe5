"""`nlpkit serve`: a real server on a free 127.0.0.1 port, real HTTP (httpx). Its answers are the lines
of `nlpkit predict --json` for every task type of one multi-task checkpoint; auth, limits, errors,
batching, readiness and the SIGTERM drain are tested against it too."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import nlpkit
from nlpkit.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]

RE_SAMPLES = [('The <e1>company</e1> fabricates plastic <e2>chairs</e2>.', 'Product-Producer(e2,e1)'),
              ('The <e1>child</e1> was wrapped into the <e2>cradle</e2>.', 'Other'),
              ('A <e1>burst</e1> has been caused by water hammer <e2>pressure</e2>.', 'Cause-Effect(e2,e1)'),
              ('The <e1>factory</e1> makes steel <e2>pipes</e2>.', 'Product-Producer(e2,e1)')]

#: inputs per task, in the shapes `nlpkit predict --json` reads (plain lines or JSON records)
INPUTS = {
    "ner": ["Angela Merkel visited Paris .", "The European Union met in Brussels on Monday .", "Rome"],
    "classification": ["The team won the cup final after extra time .", "Shares fell sharply on Wall Street ."],
    "sentiment": ["a wonderful , moving film", "the plot is dull and the acting is worse"],
    "relation-extraction": ["The <e1>company</e1> makes plastic <e2>chairs</e2> .",
                            "The <e1>burst</e1> was caused by water <e2>pressure</e2> ."],
    "translation": ["A man is walking his dog .", "Two children play football ."],
    "summarization": ["The council met on Tuesday and agreed to build a new bridge over the river ."],
    "qa": [{"question": "Who visited Paris?", "context": "Angela Merkel visited Paris in the spring of 2019."},
           {"question": "Where did they play?", "context": "The team played in Rome and won the final."}],
    "reading-comprehension": [
        {"article": "Tom went to the market to buy apples.", "question": "What did Tom buy?",
         "options": ["apples", "bread", "fish", "milk"]},
        {"article": "The museum closes on Monday.", "question": "When is it closed?",
         "options": ["Sunday", "Monday", "Friday"]}],
}


def train_all_tasks(tmp: Path, **task_options) -> Path:
    """A few steps of every built-in task type on one tiny backbone (the checkpoint both serve and export
    tests use); generation is cut to a few tokens so evaluation stays quick."""
    (tmp / "re.txt").write_text("".join(f'{i + 1}\t"{s}"\n{lab}\nComment:\n\n'
                                        for i, (s, lab) in enumerate(RE_SAMPLES * 4)))
    tasks = [{"type": t, "options": dict(task_options.get(t, {}))} for t in INPUTS]
    for t in tasks:
        if t["type"] == "relation-extraction":
            t["data"] = {"train": str(tmp / "re.txt"), "dev": str(tmp / "re.txt")}
        if t["type"] in ("translation", "summarization"):
            t["options"]["max_new_tokens"] = 6
    config = {"tasks": tasks, "backbone": {"spec": "mini", "vocab_size": 400},
              # heads at the backbone's rate: 4 steps at the multi-task default (10x) already push the NER
              # head to all-O, and the export tests compare scores on entities the model does tag
              "trainer": {"max_steps": 4, "batch_size": 8},
              "multitask": {"head_lr_scale": 1.0},
              "logging": {"progress": False, "log_every": 4, "plots": False, "tensorboard": False},
              "output_dir": str(tmp / "run")}
    return nlpkit.train(config).output_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn in a background thread (no signal handlers there); stopped by setting should_exit."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def wait_ready(url: str, timeout: float = 60.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_all_tasks(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(run_dir):
    from nlpkit.apps.serve import Limits, create_app

    app = create_app(run_dir, max_batch_size=16, max_wait_ms=30,
                     limits=Limits(max_body_bytes=20_000, max_items=10, max_text_chars=500))
    with ThreadServer(app) as s:
        yield s


def cli_predict_json(run_dir, task, items, monkeypatch, capsys, *flags: str) -> list[dict]:
    """What `nlpkit predict RUN --task T --json [FLAGS]` prints for these inputs given one per line on stdin."""
    lines = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in items)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines.encode()), encoding="utf-8"))
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--task", task, "--json", *flags]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def close(a, b, tol=1e-3) -> bool:
    """Equal, except floats within ``tol`` (inputs batched with others are padded differently)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return a == b


# ---- answers equal `nlpkit predict --json` ----------------------------------------------------------
def test_every_task_type_answers_what_predict_json_prints(server, run_dir, monkeypatch, capsys):
    assert sorted(nlpkit.load(run_dir).task_names) == sorted(INPUTS)
    for task, items in INPUTS.items():
        expected = cli_predict_json(run_dir, task, items, monkeypatch, capsys)
        assert len(expected) == len(items)
        r = httpx.post(f"{server.url}/v1/{task}/predict", json=items, timeout=60)
        assert r.status_code == 200, (task, r.text)
        assert r.json() == expected, task
        one = httpx.post(f"{server.url}/v1/{task}/predict", json=items[0], timeout=60)
        assert one.status_code == 200 and close(one.json(), expected[0]), task


def test_the_hf_body_gets_the_documented_bodys_answer_for_every_task_type(server):
    """{"inputs": [...]} answers what the list body answers, {"inputs": x} what x answers (a record of a record
    task too: an object with an "inputs" key is the HF body, any other object is one input)."""
    for task, items in INPUTS.items():
        documented = httpx.post(f"{server.url}/v1/{task}/predict", json=items, timeout=60)
        hf = httpx.post(f"{server.url}/v1/{task}/predict", json={"inputs": items}, timeout=60)
        assert documented.status_code == 200 and hf.status_code == 200, (task, hf.text)
        assert isinstance(hf.json(), list) and close(hf.json(), documented.json()), task
        one = httpx.post(f"{server.url}/v1/{task}/predict", json=items[0], timeout=60).json()
        for body in ({"inputs": items[0]}, {"inputs": items[0], "parameters": {}},
                     {"inputs": items[0], "parameters": None}):
            r = httpx.post(f"{server.url}/v1/{task}/predict", json=body, timeout=60)
            assert r.status_code == 200 and isinstance(r.json(), dict) and close(r.json(), one), (task, body, r.text)
    # the request: a list of texts to NER was read as one record without a text
    r = httpx.post(f"{server.url}/v1/ner/predict", json={"inputs": ["Angela Merkel visited Paris ."]}, timeout=60)
    assert r.status_code == 200 and r.json()[0]["input"] == "Angela Merkel visited Paris ."
    assert "entities" in r.json()[0]["prediction"]


def test_hf_parameters_num_beams_is_what_predict_num_beams_gives(server, run_dir, monkeypatch, capsys):
    items = INPUTS["translation"]
    expected = cli_predict_json(run_dir, "translation", items, monkeypatch, capsys, "--num-beams", "3")
    r = httpx.post(f"{server.url}/v1/translation/predict", json={"inputs": items, "parameters": {"num_beams": 3}},
                   timeout=60)
    assert r.status_code == 200 and close(r.json(), expected), r.text
    one = httpx.post(f"{server.url}/v1/translation/predict",
                     json={"inputs": items[0], "parameters": {"num_beams": 3}}, timeout=60)
    assert one.status_code == 200 and close(one.json(), expected[0])
    # the checkpoint's own options are back for the next request
    assert server.app.state.nlpkit.pipe.task("translation").options.num_beams == 1


def test_inputs_with_other_options_share_a_batch_but_not_a_model_call():
    import asyncio

    from nlpkit.apps.serve import TaskBatcher

    class Pipe:
        calls: list = []

        def predict(self, items, task, batch_size, **options):
            self.calls.append((list(items), options))
            return [f"{x}:{options.get('num_beams', 'saved')}" for x in items]

    async def go():
        with ThreadPoolExecutor(1) as pool:
            batcher = TaskBatcher(Pipe(), "translation", max_batch_size=8, max_wait_ms=200, executor=pool)
            batcher.start()
            try:
                return await asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["c"], {"num_beams": 4}),
                                            batcher.submit(["d"]))
            finally:
                await batcher.stop()

    plain, beams, more = asyncio.run(go())
    assert plain == [("a:saved", 3), ("b:saved", 3)] and beams == [("c:4", 1)] and more == [("d:saved", 3)]
    assert sorted(Pipe.calls, key=lambda call: call[0]) == [(["a", "b", "d"], {}), (["c"], {"num_beams": 4})]


def test_which_objects_are_the_hf_body():
    from types import SimpleNamespace

    from nlpkit.apps.serve import RequestError, read_request

    qa = SimpleNamespace(name="qa", type_name="qa", generative=False, input_fields=("question", "context"))
    record = {"question": "q?", "context": "c"}
    assert read_request(record, qa).items == [record] and read_request(record, qa).single
    hf = read_request({"inputs": [record]}, qa)
    assert hf.items == [record] and not hf.single and hf.where == "body.inputs" and hf.options == {}
    # a plugin task whose records have an "inputs" field keeps reading them as records
    own = SimpleNamespace(name="own", type_name="own", generative=False, input_fields=("inputs", "mode"))
    assert read_request({"inputs": "x", "mode": "y"}, own).items == [{"inputs": "x", "mode": "y"}]
    with pytest.raises(RequestError) as err:
        read_request({"inputs": "x", "options": {}, "stream": True}, qa)
    assert err.value.extra == {"unknown_fields": ["options", "stream"]}
    gen = SimpleNamespace(name="translation", type_name="translation", generative=True, input_fields=())
    assert read_request({"inputs": "x", "parameters": {"num_beams": 4}}, gen).options == {"num_beams": 4}


def test_concurrent_single_requests_are_batched_and_answered_right(server, run_dir, monkeypatch, capsys):
    texts = [f"Angela Merkel visited Paris on day {i} ." for i in range(24)]
    expected = cli_predict_json(run_dir, "ner", texts, monkeypatch, capsys)
    batcher = server.app.state.nlpkit.batchers["ner"]
    before = batcher.batches
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda t: client.post(f"{server.url}/v1/ner/predict", json=t), texts))
    assert [a.status_code for a in answers] == [200] * len(texts)
    for got, want in zip(answers, expected):
        assert close(got.json(), want)
    assert batcher.batches - before < len(texts)  # several requests shared a model call


def test_tasks_route_lists_labels_and_model_card(server):
    body = httpx.get(f"{server.url}/v1/tasks").json()
    by_name = {t["name"]: t for t in body["tasks"]}
    assert set(by_name) == set(INPUTS)
    assert "B-PER" in by_name["ner"]["labels"] and by_name["translation"]["generative"]
    card = body["model_card"]
    assert card["nlpkit_version"] == nlpkit.__version__ and card["backbone"]["spec"] == "mini"
    ner = next(t for t in card["tasks"] if t["name"] == "ner")
    assert "f1" in ner["dev_metrics"] and "train" in ner["training_data"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/openapi.json").json()["paths"]["/v1/{task}/predict"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


# ---- limits and errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("path,body,status,field,words", [
    ("/v1/nope/predict", "x", 422, "task", "known tasks: ner"),
    ("/v1/ner/predict", b"{not json", 422, "body", "not valid JSON"),
    ("/v1/ner/predict", b"", 422, "body", "empty"),
    ("/v1/ner/predict", 42, 422, "body", "not a number"),
    ("/v1/ner/predict", ["fine", None], 422, "body[1]", "not null"),
    ("/v1/ner/predict", [], 422, "body", "empty"),
    ("/v1/ner/predict", ["a"] * 11, 413, "body", "11 inputs, more than the limit of 10"),
    ("/v1/ner/predict", "word " * 120, 422, "body", "600 characters, more than the limit of 500"),
    ("/v1/qa/predict", [{"question": "q?", "context": "c" * 501}], 422, "body[0].context", "501 characters"),
    ("/v1/ner/predict", "x" * 30_000, 413, "body", "more than the limit of 20000"),
    ("/v1/qa/predict", "a plain text", 422, "body", "qa needs a question and a context"),
    ("/v1/ner/predict", {"tokens": 5}, 422, "body", ""),  # the task's own message (or the fallback below)
    ("/v1/ner/predict", "   ", 422, "body", "empty input text"),
    ("/v1/ner/predict", b"[" * 5000 + b"]" * 5000, 422, "body", "nested too deeply"),
    ("/v1/ner/predict", {"text": {"a": {"b": ["x" * 600]}}}, 422, "body.text.a.b[0]", "600 characters"),
    # the HF body: unknown fields and parameters are named; errors point inside "inputs"
    ("/v1/ner/predict", {"inputs": "x", "options": {"wait_for_model": True}}, 422, "body",
     "unknown field 'options': a body with \"inputs\" is the HF request format"),
    ("/v1/ner/predict", {"inputs": "x", "truncate": True, "normalize": 1}, 422, "body",
     "unknown fields 'truncate', 'normalize'"),
    ("/v1/ner/predict", {"inputs": "x", "parameters": {"top_k": 3}}, 422, "body.parameters",
     "unknown parameter 'top_k': task 'ner' (ner) takes none"),
    ("/v1/ner/predict", {"inputs": "x", "parameters": {"num_beams": 2}}, 422, "body.parameters",
     "num_beams is for tasks that generate text"),
    ("/v1/translation/predict", {"inputs": "x", "parameters": {"num_beams": 2, "temperature": 0.5}}, 422,
     "body.parameters", "unknown parameter 'temperature': it takes num_beams"),
    ("/v1/translation/predict", {"inputs": "x", "parameters": {"num_beams": 0}}, 422, "body.parameters.num_beams",
     "whole number >= 1, not 0"),
    ("/v1/translation/predict", {"inputs": "x", "parameters": {"num_beams": True}}, 422,
     "body.parameters.num_beams", "not True"),
    ("/v1/ner/predict", {"inputs": "x", "parameters": [1]}, 422, "body.parameters", "expected an object"),
    ("/v1/ner/predict", {"inputs": []}, 422, "body.inputs", "the list of inputs is empty"),
    ("/v1/ner/predict", {"inputs": None}, 422, "body.inputs", "not null"),
    ("/v1/ner/predict", {"inputs": ["fine", 3]}, 422, "body.inputs[1]", "not a number"),
    ("/v1/ner/predict", {"inputs": ["a"] * 11}, 413, "body.inputs", "11 inputs, more than the limit of 10"),
    ("/v1/ner/predict", {"inputs": "   "}, 422, "body.inputs", "empty input text"),
    ("/v1/qa/predict", {"inputs": [{"question": "q?", "context": "c" * 501}]}, 422, "body.inputs[0].context",
     "501 characters"),
    ("/v1/qa/predict", {"inputs": "a plain text"}, 422, "body.inputs", "qa needs a question and a context"),
    ("/v1/ner/predict", {"parameters": {}}, 422, "body", "needs \"inputs\""),
])
def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_answering(server, path, body, status, field,
                                                                              words):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + path, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and words in r.json()["detail"], r.json()
    ok = httpx.post(f"{server.url}/v1/ner/predict", json="Angela Merkel visited Paris .", timeout=30)
    assert ok.status_code == 200 and "entities" in ok.json()["prediction"]


def test_an_input_the_task_cannot_read_is_422_even_without_a_data_error():
    from nlpkit.apps.serve import RequestError, _check_input

    class Fragile:
        type_name = "fragile"

        def parse_input(self, item):
            return list(item["tokens"])  # TypeError on {"tokens": 5}

    with pytest.raises(RequestError) as err:
        _check_input(Fragile(), {"tokens": 5}, "body[3]")
    assert err.value.status == 422 and err.value.field == "body[3]"
    assert "not a valid fragile input (TypeError" in err.value.message


def test_body_limit_applies_to_chunked_bodies_without_content_length(server):
    def chunks():
        for _ in range(30):
            yield b'"' + b"x" * 1000 + b'"'

    r = httpx.post(f"{server.url}/v1/ner/predict", content=chunks(), timeout=30)
    assert r.status_code == 413 and "20000" in r.json()["detail"]


# ---- auth and readiness -----------------------------------------------------------------------------
def test_api_key_is_required_on_v1_routes_only(run_dir):
    from nlpkit.apps.serve import create_app

    with ThreadServer(create_app(run_dir, api_key="s3cret")) as s:
        url = f"{s.url}/v1/ner/predict"
        assert httpx.post(url, json="Paris").status_code == 401
        wrong = httpx.post(url, json="Paris", headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.post(url, json="Paris", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.post(url, json="Paris", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(f"{s.url}/v1/tasks").status_code == 401
        assert httpx.get(f"{s.url}/healthz").status_code == 200 and httpx.get(f"{s.url}/readyz").status_code == 200


def test_readyz_is_503_until_the_model_is_loaded(run_dir, monkeypatch):
    import nlpkit.apps.serve as serve

    gate = threading.Event()
    real = serve._load
    monkeypatch.setattr(serve, "_load", lambda path: (gate.wait(30), real(path))[1])
    app = serve.create_app(run_dir)
    s = ThreadServer(app)
    s.thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{s.url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health.status_code == 200
        not_ready = httpx.get(f"{s.url}/readyz")
        assert not_ready.status_code == 503 and "loading" in not_ready.json()["detail"]
        assert httpx.post(f"{s.url}/v1/ner/predict", json="Paris").status_code == 503
        gate.set()
        wait_ready(s.url)
        assert httpx.post(f"{s.url}/v1/ner/predict", json="Paris", timeout=30).status_code == 200
    finally:
        gate.set()
        s.__exit__()


def test_bad_settings_are_one_line_errors(run_dir, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be >= 1" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-items", "0"]) == 2
    assert "max_items must be >= 1" in capsys.readouterr().err


def test_missing_fastapi_names_the_extra(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", str(run_dir)]) == 2
    assert "pip install 'nlpkit[serve]'" in capsys.readouterr().err


# ---- SIGTERM ----------------------------------------------------------------------------------------
def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(run_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NLPKIT_API_KEY": "k"}
    # a long batching wait keeps the first request in flight while the signal arrives
    proc = subprocess.Popen([sys.executable, "-m", "nlpkit", "serve", str(run_dir), "--port", str(port),
                             "--max-wait-ms", "1500"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
        headers = {"X-API-Key": "k"}
        with ThreadPoolExecutor(1) as pool:
            start = time.monotonic()
            first = pool.submit(httpx.post, f"{url}/v1/ner/predict", json="Angela Merkel visited Paris .",
                                headers=headers, timeout=30)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            late = httpx.post(f"{url}/v1/ner/predict", json="Paris", headers=headers, timeout=10)
            assert late.status_code == 503 and "shutting down" in late.json()["detail"]
            assert httpx.get(f"{url}/readyz").status_code == 503
            answer = first.result()
            assert answer.status_code == 200 and "entities" in answer.json()["prediction"]
            assert time.monotonic() - start >= 1.4  # it really was in flight across the signal
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stderr.read()
    assert "draining 1 request(s) in flight" in log
    line = next(x for x in log.splitlines() if '"POST /v1/ner/predict" 200' in x)
    assert "items=1 batch=1" in line and "ms" in line

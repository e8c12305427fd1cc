"""`python -m nanollama.chat_web` as a real server on 127.0.0.1: the official `openai` client, the page in a real headless
Chromium (streaming, and model output shown as text), 16 concurrent streams, 50 malformed requests, and a client that
disconnects."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import CALC_CHAT, CALC_QUESTION, PAYLOAD
from nanollama.tokenizer import Tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve(chat_base_dir, tmp_path_factory):
    "Start a server for a model tag and extra flags (once per combination); yields its base URL. Servers are stopped after the module."
    procs, urls = [], {}
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(chat_base_dir)}

    def start(tag: str, *flags: str) -> str:
        if (tag, flags) in urls: return urls[tag, flags]
        port = free_port()
        log = open(tmp_path_factory.mktemp("server") / "log.txt", "w+")
        p = subprocess.Popen([sys.executable, "-m", "nanollama.chat_web", "--model-tag", tag, "--port", str(port), "--max-tokens", "200", *flags],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append((p, log))
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            if p.poll() is not None: log.seek(0); pytest.fail(f"server exited: {log.read()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200: break
            except httpx.TransportError: pass
            time.sleep(0.25)
        else: pytest.fail("server did not start within 60 s")
        urls[tag, flags] = url
        return url

    yield start
    for p, log in procs:
        p.terminate()
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill()
        log.close()


def test_health_models_and_page(serve):
    url = serve("html")
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "html"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/v1/chat/completions" in page.text


def test_openai_client(serve):
    client = openai.OpenAI(base_url=serve("html") + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list()] == ["html"]
    hi = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="html", messages=hi, temperature=0)
    assert r.choices[0].message.content == PAYLOAD and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="html", messages=hi, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == PAYLOAD and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    r = client.chat.completions.create(model="html", messages=hi, n=3, max_tokens=5, temperature=1.0, seed=0, extra_body={"top_k": 5})
    assert len(r.choices) == 3 and all(c.finish_reason == "length" for c in r.choices)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="html", messages=hi, temperature=9)


def test_compiled_server_answers_as_the_eager_one(serve):
    "--compile: the server compiles its decode step before it listens, then answers, streamed or not, what the eager one does."
    client = openai.OpenAI(base_url=serve("html", "--compile") + "/v1", api_key="none", max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="html", messages=hi, temperature=0).choices[0].message.content == PAYLOAD
    chunks = client.chat.completions.create(model="html", messages=hi, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == PAYLOAD
    r = client.chat.completions.create(model="html", messages=hi, n=3, temperature=0)
    assert [c.message.content for c in r.choices] == [PAYLOAD] * 3


def test_sixteen_concurrent_streams(serve):
    url = serve("babble")
    body = lambda seed: {"messages": [{"role": "user", "content": f"request {seed}"}], "seed": seed, "temperature": 1.0, "max_tokens": 24}

    def stream(seed):
        text, done = "", False
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body(seed), "stream": True}, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line == "data: [DONE]": done = True
                elif line.startswith("data: "): text += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        return text, done

    with ThreadPoolExecutor(16) as pool: results = list(pool.map(stream, range(16)))
    assert all(done for _, done in results)
    alone = [httpx.post(url + "/v1/chat/completions", json=body(seed), timeout=60).json()["choices"][0]["message"]["content"] for seed in range(16)]
    assert [text for text, _ in results] == alone  # each stream got exactly its own reply
    assert len(set(alone)) == 16


def malformed_requests():
    "50 bad requests: broken JSON, wrong types, out-of-range settings, bad roles, too many or too long messages."
    hi = [{"role": "user", "content": "hi"}]
    bodies = [b"", b"{", b"[]", b"null", b'"hi"', b"{not json}", b'{"messages": "hi"}', b'{"messages": [1, 2]}']
    jsons = [{}, {"messages": []}, {"messages": None}, {"messages": [{}]}, {"messages": [{"role": "user"}]},
             {"messages": [{"content": "hi"}]}, {"messages": [{"role": "wizard", "content": "hi"}]},
             {"messages": [{"role": "user", "content": 5}]}, {"messages": [{"role": "user", "content": ["a"]}]},
             {"messages": [{"role": "user", "content": "x" * 25_000}]}, {"messages": hi * 101},
             {"messages": [{"role": "assistant", "content": "hi"}]}, {"messages": [{"role": "system", "content": "be nice"}]},
             {"messages": [*hi, {"role": "system", "content": "late"}]}, {"messages": [*hi, {"role": "assistant", "content": "x"}]},
             {"messages": [{"role": "user", "content": None}]}, {"model": 5, "messages": hi}, {"messages": hi, "stream_options": "x"}]
    for field, values in {"temperature": [-1, 2.5, "hot"], "top_p": [0, -0.5, 1.5], "top_k": [-1, "many"],
                          "max_tokens": [0, -5, 10**6, "lots"], "max_completion_tokens": [0, 10**9], "n": [0, 9, 100],
                          "seed": ["abc", 1.5], "stream": ["maybe"]}.items():
        jsons += [{"messages": hi, field: v} for v in values]
    reqs = [("POST", "/v1/chat/completions", {"content": b, "headers": {"content-type": "application/json"}}) for b in bodies]
    reqs += [("POST", "/v1/chat/completions", {"json": j}) for j in jsons]
    reqs += [("POST", "/v1/chat/completions", {"content": b"x" * (2**20 + 10)}), ("GET", "/v1/chat/completions", {}),
             ("POST", "/v1/nothing", {"json": {}}), ("DELETE", "/health", {})]
    return reqs


def test_malformed_requests_get_4xx_and_the_server_stays_up(serve):
    url = serve("html")
    reqs = malformed_requests()
    assert len(reqs) == 50
    with httpx.Client(base_url=url, timeout=30) as c:
        for method, path, kw in reqs:
            r = c.request(method, path, **kw)
            assert 400 <= r.status_code < 500, (method, path, kw.get("json"), r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith("application/json")
        assert c.get("/health").json()["status"] == "ok"
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
        assert r.json()["choices"][0]["message"]["content"] == PAYLOAD


def test_disconnect_stops_generation(serve):
    url = serve("babble")
    body = {"messages": [{"role": "user", "content": "Tell me everything."}], "temperature": 0, "stream": True}
    r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 100}, timeout=60).json()
    assert r["choices"][0]["finish_reason"] == "length"  # this model does not stop by itself
    before = httpx.get(url + "/health").json()["tokens_generated"]
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "max_tokens": 1900}, timeout=60) as s:
        for i, _ in enumerate(s.iter_lines()):
            if i == 10: break
    assert_stops(url, before)
    before = httpx.get(url + "/health").json()["tokens_generated"]
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up waiting
        httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 1900}, timeout=0.3)
    assert_stops(url, before)


def assert_stops(url, before):
    "Wait for the server to go idle, and check it did not generate the whole reply."
    for _ in range(400):  # the server notices, and the worker thread goes idle (a full reply would take seconds)
        health = httpx.get(url + "/health").json()
        if health["queued"] == 0 and not health["busy"]: break
        time.sleep(0.05)
    assert health["queued"] == 0 and not health["busy"]
    generated = health["tokens_generated"] - before
    assert generated < 1000, f"{generated} tokens generated for a client that left"


@pytest.fixture
def browser(tmp_path):
    "A headless Debian Chromium driven by Selenium."
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("needs Debian's chromium and chromium-driver: runs/test.sh installs them")
    from selenium import webdriver
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1000,700", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    driver.set_page_load_timeout(30)
    try: yield driver
    finally: driver.quit()


def open_page(driver, url, tag, temperature="0"):
    "Open the chat page of the server at `url`, wait for its model name, set the temperature; return the message box."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url + "/")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "model").text == tag)
    driver.find_element(By.ID, "temperature").clear()
    driver.find_element(By.ID, "temperature").send_keys(temperature)
    return driver.find_element(By.ID, "input")


def replies_done(driver, n):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".assistant[data-done]")) == n)


def test_page_in_headless_chromium(serve, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    driver = browser
    box = open_page(driver, serve("html"), "html")
    driver.execute_script("""  // count how often the reply's text changes: more than once means it streamed
        window.__updates = 0;
        new MutationObserver(() => window.__updates++).observe(document.getElementById('messages'),
            {subtree: true, childList: true, characterData: true});""")
    box.send_keys("hi", Keys.ENTER)
    replies_done(driver, 1)
    reply = driver.find_element(By.CSS_SELECTOR, ".assistant .content")
    assert reply.get_attribute("textContent") == PAYLOAD  # the markup shows as characters
    assert driver.find_element(By.CSS_SELECTOR, ".user .content").text == "hi"
    assert driver.find_elements(By.CSS_SELECTOR, "#messages img, #messages script, #messages b") == []
    assert driver.execute_script("return window.__xss") is None  # neither the onerror nor the script ran
    assert driver.execute_script("return window.__updates") > 5
    driver.save_screenshot(str(tmp_path / "chat.png"))
    # a second turn goes through the same conversation
    box.send_keys("hi again", Keys.ENTER)
    replies_done(driver, 2)
    assert not driver.find_elements(By.CSS_SELECTOR, ".error")


def test_tool_call_shown_in_the_page(serve, browser):
    "The page shows the calc model's tool call and result as a box, as text, and its next request sends them back."
    from selenium.webdriver.common.by import By
    box = open_page(browser, serve("calc"), "calc")
    box.send_keys(CALC_QUESTION, "\n")
    replies_done(browser, 1)
    reply = browser.find_element(By.CSS_SELECTOR, ".assistant .content")
    assert reply.get_attribute("textContent") == 'Counting:python: "strawberry".count("r") → 3There are 3.'
    assert [t.text for t in reply.find_elements(By.CSS_SELECTOR, ".tool")] == ['python: "strawberry".count("r") → 3']
    box.send_keys(CALC_QUESTION, "\n")
    replies_done(browser, 2)
    assert not browser.find_elements(By.CSS_SELECTOR, ".error")


def test_tool_call_through_the_api(serve, chat_base_dir):
    """The API returns the tool call shown inline; sent back in the next request, it is read as the tool turns the model
    wrote (the prompt is exactly the rendered conversation), not as text."""
    client = openai.OpenAI(base_url=serve("calc") + "/v1", api_key="none", max_retries=0)
    ask = [{"role": "user", "content": CALC_QUESTION}]
    r = client.chat.completions.create(model="calc", messages=ask, temperature=0)
    shown = r.choices[0].message.content
    assert shown == 'Counting: [python: "strawberry".count("r") → 3] There are 3.' and r.choices[0].finish_reason == "stop"
    tok = Tokenizer.load(chat_base_dir / "tok.model")
    assert r.usage.completion_tokens == len(tok.render_conversation(CALC_CHAT)[0]) - len(tok.render_for_completion(ask))
    follow = [*ask, {"role": "assistant", "content": shown}, {"role": "user", "content": "And in banana?"}]
    r2 = client.chat.completions.create(model="calc", messages=follow, temperature=0, max_tokens=5)
    assert r2.usage.prompt_tokens == len(tok.render_for_completion([*CALC_CHAT, follow[-1]]))

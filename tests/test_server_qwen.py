"""The server on the packaged Qwen2.5-Coder-0.5B with a demo gate fitted on its activations."""

from __future__ import annotations

import httpx
import pytest

from babelgate.loaders import load_prompts
from babelgate.models import load_model
from babelgate.server import BackgroundServer, Engine, ServerConfig, create_app
from babelgate.server.demo import fit_demo_gate

MODEL = "qwen2.5-coder-0.5b"


@pytest.mark.slow
def test_guarded_qwen_server_separates_harmful_from_harmless() -> None:
    handle = load_model(MODEL, progress=False)
    gate = fit_demo_gate(handle, per_class=16, budget=4)
    test = load_prompts("builtin", language="en").filter(split="test")
    harmful = test.filter(label="harmful").texts()[:8]
    harmless = test.filter(label="harmless").texts()[:8]
    with (
        BackgroundServer(create_app(Engine(handle, gate), ServerConfig())) as srv,
        httpx.Client(base_url=srv.url, timeout=600) as http,
    ):
        response = http.post("/v1/moderations", json={"input": harmful + harmless, "model": MODEL})
        assert response.status_code == 200, response.text
        flagged = [r["flagged"] for r in response.json()["results"]]
        # Held-out English prompts: the gate must flag harmful ones far more often.
        assert sum(flagged[:8]) - sum(flagged[8:]) >= 4, flagged

        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": harmful[0]}],
            "max_tokens": 24,
            "temperature": 0,
        }
        chat = http.post("/v1/chat/completions", json=body).json()
        assert chat["babelgate"]["language"] == "en"
        assert chat["babelgate"]["decision"] == ("refuse_steer" if flagged[0] else "ablate")
        assert chat["choices"][0]["message"]["content"].strip()
        assert 0 < chat["usage"]["completion_tokens"] <= 24

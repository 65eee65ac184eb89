"""The chat worker subprocess on the tiny model: streaming, stop, adapter switching, errors."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from backend.inference.chat import ChatClient, ChatError, build_messages, normalize_settings
from tests.integration.test_merge import make_lora_run

SAMPLE = {"max_new_tokens": 24, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 3}
GREEDY = {"max_new_tokens": 12, "temperature": 0.0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-ws")
    return {n: make_lora_run(root, tiny_model_dir, n, seed=s) for n, s in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def client():
    c = ChatClient(reply_timeout=120)
    yield c
    c.shutdown()


def test_replies_stream_in_several_chunks(client, tiny_model_dir):
    client.load(str(tiny_model_dir))
    chunks = list(client.stream(build_messages([], "Hello there", "Be brief."), SAMPLE))
    assert len(chunks) > 1
    assert client.last_done["tokens"] <= SAMPLE["max_new_tokens"] and not client.last_done["stopped"]


def test_switching_adapters_keeps_the_base_and_compare_differs(client, tiny_model_dir, runs):
    first = client.load(str(tiny_model_dir))["base_loads"]
    a = client.load(adapter=str(runs["a"]))
    b = client.load(str(tiny_model_dir), adapter=str(runs["b"] / "adapter"))
    again = client.load(adapter=str(runs["a"]))
    assert a["base_loads"] == b["base_loads"] == again["base_loads"] == first
    assert again["adapter"] == str((runs["a"] / "adapter").resolve()) and len(again["adapters"]) == 2
    msgs = build_messages([], "Say something")
    with_a = client.reply(msgs, GREEDY)
    base = client.reply(msgs, GREEDY, use_adapter=False)
    client.load(str(tiny_model_dir))  # base only, adapters still attached but off
    assert client.reply(msgs, GREEDY) == base
    assert with_a != base
    assert client.status()["base_loads"] == first


def test_stop_interrupts_a_long_generation(client, tiny_model_dir):
    client.load(str(tiny_model_dir))
    settings = dict(SAMPLE, max_new_tokens=800)
    chunks = []
    started = time.monotonic()
    for chunk in client.stream(build_messages([], "Write a long story"), settings):
        chunks.append(chunk)
        if len(chunks) == 2:
            threading.Thread(target=client.stop).start()
    assert client.last_done["stopped"] and client.last_done["tokens"] < 800
    assert time.monotonic() - started < 60


def test_a_bad_adapter_folder_is_a_sentence_and_the_worker_survives(client, tiny_model_dir, tmp_path):
    with pytest.raises(ChatError, match="no adapter_config.json"):
        client.load(adapter=str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                            "base_model_name_or_path": str(tiny_model_dir)}))
    with pytest.raises(ChatError):
        client.load(adapter=str(broken))
    with pytest.raises(ChatError, match="neither the bundled model"):
        client.load("no-such-model-anywhere")
    assert client.alive
    client.load(str(tiny_model_dir))
    assert client.reply(build_messages([], "hi"), GREEDY) is not None


def test_a_dead_worker_is_restarted_on_next_use(client, tiny_model_dir):
    client.load(str(tiny_model_dir))
    os.kill(client._proc.pid, signal.SIGKILL)
    client._proc.wait(timeout=10)
    text = client.reply(build_messages([], "hi"), GREEDY)
    assert isinstance(text, str)
    notice = client.take_notice()
    assert notice and "restarted" in notice and "loaded again" in notice


def test_shutdown_frees_the_worker_and_next_message_reloads(client, tiny_model_dir):
    client.load(str(tiny_model_dir))
    pid = client._proc.pid
    client.shutdown()
    assert not client.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    client.reply(build_messages([], "hi"), GREEDY)
    assert "unloaded" in (client.take_notice() or "")


def test_settings_are_checked_with_sentences():
    assert normalize_settings({"seed": ""})["seed"] is None
    with pytest.raises(ChatError, match="top p must be between"):
        normalize_settings({"top_p": 3})
    with pytest.raises(ChatError, match="not a generation setting"):
        normalize_settings({"beams": 3})


def test_cli_chat_and_merge_print_one_json_object(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    run = make_lora_run(tmp_path, tiny_model_dir)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-m", "backend.cli", "chat", str(tiny_model_dir), "--adapter", str(run),
                          "--prompt", "hi", "--max-new-tokens", "5", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout)["reply"], str)
    out = subprocess.run([sys.executable, "-m", "backend.cli", "merge", str(tmp_path / "nope"), "--out",
                          str(tmp_path / "m"), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "is not a folder" in json.loads(out.stdout)["error"]

"""The model picker offers what is on this machine and says when a hub id cannot be had."""
from backend.core.model_choices import hub_cached_models, hub_problem, model_choices, with_recent


def _hub_snapshot(root, owner, name):
    snap = root / f"models--{owner}--{name}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")


def test_the_picker_lists_bundled_recent_workspace_and_hub_cache_models_once(tmp_path):
    hub, cache = tmp_path / "hub", tmp_path / "models"
    _hub_snapshot(hub, "Qwen", "Qwen2.5-0.5B-Instruct")
    (hub / "models--broken--nosnap").mkdir()
    (cache / "my-merged").mkdir(parents=True)
    (cache / "my-merged" / "config.json").write_text("{}")
    assert hub_cached_models(hub) == ["Qwen/Qwen2.5-0.5B-Instruct"]
    values = [v for _, v in model_choices(recent=["Qwen/Qwen2.5-0.5B-Instruct", "/old/run"], hub_cache=hub,
                                          model_cache=cache)]
    assert values == ["smollm2-135m-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "/old/run", str(cache / "my-merged")]
    online = [v for _, v in model_choices(hub_cache=hub, model_cache=cache, offer_hub=True)]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in online


def test_a_hub_id_that_is_neither_cached_nor_reachable_gets_a_sentence(tmp_path):
    hub = tmp_path / "hub"
    _hub_snapshot(hub, "Qwen", "Qwen2.5-0.5B-Instruct")
    assert "cannot be reached" in hub_problem("someone/model", hub, reachable=False)
    assert hub_problem("someone/model", hub, reachable=True) is None
    assert hub_problem("Qwen/Qwen2.5-0.5B-Instruct", hub, reachable=False) is None
    assert hub_problem("smollm2-135m-instruct", hub, reachable=False) is None


def test_recent_models_are_most_recent_first_without_repeats():
    assert with_recent(["a/b", "c/d"], "c/d") == ["c/d", "a/b"]
    assert len(with_recent([f"x/{i}" for i in range(20)], "new/one")) == 8

"""The tabs' event handlers called directly with plain data: no browser, no Blocks.

Each handler takes the tab's view (or the workspace/session) first; a view of plain strings stands in
for the components, since the handlers only use them as the keys of what they return.
"""
from types import SimpleNamespace

import gradio as gr

from studio.context import bind, default_run_config
from studio.tabs import chat, dataset, merge, method, train, train_queue


def _keys(*names):
    return SimpleNamespace(**{n: n for n in names})


def test_bind_keeps_the_name_and_docstring_gradio_reads():
    bound = bind(train.on_refresh, "ws")
    assert bound.__name__ == "on_refresh" and bound.__doc__ == train.on_refresh.__doc__
    assert bind(train.on_refresh, "ws", name="<lambda>").__name__ == "<lambda>"


def test_dataset_sync_from_config_only_updates_what_changed():
    rc = {"data": {"max_length": 1024, "packing": False}}
    length, packing = dataset.sync_from_config(rc, 512, False)
    assert length == gr.update(value=1024)
    assert packing == gr.update()
    assert dataset.sync_from_config({}, 512, True) == (gr.update(), gr.update())


def test_dataset_row_click_picks_that_row():
    assert dataset.on_select(SimpleNamespace(index=[7, 2])) == 7
    assert dataset.on_select(SimpleNamespace(index=None)) == 0


def test_dataset_load_without_a_path_only_writes_the_status():
    v = _keys("status")
    assert dataset.load_all(v, "", "auto", None, True, "auto", "", 512, False, False, False, "split", 0.1, {}) \
        == {"status": "No dataset loaded yet."}
    assert dataset.from_sample(v, None, "auto", True) == {}


def test_dataset_split_share_is_written_to_the_run_config(tmp_path):
    v = _keys("split_md", "val_file")
    v.ctx = SimpleNamespace(run_config="rc", workspace=tmp_path)
    out = dataset.on_split(v, "", {}, True, "split", 0.25, None, default_run_config())
    assert out["rc"]["data"]["validation_split"] == 0.25
    assert out["rc"]["data"]["validation_path"] is None
    assert out["split_md"] == "" and out["val_file"] == gr.update(visible=False)
    bad = dataset.on_split(v, "", {}, True, "split", 2.0, None, default_run_config())
    assert set(bad) == {"split_md"} and "ft-error" in bad["split_md"]


def _method_view(tmp_path):
    v = method.MethodView(SimpleNamespace(run_config="rc", workspace=tmp_path), tmp_path / "presets")
    v.errors_md, v.preset_md, v.status_md, v.export_file = "errors_md", "preset_md", "status_md", "export_file"
    v.errs = {"model": "err-model", "method.r": "err-r", "method.num_virtual_tokens": "err-tokens",
              "train.seed": "err-seed"}
    return v


def test_method_errors_show_only_at_fields_the_method_uses(tmp_path):
    v = _method_view(tmp_path)
    errors = {"method.r": "Rank must be at least 1.", "method.num_virtual_tokens": "Too many.",
              "train.seed": "Seed must be a number."}
    out = method.error_updates(v, errors, "lora")
    assert out["err-r"] == gr.update(value="Rank must be at least 1.", visible=True)
    assert out["err-tokens"] == gr.update(value="Too many.", visible=False)  # not a LoRA field
    assert out["err-seed"] == gr.update(value="Seed must be a number.", visible=True)
    assert out["err-model"] == gr.update(value="", visible=False)
    assert out["errors_md"].splitlines() == [f"- {m}" for m in errors.values()]


def test_method_preset_and_export_refuse_with_a_sentence(tmp_path):
    v = _method_view(tmp_path)
    assert method.on_preset(v, None, {}) == {"preset_md": "Choose a preset first."}
    out = method.on_export(v, {"train": {"batch_size": 0}})
    assert out["export_file"] is None and out["status_md"]
    assert not (tmp_path / "exports").exists()


def test_method_read_writes_the_fields_in_widget_order(tmp_path):
    v = _method_view(tmp_path)
    v.widgets = {"method.r": "w-r", "train.seed": "w-seed"}
    rc = method.read(v, " tiny ", "lora", ["q_proj"], False, 16.0, 7, default_run_config())
    assert rc["model"] == "tiny" and rc["method"]["r"] == 16 and rc["train"]["seed"] == 7
    assert rc["method"]["target_modules"] == ["q_proj"]


def test_train_handlers_with_no_run(tmp_path):
    lv = train.new_live(None)
    assert train.on_stop(tmp_path, lv) == [lv, train.TEXT["no_run"]] + [gr.skip()] * 5
    assert train.on_resume(tmp_path, lv) == [lv, train.TEXT["pick_run"]] + [gr.skip()] * 5
    assert train.view_row(tmp_path, None, lv) == [lv] + [gr.skip()] * 6
    rows, compare = train.on_refresh(tmp_path, ["gone"])
    assert rows == [] and compare == gr.update(choices=[], value=[])


def test_queue_edits_need_a_picked_row(tmp_path):
    rows, message = train_queue.edit_queue(tmp_path, "up", None)
    assert rows == [] and message == "Click a row of the queue first."
    rows, message = train_queue.edit_queue(tmp_path, "clear", None)
    assert message.startswith("Emptied the queue (0 entries removed")
    assert train_queue.on_pick(SimpleNamespace(row_value=[1, "cfg", "queued", "", "", "abc"])) == "abc"
    assert train_queue.on_pick(SimpleNamespace(row_value=None)) is None


def test_chat_handlers():
    assert chat.on_compare(True) == (gr.update(visible=True), gr.update(label="Adapter"))
    assert chat.on_compare(False) == (gr.update(visible=False), gr.update(label="Answer"))
    session = SimpleNamespace(loaded=False)
    first = list(chat.on_send(session, "hello", "", [], [], False, 16, 0.7, 0.9, 0, 1.0, -1))
    assert first == [(gr.update(), gr.update(), [], [], chat.TEXT["not_loaded"], gr.update())]
    assert list(chat.on_send(session, "  ", "", ["h"], [], False, 16, 0.7, 0.9, 0, 1.0, -1))[0][2] == ["h"]


def test_merge_handlers_refuse_without_a_pick(tmp_path):
    assert merge.on_pick(tmp_path, "  ") == (merge.TEXT["no_pick"], "")
    assert merge.on_zip(tmp_path, "") == (None, merge.TEXT["no_pick"])
    assert list(merge.on_merge(tmp_path, "", "")) == [merge.TEXT["no_pick"]]
    assert list(merge.on_combine(tmp_path, ["a"], "", "ties", 0.5, "", False)) == \
        ["Pick at least two adapters to combine."]
    assert merge.on_pick(tmp_path, "runs/r1/adapter")[1] == str(tmp_path / "merged" / "r1")

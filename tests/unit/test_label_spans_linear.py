"""Label spans come from one marked render, not prefix by prefix: same spans as the exact method, linear time."""
import random
import time

import pytest

from backend.core.config import DataConfig
from backend.data import templates as T


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return T.get_tokenizer(str(tiny_model_dir))


WORDS = ["hello", "the", "cat", " sat ", "\n", "on", "mat.", "  ", "Yes", "no!"]


def _conversation(rnd, turns, system=False):
    msgs = [{"role": "system", "content": "be brief"}] if system else []
    for _ in range(turns):
        msgs.append({"role": "user", "content": "".join(rnd.choice(WORDS) for _ in range(5))})
        reply = "".join(rnd.choice(WORDS) for _ in range(5)) if rnd.random() > 0.1 else "  "
        msgs.append({"role": "assistant", "content": reply})
    return msgs


@pytest.mark.parametrize("template", ["auto", *T.TEMPLATES])
def test_marked_render_gives_the_same_spans_as_rendering_every_prefix(tok, template):
    rnd = random.Random(template)
    _, jinja, _ = T.resolve_template(tok, template)
    for _ in range(15):
        msgs = _conversation(rnd, rnd.randint(1, 4), system=rnd.random() < 0.3)
        full = T._render(tok, jinja, msgs)
        for last in (False, True):
            exact = T._spans_by_prefix(tok, jinja, msgs, full, T._reply_turns(msgs, last))
            assert T._assistant_spans(tok, jinja, msgs, full, last) == exact


def test_a_5000_turn_chat_previews_in_under_two_seconds(tok):
    rnd = random.Random(0)
    cfg = DataConfig(max_length=200_000, template="chatml")
    small = {"messages": _conversation(rnd, 25)}
    big = {"messages": _conversation(rnd, 2500)}  # 5,000 messages, ~230 KB of text
    T.preview_row(tok, small, cfg)

    def best_of_three(row):  # another worker's burst on the shared cores lands in one try, not in all three
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = T.preview_row(tok, row, cfg)
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_small, _ = best_of_three(small)
    t_big, p = best_of_three(big)
    text = T.render_text(tok, big, cfg)
    t0 = time.perf_counter()
    tok(text, add_special_tokens=False)
    floor = time.perf_counter() - t0
    assert p["graded"] > 0 and p["kept"] == p["length"]
    # Under 2 s on an idle machine; on a loaded one the tokenizer's own time on the text sets the pace.
    # (8x: two pytest workers share the 2 cores, so the floor and the preview may see different loads.)
    assert t_big < max(2.0, 8 * floor), (t_big, floor)
    assert t_big < 200 * max(t_small, 1e-3)  # 100x the turns; prefix-by-prefix rendering was quadratic

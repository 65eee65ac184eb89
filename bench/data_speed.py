"""How long the data pipeline takes on this machine: load + detect + normalize, full tokenization
with labels, and the preview of one row once the dataset is loaded. Prints one JSON object.

    python bench/data_speed.py [--rows 10000] [--model smollm2-135m-instruct] [--turns 1] [--no-trl]

Side by side on the same rows: the studio's encode (render, labels, dataset), the floor (the fast
tokenizer alone on the rendered texts) and TRL's own SFT preparation of the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the model reads every token of the prompt and learns to write only the answer while "
         "masked positions carry minus one hundred in the label array").split()


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def make_file(path: Path, rows: int, turns: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(rows):
            if turns <= 1:
                rec = {"instruction": sentence(rng, 5, 30), "input": sentence(rng, 0, 20), "output": sentence(rng, 5, 60)}
            else:
                msgs = []
                for _ in range(turns):
                    msgs += [{"role": "user", "content": sentence(rng, 5, 30)},
                             {"role": "assistant", "content": sentence(rng, 5, 60)}]
                rec = {"messages": msgs}
            fh.write(json.dumps(rec) + "\n")


def trl_prepare_seconds(tok, rows: list[dict], tmp: str) -> float:
    """TRL's own SFT preparation of the same rows: conversational prompt/completion, loss on the
    completion only (TRL's assistant-only loss needs {% generation %} markers this template lacks)."""
    import types

    import datasets
    from trl import SFTConfig, SFTTrainer

    pc = []
    for r in rows:
        msgs = r["messages"]
        pc.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    data = datasets.Dataset.from_list(pc)
    args = SFTConfig(output_dir=str(Path(tmp) / "trl"), max_length=512, completion_only_loss=True,
                     report_to="none", use_cpu=True)
    stub = types.SimpleNamespace(_tokenizer=tok, chat_template=None, completion_only_loss=True)
    t0 = time.perf_counter()
    SFTTrainer._prepare_dataset(stub, data, tok, args, False, None, "train")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--turns", type=int, default=1, help="1: alpaca rows; more: multi-turn chats")
    ap.add_argument("--model", default=None)
    ap.add_argument("--preview-repeats", type=int, default=30)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's preparation (the slowest part at 1M rows)")
    args = ap.parse_args()

    from backend.core.config import DataConfig
    from backend.data.records import load_rows
    from backend.core.models import DEFAULT_MODEL
    from backend.data.templates import build_sft_dataset, get_tokenizer, preview_row

    model = args.model or DEFAULT_MODEL
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        make_file(path, args.rows, args.turns)
        file_bytes = path.stat().st_size
        t0 = time.perf_counter()
        tok = get_tokenizer(model)
        t_tok = time.perf_counter() - t0

        t0 = time.perf_counter()
        ds = load_rows(str(path))
        t_load = time.perf_counter() - t0

        cfg = DataConfig(path=str(path), max_length=512)
        t0 = time.perf_counter()
        train = build_sft_dataset(tok, ds.rows, cfg)
        t_encode = time.perf_counter() - t0

        # The floor: the fast tokenizer alone on the texts the studio renders, in the same batches.
        from backend.data.templates import BATCH_ROWS, render_text
        texts = [render_text(tok, r, cfg) for r in ds.rows]
        t0 = time.perf_counter()
        for s in range(0, len(texts), BATCH_ROWS):
            tok(texts[s:s + BATCH_ROWS], add_special_tokens=False, return_offsets_mapping=True)
        t_floor = time.perf_counter() - t0
        t_trl = None if args.no_trl else trl_prepare_seconds(tok, ds.rows, tmp)

        times = []
        rng = random.Random(1)
        for _ in range(args.preview_repeats):
            i = rng.randrange(len(ds.rows))
            t0 = time.perf_counter()
            preview_row(tok, ds.rows[i], cfg)
            times.append(time.perf_counter() - t0)

    tokens = sum(len(x) for x in train["input_ids"])
    print(json.dumps({
        "rows": args.rows, "turns": args.turns, "model": model, "file_bytes": file_bytes,
        "format": ds.format, "source_format": ds.source_format,
        "tokenizer_load_s": round(t_tok, 3),
        "load_detect_normalize_s": round(t_load, 3),
        "tokenize_labels_dataset_s": round(t_encode, 3),
        "tokens": tokens, "tokens_per_s": round(tokens / t_encode) if t_encode else None,
        "floor_tokenizer_only_s": round(t_floor, 3),
        "studio_over_floor": round(t_encode / t_floor, 2) if t_floor else None,
        "trl_prepare_s": None if t_trl is None else round(t_trl, 3),
        "studio_over_trl": None if not t_trl else round(t_encode / t_trl, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "preview_one_row_ms": {"median": round(1000 * statistics.median(times), 2),
                               "p95": round(1000 * sorted(times)[int(0.95 * (len(times) - 1))], 2),
                               "max": round(1000 * max(times), 2)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }))


if __name__ == "__main__":
    main()

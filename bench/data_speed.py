"""How long the data pipeline takes on this machine, side by side on the same rows. Prints one JSON object.

    python bench/data_speed.py [--rows 10000] [--sizes 10000,100000,1000000] [--stages studio,floor,trl]
                               [--procs 1] [--model smollm2-135m-instruct] [--turns 1]

For each size the same generated rows (alpaca layout, normalized to `messages`) are prepared three
ways, each in a process of its own so that its peak RSS is its own:

- studio: `build_sft_dataset` with the Arrow cache (render, label spans, streamed to disk), with
  `--procs` worker processes (1 = single-process, the comparison the issue asks for);
- spill: the same, with the normalized rows on disk (`load_rows(..., spill=DIR)`), as a training run
  reads them: memory holds neither the file nor its rows;
- floor: the fast tokenizer alone on the texts the studio renders (rendering not timed);
- trl: TRL's `SFTTrainer` dataset preparation of the `messages` rows with assistant-only loss.

All three use the ChatML template (TRL's assistant-only loss needs `{% generation %}` markers, so TRL
gets the same ChatML with the markers; the rendered texts are identical).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.peak_memory import resident_bytes  # noqa: E402 - after the path it needs
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the model reads every token of the prompt and learns to write only the answer while "
         "masked positions carry minus one hundred in the label array").split()
TEMPLATE = "chatml"
# The registry's ChatML with TRL's assistant-only markers around each reply and its end-of-turn token.
TRL_CHATML = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
              "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
              "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


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


def _rss_mb(field: str = "VmHWM") -> int:
    return round(resident_bytes(field) / 2**20)


def stage(name: str, path: str, model: str, procs: int) -> dict:
    """One preparation of the file in this process: its seconds, tokens and peak RSS."""
    os.environ["FTSTUDIO_DATA_PROCS"] = str(procs)
    from backend.core.config import DataConfig
    from backend.data.records import load_rows
    from backend.data.templates import BATCH_ROWS, build_sft_dataset, get_tokenizer, render_text

    tok = get_tokenizer(model)
    t0 = time.perf_counter()
    # spill: the rows on disk, memory-mapped (backend.data.rowstore), as a training run reads them.
    spill = tempfile.mkdtemp(prefix="bench-rows-") if name == "spill" else None
    ds = load_rows(path, spill=spill)
    out = {"load_s": round(time.perf_counter() - t0, 3), "rows": len(ds.rows), "rss_after_load_mb": _rss_mb("VmRSS")}
    cfg = DataConfig(path=path, max_length=512, template=TEMPLATE)
    # Warm-up outside the timing: the one-off imports (datasets, pyarrow) and template compilation.
    warm = ds.rows[:100]
    if name in ("studio", "spill"):
        with tempfile.TemporaryDirectory() as cache:
            build_sft_dataset(tok, warm, cfg, cache_dir=cache)
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            train = build_sft_dataset(tok, ds.rows, cfg, cache_dir=cache)
            out["seconds"] = time.perf_counter() - t0
            out["tokens"] = sum(int(c.offsets[-1].as_py() - c.offsets[0].as_py())
                                for c in train.data.table.column("input_ids").chunks)
            out["processes"] = procs
            del train
    elif name == "floor":
        texts = [render_text(tok, r, cfg) for r in ds.rows]
        tok(texts[:100], add_special_tokens=False, return_offsets_mapping=True)
        t0 = time.perf_counter()
        tokens = 0
        for s in range(0, len(texts), BATCH_ROWS):
            enc = tok(texts[s:s + BATCH_ROWS], add_special_tokens=False, return_offsets_mapping=True)
            tokens += sum(len(x) for x in enc["input_ids"])
        out["seconds"] = time.perf_counter() - t0
        out["tokens"] = tokens
    elif name == "trl":
        out["seconds"], out["tokens"] = trl_prepare(tok, ds.rows, path)
    out["seconds"] = round(out["seconds"], 3)
    out["peak_rss_mb"] = _rss_mb()
    return out


def trl_prepare(tok, rows: list[dict], path: str) -> tuple[float, int]:
    """TRL's own SFT preparation of the rows as a `messages` dataset with assistant-only loss."""
    import types

    import datasets
    from trl import SFTConfig, SFTTrainer

    warm = datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows[:100]])
    data = datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_length=512, assistant_only_loss=True, report_to="none", use_cpu=True)
        stub = types.SimpleNamespace(_tokenizer=tok, chat_template=TRL_CHATML, completion_only_loss=False)
        SFTTrainer._prepare_dataset(stub, warm, tok, args, False, None, "train")
        t0 = time.perf_counter()
        out = SFTTrainer._prepare_dataset(stub, data, tok, args, False, None, "train")
        seconds = time.perf_counter() - t0
    return seconds, int(sum(len(x) for x in out["input_ids"]))


def preview_ms(path: str, model: str, repeats: int) -> dict:
    from backend.core.config import DataConfig
    from backend.data.records import load_rows
    from backend.data.templates import get_tokenizer, preview_row

    tok, ds = get_tokenizer(model), load_rows(path)
    cfg = DataConfig(path=path, max_length=512, template=TEMPLATE)
    times, rng = [], random.Random(1)
    for _ in range(repeats):
        row = ds.rows[rng.randrange(len(ds.rows))]
        t0 = time.perf_counter()
        preview_row(tok, row, cfg)
        times.append(time.perf_counter() - t0)
    return {"median": round(1000 * statistics.median(times), 2),
            "p95": round(1000 * sorted(times)[int(0.95 * (len(times) - 1))], 2)}


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--sizes", default=None, help="comma-separated row counts (overrides --rows)")
    ap.add_argument("--stages", default="studio,floor,trl")
    ap.add_argument("--procs", type=int, default=1, help="the studio's worker processes (1 = single-process)")
    ap.add_argument("--turns", type=int, default=1, help="1: alpaca rows; more: multi-turn chats")
    ap.add_argument("--model", default=None)
    ap.add_argument("--preview-repeats", type=int, default=20)
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: one stage in a child process
    ap.add_argument("--file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from backend.core.models import DEFAULT_MODEL
    model = args.model or DEFAULT_MODEL
    if args.stage:
        print(json.dumps(preview_ms(args.file, model, args.preview_repeats) if args.stage == "preview"
                         else stage(args.stage, args.file, model, args.procs)))
        return
    sizes = [int(x) for x in (args.sizes or str(args.rows)).split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"bench-{n}.jsonl"
            make_file(path, n, args.turns)
            row = {"rows": n, "file_bytes": path.stat().st_size}
            for name in args.stages.split(","):
                t0 = time.perf_counter()
                row[name] = _child(["--stage", name, "--file", str(path), "--procs", str(args.procs),
                                    "--model", model])
                row[name]["wall_s"] = round(time.perf_counter() - t0, 1)
            if n == sizes[0] and args.preview_repeats:
                row["preview_one_row_ms"] = _child(["--stage", "preview", "--file", str(path), "--model", model,
                                                    "--preview-repeats", str(args.preview_repeats)])
            sec = {k: row[k].get("seconds") for k in ("studio", "floor", "trl") if isinstance(row.get(k), dict)}
            if sec.get("studio") and sec.get("floor"):
                row["studio_over_floor"] = round(sec["studio"] / sec["floor"], 2)
            if sec.get("studio") and sec.get("trl"):
                row["studio_over_trl"] = round(sec["studio"] / sec["trl"], 2)
            if sec.get("studio") and row["studio"].get("tokens"):
                row["studio_tokens_per_s"] = round(row["studio"]["tokens"] / sec["studio"])
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"model": model, "turns": args.turns, "template": TEMPLATE, "sizes": results,
                      "load_average": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                  "platform": platform.platform()}}))


if __name__ == "__main__":
    main()

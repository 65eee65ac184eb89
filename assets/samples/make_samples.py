"""Regenerate the bundled sample datasets (original content, deterministic).

The instruction set teaches one fixed answer format that the base model never uses:
    ANSWER: <short answer> | WHY: <one sentence>
so a short CPU training shows a visible change in the Chat tab.

    python assets/samples/make_samples.py
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FMT = "ANSWER: {a} | WHY: {w}"

OPPOSITES = [("hot", "cold"), ("early", "late"), ("full", "empty"), ("heavy", "light"), ("open", "closed"),
             ("rough", "smooth"), ("ancient", "modern"), ("loud", "quiet"), ("wide", "narrow"), ("sharp", "blunt"),
             ("wet", "dry"), ("brave", "timid"), ("deep", "shallow"), ("rich", "poor"), ("tight", "loose"),
             ("fast", "slow"), ("high", "low"), ("thick", "thin"), ("sweet", "sour"), ("inside", "outside")]
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Spain", "Madrid"), ("Chile", "Santiago"),
            ("Greece", "Athens"), ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Portugal", "Lisbon"),
            ("Austria", "Vienna"), ("Thailand", "Bangkok"), ("Cuba", "Havana"), ("Finland", "Helsinki")]
WORDS = ["garden", "lantern", "river", "pencil", "harbor", "meadow", "violin", "pocket", "thunder", "biscuit",
         "window", "planet", "candle", "marble", "saddle", "jacket", "orchard", "tunnel", "falcon", "blanket"]
ANIMAL_SOUNDS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot"),
                 ("sheep", "baa"), ("lion", "roar"), ("snake", "hiss"), ("horse", "neigh"), ("bee", "buzz")]


def instruction_rows(rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    for _ in range(50):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        rows.append({"instruction": f"What is {a} plus {b}?", "input": "",
                     "output": FMT.format(a=a + b, w=f"{a} + {b} = {a + b}.")})
    for _ in range(25):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        rows.append({"instruction": "Multiply the two numbers.", "input": f"{a} and {b}",
                     "output": FMT.format(a=a * b, w=f"{a} times {b} is {a * b}.")})
    for w, o in OPPOSITES:
        rows.append({"instruction": f"Give the opposite of the word '{w}'.", "input": "",
                     "output": FMT.format(a=o, w=f"'{o}' means the reverse of '{w}'.")})
    for country, city in CAPITALS:
        rows.append({"instruction": f"What is the capital of {country}?", "input": "",
                     "output": FMT.format(a=city, w=f"{city} is the seat of government of {country}.")})
    for w in WORDS:
        rows.append({"instruction": "Write the word in capital letters.", "input": w,
                     "output": FMT.format(a=w.upper(), w="every letter was capitalised.")})
        rows.append({"instruction": f"How many letters are in the word '{w}'?", "input": "",
                     "output": FMT.format(a=len(w), w=f"'{w}' is spelled with {len(w)} letters.")})
    for animal, sound in ANIMAL_SOUNDS:
        rows.append({"instruction": f"What sound does a {animal} make?", "input": "",
                     "output": FMT.format(a=sound, w=f"a {animal} is usually said to {sound}.")})
    for _ in range(17):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        if a == b:
            b += 1
        big = max(a, b)
        rows.append({"instruction": "Which number is larger?", "input": f"{a} or {b}",
                     "output": FMT.format(a=big, w=f"{big} is greater than {min(a, b)}.")})
    rng.shuffle(rows)
    return rows


def chat_rows(rng: random.Random) -> list[dict]:
    system = "You are a concise assistant. Always reply as 'ANSWER: ... | WHY: ...'."
    rows = []
    for i in range(40):
        c1, k1 = CAPITALS[i % len(CAPITALS)]
        w, o = OPPOSITES[i % len(OPPOSITES)]
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        msgs = [{"role": "system", "content": system},
                {"role": "user", "content": f"What is the capital of {c1}?"},
                {"role": "assistant", "content": FMT.format(a=k1, w=f"{k1} is the capital of {c1}.")},
                {"role": "user", "content": f"And what is {a} plus {b}?"},
                {"role": "assistant", "content": FMT.format(a=a + b, w=f"{a} + {b} = {a + b}.")}]
        if i % 2:
            msgs += [{"role": "user", "content": f"Now the opposite of '{w}'."},
                     {"role": "assistant", "content": FMT.format(a=o, w=f"'{o}' reverses '{w}'.")}]
        rows.append({"messages": msgs})
    return rows


def preference_rows(rng: random.Random) -> list[dict]:
    rows = []
    for r in instruction_rows(random.Random(7))[:80]:
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        answer = r["output"].split(" | ")[0].removeprefix("ANSWER: ")
        rejected = rng.choice([f"The answer is {answer}.", f"{answer}", f"Sure! It's {answer}, I think."])
        rows.append({"prompt": prompt, "chosen": r["output"], "rejected": rejected})
    return rows


def kto_rows(rng: random.Random) -> list[dict]:
    rows = []
    for p in preference_rows(random.Random(11))[:60]:
        good = rng.random() < 0.5
        rows.append({"prompt": p["prompt"], "completion": p["chosen"] if good else p["rejected"], "label": good})
    return rows


CORPUS = """The lighthouse keeper wrote the weather in a small green book every morning.
Wind from the west meant the fishing boats would come home before noon.
Fog meant the horn, and the horn meant nobody in the village slept past five.
In spring the gulls returned and argued over the rocks below the tower.
The keeper counted them the way other people count coins, slowly and twice.
A ledger of gulls is not useful to anyone, she said, but it keeps the eyes honest.
By summer the tourists arrived with questions about ghosts and shipwrecks.
She told them about the tide tables instead, which frightened them more.
Autumn brought the long storms and the supply boat that never came on time.
The lamp needed oil, the stairs needed sweeping, and the book needed its line.
Winter was quiet; the sea turned the colour of slate and the nights stretched out.
She read old almanacs by the lamp and corrected their mistakes in pencil.
When the automatic light was installed, she kept writing the weather anyway.
Someone has to notice the wind, she said, even if the machine does the shining.
"""


def main() -> None:
    rng = random.Random(1234)
    out = {
        "instructions.jsonl": instruction_rows(rng),
        "chat.jsonl": chat_rows(rng),
        "preference.jsonl": preference_rows(rng),
        "kto.jsonl": kto_rows(rng),
    }
    for name, rows in out.items():
        with open(HERE / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} rows")
    (HERE / "corpus.txt").write_text(CORPUS * 4, encoding="utf-8")


if __name__ == "__main__":
    main()

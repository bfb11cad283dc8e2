"""Prompt datasets: the embedded addition task, JSONL files and ``datasets`` directories; a resumable sampler."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from alignmesh.services.common.errors import ConfigError


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    # A demonstration for the warm start: the model's turns and the environment's answers, alternating, starting
    # and ending with a model turn (each model turn is followed by end-of-turn). Empty: the answer alone.
    trace: tuple[str, ...] = ()


@dataclass
class Splits:
    train: list[Example]
    test: list[Example]
    dev: list[Example]


def addition_splits(seed: int = 0, max_operand: int = 99, test_size: int = 500, dev_size: int = 200) -> Splits:
    """All ``a+b=`` pairs with a, b in [0, max_operand], shuffled by ``seed`` and split test / dev / train."""
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(pairs)
    examples = [Example(f"{a}+{b}=", str(a + b)) for a, b in pairs]
    if test_size + dev_size >= len(examples):
        raise ConfigError(f"dataset: test_size + dev_size must be < {len(examples)} examples")
    return Splits(train=examples[test_size + dev_size:], test=examples[:test_size],
                  dev=examples[test_size:test_size + dev_size])


def calculator_splits(seed: int = 0, tool_traces: float = 0.25, test_size: int = 500,
                      dev_size: int = 200) -> Splits:
    """All ``a*b=`` with a, b in [10, 99], shuffled by ``seed`` and split test / dev / train. A share
    ``tool_traces`` of the training examples carries the calculator demonstration ``(a*b)`` → ``=p `` → ``p``
    (used by a warm start; the others teach a direct answer, which the model cannot compute reliably)."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    examples = [Example(f"{a}*{b}=", str(a * b)) for a, b in pairs]
    if test_size + dev_size >= len(examples):
        raise ConfigError(f"dataset: test_size + dev_size must be < {len(examples)} examples")
    train = [Example(e.prompt, e.answer, (f"({e.prompt[:-1]})", f"={e.answer} ", e.answer))
             if rng.random() < tool_traces else e for e in examples[test_size + dev_size:]]
    return Splits(train=train, test=examples[:test_size], dev=examples[test_size:test_size + dev_size])


def _read_jsonl(path: str | Path, field: str, keys: tuple[str, ...], make) -> list:
    """Rows of a JSONL file as ``make(*values)``; errors name the field, the line and the keys needed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{field}: file {p} not found")
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(make(*(str(row[k]) for k in keys)))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            need = ", ".join(f"'{k}'" for k in keys[:-1]) + f" and '{keys[-1]}'"
            raise ConfigError(f"{field}: {p} line {n}: need a JSON object with {need} ({exc})") from None
    if not out:
        raise ConfigError(f"{field}: {p} holds no rows")
    return out


def load_jsonl(path: str | Path, field: str = "dataset.train", keys: tuple[str, str] = ("prompt", "answer")
               ) -> list[Example]:
    return _read_jsonl(path, field, keys, Example)


def load_parquet(path: str | Path, field: str = "dataset.train", keys: tuple[str, str] = ("prompt", "answer")
                 ) -> list[Example]:
    """A Parquet file's rows (the ``keys`` columns); pyarrow comes with the ``datasets`` extra."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{field}: reading Parquet needs `pip install alignmesh[datasets]`") from None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{field}: file {p} not found")
    table = pq.read_table(p)
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise ConfigError(f"{field}: {p} lacks column {missing[0]!r} (has {table.column_names}); set "
                          f"dataset.prompt_key / dataset.answer_key")
    rows = table.select(list(keys)).to_pylist()
    if not rows:
        raise ConfigError(f"{field}: {p} holds no rows")
    return [Example(str(r[keys[0]]), str(r[keys[1]])) for r in rows]


def load_hf_disk(path: str | Path, split: str, field: str = "dataset.path",
                 keys: tuple[str, str] = ("prompt", "answer")) -> list[Example]:
    """A directory written by ``datasets``' ``save_to_disk`` (a DatasetDict or a Dataset)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{field}: reading a datasets directory needs `pip install alignmesh[datasets]`") from None
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{field}: directory {p} not found")
    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ConfigError(f"{field}: {p} has splits {list(ds)}, not {split!r}")
        ds = ds[split]
    for col in keys:
        if col not in ds.column_names:
            raise ConfigError(f"{field}: {p} lacks column {col!r} (has {ds.column_names}); set "
                              f"dataset.prompt_key / dataset.answer_key")
    return [Example(str(r[keys[0]]), str(r[keys[1]])) for r in ds]


class PromptSampler:
    """Epoch-shuffled, seeded draws without replacement; ``cursor`` makes the order resumable exactly."""

    def __init__(self, examples: list[Example], seed: int, cursor: int = 0):
        if not examples:
            raise ConfigError("dataset: the training split is empty")
        self.examples, self.seed, self.cursor = examples, seed, cursor

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Example]:
        out = []
        size = len(self.examples)
        while len(out) < n:
            epoch, pos = divmod(self.cursor, size)
            order = self._order(epoch)
            chunk = order[pos:pos + (n - len(out))]
            out.extend(self.examples[i] for i in chunk)
            self.cursor += len(chunk)
        return out


@dataclass(frozen=True)
class Preference:
    prompt: str
    chosen: str
    rejected: str


def load_preferences_jsonl(path: str | Path, field: str = "params.pairs") -> list[Preference]:
    return _read_jsonl(path, field, ("prompt", "chosen", "rejected"), Preference)


def answer_preferences(examples: list[Example], seed: int, negatives: str = "near") -> list[Preference]:
    """Synthetic pairs for a task with known numeric answers: the answer is chosen; rejected is a near miss
    (answer +-1 or +-10, ``near``) or a uniformly random other number up to twice the answer range (``random``)."""
    rng = random.Random(seed)
    top = max((int(e.answer) for e in examples if e.answer.isdigit()), default=9)
    out = []
    for e in examples:
        wrong = e.answer
        while wrong == e.answer or wrong.startswith("-"):
            if not e.answer.isdigit():
                wrong = e.answer + "0"
            elif negatives == "random":
                wrong = str(rng.randint(0, top))
            else:
                wrong = str(int(e.answer) + rng.choice((-10, -1, 1, 10)))
        out.append(Preference(e.prompt, e.answer, wrong))
    return out

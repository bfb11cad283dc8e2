import json

import pytest

from alignmesh.coordinator.data import PromptSampler, addition_splits, load_jsonl
from alignmesh.services.common.errors import ConfigError


def test_addition_splits_are_disjoint_deterministic_and_correct():
    s = addition_splits(seed=0)
    assert (len(s.train), len(s.test), len(s.dev)) == (9300, 500, 200)
    prompts = [e.prompt for e in s.train + s.test + s.dev]
    assert len(set(prompts)) == 10_000
    assert addition_splits(seed=0).test == s.test and addition_splits(seed=1).test != s.test
    for e in s.test[:50]:
        a, b = e.prompt[:-1].split("+")
        assert int(e.answer) == int(a) + int(b)


def test_sampler_is_seeded_covers_an_epoch_and_resumes_exactly():
    data = addition_splits(seed=0).dev
    a = PromptSampler(data, seed=3)
    first = a.take(150) + a.take(150)  # crosses the epoch boundary at 200
    assert len({e.prompt for e in first[:200]}) == 200
    b = PromptSampler(data, seed=3, cursor=150)
    assert b.take(150) == first[150:]
    assert PromptSampler(data, seed=4).take(10) != first[:10]


def test_jsonl_loading_and_errors_name_the_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"dataset.train: .*line 3: need a JSON object with 'prompt' and 'answer'"):
        load_jsonl(p)
    p.write_text(json.dumps({"prompt": "1+1=", "answer": 2}) + "\n")
    assert load_jsonl(p)[0].answer == "2"
    with pytest.raises(ConfigError, match="dataset.test: file .* not found"):
        load_jsonl(tmp_path / "missing.jsonl", "dataset.test")


def test_datasets_directory_loading_and_errors_name_the_field(tmp_path):
    datasets = pytest.importorskip("datasets")
    from alignmesh.coordinator.data import load_hf_disk

    rows = {"prompt": ["1+2=", "3+4="], "answer": ["3", "7"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict({"prompt": ["5+5="], "answer": ["10"]})}
                         ).save_to_disk(str(tmp_path / "dd"))
    assert [(e.prompt, e.answer) for e in load_hf_disk(tmp_path / "dd", "train")] == [("1+2=", "3"), ("3+4=", "7")]
    assert [e.answer for e in load_hf_disk(tmp_path / "dd", "test")] == ["10"]
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))  # a plain Dataset: any split name
    assert len(load_hf_disk(tmp_path / "single", "train")) == 2
    with pytest.raises(ConfigError, match=r"dataset.path: .* has splits \['train', 'test'\], not 'dev'"):
        load_hf_disk(tmp_path / "dd", "dev")
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match=r"lacks column 'prompt'"):
        load_hf_disk(tmp_path / "bad", "train")
    with pytest.raises(ConfigError, match=r"dataset.path: directory .* not found"):
        load_hf_disk(tmp_path / "missing", "train")


def test_gsm8k_style_columns_from_jsonl_and_parquet(tmp_path):
    import json
    from pathlib import Path

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from alignmesh.coordinator.data import load_jsonl, load_parquet

    sample = Path(__file__).resolve().parents[3] / "examples" / "data" / "gsm8k_sample.jsonl"
    rows = load_jsonl(sample, keys=("question", "answer"))
    assert len(rows) == 6 and rows[0].answer.endswith("#### 12")
    table = pa.table({"question": [r.prompt for r in rows], "answer": [r.answer for r in rows]})
    pq.write_table(table, tmp_path / "train.parquet")
    assert load_parquet(tmp_path / "train.parquet", keys=("question", "answer")) == rows
    with pytest.raises(ConfigError, match="lacks column 'prompt'.*set dataset.prompt_key"):
        load_parquet(tmp_path / "train.parquet")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ConfigError, match="line 1: need a JSON object with 'question' and 'answer'"):
        load_jsonl(tmp_path / "bad.jsonl", keys=("question", "answer"))

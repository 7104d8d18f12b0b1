"""Zero-shot through lm-eval, offline, on the in-memory model (tiny task files made here)."""

import json

import pytest
import torch
from conftest import tiny_model

from harness.evaluations.zeroshot import evaluate_zeroshot, task_config


@pytest.fixture
def task_dir(tmp_path):
    root = tmp_path / "data"
    (root / "zeroshot").mkdir(parents=True)
    with open(root / "zeroshot" / "piqa.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"goal": f"the model prunes the {i} block", "sol1": "the weight",
                                "sol2": "the token speed", "label": i % 2}) + "\n")
    with open(root / "zeroshot" / "arc_easy.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"id": str(i), "question": f"which layer has rank {i}?",
                                "choices": {"text": ["the head", "the value", "the cache"], "label": ["A", "B", "C"]},
                                "answerKey": "B"}) + "\n")
    return root


def test_local_task_config_points_lm_eval_at_the_file(task_dir):
    config = task_config("piqa", task_dir)
    assert config["dataset_path"] == "json"
    assert str(task_dir / "zeroshot" / "piqa.jsonl") in json.dumps(config["dataset_kwargs"])
    assert config["doc_to_text"].startswith("Question:")  # lm-eval's own prompt, untouched
    assert task_config("winogrande", task_dir) == "winogrande"  # no local file: the hub


def test_zeroshot_scores_the_in_memory_model(task_dir, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = tiny_model("llama3")
    metrics, details = evaluate_zeroshot(model, tokenizer, ["piqa", "arc_easy"], torch.device("cpu"),
                                         data_dir=task_dir)
    for name in ("acc:piqa", "acc_norm:piqa", "acc:arc_easy", "acc_norm:arc_easy", "acc:avg"):
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["acc:avg"] == pytest.approx((metrics["acc:piqa"] + metrics["acc:arc_easy"]) / 2)
    # the papers' figure: acc_norm where lm-eval defines it (both tasks do), averaged
    assert metrics["zeroshot:piqa"] == metrics["acc_norm:piqa"]
    assert metrics["zeroshot:avg"] == pytest.approx((metrics["acc_norm:piqa"] + metrics["acc_norm:arc_easy"]) / 2)
    assert details["lm_eval"] and details["tasks"]["piqa"].endswith("piqa.jsonl")
    # the in-memory model is what gets scored: breaking it changes the answer pattern
    limited, details = evaluate_zeroshot(model, tokenizer, ["piqa"], torch.device("cpu"), limit=2, data_dir=task_dir)
    assert details["limit"] == 2 and limited["acc:piqa"] in (0.0, 0.5, 1.0)


def test_zeroshot_columns_through_the_cli(tiny_model_dir, data_dir, task_dir, tmp_path):
    import shutil

    from harness.report.leaderboard import write_leaderboards
    from harness.run import RunConfig, run

    shutil.copytree(task_dir / "zeroshot", data_dir / "zeroshot", dirs_exist_ok=True)
    records = run(RunConfig(model=str(tiny_model_dir), methods=["dense", "magnitude"], ratios=[0.3],
                            evals=["ppl:wikitext2", "zeroshot:piqa,arc_easy"], zeroshot_limit=4,
                            eval_windows=1, eval_length=32, out=tmp_path / "res", data_dir=str(data_dir),
                            cache_dir=tmp_path / "cache"), log=lambda *a: None)
    assert all(r.status == "ok" for r in records), [r.error for r in records]
    assert {"acc:piqa", "acc_norm:arc_easy", "acc:avg", "ppl:wikitext2"} <= set(records[1].metrics)
    assert records[1].eval["zeroshot"]["limit"] == 4 and records[1].details["zeroshot"]["lm_eval"]
    md = next(p for p in write_leaderboards(tmp_path / "res", tmp_path / "lb") if p.suffix == ".md").read_text()
    assert "acc:avg" in md and "first 4 examples each (subsampled)" in md
    # the papers' table: perplexity and the zero-shot figures, a Δ column only for the average
    paths = write_leaderboards(tmp_path / "res", tmp_path / "papers", metrics=["ppl:*", "zeroshot:*"],
                               deltas=["ppl:*", "zeroshot:avg"], plots=False)
    header = next(p for p in paths if p.suffix == ".csv").read_text().splitlines()[0].split(",")
    metric_columns = [c for c in header if ":" in c]
    assert metric_columns == ["ppl:wikitext2", "Δ ppl:wikitext2", "zeroshot:piqa", "zeroshot:arc_easy",
                              "zeroshot:avg", "Δ zeroshot:avg"]


def test_out_of_memory_halves_the_batch_until_it_fits(monkeypatch):
    """Cells sharing a GPU: lm-eval's first (longest) batch may not fit; the same scores come
    from a smaller batch, and the record says which batch ran. Below 1 the error stands."""
    from types import SimpleNamespace

    from harness.evaluations import zeroshot

    tried = []

    def fake_evaluate(model, tokenizer, tasks, device, limit, batch_size, data_dir):
        tried.append(batch_size)
        if batch_size > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.56 GiB")
        return {"zeroshot:piqa": 0.5}, {"lm_eval": "x"}

    monkeypatch.setattr(zeroshot, "evaluate_zeroshot", fake_evaluate)
    context = SimpleNamespace(config=SimpleNamespace(batch_size=8, zeroshot_limit=None, data_dir=None),
                              device=torch.device("cuda"), tokenizer=lambda: None)
    prepared = SimpleNamespace(state=["piqa"])
    result = zeroshot.ZeroShot().evaluate(prepared, SimpleNamespace(model=None), None, context)
    assert tried == [64, 32, 16]
    assert result.details["batch_size"] == 16 and result.metrics == {"zeroshot:piqa": 0.5}

    def always_oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("no memory at all")

    monkeypatch.setattr(zeroshot, "evaluate_zeroshot", always_oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        zeroshot.ZeroShot().evaluate(prepared, SimpleNamespace(model=None), None, context)

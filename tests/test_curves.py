"""Learning curves that draw another metric than the one that selects (pretraining: perplexity vs accuracy)."""
from nlpkit.engine.curves import curves_from_log

RECORDS = [
    {"step": 10, "loss/mlm": 5.0, "eval": {"mlm": {"accuracy": 20.0, "perplexity": 90.0}}},
    {"step": 20, "loss/mlm": 4.0, "eval": {"mlm": {"accuracy": 30.0, "perplexity": 40.0}}},
    {"step": 30, "loss/mlm": 3.9, "eval": {"mlm": {"accuracy": 29.0, "perplexity": 35.0}}},
]


def test_plotted_metric_and_selected_step():
    curve = curves_from_log(RECORDS, {"mlm": "accuracy"}, {"mlm": "perplexity"})["mlm"]
    assert curve.metric == "perplexity" and curve.score == [90.0, 40.0, 35.0]
    assert curve.best_step == 20  # the step the accuracy selected, not the lowest perplexity's


def test_default_plots_the_main_score():
    curve = curves_from_log(RECORDS, {"mlm": "accuracy"})["mlm"]
    assert curve.metric == "accuracy" and curve.score == [20.0, 30.0, 29.0] and curve.best_step == 20


def test_png_is_written(tmp_path):
    import json

    import pytest

    pytest.importorskip("matplotlib")
    from nlpkit.engine.curves import plot_run

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    written = plot_run(log, tmp_path / "curves", {"mlm": "accuracy"}, {"mlm": "perplexity"})
    assert written["mlm"].stat().st_size > 1000

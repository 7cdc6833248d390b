"""eval-infill scoring on hand-made tasks, with plain callables as predictors."""

from __future__ import annotations

import argparse
import gzip
import json

import pytest

from engine.errors import ConfigError
from engine.evaluation import commands
from engine.evaluation.eval_infill import (
    MULTI_LINE,
    SINGLE_LINE,
    InfillTask,
    Limits,
    empty_middle,
    evaluate,
    exact_match,
    load_tasks,
    normalize,
    parses,
    previous_line,
    task_kind,
)

ADD = InfillTask(
    task_id="Hand/SingleLine/add",
    prompt="def add(a, b):\n",
    suffix="\n\nassert add(1, 1) == 2\n",
    canonical_solution="    return a + b\n",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    entry_point="add",
    kind=SINGLE_LINE,
)


def _fixed(middle: str):
    return lambda prefix, suffix: middle


def _score(task: InfillTask, middle: str, **kwargs):
    (result,) = evaluate([task], _fixed(middle), **kwargs).results
    return result


def test_a_correct_middle_scores_one():
    result = _score(ADD, "    return a + b\n")
    assert result.exact_match and result.parses and result.passed is True


def test_a_wrong_middle_scores_zero():
    result = _score(ADD, "    return a - b\n")
    assert not result.exact_match and result.parses and result.passed is False


def test_a_middle_that_fails_the_tests_scores_zero_on_pass_at_1_even_if_it_looks_close():
    result = _score(ADD, "    return a + b + 0.5\n")
    assert not result.exact_match and result.passed is False


def test_a_different_but_correct_middle_passes_without_matching_exactly():
    result = _score(ADD, "    return b + a\n")
    assert not result.exact_match and result.passed is True


def test_a_looping_middle_is_killed_and_fails():
    # The loop never ends on its own: an answer at all means the sandbox killed it.
    result = _score(ADD, "    while True:\n        pass\n", limits=Limits(timeout=1.0))
    assert result.passed is False


def test_a_middle_that_breaks_the_syntax_does_not_parse():
    result = _score(ADD, "    return (a +\n")
    assert not result.parses and result.passed is False


def test_exact_match_ignores_trailing_whitespace_and_edge_blank_lines_only():
    assert normalize("  x = 1   \r\n\n") == "  x = 1"
    assert exact_match("    return a + b", "    return a + b\n")
    assert exact_match("\n    return a + b  \n\n", "    return a + b\n")
    assert not exact_match("return a + b\n", "    return a + b\n")  # indentation counts
    assert not exact_match("    return a+b\n", "    return a + b\n")
    assert not exact_match("", "    return a + b\n")


def test_tasks_without_tests_get_no_pass_at_1():
    task = InfillTask("t", "x = 1\n", "z = 3\n", "y = 2\n", kind=SINGLE_LINE)
    result = _score(task, "y = 2\n")
    assert result.passed is None and result.exact_match
    (summary,) = evaluate([task], _fixed("y = 2\n")).summary()
    assert summary.pass_at_1 is None and summary.exact_match == 1.0 and summary.parse_rate == 1.0


def test_summary_groups_by_kind_and_counts_shares():
    tasks = [
        InfillTask("a", "x = 1\n", "", "y = 2\n", kind=SINGLE_LINE),
        InfillTask("b", "x = 1\n", "", "z = 3\n", kind=SINGLE_LINE),
        InfillTask("c", "if x:\n", "", "    y = 2\n    z = 3\n", kind=MULTI_LINE),
    ]
    answers = {"x = 1\n": "y = 2\n"}
    report = evaluate(tasks, lambda p, s: answers.get(p, ""))
    by_kind = {s.kind: s for s in report.summary()}
    assert by_kind[SINGLE_LINE].count == 2 and by_kind[SINGLE_LINE].exact_match == 0.5
    assert by_kind[MULTI_LINE].exact_match == 0.0 and by_kind[MULTI_LINE].parse_rate == 0.0
    assert by_kind["all"].count == 3


def test_a_predictor_that_raises_scores_zero_and_is_reported():
    def broken(prefix, suffix):
        raise RuntimeError("no model")

    (result,) = evaluate([ADD], broken, run_tests=False).results
    assert result.prediction == "" and not result.exact_match and "no model" in result.error


def test_baselines():
    assert empty_middle("a\n", "b") == ""
    assert previous_line("x = 1\n\n", "") == "x = 1\n"
    assert previous_line("def f():\n    x = 1\n    ", "\n") == "x = 1"
    assert previous_line("    self.a = a\n    self.", "") == "a = a"
    assert previous_line("", "") == ""


def test_parses_uses_the_python_grammar():
    assert parses("def f():\n    return 1\n")
    assert not parses("def f(:\n")
    assert not parses("x = '\x00'")


def test_kind_comes_from_the_field_or_openai_task_ids():
    assert task_kind({"task_id": "SingleLineInfilling/HumanEval/0/L0"}) == SINGLE_LINE
    assert task_kind({"task_id": "MultiLineInfilling/HumanEval/0/L0_L2"}) == MULTI_LINE
    assert task_kind({"task_id": "RandomSpanInfilling/HumanEval/0/0"}) == "random-span"
    assert task_kind({"task_id": "x", "kind": "multi-line"}) == MULTI_LINE


def _write_jsonl(path, records, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps(r) + "\n")


def _record(task: InfillTask) -> dict:
    return {
        "task_id": task.task_id,
        "prompt": task.prompt,
        "suffix": task.suffix,
        "canonical_solution": task.canonical_solution,
        "test": task.test,
        "entry_point": task.entry_point,
    }


@pytest.mark.parametrize("gz", [False, True])
def test_load_tasks_reads_jsonl_and_gzip(tmp_path, gz):
    path = tmp_path / ("tasks.jsonl.gz" if gz else "tasks.jsonl")
    _write_jsonl(path, [_record(ADD)] * 3, gz=gz)
    tasks = load_tasks(path)
    assert len(tasks) == 3 and tasks[0].entry_point == "add" and tasks[0].test == ADD.test
    assert len(load_tasks(path, limit=2)) == 2


def test_load_tasks_names_a_missing_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [{"task_id": "x", "prompt": ""}])
    with pytest.raises(ValueError, match="suffix"):
        load_tasks(path)


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_scores_the_oracle_and_the_baselines(tmp_path, capsys):
    data = tmp_path / "tasks.jsonl"
    _write_jsonl(data, [_record(ADD)])
    out = tmp_path / "report.json"
    code = _run_cli(
        ["eval-infill", "--data", str(data), "--predictor", "oracle", "--baselines", "--out", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    summaries = {r["predictor"]: r["summary"][0] for r in report["reports"]}
    assert summaries["oracle"]["exact_match"] == 1.0 and summaries["oracle"]["pass_at_1"] == 1.0
    assert summaries["empty"]["exact_match"] == 0.0 and summaries["empty"]["pass_at_1"] == 0.0
    assert summaries["previous-line"]["exact_match"] == 0.0
    table = capsys.readouterr().out
    assert "| oracle | single-line | 1 | 100.0% |" in table


def test_cli_runs_the_engine_as_predictor(tiny_checkpoint, tmp_path):
    data = tmp_path / "tasks.jsonl"
    _write_jsonl(data, [_record(ADD)] * 2)
    out = tmp_path / "report.json"
    argv = [
        "eval-infill",
        "--data",
        str(data),
        "--model",
        str(tiny_checkpoint),
        "--steps",
        "2",
        "--max-tokens",
        "8",
    ]
    assert _run_cli([*argv, "--no-tests", "--out", str(out)]) == 0
    (report,) = json.loads(out.read_text())["reports"]
    assert report["predictor"] == "model" and len(report["results"]) == 2
    for result in report["results"]:
        assert result["error"] is None and result["stats"]["canvases"] == 1
        assert result["stats"]["steps_per_canvas"][0] <= 2 and result["latency_s"] > 0


def test_cli_compares_infill_strategies_side_by_side_at_one_step_budget(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "tasks.jsonl"
    _write_jsonl(data, [_record(ADD)] * 2)
    out = tmp_path / "report.json"
    argv = ["eval-infill", "--data", str(data), "--model", str(tiny_checkpoint), "--steps", "2", "--no-tests"]
    for strategy in ("prompt", "pinned:2", "length:2", "pinned:2+length:2"):
        argv += ["--strategy", strategy]
    assert _run_cli([*argv, "--out", str(out)]) == 0
    reports = json.loads(out.read_text())["reports"]
    names = [r["predictor"] for r in reports]
    assert names == ["model[prompt]", "model[pinned:2]", "model[length:2]", "model[pinned:2+length:2]"]
    for report in reports:
        assert len(report["results"]) == 2
        for result in report["results"]:
            assert result["error"] is None and result["stats"]["steps_per_canvas"][0] <= 2
    table = capsys.readouterr().out
    assert "p95 ms" in table and all(f"| {name} |" in table for name in names)


def test_cli_refuses_an_unknown_strategy_before_running_tasks(tiny_checkpoint, tmp_path):
    data = tmp_path / "tasks.jsonl"
    _write_jsonl(data, [_record(ADD)])
    argv = ["eval-infill", "--data", str(data), "--model", str(tiny_checkpoint), "--strategy", "lenght:2"]
    with pytest.raises(ConfigError):
        _run_cli(argv)

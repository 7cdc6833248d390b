"""make-infill-set: statement-boundary holes from held-out files, in the HumanEval-Infilling schema."""

from __future__ import annotations

import argparse
import json
import textwrap

from engine.evaluation import commands
from engine.evaluation.eval_infill import MULTI_LINE, SINGLE_LINE, load_tasks, parses
from engine.evaluation.make_infill_set import make_tasks

SOURCE = textwrap.dedent(
    '''\
    import os
    import sys


    def first(items, default=None):
        """The first item."""
        for item in items:
            return item
        return default


    class Stack:
        def __init__(self):
            self.items = []

        def push(self, item):
            self.items.append(item)
            return len(self.items)

        def pop(self):
            if not self.items:
                raise IndexError("empty")
            item = self.items.pop()
            return item


    def main():
        stack = Stack()
        stack.push(first(sys.argv))
        print(stack.pop(), os.sep)
        return 0
    '''
)


def _files(n=3):
    return [(f"pkg/m{i}.py", SOURCE.replace("Stack", f"Stack{i}")) for i in range(n)]


def test_tasks_cut_the_file_at_statement_boundaries():
    tasks = make_tasks(_files(), single=100, multi=100)
    kinds = {t["kind"] for t in tasks}
    assert kinds == {SINGLE_LINE, MULTI_LINE}
    texts = dict(_files())
    for task in tasks:
        whole = task["prompt"] + task["canonical_solution"] + task["suffix"]
        assert whole in texts[task["path"]] and parses(whole)
        assert task["prompt"] == "" or task["prompt"].endswith("\n")
        lines = task["canonical_solution"].count("\n")
        assert task["canonical_solution"].endswith("\n")
        assert lines == 1 if task["kind"] == SINGLE_LINE else 2 <= lines <= 8
        assert set(task) >= {"task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point"}
        assert task["canonical_solution"].strip() not in ("return", "pass", "else:", "try:")


def test_tasks_are_deterministic_and_capped():
    a = make_tasks(_files(), single=5, multi=3, seed=1)
    assert a == make_tasks(_files(), single=5, multi=3, seed=1)
    assert sum(t["kind"] == SINGLE_LINE for t in a) == 5 and sum(t["kind"] == MULTI_LINE for t in a) == 3
    assert a != make_tasks(_files(), single=5, multi=3, seed=2)


def test_windows_keep_whole_top_level_statements():
    tasks = make_tasks(_files(1), single=100, multi=0, per_file_single=100, lines_before=1, lines_after=1)
    push = next(t for t in tasks if t["canonical_solution"] == "        self.items.append(item)\n")
    assert push["prompt"].startswith("class Stack0:")
    assert push["suffix"].rstrip().endswith("return item")


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_builds_a_set_from_held_out_files_only(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"mod{i}.py").write_text(SOURCE.replace("Stack", f"Stack{i}"), encoding="utf-8")
    out = tmp_path / "set.jsonl"
    assert _run_cli(["make-infill-set", str(src), "--out", str(out), "--single", "40", "--multi", "20"]) == 0
    from engine.training.corpus import HELDOUT, split_of

    tasks = [json.loads(line) for line in out.read_text().splitlines()]
    assert tasks and all(split_of(t["path"]) == HELDOUT for t in tasks)
    assert len(load_tasks(out)) == len(tasks)
    out_all = tmp_path / "all.jsonl.gz"
    assert (
        _run_cli(["make-infill-set", str(src), "--out", str(out_all), "--split", "all", "--single", "40"])
        == 0
    )
    assert len({t.task_id.split("/")[1] for t in load_tasks(out_all)}) > len({t["path"] for t in tasks})

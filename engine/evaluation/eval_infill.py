"""Infilling evaluation in the HumanEval-Infilling format (`dgemma eval-infill`).

A task is one JSON object per line with `task_id`, `prompt` (the text before the hole), `suffix`,
`canonical_solution` (the middle), `test` and `entry_point`; `.jsonl.gz` files are read as gzip.
An optional `kind` field ("single-line", "multi-line", "random-span") groups the results;
without it the kind is read from the task id as in OpenAI's files (`SingleLineInfilling/...`).

A predictor is any callable `infill(prefix, suffix) -> middle`. The baselines are such callables
(`empty_middle`, `previous_line`, and `oracle`, which returns the canonical middle and checks the
harness itself); `ModelPredictor` wraps the engine.

Scores per task:

- **exact match**: `normalize(prediction) == normalize(canonical_solution)`, where `normalize`
  turns "\\r\\n" into "\\n", strips trailing whitespace from every line and drops empty lines at
  the start and the end. Indentation and everything inside the text must match.
- **parses**: the completed file `prompt + prediction + suffix` parses with `ast.parse` (this
  interpreter's grammar).
- **pass@1**: only for tasks with a non-empty `test`: `prompt + prediction + suffix`, then `test`,
  then `check(entry_point)` (OpenAI's layout), run once in the sandbox (engine/evaluation/sandbox.py); it passes
  when the program exits with status 0 before the timeout.
- **latency**: wall-clock seconds of the predictor call.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.evaluation.sandbox import Limits, isolation, run_python

Predictor = Callable[[str, str], str]
SINGLE_LINE, MULTI_LINE, RANDOM_SPAN, OTHER = "single-line", "multi-line", "random-span", "other"


@dataclass
class InfillTask:
    task_id: str
    prompt: str
    suffix: str
    canonical_solution: str
    test: str = ""
    entry_point: str = ""
    kind: str = OTHER


def task_kind(record: dict[str, Any]) -> str:
    if record.get("kind"):
        return str(record["kind"])
    task_id = str(record.get("task_id", "")).lower()
    for marker, kind in (("singleline", SINGLE_LINE), ("multiline", MULTI_LINE), ("randomspan", RANDOM_SPAN)):
        if marker in task_id.replace("-", "").replace("_", ""):
            return kind
    return OTHER


def load_tasks(path: str | Path, limit: int | None = None) -> list[InfillTask]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    tasks: list[InfillTask] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [k for k in ("task_id", "prompt", "suffix", "canonical_solution") if k not in record]
            if missing:
                raise ValueError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
            tasks.append(
                InfillTask(
                    task_id=str(record["task_id"]),
                    prompt=record["prompt"],
                    suffix=record["suffix"],
                    canonical_solution=record["canonical_solution"],
                    test=record.get("test") or "",
                    entry_point=record.get("entry_point") or "",
                    kind=task_kind(record),
                )
            )
            if limit is not None and len(tasks) >= limit:
                break
    return tasks


def write_tasks(tasks: Iterable[dict[str, Any]], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    count = 0
    with opener(path, "wt", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(json.dumps(task, ensure_ascii=False) + "\n")
            count += 1
    return count


def normalize(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def parses(source: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like are warnings
            ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def test_program(task: InfillTask, middle: str) -> str:
    """The program pass@1 runs: the layout of OpenAI's human-eval-infilling harness."""
    return f"{task.prompt}{middle}{task.suffix}\n{task.test}\ncheck({task.entry_point})\n"


# ---- baselines -------------------------------------------------------------------------------


def empty_middle(prefix: str, suffix: str) -> str:
    """Baseline: fill nothing."""
    return ""


def previous_line(prefix: str, suffix: str) -> str:
    """Baseline: repeat the last non-blank line before the cursor's line.

    At the start of a line the whole line is repeated with its newline; after some text on the
    cursor's line (indentation, say), the rest of the previous line after that text, or the
    previous line without its indentation when it does not start with that text.
    """
    lines = prefix.split("\n")
    current = lines[-1]
    previous = next((line for line in reversed(lines[:-1]) if line.strip()), None)
    if previous is None:
        return ""
    if current == "":
        return previous + "\n"
    if previous.startswith(current):
        return previous[len(current) :]
    return previous.lstrip()


BASELINES: dict[str, Predictor] = {"empty": empty_middle, "previous-line": previous_line}


# ---- the harness -----------------------------------------------------------------------------


@dataclass
class TaskResult:
    task_id: str
    kind: str
    prediction: str
    exact_match: bool
    parses: bool
    passed: bool | None  # None: the task has no test, or tests were not run
    latency_s: float
    stats: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class KindSummary:
    kind: str
    count: int
    exact_match: float
    parse_rate: float
    pass_at_1: float | None
    tested: int
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float


@dataclass
class EvalReport:
    predictor: str
    results: list[TaskResult] = field(default_factory=list)

    def summary(self) -> list[KindSummary]:
        kinds = sorted({r.kind for r in self.results})
        groups = [(kind, [r for r in self.results if r.kind == kind]) for kind in kinds]
        if len(kinds) > 1:
            groups.append(("all", self.results))
        return [_summarize(kind, results) for kind, results in groups]

    def as_dict(self) -> dict[str, Any]:
        return {
            "predictor": self.predictor,
            "summary": [asdict(s) for s in self.summary()],
            "results": [asdict(r) for r in self.results],
        }


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summarize(kind: str, results: Sequence[TaskResult]) -> KindSummary:
    tested = [r for r in results if r.passed is not None]
    latencies = [r.latency_s * 1000 for r in results]
    return KindSummary(
        kind=kind,
        count=len(results),
        exact_match=sum(r.exact_match for r in results) / max(1, len(results)),
        parse_rate=sum(r.parses for r in results) / max(1, len(results)),
        pass_at_1=(sum(bool(r.passed) for r in tested) / len(tested)) if tested else None,
        tested=len(tested),
        latency_mean_ms=statistics.fmean(latencies) if latencies else 0.0,
        latency_p50_ms=_percentile(latencies, 0.5),
        latency_p95_ms=_percentile(latencies, 0.95),
    )


def evaluate(
    tasks: Sequence[InfillTask],
    predictor: Predictor,
    *,
    name: str = "predictor",
    run_tests: bool = True,
    limits: Limits | None = None,
    progress: bool = False,
) -> EvalReport:
    """Score `predictor` on every task (see the module docstring for the metrics)."""
    report = EvalReport(predictor=name)
    iterator: Iterable[InfillTask] = tasks
    if progress:
        from tqdm import tqdm

        iterator = tqdm(tasks, desc=name, unit="task")
    for task in iterator:
        error = None
        start = time.perf_counter()
        try:
            prediction = predictor(task.prompt, task.suffix)
        except Exception as exc:  # a failing prediction scores 0 and is reported, not fatal
            prediction, error = "", f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - start
        stats = getattr(predictor, "last_stats", None)
        passed = None
        if run_tests and task.test.strip() and task.entry_point:
            passed = run_python(test_program(task, prediction), limits).passed
        report.results.append(
            TaskResult(
                task_id=task.task_id,
                kind=task.kind,
                prediction=prediction,
                exact_match=exact_match(prediction, task.canonical_solution),
                parses=parses(task.prompt + prediction + task.suffix),
                passed=passed,
                latency_s=latency,
                stats=stats.as_dict() if hasattr(stats, "as_dict") else stats,
                error=error,
            )
        )
    return report


# ---- the engine as a predictor ----------------------------------------------------------------


class ModelPredictor:
    """`model.infill` on an editor-like window: the prefix and suffix clipped at line boundaries
    to token budgets (engine.training.holes.clip_prefix / clip_suffix), as the language server does."""

    def __init__(
        self,
        model: Any,
        *,
        max_tokens: int | None = None,
        num_diffusion_steps: int | None = None,
        max_prefix_tokens: int = 384,
        max_suffix_tokens: int = 128,
        tokenizer: Any = None,
        strategy: str | None = None,
    ):
        self.model = model
        self.max_tokens = max_tokens
        self.num_diffusion_steps = num_diffusion_steps
        self.max_prefix_tokens = max_prefix_tokens
        self.max_suffix_tokens = max_suffix_tokens
        self.tokenizer = tokenizer if tokenizer is not None else _backend_tokenizer(model)
        # engine.infill: "prompt" (None), "pinned[:K]", "length[:B]", "pinned+length"...
        self.strategy = strategy
        self.last_stats: Any = None

    def __call__(self, prefix: str, suffix: str) -> str:
        from engine.training.holes import clip_prefix, clip_suffix

        prefix = clip_prefix(self.tokenizer, prefix, self.max_prefix_tokens)
        suffix = clip_suffix(self.tokenizer, suffix, self.max_suffix_tokens)
        kwargs: dict[str, Any] = {}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.num_diffusion_steps is not None:
            kwargs["num_diffusion_steps"] = self.num_diffusion_steps
        from engine.requests import InfillRequest

        if self.strategy is not None:
            kwargs["strategy"] = self.strategy
        result = self.model.infill_request(InfillRequest(prefix, suffix, **kwargs))
        self.last_stats = result.stats  # this call's figures, from its own result
        return result.text


def _backend_tokenizer(model: Any) -> Any:
    """The `tokenizers.Tokenizer` inside the engine's tokenizer wrapper."""
    tokenizer = getattr(model, "tokenizer", None)
    return getattr(tokenizer, "backend", tokenizer)


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def format_table(reports: Sequence[EvalReport]) -> str:
    """A markdown table: one row per predictor and kind."""
    header = (
        "| predictor | kind | tasks | exact match | parses | pass@1 | latency p50 ms | p95 ms | mean ms |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for report in reports:
        for s in report.summary():
            pass_text = "n/a" if s.pass_at_1 is None else f"{100 * s.pass_at_1:.1f}% ({s.tested})"
            lines.append(
                f"| {report.predictor} | {s.kind} | {s.count} | {100 * s.exact_match:.1f}% | "
                f"{100 * s.parse_rate:.1f}% | {pass_text} | {s.latency_p50_ms:.1f} | {s.latency_p95_ms:.1f} | "
                f"{s.latency_mean_ms:.1f} |"
            )
    return "\n".join(lines)


def sandbox_description() -> str:
    return isolation()

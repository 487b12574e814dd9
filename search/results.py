"""Reading an experiment directory, running or finished, without Ray.

Ray Tune keeps trial states in ``experiment_state-*.json`` (rewritten while the
search runs) and each trial's per-epoch results in ``<trial dir>/result.json``.
That is enough for `pneumotune status` from another terminal, for `export` and for
the search report; pneumotune's own ``pneumotune.json`` adds the metric, the epoch
budget and the tutorial point.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumotune.errors import PneumotuneError

PLAN_FILE = "pneumotune.json"
# Keys of result.json that are bookkeeping, not metrics or config.
_TUNE_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "should_checkpoint",
}  # fmt: skip


class ResultsError(PneumotuneError, ValueError):
    """A folder that is not a pneumotune search (the message says what it expected)."""


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    config: dict[str, Any]
    history: list[dict[str, Any]]  # one dict per reported epoch, in order
    path: Path | None
    error: str | None = None
    num_failures: int = 0
    is_tutorial: bool = False
    outcome: str = ""  # completed | stopped by ASHA | failed | running | pending

    @property
    def epochs(self) -> int:
        return (
            int(self.history[-1].get("training_iteration", len(self.history)))
            if self.history
            else 0
        )

    def best(self, metric: str, mode: str) -> tuple[float | None, int | None]:
        """Best value of ``metric`` and the epoch it was reached (1-based)."""
        scored = [
            (float(r[metric]), int(r.get("training_iteration", i + 1)))
            for i, r in enumerate(self.history)
            if isinstance(r.get(metric), int | float) and math.isfinite(r[metric])
        ]
        if not scored:
            return None, None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda s: s[0])

    def best_checkpoint(self, metric: str, mode: str) -> Path | None:
        """The kept checkpoint directory with the best ``metric``."""
        if self.path is None:
            return None
        candidates = [
            (float(r[metric]), self.path / r["checkpoint_dir_name"])
            for r in self.history
            if r.get("checkpoint_dir_name")
            and isinstance(r.get(metric), int | float)
            and (self.path / r["checkpoint_dir_name"]).is_dir()
        ]
        if not candidates:
            return None
        pick = max if mode == "max" else min
        return pick(candidates, key=lambda c: c[0])[1]


@dataclass
class SearchSummary:
    path: Path
    name: str
    metric: str
    mode: str
    max_t: int
    data_dir: str | None
    tutorial_point: dict[str, Any]
    searched: list[str]  # names of the searched parameters, for the table
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def best(self) -> TrialRecord | None:
        scored = [t for t in self.trials if t.best(self.metric, self.mode)[0] is not None]
        if not scored:
            return None
        sign = 1 if self.mode == "max" else -1
        return max(scored, key=lambda t: sign * (t.best(self.metric, self.mode)[0] or 0.0))

    def best_trial_checkpoint(self) -> tuple[TrialRecord, Path]:
        """The best trial and its best checkpoint (what export and retrain start from);
        :class:`ResultsError` when there is none yet."""
        best = self.best
        if best is None:
            raise ResultsError(f"no trial of {self.path} has reported a {self.metric} yet")
        checkpoint = best.best_checkpoint(self.metric, self.mode)
        if checkpoint is None:
            raise ResultsError(f"the best trial {best.trial_id} has no checkpoint left on disk")
        return best, checkpoint

    @property
    def tutorial(self) -> TrialRecord | None:
        return next((t for t in self.trials if t.is_tutorial), None)

    @property
    def trial_epochs(self) -> int:
        return sum(t.epochs for t in self.trials)

    def gain_over_tutorial(self) -> float | None:
        best, tut = self.best, self.tutorial
        if best is None or tut is None:
            return None
        b, t = best.best(self.metric, self.mode)[0], tut.best(self.metric, self.mode)[0]
        return None if b is None or t is None else b - t

    def tutorial_outcome(self) -> str:
        """How the tutorial's trial ended, e.g. "stopped by ASHA after 2 epochs": a gain
        over a trial stopped early is a gain over fewer epochs."""
        tut = self.tutorial
        return "" if tut is None else f"{tut.outcome} after {tut.epochs} epochs"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.outcome] = out.get(t.outcome, 0) + 1
        return out

    def table(self) -> str:
        """The trial table, plain text (fits a terminal and a log file)."""
        params = self.searched[:7]
        head = ["trial", "outcome", "epochs", f"best {self.metric}", *params]
        rows = []
        for t in self.trials:
            value, epoch = t.best(self.metric, self.mode)
            mark = " *" if t is self.best else (" T" if t.is_tutorial else "")
            rows.append(
                [
                    t.trial_id + mark,
                    t.outcome + (f" ({t.error[:40]})" if t.error else ""),
                    str(t.epochs),
                    f"{value:.4f} @{epoch}" if value is not None else "-",
                    *(_short(t.config.get(p, "")) for p in params),
                ]
            )
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("(* best trial, T the tutorial's settings)")
        return "\n".join(lines)

    def describe(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        out = [
            f"Search {self.name} at {self.path}",
            f"{len(self.trials)} trials ({counts}); {self.trial_epochs} trial-epochs",
            self.table(),
        ]
        best = self.best
        if best is not None:
            value, epoch = best.best(self.metric, self.mode)
            out.append(f"Best trial {best.trial_id}: {self.metric} = {value:.4f} at epoch {epoch}")
            out.append(
                "  "
                + ", ".join(
                    f"{k}={_short(best.config[k])}" for k in self.searched if k in best.config
                )
            )
        gain = self.gain_over_tutorial()
        if gain is not None:
            tut = self.tutorial
            assert tut is not None
            out.append(
                f"Gain over the tutorial's settings (trial {tut.trial_id}, "
                f"{self.tutorial_outcome()}): "
                f"{gain:+.4f} {self.metric}"
            )
        failed = [t for t in self.trials if t.outcome == "failed"]
        for t in failed:
            out.append(f"Trial {t.trial_id} failed after {t.num_failures} attempt(s): {t.error}")
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "name": self.name,
            "path": str(self.path),
            "metric": self.metric,
            "mode": self.mode,
            "max_t": self.max_t,
            "data_dir": self.data_dir,
            "trial_epochs": self.trial_epochs,
            "counts": self.counts(),
            "best_trial": best.trial_id if best else None,
            "best_value": best.best(self.metric, self.mode)[0] if best else None,
            "tutorial_trial": self.tutorial.trial_id if self.tutorial else None,
            "gain_over_tutorial": self.gain_over_tutorial(),
            "trials": [
                {
                    "trial_id": t.trial_id,
                    "outcome": t.outcome,
                    "status": t.status,
                    "epochs": t.epochs,
                    "best_value": t.best(self.metric, self.mode)[0],
                    "best_epoch": t.best(self.metric, self.mode)[1],
                    "is_tutorial": t.is_tutorial,
                    "error": t.error,
                    "num_failures": t.num_failures,
                    "config": t.config,
                    "history": [_metrics_only(r) for r in t.history],
                    "path": str(t.path) if t.path else None,
                }
                for t in self.trials
            ],
        }


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _metrics_only(row: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in row.items() if k not in _TUNE_KEYS}
    keep["training_iteration"] = row.get("training_iteration")
    return keep


def is_experiment(path: Path) -> bool:
    return (Path(path) / PLAN_FILE).is_file()


def summarise(path: Path) -> SearchSummary:
    """Read a search directory (see the module docstring)."""
    path = Path(path)
    if not is_experiment(path):
        raise ResultsError(
            f"{path} is not a pneumotune search directory (no {PLAN_FILE}); it is "
            "<storage>/<name> of `pneumotune search`, e.g. pneumotune-results/demo-..."
        )
    plan = json.loads((path / PLAN_FILE).read_text())
    summary = SearchSummary(
        path=path,
        name=plan["name"],
        metric=plan["metric"],
        mode=plan["mode"],
        max_t=int(plan["epochs"]),
        data_dir=plan.get("data_dir"),
        tutorial_point=plan.get("tutorial_point") or {},
        searched=list(plan.get("searched") or []),
    )
    states = _trial_states(path)
    dirs = {d.name: d for d in path.iterdir() if d.is_dir() and (d / "params.json").exists()}
    seen_dirs = set()
    for trial_id, state in sorted(states.items(), key=lambda kv: kv[1]["index"]):
        trial_dir = dirs.get(state.get("relative_logdir", ""))
        seen_dirs.add(state.get("relative_logdir"))
        summary.trials.append(_record(trial_id, state, trial_dir, path))
    for name, trial_dir in dirs.items():
        if name not in seen_dirs:  # started after the last state snapshot
            summary.trials.append(
                _record(_trial_id_of(trial_dir), {"status": "RUNNING"}, trial_dir, path)
            )
    for t in summary.trials:
        t.is_tutorial = bool(summary.tutorial_point) and all(
            t.config.get(k) == v for k, v in summary.tutorial_point.items()
        )
        t.outcome = _outcome(t, summary.max_t)
    return summary


def _trial_states(path: Path) -> dict[str, dict[str, Any]]:
    # One file per driver session, named by its start time; a resumed search leaves the old
    # one behind (and Tune's sync may even touch it later), so the name, not mtime, decides.
    states = sorted(path.glob("experiment_state-*.json"), key=lambda p: p.name)
    if not states:
        return {}
    try:
        raw = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # caught mid-write by a running search: use the dirs
        return {}
    out = {}
    for trial_json, runtime_json in raw.get("trial_data", []):
        trial = json.loads(trial_json)
        runtime = json.loads(runtime_json)
        out[trial["trial_id"]] = {
            "status": trial.get("status", "PENDING"),
            "config": trial.get("config", {}),
            "relative_logdir": trial.get("relative_logdir") or "",
            # "<n>_<params>": n counts trials in the order the searcher created them.
            "index": int(str(trial.get("experiment_tag", "0")).split("_")[0] or 0),
            "num_failures": runtime.get("num_failures", 0),
            "error_filename": runtime.get("error_filename"),
        }
    return out


def _record(
    trial_id: str, state: dict[str, Any], trial_dir: Path | None, root: Path
) -> TrialRecord:
    history: list[dict[str, Any]] = []
    config = dict(state.get("config") or {})
    if trial_dir is not None:
        if not config:
            try:
                config = json.loads((trial_dir / "params.json").read_text())
            except json.JSONDecodeError:  # a trial starting right now: Tune is writing it
                config = {}
        results = trial_dir / "result.json"
        if results.exists():
            for line in results.read_text().splitlines():
                try:
                    history.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line being written right now
    error = None
    if state.get("status") == "ERROR":
        error = _error_reason(root, trial_dir, state.get("error_filename"))
    return TrialRecord(
        trial_id=trial_id,
        status=state.get("status", "PENDING"),
        config=config,
        history=_last_attempt(history),
        path=trial_dir,
        error=error,
        num_failures=int(state.get("num_failures") or 0),
    )


def _last_attempt(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A retried trial re-reports epochs after its checkpoint: keep the latest of each."""
    by_iter: dict[int, dict[str, Any]] = {}
    for row in history:
        by_iter[int(row.get("training_iteration", len(by_iter) + 1))] = row
    return [by_iter[k] for k in sorted(by_iter)]


def _error_reason(root: Path, trial_dir: Path | None, filename: str | None) -> str:
    candidates = [trial_dir / "error.txt"] if trial_dir else []
    if filename:
        candidates.insert(0, root / filename)
    for c in candidates:
        if c.is_file():
            return last_exception_line(c.read_text())
    return "failed (no error file)"


def last_exception_line(text: str) -> str:
    """The exception line of a traceback: what a person reads first."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if (
            ":" in line
            and not line.startswith(("File ", "^", "~"))
            and line.split(":")[0].replace(".", "").replace("_", "").isalnum()
        ):
            return line[:300]
    return lines[-1][:300] if lines else "failed"


def _trial_id_of(trial_dir: Path) -> str:
    # search.tuner names trial folders trial_<id>
    return trial_dir.name.split("_", 1)[-1]


def _outcome(t: TrialRecord, max_t: int) -> str:
    if t.status == "ERROR":
        return "failed"
    if t.status == "TERMINATED":
        return "completed" if t.epochs >= max_t else "stopped by ASHA"
    if t.status in ("RUNNING", "PAUSED"):
        return "running"
    return "pending"

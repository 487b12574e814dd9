"""Reading an experiment directory, running or finished, without Ray.

Ray Tune keeps trial states in ``experiment_state-*.json`` (rewritten while the
search runs) and each trial's per-epoch results in ``<trial dir>/result.json``.
That is enough for `pneumotune status` from another terminal, for `export` and for
the search report; pneumotune's own ``pneumotune.json`` adds the metric, the epoch
budget and the tutorial point.

The state file can be behind the trials for good: Ray 2.60's Tune writes a trial's
state again only when the trial is marked for it, and a trial whose worker died (the
OOM killer's SIGKILL) is not marked once its actor is gone, so its last state stays
RUNNING although Tune holds it as ERROR. The trial's ``error.txt`` is written at once,
so it decides: a failure numbered past the trial's ``max_failures`` is its end (see
:func:`_settled_status`), and once the search has ended no trial is running any more.

A results folder may have been written by someone else (a shared volume, a copy from
elsewhere), so nothing in it is trusted: every path read from it (a trial folder, a
checkpoint, a file that is a link) must resolve inside it, every file is read up to a cap,
and every value is checked for its type before use. What fails is left out with a note
(:attr:`SearchSummary.notes`); a ``pneumotune.json`` that is not pneumotune's is a
:class:`ResultsError`. Nothing here unpickles: the pickles Tune keeps beside these files
are only read on resume, which checks who can write the folder
(:func:`search.tuner.check_resumable`).
"""

from __future__ import annotations

import json
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumotune.errors import PneumotuneError
from pneumotune.memory import MEMORY_METRIC
from pneumotune.search.failures import (
    FAILED,
    MEMORY_OUTCOMES,
    Failure,
    SearchFailed,
    all_failed_message,
    classify,
    memory_advice,
    parse_error_file,
    reason,
)
from pneumotune.text import escaped, short

PLAN_FILE = "pneumotune.json"
# A trial the state file still calls running or pending after its search ended.
SEARCH_ENDED = "stopped: search ended"
# A trial promotion ASHA paused at a rung, while the search runs: it may resume.
PAUSED = "paused"
# Caps on what reading a results folder may load. The real files are far smaller (a
# 1000-trial state file is ~20 MB, a trial's result.json a few KB per epoch); a file past
# its cap is not one Tune wrote, and reading it would only cost memory.
MAX_PLAN_BYTES = 1 << 20
MAX_STATE_BYTES = 256 << 20
MAX_RESULT_BYTES = 64 << 20
MAX_PARAMS_BYTES = 1 << 20
ERROR_TAIL_BYTES = 1 << 20  # the end of an error.txt: its last failure is the one shown
MAX_EPOCHS = 1_000_000  # more than any run; bounds what pneumotune.json may claim
CHECKPOINT_MODEL = "model.keras"  # search.checkpoint.MODEL_FILE (that module imports Ray)
_TRIAL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TUNE_STATUSES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")
# Keys of result.json that are bookkeeping, not metrics or config.
_TUNE_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "should_checkpoint",
}  # fmt: skip


class ResultsError(PneumotuneError, ValueError):
    """A folder that is not a pneumotune search (the message says what it expected)."""


class Unreadable(Exception):
    """A file of a results folder that is not read; the message is the note that says why."""


def inside(root: Path, path: Path) -> Path | None:
    """``path`` with every link followed, if that lies in ``root`` (also resolved), else
    None: a results folder's paths (trial folders, checkpoints, links) may name any file."""
    try:
        real = Path(path).resolve()
        base = Path(root).resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        return None
    return real if real.is_relative_to(base) else None


def read_text(root: Path, path: Path, limit: int, *, tail: bool = False) -> str:
    """The text of ``path``, a file of the results folder ``root``, at most ``limit`` bytes
    (``tail``: its last ``limit`` bytes when it is longer; else a longer file is refused).

    :class:`Unreadable` (its message a note for the user) when it resolves outside
    ``root``, is not a regular file (a FIFO would block, a device never end) or is too
    big. A missing file raises FileNotFoundError, as ``Path.read_text`` does."""
    name = escaped(_relative(root, path), 200)
    real = inside(root, path)
    if real is None:
        raise Unreadable(f"{name} leads outside the search folder: not read")
    info = real.stat()  # FileNotFoundError for the caller, as before
    if not stat.S_ISREG(info.st_mode):
        raise Unreadable(f"{name} is not a regular file: not read")
    if info.st_size > limit and not tail:
        raise Unreadable(
            f"{name} is {info.st_size / 2**20:.0f} MB, more than the {limit / 2**20:.0f} MB "
            "a search writes there: not read"
        )
    with open(real, "rb") as f:
        if info.st_size > limit:
            f.seek(info.st_size - limit)
        data = f.read(limit + 1)  # a file still growing stops at the cap too
    if len(data) > limit:
        if not tail:
            raise Unreadable(f"{name} grew past {limit / 2**20:.0f} MB while read: not read")
        data = data[-limit:]
    return data.decode("utf-8", errors="replace")


def parse_json(text: str) -> Any:
    """``json.loads``, with every way hostile JSON fails as ValueError: malformed,
    integers past Python's digit limit, nesting past the recursion limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None: not a number (bools are not), not finite, or
    an integer too large for a float (``float(10**400)`` raises)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


def _relative(root: Path, path: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def read_plan(path: Path) -> dict[str, Any]:
    """``pneumotune.json`` of the search folder ``path``, checked key by key:
    :class:`ResultsError` (one line, naming the key) when it is not the file
    ``pneumotune search`` writes."""
    path = Path(path)
    where = ResultsError.require_file(
        path,
        PLAN_FILE,
        "a pneumotune search directory",
        "it is <storage>/<name> of `pneumotune search`, e.g. pneumotune-results/demo-...",
    )
    try:
        plan = parse_json(read_text(path, where, MAX_PLAN_BYTES))
    except (Unreadable, ValueError, OSError) as exc:
        raise ResultsError(f"{where} cannot be read as pneumotune's: {escaped(exc, 300)}") from None
    if not isinstance(plan, dict):
        raise ResultsError(f"{where} is not pneumotune's: a JSON object was expected")

    def bad(key: str, expected: str) -> ResultsError:
        got = escaped(repr(plan.get(key)), 60)
        return ResultsError(f"{where}: {key} must be {expected}, got {got}")

    name = plan.get("name")
    if not (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")):
        raise bad("name", "the search's name")
    if "/" in name or "\\" in name or escaped(name, 300) != name:
        raise bad("name", "a folder name (no slash or control character)")
    metric = plan.get("metric")
    if not (isinstance(metric, str) and 0 < len(metric) <= 200 and escaped(metric, 300) == metric):
        raise bad("metric", "a metric name")
    if plan.get("mode") not in ("max", "min"):
        raise bad("mode", '"max" or "min"')
    epochs = plan.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise bad("epochs", f"a whole number of epochs in 1..{MAX_EPOCHS}")
    samples = plan.get("num_samples")
    if samples is not None and (
        isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= 10**9
    ):
        raise bad("num_samples", "a number of trials")
    for key, kind, expected in (
        ("data_dir", str, "a folder path"),
        ("experiment_source", str, "a file path"),
        ("tutorial_point", dict, "an object of parameter values"),
        ("searched", list, "a list of parameter names"),
    ):
        if plan.get(key) is not None and not isinstance(plan[key], kind):
            raise bad(key, f"{expected} or null")
    if not all(isinstance(p, str) and escaped(p, 100) == p for p in plan.get("searched") or []):
        raise bad("searched", "a list of parameter names")
    for key in ("data_dir", "experiment_source"):  # printed by status and the report
        if isinstance(plan.get(key), str) and escaped(plan[key], 4096) != plan[key]:
            raise bad(key, "a path without control characters")
    return plan


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
    # completed | stopped by ASHA | failed | killed: out of memory | killed: likely out of
    # memory | failed: out of memory | stopped: search ended | running | paused | pending
    outcome: str = ""
    # The private memory (MB) of the trial's process at its latest report, from any
    # attempt: all that is left of a trial the OOM killer ended (pneumotune.memory).
    memory_mb: float | None = None
    memory_epoch: int | None = None  # the epoch that reported memory_mb
    failure: str = ""  # an ERROR trial's last failure, failures.classify'd

    @property
    def failed(self) -> bool:
        """Ended by an error (any of failures.FAILURE_OUTCOMES), after its retries."""
        return self.status == "ERROR"

    @property
    def out_of_memory(self) -> bool:
        return self.outcome in MEMORY_OUTCOMES

    def memory_text(self) -> str:
        """E.g. "held 1234 MB at epoch 3" (its latest report), or "" without one."""
        if self.memory_mb is None:
            return ""
        return f"held {self.memory_mb:.0f} MB at epoch {self.memory_epoch}"

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
            (value, int(r.get("training_iteration", i + 1)))
            for i, r in enumerate(self.history)
            if (value := number(r.get(metric))) is not None
        ]
        if not scored:
            return None, None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda s: s[0])

    def names_outside(self) -> bool:
        """Whether result.json names a checkpoint (or its model file) outside the trial's
        folder: an absolute or "../" name, or a link."""
        assert self.path is not None
        return any(
            inside(self.path, self.path / name / CHECKPOINT_MODEL) is None
            for r in self.history
            if isinstance(name := r.get("checkpoint_dir_name"), str) and name
        )

    def best_checkpoint(self, metric: str, mode: str) -> Path | None:
        """The kept checkpoint directory with the best ``metric``: one inside the trial's
        folder, its model file too (result.json names it; a name or a link leading
        elsewhere is no checkpoint of this trial)."""
        if self.path is None:
            return None
        candidates = [
            (value, self.path / name)
            for r in self.history
            if isinstance(name := r.get("checkpoint_dir_name"), str)
            and name
            and (value := number(r.get(metric))) is not None
            and inside(self.path, self.path / name / CHECKPOINT_MODEL) is not None
            and (self.path / name).is_dir()
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
    num_samples: int = 0  # the trials the search runs in all (pneumotune.json)
    # What was not read from the folder and why (a file leading outside it, too big, not
    # Tune's format): said under the table, so that a gap in it is explained.
    notes: list[str] = field(default_factory=list)

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
        if checkpoint is None and best.path is not None and best.names_outside():
            raise ResultsError(
                f"the best trial {best.trial_id}'s result.json names checkpoints outside its "
                f"folder {best.path}: none is loaded from there"
            )
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
        memory = any(t.memory_mb is not None for t in self.trials)
        head = ["trial", "outcome", "epochs", f"best {self.metric}"]
        head += ["memory MB"] * memory + params
        rows = []
        for t in self.trials:
            value, epoch = t.best(self.metric, self.mode)
            mark = " *" if t is self.best else (" T" if t.is_tutorial else "")
            # A memory failure's reason is long: its own line below the table has it.
            note = f" ({t.error[:40]})" if t.error and not t.out_of_memory else ""
            rows.append(
                [
                    t.trial_id + mark,
                    t.outcome + note,
                    str(t.epochs),
                    f"{value:.4f} @{epoch}" if value is not None else "-",
                    *([memory_cell(t)] * memory),
                    *(short(t.config.get(p, "")) for p in params),
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
                    f"{k}={short(best.config[k])}" for k in self.searched if k in best.config
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
        for t in self.trials:
            if t.failed:
                out.extend(failure_lines(t))
        out.extend(f"Not read: {note}" for note in self.notes)
        return "\n".join(out)

    def all_failed(self) -> bool:
        """True when the search has trials and every one of them ended in an error."""
        return bool(self.trials) and all(t.failed for t in self.trials)

    def raise_if_all_failed(self) -> None:
        """:class:`SearchFailed` (one line: how the trials ended, what to change) when
        every trial failed: a search with nothing to export must not end as a success."""
        if self.all_failed():
            raise SearchFailed(
                all_failed_message(
                    [t.outcome for t in self.trials],
                    [t.memory_mb for t in self.trials if t.memory_mb is not None],
                )
            )

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
                    "memory_mb": t.memory_mb,
                    "config": t.config,
                    "history": [_metrics_only(r) for r in t.history],
                    "path": str(t.path) if t.path else None,
                }
                for t in self.trials
            ],
            "notes": self.notes,
        }


def failure_lines(t: TrialRecord) -> list[str]:
    """What `status` says under the table about a failed trial: how it ended and why,
    and for a memory failure the memory it held and what to change."""
    lines = [f"Trial {t.trial_id} {t.outcome} after {t.num_failures} attempt(s): {t.error}"]
    if t.out_of_memory:
        held = t.memory_text()
        lines.append(f"  {held + '; ' if held else ''}to fit, {memory_advice(t.config)}")
    return lines


def memory_cell(t: TrialRecord) -> str:
    return "-" if t.memory_mb is None else f"{t.memory_mb:.0f}"


def _metrics_only(row: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in row.items() if k not in _TUNE_KEYS}
    keep["training_iteration"] = row.get("training_iteration")
    return keep


def is_experiment(path: Path) -> bool:
    return (Path(path) / PLAN_FILE).is_file()


def summarise(path: Path, *, ended: bool | None = None) -> SearchSummary:
    """Read a search directory (see the module docstring).

    ``ended``: whether the search has ended, so that no trial runs any more (a trial the
    state file still calls running or pending is then "stopped: search ended"); None:
    :func:`search_ended` decides from the files.
    """
    path = Path(path)
    plan = read_plan(path)
    summary = SearchSummary(
        path=path,
        name=plan["name"],
        metric=plan["metric"],
        mode=plan["mode"],
        max_t=plan["epochs"],
        data_dir=plan.get("data_dir"),
        tutorial_point=plan.get("tutorial_point") or {},
        searched=list(plan.get("searched") or []),
        num_samples=plan.get("num_samples") or 0,
    )
    notes = summary.notes
    states = _trial_states(path, notes)
    # Tune gives every trial of a search the same max_failures: a trial the state file
    # does not know yet has its neighbours'.
    known = [s["max_failures"] for s in states.values() if s.get("max_failures") is not None]
    max_failures = known[0] if known else None
    dirs = {}
    for d in sorted(path.iterdir()):
        if d.is_dir() and (d / "params.json").exists():
            if inside(path, d) is None:  # a link to a folder elsewhere
                notes.append(f"{escaped(d.name, 200)} leads outside the search folder: not read")
            else:
                dirs[d.name] = d
    seen_dirs = set()
    for trial_id, state in sorted(states.items(), key=lambda kv: kv[1]["index"]):
        logdir = state["relative_logdir"]
        # A trial killed before Tune wrote its params.json has a folder all the same,
        # with its error.txt in it.
        trial_dir = dirs.get(logdir)
        if trial_dir is None and logdir and (path / logdir).is_dir():
            if inside(path, path / logdir) is None:  # "../..", an absolute path, a link
                notes.append(f"trial {trial_id}'s folder leads outside the search folder")
            else:
                trial_dir = path / logdir
        seen_dirs.add(logdir)
        summary.trials.append(_record(trial_id, state, trial_dir, path, notes))
    for name, trial_dir in dirs.items():
        if name not in seen_dirs:  # started after the last state snapshot
            state = {"status": "RUNNING", "max_failures": max_failures}
            summary.trials.append(_record(_trial_id_of(trial_dir), state, trial_dir, path, notes))
    if ended is None:
        ended = search_ended(path)
    for t in summary.trials:
        t.is_tutorial = bool(summary.tutorial_point) and all(
            t.config.get(k) == v for k, v in summary.tutorial_point.items()
        )
        t.outcome = _outcome(t, summary.max_t, ended)
    return summary


def search_ended(path: Path) -> bool:
    """Whether the search in ``path`` has ended: ``search.json`` (written by
    :func:`search.tuner.run_search` after Tune's last state) is at least as new as every
    experiment state (a resumed search writes a new one)."""
    done = Path(path) / "search.json"
    try:
        written = done.stat().st_mtime
    except OSError:
        return False
    return all(written >= s.stat().st_mtime for s in Path(path).glob("experiment_state-*.json"))


def _trial_states(path: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    # One file per driver session, named by its start time; a resumed search leaves the old
    # one behind (and Tune's sync may even touch it later), so the name, not mtime, decides.
    states = sorted(path.glob("experiment_state-*.json"), key=lambda p: p.name)
    if not states:
        return {}
    try:
        raw = parse_json(read_text(path, states[-1], MAX_STATE_BYTES))
    except Unreadable as exc:
        notes.append(f"{exc}; trial states come from the trial folders")
        return {}
    except (ValueError, OSError):  # caught mid-write by a running search: use the dirs
        return {}
    rows = raw.get("trial_data") if isinstance(raw, dict) else None
    if not isinstance(rows, list):
        notes.append(
            f"{escaped(states[-1].name, 200)} is not Tune's experiment state: trial states come "
            "from the trial folders"
        )
        return {}
    out = {}
    skipped = 0
    for row in rows:
        state = _trial_state(row)
        if state is None:
            skipped += 1
        else:
            out[state.pop("trial_id")] = state
    if skipped:
        name = escaped(states[-1].name, 200)
        notes.append(f"{skipped} trial state(s) of {name} are not Tune's format")
    return out


def _trial_state(row: Any) -> dict[str, Any] | None:
    """One trial of Tune's experiment state, its values checked; None if not Tune's."""
    try:
        trial_json, runtime_json = row
        trial, runtime = parse_json(trial_json), parse_json(runtime_json)
    except (TypeError, ValueError):
        return None
    if not (isinstance(trial, dict) and isinstance(runtime, dict)):
        return None
    trial_id, status = trial.get("trial_id"), trial.get("status", "PENDING")
    if not (isinstance(trial_id, str) and _TRIAL_ID.fullmatch(trial_id)):
        return None
    if status not in _TUNE_STATUSES:
        return None
    logdir = trial.get("relative_logdir") or ""
    # "<n>_<params>": n counts trials in the order the searcher created them.
    index = re.match(r"\d{1,9}", str(trial.get("experiment_tag", ""))[:20])
    return {
        "trial_id": trial_id,
        "status": status,
        "config": trial["config"] if isinstance(trial.get("config"), dict) else {},
        "relative_logdir": logdir if isinstance(logdir, str) else "",
        "index": int(index.group()) if index else 0,
        "num_failures": _count(runtime.get("num_failures")) or 0,
        "max_failures": _count(trial.get("max_failures"), negative=True),
    }


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63


def _count(value: Any, negative: bool = False) -> int | None:
    """A count from a state file (failures), or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if (negative or value >= 0) and abs(value) <= 10**9 else None


def _record(
    trial_id: str,
    state: dict[str, Any],
    trial_dir: Path | None,
    root: Path,
    notes: list[str],
) -> TrialRecord:
    rows: list[dict[str, Any]] = []  # every attempt's reports, in the order written
    failures: list[Failure] = []
    config = dict(state.get("config") or {})
    if trial_dir is not None:
        if not config:
            try:
                params = parse_json(read_text(root, trial_dir / "params.json", MAX_PARAMS_BYTES))
                config = params if isinstance(params, dict) else {}
            except Unreadable as exc:
                notes.append(str(exc))
            except (ValueError, OSError):  # a trial starting right now: Tune is writing it
                config = {}
        rows = _result_rows(root, trial_dir / "result.json", notes)
        errors = trial_dir / "error.txt"
        if errors.is_file() or errors.is_symlink():
            try:
                failures = parse_error_file(read_text(root, errors, ERROR_TAIL_BYTES, tail=True))
            except Unreadable as exc:
                notes.append(str(exc))
            except OSError:
                pass
    status, num_failures = _settled_status(
        state.get("status", "PENDING"),
        int(state.get("num_failures") or 0),
        failures,
        state.get("max_failures"),
    )
    record = TrialRecord(
        trial_id=trial_id,
        status=status,
        config=config,
        history=_last_attempt(rows),
        path=trial_dir,
        num_failures=num_failures,
    )
    if status == "ERROR":
        last = failures[-1].text if failures else ""
        record.failure = classify(last) if last else FAILED
        record.error = escaped(reason(last), 300) if last else "failed (no error file)"
    record.memory_mb, record.memory_epoch = _last_memory(rows)
    return record


def _result_rows(root: Path, results: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The reports of a trial's result.json, oldest first: one JSON object per line, each
    with a whole ``training_iteration``; the first line that is not ends the reading (a
    line being written right now), one that is not Tune's is left out with a note."""
    try:
        text = read_text(root, results, MAX_RESULT_BYTES)
    except Unreadable as exc:
        notes.append(str(exc))
        return []
    except OSError:  # no result yet
        return []
    rows, odd = [], 0
    for line in text.splitlines():
        try:
            row = parse_json(line)
        except ValueError:
            break  # a line being written right now
        iteration = row.get("training_iteration", 1) if isinstance(row, dict) else None
        if _count(iteration) is None:
            odd += 1
            continue
        # An integer no float holds is no metric; as None it cannot overflow a reader
        # (float(10**400) raises: the report's plots, the importances).
        rows.append({k: None if _too_big(v) else v for k, v in row.items()})
    if odd:
        notes.append(
            f"{odd} line(s) of {escaped(_relative(root, results), 200)} are not Tune's reports"
        )
    return rows


def _settled_status(
    status: str, num_failures: int, failures: list[Failure], max_failures: int | None
) -> tuple[str, int]:
    """The trial's status and failure count, where its state is behind its error file.

    Tune numbers each failure with the trial's failure count and retries while the count
    is at most ``max_failures`` (negative: always): an error file whose last failure is
    numbered past both the state's count and ``max_failures`` means the trial ended in
    that failure, whatever the state says (the module docstring says why it may lag). A
    failure within ``max_failures`` is a retry under way: the state catches up when the
    retried trial starts.
    """
    if status in ("ERROR", "TERMINATED") or not failures or max_failures is None:
        return status, num_failures
    last = failures[-1].number
    if last > num_failures and 0 <= max_failures < last:
        return "ERROR", last
    return status, num_failures


def _last_memory(rows: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """The latest reported private memory (MB) and the epoch that reported it."""
    for row in reversed(rows):
        value = number(row.get(MEMORY_METRIC))
        if value is not None:
            return value, int(row.get("training_iteration") or 0) or None
    return None, None


def _last_attempt(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A retried trial re-reports epochs after its checkpoint: keep the latest of each."""
    by_iter: dict[int, dict[str, Any]] = {}
    for row in history:
        by_iter[int(row.get("training_iteration", len(by_iter) + 1))] = row
    return [by_iter[k] for k in sorted(by_iter)]


def _trial_id_of(trial_dir: Path) -> str:
    # search.tuner names trial folders trial_<id>
    return escaped(trial_dir.name.split("_", 1)[-1], 64)


def _outcome(t: TrialRecord, max_t: int, ended: bool = False) -> str:
    if t.status == "ERROR":
        return t.failure or FAILED
    if t.status == "TERMINATED":
        return "completed" if t.epochs >= max_t else "stopped by ASHA"
    if t.status == "PAUSED":
        # Only promotion ASHA (search.promotion) pauses a trial: it waits at a rung, and one
        # still waiting when the search ended was never promoted (Tune's state file may
        # keep PAUSED for a trial ended so, or by a budget stopper).
        return "stopped by ASHA" if ended else PAUSED
    if ended:  # the search is over: whatever the state file says, nothing runs
        return SEARCH_ENDED
    if t.status == "RUNNING":
        return "running"
    return "pending"

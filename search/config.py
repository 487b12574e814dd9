"""The experiment config: one YAML file, loaded into a frozen, validated object.

The same file drives `pneumotune search` (the whole search) and `pneumotune train`
(one run with the ``fixed`` values and each searched parameter's default). Example:

.. code-block:: yaml

    name: demo
    data: ./pneumotune-demo/dataset   # a converted dataset (overridden by --data)
    metric: val_iou                   # val_iou | val_dice | val_kaggle_dice | val_positive_iou
    epochs: 6                         # ASHA's max_t: one report per epoch
    num_samples: 8
    max_concurrent: 2
    seed: 0
    startup_trials: 2                 # random trials before TPE models (default num_samples//4)
    resources: {cpu: 1, gpu: 0, workers_per_trial: 1}
    asha: {grace_period: 1, reduction_factor: 2}  # mode: stop (default) | promote
    fixed: {batch_size: 16, depth: 3}
    space:
      img_size: stored                # the sizes stored in the dataset
      base_filters: [8, 16]           # a list: categorical, first value is the default
      lr: {low: 3.0e-4, high: 3.0e-3, log: true, default: 1.0e-3}
      restart_cycles: {choices: [2, 3, 4], when: {schedule: cosine_restarts}}

Parameter names are :class:`model.config.TrainConfig` fields (``augment.flip_p`` for
the augmentation group). Importing this module imports neither TensorFlow nor Ray.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pneumotune.errors import ConfigError
from pneumotune.model.config import METRICS, TrainConfig

__all__ = ["ConfigError", "ExperimentConfig", "ParamSpec", "load_experiment", "parse_experiment"]

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
STORED = "stored"


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: categorical ``choices`` or a numeric ``low..high`` range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    default: Any = None
    # Only sampled when each named parameter has one of the listed values (define-by-run).
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def resolved_default(self) -> Any:
        if self.default is not None:
            return self.default
        if self.choices is not None:
            return self.choices[0]
        assert self.low is not None and self.high is not None
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return round(mid) if self.integer else mid

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(parent) in allowed for parent, allowed in self.when)


@dataclass(frozen=True)
class Resources:
    """What one trial holds. With ``workers_per_trial > 1``, ``cpu`` and ``gpu`` are *per
    Train worker* and the trial's driver holds none (search/distributed.py): Tune cannot
    see how many such trials fit, so set ``max_concurrent`` to
    cluster GPUs (or CPUs) // (workers_per_trial x gpu (or cpu))."""

    cpu: float = 1.0
    gpu: float = 0.0  # fractions share a GPU between trials (e.g. 0.5: two trials per GPU)
    workers_per_trial: int = 1  # > 1: the trial runs Ray Train's TensorflowTrainer


# How ASHA treats a trial below the top 1/reduction_factor at a rung. stop: Ray's
# ASHAScheduler ends it at once, judged against the trials that reached the rung before it.
# promote: search.promotion pauses it with its checkpoint and resumes it if later arrivals
# rank it in the rung's top after all (the promotion variant of ASHA).
ASHA_MODES = ("stop", "promote")


@dataclass(frozen=True)
class AshaSettings:
    grace_period: int = 1  # epochs every trial gets before it can be stopped
    reduction_factor: float = 2.0  # keep the top 1/reduction_factor at each rung
    mode: str = "stop"  # one of ASHA_MODES


# An experiment's name becomes a folder under the storage path, a Ray job name and a
# dashboard label: letters, digits, '.', '_', '-', starting with a letter or digit (so
# neither "../x", "/abs", ".hidden" nor a control character can get in).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: object, where: str) -> str:
    """``name`` if it is a safe experiment name, else a :class:`ConfigError` saying why."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where}: experiment name {str(name)!r} is not allowed: use 1-100 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit (it names a folder "
            "under the storage path)"
        )
    return name


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: Path | None = None
    metric: str = "val_iou"
    epochs: int = 6
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    val_fold: int = 0
    max_failures: int = 2  # retries of a trial whose worker died, from its last checkpoint
    enqueue_tutorial: bool = True
    # Trials one after another in the same process (Tune's reuse_actors), each training a
    # kept model of its architecture with the train step already traced (model.warm):
    # no TensorFlow import and no tracing after a process' first trial. Results are the
    # same either way; false gives every trial a new process.
    warm_trials: bool = True
    # Random trials before TPE starts modelling (Optuna's default, 10, would leave a small
    # search random from end to end). None: a quarter of num_samples, 2 to 10.
    startup_trials: int | None = None
    storage: Path = Path("pneumotune-results")
    resources: Resources = field(default_factory=Resources)
    asha: AshaSettings = field(default_factory=AshaSettings)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: tuple[ParamSpec, ...] = ()
    source: Path | None = None  # the YAML it came from

    @property
    def tpe_startup_trials(self) -> int:
        if self.startup_trials is not None:
            return self.startup_trials
        return min(10, max(2, self.num_samples // 4))

    @property
    def mode(self) -> str:
        return "min" if self.metric == "val_loss" else "max"

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.space if p.name == name), None)

    def resolve_sizes(self, stored_sizes: list[int]) -> ExperimentConfig:
        """Replace ``img_size: stored`` and check every img_size is in the dataset."""
        spec = self.param("img_size")
        sizes = sorted(stored_sizes)
        space = list(self.space)
        if spec is not None and spec.choices == (STORED,):
            space[space.index(spec)] = dataclasses.replace(spec, choices=tuple(sizes), default=None)
        wanted = set(self.param_values("img_size", space))
        missing = sorted(wanted - set(sizes))
        if missing:
            raise ConfigError(
                f"{self._where()}: img_size {missing} is not stored in the dataset (stored: "
                f"{sizes}); use `img_size: stored` or convert with --sizes including it"
            )
        return dataclasses.replace(self, space=tuple(space))

    def param_values(self, name: str, space: list[ParamSpec] | None = None) -> list[Any]:
        for spec in space if space is not None else self.space:
            if spec.name == name:
                return list(spec.choices) if spec.choices is not None else [spec.resolved_default()]
        return [self.fixed.get(name, getattr(TrainConfig(), name, None))]

    def default_values(self) -> dict[str, Any]:
        """Flat training values: the fixed ones plus each active parameter's default."""
        values: dict[str, Any] = {
            "epochs": self.epochs,
            "val_fold": self.val_fold,
            "seed": self.seed,
        }
        values.update(self.fixed)
        for spec in self.space:
            if spec.active(values):
                values[spec.name] = spec.resolved_default()
        return values

    def default_train_config(self, **overrides: Any) -> TrainConfig:
        """The one config `pneumotune train` fits (call :meth:`resolve_sizes` first)."""
        return TrainConfig.from_flat({**self.default_values(), **overrides})

    def _where(self) -> str:
        return str(self.source) if self.source else f"experiment {self.name!r}"


# ------------------------------------------------------------------ loading
TOP_KEYS = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"source"}


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML. A bare name (``demo``) means a shipped one."""
    path = resolve_path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    cfg = parse_experiment(raw, source=path)
    if cfg.data is not None and not cfg.data.is_absolute():
        # Relative data paths are relative to the working directory, like CLI paths.
        cfg = dataclasses.replace(cfg, data=Path.cwd() / cfg.data)
    return cfg


def resolve_path(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = EXPERIMENTS_DIR / f"{Path(path).stem}.yaml"
    if candidate.suffix in ("", ".yaml") and shipped.is_file() and len(candidate.parts) == 1:
        return shipped
    names = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
    raise ConfigError(f"experiment file {path} not found (shipped experiments: {names})")


def parse_experiment(raw: dict[str, Any], source: Path | None = None) -> ExperimentConfig:
    where = str(source) if source else "experiment"
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(TOP_KEYS)}")
    problems: list[str] = []
    values = {k: v for k, v in raw.items() if k not in ("resources", "asha", "fixed", "space")}
    if "data" in values and values["data"] is not None:
        values["data"] = Path(str(values["data"]))
    if "storage" in values:
        values["storage"] = Path(str(values["storage"]))
    resources = _sub(Resources, raw.get("resources"), "resources", where)
    asha = _sub(AshaSettings, raw.get("asha"), "asha", where)
    fixed = dict(raw.get("fixed") or {})
    space = tuple(_param(name, spec, where) for name, spec in (raw.get("space") or {}).items())
    cfg = ExperimentConfig(
        **values, resources=resources, asha=asha, fixed=fixed, space=space, source=source
    )

    known = set(TrainConfig().to_flat())
    for name in [*fixed, *(p.name for p in space)]:
        if name not in known:
            problems.append(f"unknown parameter {name!r} (parameters: {sorted(known)})")
    overlap = sorted(set(fixed) & {p.name for p in space})
    if overlap:
        problems.append(f"{overlap} are both fixed and searched: keep one")
    for spec in space:
        for parent, _ in spec.when:
            if cfg.param(parent) is None and parent not in fixed:
                problems.append(f"{spec.name}: 'when' names {parent!r}, which is not a parameter")
    try:
        check_name(cfg.name, "name")
    except ConfigError as exc:
        problems.append(str(exc))
    if not isinstance(cfg.warm_trials, bool) or not isinstance(cfg.enqueue_tutorial, bool):
        problems.append("warm_trials and enqueue_tutorial must be true or false")
    if cfg.metric not in METRICS:
        problems.append(f"metric must be one of {METRICS}, got {cfg.metric!r}")
    if cfg.epochs < 1 or cfg.num_samples < 1 or cfg.max_concurrent < 1:
        problems.append("epochs, num_samples and max_concurrent must be >= 1")
    if cfg.startup_trials is not None and cfg.startup_trials < 1:
        problems.append(f"startup_trials must be >= 1, got {cfg.startup_trials}")
    if cfg.max_failures < 0:
        problems.append(f"max_failures must be >= 0, got {cfg.max_failures}")
    if cfg.asha.grace_period < 1 or cfg.asha.grace_period > cfg.epochs:
        problems.append(
            f"asha.grace_period must be in 1..epochs ({cfg.epochs}), got {cfg.asha.grace_period}"
        )
    if cfg.asha.reduction_factor <= 1:
        problems.append(f"asha.reduction_factor must be > 1, got {cfg.asha.reduction_factor}")
    if cfg.asha.mode not in ASHA_MODES:
        problems.append(f"asha.mode must be one of {list(ASHA_MODES)}, got {cfg.asha.mode!r}")
    if cfg.resources.cpu <= 0 or cfg.resources.gpu < 0 or cfg.resources.workers_per_trial < 1:
        problems.append("resources: cpu must be > 0, gpu >= 0, workers_per_trial >= 1")
    if cfg.resources.gpu > 1 and cfg.resources.gpu != int(cfg.resources.gpu):
        problems.append(f"resources.gpu above 1 must be a whole number, got {cfg.resources.gpu}")
    if not problems:
        # Every default must make a valid training config. The stored sizes are only known
        # with the data (resolve_sizes), so a placeholder that fits any depth stands in.
        values = cfg.default_values()
        if values.get("img_size") == STORED:
            values["img_size"] = 2 ** int(values.get("depth", TrainConfig().depth)) * 4
        try:
            TrainConfig.from_flat(values)
        except (ValueError, TypeError) as exc:
            problems.append(f"the defaults do not make a valid training config: {exc}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return cfg


def _sub(cls: type, raw: Any, key: str, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {key} must be a mapping, got {raw!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown {key} key(s) {unknown}; known: {sorted(names)}")
    return cls(**raw)


def _param(name: str, spec: Any, where: str) -> ParamSpec:
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{where}: space.{name}: {msg}")

    if spec == STORED:
        if name != "img_size":
            raise fail("'stored' is only meaningful for img_size")
        return ParamSpec(name, choices=(STORED,))
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise fail(f"expected a list of choices or a mapping with low/high, got {spec!r}")
    allowed = {"choices", "low", "high", "log", "step", "default", "when"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise fail(f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    when = tuple(
        (parent, tuple(v if isinstance(v, list) else [v]))
        for parent, v in (spec.get("when") or {}).items()
    )
    if "choices" in spec:
        choices = spec["choices"]
        if choices == STORED and name == "img_size":
            choices = [STORED]
        if not isinstance(choices, list) or not choices:
            raise fail(f"choices must be a non-empty list, got {choices!r}")
        if spec.get("default") is not None and spec["default"] not in choices:
            raise fail(f"default {spec['default']!r} is not one of the choices {choices}")
        return ParamSpec(name, choices=tuple(choices), default=spec.get("default"), when=when)
    if "low" not in spec or "high" not in spec:
        raise fail("a range needs both low and high")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise fail(f"low and high must be numbers, got {low!r} and {high!r}")
    if not low < high:
        raise fail(f"low must be < high, got {low} and {high}")
    if spec.get("log") and low <= 0:
        raise fail(f"a log range needs low > 0, got {low}")
    default = spec.get("default")
    if default is not None and not low <= default <= high:
        raise fail(f"default {default} is outside [{low}, {high}]")
    integer = isinstance(low, int) and isinstance(high, int)
    return ParamSpec(
        name,
        low=low,
        high=high,
        log=bool(spec.get("log", False)),
        step=spec.get("step"),
        integer=integer,
        default=default,
        when=when,
    )

"""The main job (`babelgate run`): fit → calibrate → evaluate → utility → diagnosis → report.

Offline on the packaged default model and the built-in prompt set:

1. capture last-token activations of train (and held-out test) prompts at the candidate layers;
2. choose the layer (`babelgate.layer_choice.choose_layer`) unless one is given;
3. fit the gate on the high-resource (source) train rows, calibrate α on the same rows;
4. recalibrate each target (every non-source) language from b harmful + b harmless examples
   of its train split, for each budget b;
5. evaluate on the test split, same prompts for every method: the base model (`none`), the
   source-only gate (`gate_b0`), the recalibrated gates (`gate_b{b}`), directional ablation,
   activation addition, and CAST / AdaSteer when asked;
6. utility on multiple-choice questions under every method (gate fire rate on benign input);
7. the representation-vs-action diagnosis; 8. the report.

Everything goes into one run directory (config, metrics, completions, gate bundle,
diagnosis, utility, plots, report.md, report.html). Reruns resume (activation cache,
completions) instead of starting over.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from babelgate._version import __version__
from babelgate.capture import capture
from babelgate.errors import BabelgateError, DataError
from babelgate.evaluation import EvaluationResult, evaluate, jsonable
from babelgate.gate import Gate, sample_budget
from babelgate.generation import SteeringMethod
from babelgate.io import stable_seed, write_json_atomic
from babelgate.judges import get_judge
from babelgate.languages import normalize_code
from babelgate.models import ModelHandle
from babelgate.packaged import DEFAULT_MODEL
from babelgate.prompts import PromptSet

BASE_METHODS = ("none", "gate_b0", "ablation", "addition")
OPTIONAL_METHODS = ("cast", "adasteer")
TINY_PREFIX = "tiny-"
# Quick mode: three source and three target languages spanning the tiers.
QUICK_LANGUAGES = ("en", "fr", "zh", "hi", "sw", "am")


@dataclass
class RunOptions:
    """Every setting of the main job. `quick()` gives the demo/CI preset."""

    out: Path = Path("babelgate-run")
    model: str = DEFAULT_MODEL
    data: list[str] = field(default_factory=lambda: ["builtin"])
    languages: list[str] | None = None
    # Languages whose test prompts are generated and judged (default: all of `languages`).
    # Source languages left out here still fit the gate and enter the diagnosis; leaving
    # them out saves generation time on big models.
    eval_languages: list[str] | None = None
    budgets: list[int] = field(default_factory=lambda: [4])
    methods: list[str] | None = None
    layer: int | None = None
    rank: int = 10
    # Threshold rule for the source and every calibrated language (babelgate.threshold).
    objective: str = "balanced_f1"
    # Sized so the default run (21 built-in languages, 5 methods) fits in ~15 min on a 2-core
    # CPU with the 0.5B model: measured single-thread costs are ~0.55 s per captured prompt and
    # ~1.2 s per 24-token completion at batch 16 (prefill ~0.75 s + ~0.02 s per decoded token).
    max_new_tokens: int = 24
    n_train: int = 8
    n_test: int = 3
    n_diag_test: int = 4
    n_draws: int = 5
    diag_budgets: list[int] = field(default_factory=lambda: [0, 1, 2, 4])
    mmlu: str | None = None
    n_mcq: int = 40
    judge: str = "keyword"
    batch_size: int = 16
    seed: int = 0
    n_boot: int = 1000
    quick: bool = False
    progress: bool = True

    @classmethod
    def quick_preset(cls, **overrides: Any) -> RunOptions:
        base = cls(
            languages=list(QUICK_LANGUAGES),
            max_new_tokens=16,
            n_train=6,
            n_test=3,
            n_diag_test=4,
            n_draws=3,
            diag_budgets=[0, 1, 4],
            n_mcq=12,
            n_boot=200,
            quick=True,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def method_names(self) -> list[str]:
        """The methods to run, in report order (defaults: base methods + one gate per budget)."""
        gates = [f"gate_b{b}" for b in self.budgets]
        if self.methods is None:
            return ["none", "gate_b0", *gates, "ablation", "addition"]
        names = list(dict.fromkeys(self.methods))
        known = {*BASE_METHODS, *OPTIONAL_METHODS, *gates}
        for name in names:
            if name.startswith("gate_b") and name[6:].isdigit():
                continue
            if name not in known:
                raise DataError(
                    f"unknown method {name!r}; choose from none, gate_b0, gate_b<budget>, "
                    f"ablation, addition, cast, adasteer"
                )
        return names

    def validate(self) -> None:
        from babelgate.threshold import OBJECTIVES

        if self.objective not in OBJECTIVES:
            raise DataError(
                f"unknown threshold objective {self.objective!r}; choose one of {OBJECTIVES}"
            )
        if any(isinstance(b, bool) or b < 1 for b in self.budgets):
            raise DataError(f"budgets must be integers >= 1 (b = 0 is gate_b0), got {self.budgets}")
        for name, value in (
            ("n_train", self.n_train),
            ("n_test", self.n_test),
            ("max_new_tokens", self.max_new_tokens),
            ("rank", self.rank),
            ("batch_size", self.batch_size),
            ("n_mcq", self.n_mcq),
        ):
            if value < 1:
                raise DataError(f"{name} must be >= 1, got {value}")
        needed = max([*self.budgets, *self.method_budgets()], default=0)
        if needed > self.n_train:
            raise DataError(
                f"budget {needed} per class is larger than the {self.n_train} train examples per "
                "class and language this run draws (raise --n-train)"
            )

    def method_budgets(self) -> list[int]:
        return [
            int(n[6:]) for n in self.method_names() if n.startswith("gate_b") and n != "gate_b0"
        ]


@dataclass
class RunResult:
    """Paths and the main numbers of a finished run."""

    run_dir: Path
    layer: int
    evaluation: EvaluationResult
    timings: dict[str, float]
    report_md: Path
    report_html: Path


def resolve_model(spec: str, *, progress: bool = True) -> ModelHandle:
    """Load a model; `tiny-<arch>` gives a tiny random model (tests and demos only)."""
    if spec.startswith(TINY_PREFIX):
        from babelgate.testing import tiny_model

        arch = spec[len(TINY_PREFIX) :]
        # A 64-wide model gains nothing from intra-op threads, and on a busy machine their
        # synchronisation makes each matmul ~40x slower (measured); one thread is fastest.
        torch.set_num_threads(1)
        try:
            return tiny_model(arch)
        except ValueError as exc:
            raise BabelgateError(str(exc)) from exc
    from babelgate.models import load_model

    return load_model(spec, progress=progress)


def load_run_prompts(sources: Sequence[str], languages: Sequence[str] | None) -> PromptSet:
    """Prompts from every source, restricted to `languages` (each must be present)."""
    from babelgate.loaders import load_prompt_sources

    prompts = load_prompt_sources(list(sources))
    if languages is None:
        return prompts
    registry = prompts.registry
    codes = []
    for code in languages:
        norm = normalize_code(code)
        if norm not in registry:
            raise DataError(f"unknown language {code!r}; see `babelgate data languages`")
        codes.append(norm)
    present = set(prompts.languages())
    missing = [c for c in codes if c not in present]
    if missing:
        raise DataError(f"no prompts for language(s) {missing} in {list(sources)}")
    return prompts.filter(language=codes)


def _take(
    prompts: PromptSet, language: str, label: str, split: str, n: int, seed: int
) -> list[Any]:
    rows = list(prompts.filter(language=language, label=label, split=split))
    gen = torch.Generator().manual_seed(stable_seed(seed, language, label, split, "run-sample"))
    order = torch.randperm(len(rows), generator=gen).tolist()
    return [rows[i] for i in order[:n]]


def draw_rows(prompts: PromptSet, split: str, n: int, seed: int) -> PromptSet:
    """Up to n harmful + n harmless rows of `split` per language (seeded, stable)."""
    rows: list[Any] = []
    for lang in prompts.languages():
        for label in ("harmful", "harmless"):
            rows += _take(prompts, lang, label, split, n, seed)
    return PromptSet(rows, prompts.registry)


def candidate_layers(n_layers: int, extra: int | None = None) -> list[int]:
    """Blocks at 25–75 % depth (the layer choice's window), plus an explicitly chosen one."""
    layers = [i for i in range(n_layers) if 0.25 <= (i + 1) / n_layers <= 0.75]
    if not layers:
        layers = list(range(n_layers))
    if extra is not None:
        layers = sorted({*layers, extra})
    return layers


def split_languages(prompts: PromptSet) -> tuple[list[str], list[str]]:
    """(source = high-resource languages present, targets = every other language)."""
    registry = prompts.registry
    langs = prompts.languages()
    sources = [c for c in langs if c in registry and registry.tier_of(c) == "high"]
    if not sources:
        raise DataError(f"no high-resource (source) language among {langs}; add e.g. en")
    targets = [c for c in langs if c not in sources]
    return sources, targets


def _check_pools(train: PromptSet, languages: Sequence[str], need: int) -> None:
    for lang in languages:
        for label in ("harmful", "harmless"):
            n = len(train.filter(language=lang, label=label))
            if n < max(need, 1):
                raise DataError(
                    f"language {lang!r} has {n} {label} train prompts; this run needs {need}"
                )


class _Timer:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.times: dict[str, float] = {}
        self.log = log

    def step(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        self.timer.log(f"[bold cyan]▸ {self.name}[/]")

    def __exit__(self, *exc: object) -> None:
        self.timer.times[self.name] = round(time.perf_counter() - self.start, 2)


def build_methods(
    handle: ModelHandle,
    names: Sequence[str],
    gates: dict[int, Gate],
    baseline_train: PromptSet,
    *,
    batch_size: int,
    progress: bool,
) -> dict[str, SteeringMethod | None]:
    """The requested methods, each fitted from this run's data."""
    from babelgate.baselines import CAST, ActivationAddition, AdaSteer, DirectionalAblation
    from babelgate.guard import Guard

    source = gates[0]
    harmful = [p.text for p in baseline_train if p.label == "harmful"]
    harmless = [p.text for p in baseline_train if p.label == "harmless"]
    out: dict[str, SteeringMethod | None] = {}
    for name in names:
        if name == "none":
            out[name] = None
        elif name.startswith("gate_b"):
            out[name] = Guard(handle, gates[int(name[6:])])
        elif name == "ablation":
            out[name] = DirectionalAblation.from_gate(handle, source)
        elif name == "addition":
            out[name] = ActivationAddition.from_gate(handle, source)
        elif name == "cast":
            out[name] = CAST.fit(
                handle, harmful, harmless, batch_size=batch_size, progress=progress
            )
        elif name == "adasteer":
            out[name] = AdaSteer.fit(
                handle, harmful, harmless, batch_size=batch_size, progress=progress
            )
    return out


def run_pipeline(
    options: RunOptions,
    *,
    handle: ModelHandle | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the main job into `options.out`; `handle` overrides `options.model`."""
    from babelgate.diagnosis import diagnose
    from babelgate.layer_choice import choose_layer
    from babelgate.report import build_report
    from babelgate.utility import evaluate_utility, load_mcq

    say = log or (lambda _msg: None)
    options.validate()
    names = options.method_names()
    timer = _Timer(say)
    started = time.perf_counter()
    run_dir = Path(options.out)

    with timer.step("load data"):
        prompts = load_run_prompts(options.data, options.languages)
        sources, targets = split_languages(prompts)
        train = draw_rows(prompts, "train", options.n_train, options.seed)
        test = draw_rows(prompts, "test", max(options.n_test, options.n_diag_test), options.seed)
        eval_set = draw_rows(test, "test", options.n_test, options.seed)
        eval_codes = prompts.languages()
        if options.eval_languages is not None:
            eval_codes = [normalize_code(c) for c in options.eval_languages]
            unknown = [c for c in eval_codes if c not in prompts.languages()]
            if unknown:
                raise DataError(
                    f"--eval-languages {unknown} are not among this run's languages "
                    f"{prompts.languages()}"
                )
            eval_set = eval_set.filter(language=eval_codes)
        _check_pools(train, prompts.languages(), max(options.method_budgets(), default=1))
        for lang in eval_codes:
            if not len(eval_set.filter(language=lang)):
                raise DataError(f"language {lang!r} has no test prompts to evaluate")
        mcq = load_mcq(options.mmlu or "builtin", limit=options.n_mcq, seed=options.seed)
    run_dir.mkdir(parents=True, exist_ok=True)

    with timer.step("load model"):
        if handle is None:
            handle = resolve_model(options.model, progress=options.progress)

    with timer.step("capture activations"):
        layers = candidate_layers(handle.n_layers, options.layer)
        rows = train.concat(test)
        acts = capture(
            handle,
            rows.texts(),
            layers,
            "last",
            batch_size=options.batch_size,
            progress=options.progress,
        )
        labels = torch.tensor(rows.labels(), dtype=torch.bool)
        codes = [p.language for p in rows]
        splits = [p.split for p in rows]

    with timer.step("choose layer"):
        if options.layer is not None:
            if not 0 <= options.layer < handle.n_layers:
                raise DataError(f"--layer {options.layer} out of range (0..{handle.n_layers - 1})")
            layer, choice = options.layer, None
        else:
            choice = choose_layer(
                acts,
                labels,
                codes,
                splits,
                sources,
                layers,
                num_layers=handle.n_layers,
                transfer_languages=targets,
                rank=options.rank,
            )
            layer = choice.layer
        write_json_atomic(
            run_dir / "layer_choice.json",
            {
                "layer": layer,
                "explicit": options.layer is not None,
                "choice": None if choice is None else jsonable(choice.to_dict()),
            },
        )
        x = acts[:, layers.index(layer), :]

    with timer.step("fit gate"):
        is_train = torch.tensor([s == "train" for s in splits])
        tr_codes = [c for c, keep in zip(codes, is_train.tolist(), strict=True) if keep]
        rank = min(options.rank, len(sources))
        gate = Gate.fit(
            x[is_train],
            labels[is_train],
            tr_codes,
            layer=layer,
            source_languages=sources,
            rank=rank,
            seed=options.seed,
            objective=options.objective,
            model_fingerprint=handle.fingerprint,
            data_digest=train.digest(),
            model_spec=handle.name,
        )
        gate = gate.calibrate_alpha(x[is_train], labels[is_train], tr_codes)
        gates: dict[int, Gate] = {0: gate}
        draws: dict[str, dict[str, Any]] = {}
        for b in options.method_budgets():
            calibrated = gate
            for lang in targets:
                sel = is_train & torch.tensor([c == lang for c in codes])
                seed = stable_seed(
                    options.seed, handle.fingerprint, lang, b, rank, "calibration-draw"
                )
                pos, neg, ip, ineg = sample_budget(x[sel & labels], x[sel & ~labels], b, seed)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", UserWarning)
                    calibrated = calibrated.calibrate(lang, pos, neg, mode="refit")
                draws.setdefault(f"b{b}", {})[lang] = {
                    "seed": seed,
                    "harmful_rows": ip.tolist(),
                    "harmless_rows": ineg.tolist(),
                    "status": calibrated.calibrations[lang].status,
                    "warnings": [str(w.message) for w in caught],
                }
            gates[b] = calibrated
        best = gates[max(gates)]
        best.save(run_dir / "gate")
        write_json_atomic(
            run_dir / "calibration.json",
            {
                "source_languages": sources,
                "target_languages": targets,
                "layer": layer,
                "rank_requested": options.rank,
                "rank": gate.rank,
                "objective": gate.objective,
                "alpha": None if gate.alpha is None else gate.alpha.to_dict(),
                "source_threshold": gate.source_threshold.to_dict(),
                "fit_stats": jsonable(gate.fit_stats),
                "budgets": {
                    f"b{b}": {
                        lang: jsonable(g.calibrations[lang].meta()) for lang in g.calibrations
                    }
                    for b, g in gates.items()
                    if b
                },
                "draws": draws,
            },
        )

    with timer.step("build methods"):
        target_train = train.filter(language=targets) if targets else train
        methods = build_methods(
            handle,
            names,
            gates,
            target_train,
            batch_size=options.batch_size,
            progress=options.progress,
        )

    config = {
        "run": {k: jsonable(v) for k, v in asdict(options).items() if k != "progress"},
        "seed": options.seed,
        "layer": layer,
        "layer_source": "explicit" if options.layer is not None else "choose_layer",
        "rank": gate.rank,
        "objective": gate.objective,
        "alpha": None if gate.alpha is None else gate.alpha.to_dict(),
        "source_languages": sources,
        "target_languages": targets,
        "budgets": {"gate_b0": 0, **{f"gate_b{b}": b for b in options.method_budgets()}},
        "train_digest": train.digest(),
        "eval_digest": eval_set.digest(),
        "calibration_mode": "refit",
        "utility": {"source": options.mmlu or "builtin", "n_questions": len(mcq)},
    }
    with timer.step("evaluate"):
        judge = get_judge(options.judge)
        evaluation = evaluate(
            handle,
            eval_set,
            methods,
            judge,
            run_dir,
            max_new_tokens=options.max_new_tokens,
            batch_size=options.batch_size,
            progress=options.progress,
            n_boot=options.n_boot,
            seed=options.seed,
            config=config,
        )

    with timer.step("utility"):
        utility = {}
        for name, method in methods.items():
            result = evaluate_utility(
                handle,
                mcq,
                method,
                name=name,
                batch_size=options.batch_size,
                progress=options.progress,
            )
            utility[name] = result.to_dict()
        write_json_atomic(
            run_dir / "utility.json",
            {
                "source": options.mmlu or "builtin",
                "n_questions": len(mcq),
                "prompt": "zero-shot '{question}\\n\\nA. ...\\nD. ...\\n\\nAnswer:', letter logits",
                "methods": utility,
            },
        )

    with timer.step("diagnosis"):
        registry = prompts.registry
        tiers = {c: registry.tier_of(c) for c in prompts.languages() if c in registry}
        diag_budgets = [b for b in options.diag_budgets if b <= options.n_train]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            diag_result = diagnose(
                acts,
                labels,
                codes,
                splits,
                sources,
                layers=layers,
                tiers=tiers,
                budgets=diag_budgets,
                n_draws=options.n_draws,
                budget_layer=layer,
                num_layers=handle.n_layers,
                rank=gate.rank,
                seed=options.seed,
            )
        diag_result.save(run_dir / "diagnosis")

    timings = dict(timer.times)
    with timer.step("report"):
        timings["total_before_report"] = round(time.perf_counter() - started, 2)
        write_json_atomic(
            run_dir / "timings.json", {"seconds": timings, "library_version": __version__}
        )
        md, html = build_report(run_dir)
    timings.update(timer.times)
    timings["total"] = round(time.perf_counter() - started, 2)
    write_json_atomic(
        run_dir / "timings.json", {"seconds": timings, "library_version": __version__}
    )
    return RunResult(run_dir, layer, evaluation, timings, md, html)

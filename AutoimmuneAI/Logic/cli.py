"""The ``autoimmuneai`` command line: demo, synth, validate, train, evaluate, predict, report.

Each command imports its machinery lazily so that ``--help`` is instant. Exit status, the
same for every command (the README's "Exit codes" table)::

    0    done
    1    unexpected internal error (a bug: the traceback is printed)
    2    bad input: a manifest, image, lab value, bundle or option (one line names it);
         ``validate`` also when any row is unusable
    3    ``predict`` finished, but some cases failed (listed in errors.csv)
    130  interrupted (Ctrl-C)

``--debug`` prints the traceback of a bad-input error too and keeps its status.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .contracts import ERRORS_CSV
from .errors import InputError
from .explain.methods import METHODS

log = logging.getLogger("autoimmuneai")
EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1  # a bug: the traceback is printed
EXIT_USER_ERROR = 2  # bad input (also what argparse uses for a bad command line)
EXIT_PARTIAL = 3  # batch finished but some cases failed
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or EXIT_OK)
    except InputError as exc:
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"autoimmuneai {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"autoimmuneai {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: keep the traceback so that it can be reported
        _close_progress_bars()
        traceback.print_exc()
        print(
            f"autoimmuneai {args.command}: internal error ({type(exc).__name__}: {exc}); "
            "this is a bug, please report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


def _close_progress_bars() -> None:
    """End open tqdm bars so that an error message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each command's options are in its own function."""
    parser = argparse.ArgumentParser(
        prog="autoimmuneai",
        description="Multimodal (MRI + serology) differential diagnosis and progression risk "
        "with evidence shown as 3D Slicer segments. Research use only.",
    )
    parser.add_argument("--version", action="version", version=f"autoimmuneai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    def command(name: str, help_text: str, func: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
        p.set_defaults(func=func)
        return p

    _demo_options(
        command("demo", "Synthesise the demo cohort, train, evaluate, explain and report.", _demo)
    )
    _synth_options(
        command("synth", "Generate the synthetic demo cohort on the MNI152 brain.", _synth)
    )
    _validate_options(command("validate", "Check a cohort manifest against a panel.", _validate))
    _train_options(
        command("train", "Train the fused model, the baselines and write a model bundle.", _train)
    )
    _evaluate_options(
        command("evaluate", "Evaluate a bundle and its baselines on a cohort.", _evaluate)
    )
    _predict_options(
        command(
            "predict",
            "Predict (and explain) every case of a cohort manifest, or one image with its labs.",
            _predict,
        )
    )
    _report_options(command("report", "Rebuild the HTML report from saved results.", _report))
    return parser


def _demo_options(p: argparse.ArgumentParser) -> None:
    """Options of ``autoimmuneai demo``."""
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument(
        "--cases",
        type=int,
        default=None,
        help="cohort size (default 240; 1000 with --full, half of it held out)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--full", action="store_true", help="the configuration the targets are measured on"
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default by size)")
    p.add_argument("--resume", action="store_true", help="reuse finished stages in --out")
    p.add_argument(
        "--panel",
        default="cns_autoimmune",
        help="the disease family of the demo (cns_autoimmune, ms_course)",
    )


def _synth_options(p: argparse.ArgumentParser) -> None:
    """Options of ``autoimmuneai synth``."""
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voxel-size", type=float, default=2.0, help="mm (default 2)")
    p.add_argument("--oblique", type=float, default=0.0, help="rotate the image grid by DEG")
    p.add_argument("--anisotropic", action="store_true", help="thick slices (anisotropic voxels)")
    p.add_argument(
        "--anatomy",
        choices=["brain", "head"],
        default="head",
        help="head: clinical scans (whole head, head pose, mixed 1 mm / 2D 4-6 mm / 2 mm "
        "acquisitions, scanner scale; default); brain: skull-stripped upright images on one "
        "grid (--voxel-size, --oblique, --anisotropic apply to these only)",
    )
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--panel",
        default="cns_autoimmune",
        help="the disease family to generate (cns_autoimmune, ms_course)",
    )


def _validate_options(p: argparse.ArgumentParser) -> None:
    """Options of ``autoimmuneai validate``."""
    p.add_argument("--cohort", type=Path, required=True, help="manifest (CSV, TSV or XLSX)")
    p.add_argument("--panel", default="cns_autoimmune", help="panel name or JSON path")
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept image paths outside the manifest's folder",
    )


def _train_options(p: argparse.ArgumentParser) -> None:
    """Options of ``autoimmuneai train``."""
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="bundle folder")
    p.add_argument("--panel", default="cns_autoimmune")
    p.add_argument(
        "--folds",
        type=int,
        default=1,
        help="cross-validation folds (1: none); with K > 1 the calibration map and the "
        "prediction sets come from every train+val case's out-of-fold outputs "
        "(cross-conformal), at the cost of K more trainings",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fusion", choices=["film", "concat"], default="film")
    p.add_argument(
        "--preprocessing",
        choices=["model_grid", "mni152"],
        default="mni152",
        help="mni152: bias correction, registration to MNI152, brain mask (clinical scans; "
        "default); model_grid: resample and z-score only (skull-stripped upright images)",
    )
    p.add_argument("--alpha", type=float, default=0.1, help="conformal error rate")
    p.add_argument(
        "--conformal",
        choices=["lac", "raps", "aps"],
        default="lac",
        help="conformal score: LAC (1 - p, smallest sets; default), RAPS or APS",
    )
    p.add_argument(
        "--raps-lam",
        help="RAPS penalty per class beyond the top one (default: the training default, "
        "0.05), or 'tune' to choose it on 30%% of the validation cases (the threshold then "
        "rests on the other 70%%)",
    )
    p.add_argument(
        "--class-conditional",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="class-conditional sets (with --class-coverage: the marginal threshold floored per "
        "class; with --class-coverage off: Mondrian); default: when every class has enough "
        "calibration cases",
    )
    p.add_argument(
        "--class-coverage",
        default="0.85",
        help="coverage floor for each diagnosis beside the marginal 1 - alpha (default 0.85), "
        "or 'off' for plain Mondrian sets at 1 - alpha per class",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument(
        "--distributed", action="store_true", help="DistributedDataParallel under torchrun"
    )


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    """Options of ``autoimmuneai evaluate``."""
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default=None, help="evaluate only this split (e.g. test)")
    p.add_argument(
        "--explain-quality",
        action="store_true",
        help="also measure explanation quality (localisation, sanity, faithfulness)",
    )
    p.add_argument("--explain-cases", type=int, default=10)


def _predict_options(p: argparse.ArgumentParser) -> None:
    """Options of ``autoimmuneai predict``."""
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--cohort", type=Path, default=None, help="manifest (CSV, TSV or XLSX)")
    p.add_argument(
        "--image", type=Path, default=None, help="one case without a manifest: its image file"
    )
    p.add_argument(
        "--lab",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a lab value of the --image case, as on a lab sheet (repeatable): "
        "--lab NAME=1:160 --lab OTHER=neg (names as in the panel); labs not given are missing",
    )
    p.add_argument(
        "--labs",
        type=Path,
        default=None,
        metavar="JSON",
        help='the --image case\'s labs as a JSON object: {"NAME": "1:160", "OTHER": "neg"}',
    )
    p.add_argument("--case-id", default=None, help="id of the --image case (default: file name)")
    p.add_argument(
        "--series",
        default=None,
        metavar="PATTERN",
        help="the --image is a DICOM study folder: read the series whose description matches "
        "PATTERN (case-insensitive regular expression, e.g. FLAIR; a manifest has a series "
        "column instead)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--explain", action="store_true", help="attributions, evidence segments, scene")
    p.add_argument(
        "--method",
        default=None,
        choices=METHODS,
        help="image attribution method (default: the bundle's)",
    )
    p.add_argument("--target", default=None, help="class to explain (default: predicted)")
    p.add_argument("--resume", action="store_true", help="skip cases whose outputs are complete")
    p.add_argument("--no-snapshot", action="store_true", help="skip the PNG snapshots")
    p.add_argument(
        "--hash-ids",
        default=None,
        metavar="SALT",
        help="replace case_id by a salted hash in every output",
    )
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="conformal error rate (default: the bundle's, e.g. 0.1 for 90%% coverage)",
    )
    p.add_argument(
        "--bands",
        type=_bands,
        default=None,
        metavar="P1,P2",
        help="evidence bands as top percentiles of positive attribution (default 1,5)",
    )


def _report_options(p: argparse.ArgumentParser) -> None:
    """Options of ``autoimmuneai report``."""
    p.add_argument(
        "--eval", type=Path, required=True, dest="eval_dir", help="a demo or evaluate folder"
    )
    p.add_argument("--out", type=Path, default=None, help="report path (default EVAL/report.html)")


def _bands(text: str) -> tuple[float, ...]:
    """``"1,5"`` -> (1.0, 5.0): increasing percentages in (0, 100] (``explain.regions``'s rule)."""
    from .explain.regions import check_bands

    try:
        bands = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be numbers like 1,5, not {text!r}") from None
    try:
        return check_bands(bands)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _demo(args: argparse.Namespace) -> int:
    from .workflows.demo import run_demo

    return run_demo(
        args.out,
        cases=args.cases,
        seed=args.seed,
        full=args.full,
        epochs=args.epochs,
        resume=args.resume,
        panel=args.panel,
    )


def _synth(args: argparse.Namespace) -> int:
    from .synth.families import generator_for

    if args.cases < 1:
        raise InputError("must be at least 1", field="--cases")
    generate_cohort = generator_for(args.panel)
    manifest = generate_cohort(
        args.out,
        args.cases,
        args.seed,
        voxel_size=args.voxel_size,
        oblique_deg=args.oblique,
        anisotropic=args.anisotropic,
        workers=args.workers,
        anatomy=args.anatomy,
    )
    print(f"wrote {args.cases} cases: {manifest}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .workflows.validate import validate_manifest

    report = validate_manifest(args.cohort, args.panel, allow_outside_root=args.allow_outside_root)
    print(report.render())
    return EXIT_OK if report.usable else EXIT_USER_ERROR


def _raps_lam(text: str) -> float | None:
    """``--raps-lam``: a penalty >= 0, or None for "tune"."""
    if text == "tune":
        return None
    try:
        lam = float(text)
    except ValueError:
        lam = -1.0
    if not 0.0 <= lam < math.inf:
        raise InputError(f"--raps-lam must be a number >= 0 or 'tune', got {text!r}")
    return lam


def _class_coverage(text: str) -> float | None:
    """``--class-coverage``: a coverage in (0, 1), or 'off'."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise InputError(f"--class-coverage must be a number in (0, 1) or 'off', got {text!r}")
    return value


def _train(args: argparse.Namespace) -> int:
    from .training.trainer import TrainConfig, train_bundle

    config = TrainConfig(
        folds=args.folds,
        seed=args.seed,
        fusion=args.fusion,
        preprocessing=args.preprocessing,
        alpha=args.alpha,
        conformal_method=args.conformal,
        class_conditional=args.class_conditional,
        class_coverage=_class_coverage(args.class_coverage),
        panel=args.panel,
    )
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.raps_lam is not None:
        config.conformal_lam = _raps_lam(args.raps_lam)
    bundle = train_bundle(
        args.cohort, args.out, config, resume=args.resume, distributed=args.distributed
    )
    print(f"bundle: {bundle}")
    metadata = json.loads((Path(bundle) / "configs" / "metadata.json").read_text(encoding="utf-8"))
    excluded = (metadata.get("training") or {}).get("excluded_cases") or []
    if excluded:
        print(f"{len(excluded)} case(s) left out: their image could not be used (excluded_cases)")
        return EXIT_PARTIAL
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .workflows.evaluate import evaluate_bundle

    _check_bundle_folder(args.bundle)
    metrics = evaluate_bundle(args.bundle, args.cohort, args.out, split=args.split)
    if args.explain_quality:
        from .explain.quality import measure_explanation_quality

        measure_explanation_quality(
            args.bundle, args.cohort, args.out, split=args.split, n_cases=args.explain_cases
        )
    d = metrics.get("diagnosis", {})
    print(
        f"balanced accuracy {d.get('balanced_accuracy', float('nan')):.3f}, "
        f"macro AUROC {d.get('macro_auroc', float('nan')):.3f} -> {args.out / 'metrics.json'}"
    )
    if metrics.get("failed_cases"):
        print(f"{metrics['failed_cases']} case(s) failed -> {args.out / ERRORS_CSV}")
        return EXIT_PARTIAL
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from .inference.cohort_run import predict_cohort

    _check_bundle_folder(args.bundle)
    labs = _single_case_labs(args)
    result = predict_cohort(
        args.bundle,
        args.cohort,
        args.out,
        image=args.image,
        labs=labs,
        case_id=args.case_id,
        series=args.series,
        explain=args.explain,
        method=args.method,
        target=args.target,
        resume=args.resume,
        snapshot=not args.no_snapshot,
        hash_salt=args.hash_ids,
        allow_outside_root=args.allow_outside_root,
        alpha=args.alpha,
        bands=args.bands,
    )
    print(result.summary())
    return EXIT_PARTIAL if result.n_failed else EXIT_OK


def _check_bundle_folder(path: Path) -> None:
    """``--bundle`` must be the bundle folder; a file inside it gets a pointed message."""
    if path.is_file():
        folder = path.parent.parent if path.name == "metadata.json" else path.parent
        raise InputError(
            f"is a file; pass the bundle folder (the one holding configs/ and models/), "
            f"e.g. --bundle {folder}",
            file=path,
            field="--bundle",
        )


def _single_case_labs(args: argparse.Namespace) -> dict[str, object] | None:
    """The labs of ``predict --image``: ``--labs`` JSON, then each ``--lab NAME=VALUE``."""
    if (args.cohort is None) == (args.image is None):
        raise InputError(
            "give either --cohort (a manifest) or --image (one case), not "
            + ("both" if args.image is not None else "neither"),
            field="--cohort",
        )
    if args.cohort is not None:
        if args.lab or args.labs or args.case_id or args.series:
            raise InputError(
                "--lab, --labs, --case-id and --series go with --image only (a manifest has "
                "a series column)",
                field="--lab",
            )
        return None
    labs: dict[str, object] = {}
    if args.labs is not None:
        try:
            data = json.loads(args.labs.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("labs file not found", file=args.labs, field="--labs") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"not readable JSON ({exc})", file=args.labs, field="--labs") from None
        if not isinstance(data, dict):
            raise InputError(
                'expected a JSON object of lab name -> value, such as {"NAME": "1:160"}',
                file=args.labs,
            )
        labs.update({str(k): "" if v is None else v for k, v in data.items()})
    for item in args.lab:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"expected NAME=VALUE, got {item!r}", field="--lab")
        labs[name.strip()] = value.strip()
    return labs


def _report(args: argparse.Namespace) -> int:
    from .output.report import build_report

    path = build_report(args.eval_dir, args.out)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

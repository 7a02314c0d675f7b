"""AI-platform commands: ``dataset create|show|list``, ``train``, ``models list|show|import|export``,
``infer``.  Thin: parse, call the package, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.cli import model_cmds
from hounsfield.cli.common import DEVICE_HELP, console, edge, err_console, state
from hounsfield.errors import InvalidInput


def register(app: typer.Typer) -> None:
    ds = typer.Typer(help="Versioned datasets (series + truth + patient-level splits).",
                     no_args_is_help=True)
    ds.command("create")(dataset_create)
    ds.command("show")(dataset_show)
    ds.command("list")(dataset_list)
    app.add_typer(ds, name="dataset")
    app.command("train")(train_cmd)
    models = typer.Typer(help="Registered models (MLflow registry, MONAI bundles).",
                         no_args_is_help=True)
    models.command("list")(models_list)
    models.command("show")(models_show)
    models.command("import")(models_import)
    models.command("export")(models_export)
    model_cmds.register(models)  # promote | demote | rollback | history
    app.add_typer(models, name="models")
    app.command("infer")(infer_cmd)


# -- datasets ------------------------------------------------------------------------------------

def dataset_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="dataset name")],
    truth: Annotated[Path, typer.Option(help="truth CSV (LUNA16 annotations.csv columns)")],
    site: Annotated[Optional[list[str]], typer.Option(help="only these sites (repeatable)")] = None,
    heldout_site: Annotated[Optional[list[str]], typer.Option(help="held-out site (repeatable)")] = None,
    fractions: Annotated[str, typer.Option(help="train,validation,test fractions")] = "0.7,0.15,0.15",
    seed: Annotated[int, typer.Option(help="split seed")] = 0,
    only_annotated: Annotated[bool, typer.Option(help="only series named in the truth CSV")] = False,
) -> None:
    """Create the next version of a dataset from archived CT series and a truth CSV."""
    from hounsfield.datasets.manifest import create_dataset, summary
    from hounsfield.evaluate.luna_csv import read_annotations

    with edge():
        try:
            fr = tuple(float(v) for v in fractions.split(","))
        except ValueError:
            raise InvalidInput(f"--fractions {fractions!r}: three numbers like 0.7,0.15,0.15") from None
        if len(fr) != 3:
            raise InvalidInput("--fractions needs three numbers: train,validation,test")
        st = state(ctx)
        ds = create_dataset(st.archive, st.settings, name, read_annotations(truth), sites=site,
                            heldout_sites=heldout_site or (), fractions=fr, seed=seed,
                            truth_source=str(truth), only_annotated=only_annotated)
        _print_dataset(summary(ds))


def dataset_show(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show a dataset version: splits, sites, hash and the split check."""
    from hounsfield.datasets.manifest import open_dataset, summary

    with edge():
        ds = open_dataset(state(ctx).settings, ref)
        if as_json:
            console.print_json(json.dumps(ds.manifest))
        else:
            _print_dataset(summary(ds))


def dataset_list(ctx: typer.Context) -> None:
    """List dataset versions."""
    from hounsfield.datasets.manifest import list_datasets

    with edge():
        t = Table("dataset", "created", "series", "nodules", "sites", "held out", "check")
        for d in list_datasets(state(ctx).settings):
            t.add_row(d["dataset"], d["created_at"], str(d["series"]), str(d["nodules"]),
                      ",".join(d["sites"]), ",".join(d["heldout_sites"]), d["check"])
        console.print(t)


def _print_dataset(d: dict) -> None:
    console.print(f"[bold]{d['dataset']}[/]  hash {d['hash'][:16]}…  check: {d['check']}")
    console.print(f"sites: {', '.join(d['sites'])}   held out: {', '.join(d['heldout_sites']) or '-'}")
    t = Table("split", "patients", "series", "nodules")
    for split, c in sorted(d["splits"].items()):
        t.add_row(split, str(c["patients"]), str(c["series"]), str(c["nodules"]))
    console.print(t)


# -- training ------------------------------------------------------------------------------------

def train_cmd(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="recipe name (lung-nodule-detection) or YAML file")],
    dataset: Annotated[str, typer.Option(help="dataset NAME[@VERSION]")],
    base: Annotated[Optional[str], typer.Option(help="fine-tune from MODEL@VERSION")] = None,
    name: Annotated[Optional[str], typer.Option(help="registered model name")] = None,
    preset: Annotated[Optional[str], typer.Option(help="recipe preset (gpu, heatmap, tiny)")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="override the time budget")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="override max epochs")] = None,
    resume: Annotated[Optional[str], typer.Option(help="checkpoint path, or 'last'")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="run folder (default data_dir/runs/…)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples in reports")] = 1000,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Train (or fine-tune) a model, evaluate it on the test splits and register it."""
    from hounsfield.train.run import train

    with edge():
        over: dict = {}
        if max_minutes is not None:
            over["max_minutes"] = max_minutes
        if max_epochs is not None:
            over["max_epochs"] = max_epochs
        st = state(ctx)
        res = train(st.archive, st.settings, recipe, dataset, model_name=name, base=base,
                    preset=preset, overrides=over, resume=resume, run_dir=run_dir,
                    bootstrap=bootstrap, device=device,
                    log=lambda m: err_console.print(f"[dim]{m}[/]"))
        console.print(f"trained {res.epochs} epochs / {res.steps} steps in {res.seconds:.0f} s; "
                      f"best validation CPM {res.best_val_cpm}")
        if res.model:
            console.print(f"registered [bold]{res.model}[/]")
        from hounsfield.cli.evaluate_cmds import print_summary

        for split, rep in res.reports.items():
            if split.endswith("-base"):
                continue
            console.print(f"[bold]{split}[/]")
            print_summary(rep)
        for split, p in res.report_paths.items():
            console.print(f"report ({split}): {p}")


# -- registry ------------------------------------------------------------------------------------

def models_list(ctx: typer.Context, name: Annotated[Optional[str], typer.Argument()] = None) -> None:
    """List registered model versions with lineage and headline evaluation numbers, then each
    version's aliases, the evaluation that counts for promotion and its Device UID."""
    from hounsfield.registry.mlflow_registry import ModelRegistry

    with edge():
        t = Table("model", "dataset", "base", "recipe", "code", "test CPM", "heldout CPM")
        reg = ModelRegistry(state(ctx).settings)
        versions = reg.versions(name)
        for mv in versions:
            tg = mv.tags
            cpm = next((v for k, v in tg.items() if k.endswith("-test.cpm")
                        and "heldout" not in k), "")
            held = next((v for k, v in tg.items() if k.endswith("heldout-test.cpm")), "")
            t.add_row(mv.ref, tg.get("dataset", ""), tg.get("base_model", ""),
                      tg.get("recipe", tg.get("bundle_name", "")), tg.get("code_version", ""),
                      _short(cpm), _short(held))
        console.print(t)
        model_cmds.print_approval_lines(reg, versions)


def _short(v: str) -> str:
    try:
        return f"{float(v):.3f}"
    except ValueError:
        return v


def models_show(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME[@VERSION]")]) -> None:
    """Show one model version: source bundle, lineage tags, attached reports."""
    from hounsfield.registry.mlflow_registry import ModelRegistry

    with edge():
        reg = ModelRegistry(state(ctx).settings)
        mv = reg.resolve(ref)
        # plain "key: value" lines: paths and hashes must not be cut to the terminal width
        typer.echo(mv.ref)
        typer.echo(f"  bundle: {reg.bundle_path(mv)}")
        typer.echo(f"  mlflow run: {mv.run_id}")
        typer.echo(f"  aliases: {', '.join(mv.aliases) or '-'}")
        for k, v in sorted(mv.tags.items()):
            typer.echo(f"  {k}: {v}")
        for p in reg.reports(mv):
            typer.echo(f"  report: {p}")


def models_import(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="bundle directory (Hounsfield or MONAI model zoo)")],
    name: Annotated[Optional[str], typer.Option(help="registered name (default: bundle name)")] = None,
) -> None:
    """Register a MONAI bundle from disk as a new model version."""
    from hounsfield.models.bundle import read_bundle_info
    from hounsfield.registry.mlflow_registry import ModelRegistry

    with edge():
        if not path.is_dir():
            raise InvalidInput(f"{path} is not a directory")
        info = read_bundle_info(path)
        nm = name or info["metadata"].get("name") or path.name
        runnable = "runnable here"
        if info["hounsfield"] is None:  # a model-zoo bundle: say whether `infer` can run it
            from hounsfield.models.zoo import load_zoo_config

            try:
                z = load_zoo_config(path)
                runnable = (f"MONAI zoo RetinaNet bundle, {z.backbone} FPN at "
                            f"{' x '.join(f'{v:g}' for v in z.pixdim)} mm: runnable here")
            except InvalidInput as exc:
                runnable = f"MONAI zoo bundle, registered but not runnable here: {exc}"
        mv = ModelRegistry(state(ctx).settings).import_bundle(path, nm.replace(" ", "_"))
        console.print(f"registered [bold]{mv.ref}[/] ({runnable})", highlight=False,
                      soft_wrap=True)


def models_export(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
                  dest: Annotated[Path, typer.Argument(help="destination folder (new)")]) -> None:
    """Copy a version's MONAI bundle (with its evaluation reports) to a folder."""
    from hounsfield.registry.mlflow_registry import ModelRegistry

    with edge():
        reg = ModelRegistry(state(ctx).settings)
        out = reg.export_bundle(reg.resolve(ref), dest)
        console.print(f"exported to {out}")


# -- inference -----------------------------------------------------------------------------------

def infer_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
    series_uid: Annotated[str, typer.Argument(help="SeriesInstanceUID in the archive")],
    precision: Annotated[str, typer.Option(help="fp32 | bf16 | amp")] = "fp32",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    tta: Annotated[Optional[int], typer.Option(
        help="two-stage models: re-score the top K candidates over 8 flips (0 = off; default: "
             "the model's setting)")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Detect nodules in one archived series; findings in patient mm with provenance."""
    from hounsfield.infer import infer_series

    with edge():
        if precision not in ("fp32", "bf16", "amp"):
            raise InvalidInput(f"--precision {precision!r}: fp32, bf16 or amp")
        st = state(ctx)
        res = infer_series(st.archive, st.settings, model, series_uid, device=device,
                           precision=precision, tta_top_k=tta)  # type: ignore[arg-type]
        if as_json:
            console.print_json(json.dumps(res.to_dict()))
            return
        t = Table("x mm", "y mm", "z mm", "diameter mm", "probability",
                  title=f"{len(res.findings)} finding(s) in {series_uid}")
        for f in res.findings:
            t.add_row(f"{f.x_mm:.1f}", f"{f.y_mm:.1f}", f"{f.z_mm:.1f}", f"{f.diameter_mm:.1f}",
                      f"{f.probability:.3f}")
        console.print(t)
        p = res.provenance
        console.print(f"model {p['model']}@{p['model_version']}, {p['precision']} on "
                      f"{p['device']}, network {p['network_s']} s, preprocessing "
                      f"{p['preprocess_s']} s")

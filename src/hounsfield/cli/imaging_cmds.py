"""Imaging commands: fingerprint, plan, volume (series -> NIfTI / NRRD / MetaImage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from hounsfield.cli.common import console, edge, progress, state
from hounsfield.errors import InvalidInput


def register(app: typer.Typer) -> None:
    app.command("fingerprint")(fingerprint_cmd)
    app.command("plan")(plan_cmd)
    app.command("volume")(volume_cmd)


def fingerprint_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON file to write")] = Path("fingerprint.json"),
    site: Annotated[Optional[str], typer.Option(help="only this site")] = None,
    modality: Annotated[Optional[str], typer.Option(help="CT or MR")] = None,
    samples: Annotated[int, typer.Option(help="voxels sampled per series")] = 10_000,
) -> None:
    """Dataset fingerprint per site and scanner (spacing, thickness, intensities, kernels)."""
    from hounsfield.archive.models import Series
    from hounsfield.imaging.fingerprint import fingerprint
    from sqlalchemy import func, select

    with edge():
        archive = state(ctx).archive
        with archive.session() as s:
            total = s.scalar(select(func.count(Series.id)).where(Series.modality.in_(("CT", "MR"))))
        with progress() as bar:
            task = bar.add_task("fingerprinting", total=total or 0)
            fp = fingerprint(archive, site=site, modality=modality, samples_per_series=samples,
                             on_item=lambda _u: bar.advance(task))
        out.write_text(json.dumps(fp, indent=2) + "\n")
        for g in fp["groups"]:
            console.print(f"{g['site'] or '-'} | {g['manufacturer'] or '?'} {g['model'] or ''}: "
                          f"{g['n_series']} series, median spacing {g['spacing_mm'].get('median')}")
        if fp["skipped"]:
            console.print(f"skipped {len(fp['skipped'])} series (reasons in {out})")
        console.print(f"wrote {out}")


def plan_cmd(
    fingerprint_file: Annotated[Path, typer.Argument(help="fingerprint JSON")],
    modality: Annotated[str, typer.Option(help="CT or MR")] = "CT",
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("plan.json"),
) -> None:
    """Derive the preprocessing plan (target spacing, clipping, normalisation) from a fingerprint."""
    from hounsfield.imaging.plan import PreprocessingPlan

    with edge():
        try:
            fp = json.loads(fingerprint_file.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read fingerprint {fingerprint_file}: {exc}") from exc
        plan = PreprocessingPlan.from_fingerprint(fp, modality)
        plan.save(out)
        console.print_json(plan.model_dump_json())
        console.print(f"wrote {out}")


def volume_cmd(
    ctx: typer.Context,
    series_uid: Annotated[str, typer.Argument(help="SeriesInstanceUID")],
    out: Annotated[Path, typer.Option("--out", "-o", help=".nii.gz, .nii, .nrrd or .mhd")],
    stack: Annotated[Optional[int], typer.Option(help="stack index when the series has several")] = None,
    resample: Annotated[bool, typer.Option(help="resample tilted / irregular stacks")] = False,
    plan: Annotated[Optional[Path], typer.Option(help="apply this preprocessing plan")] = None,
) -> None:
    """Load a series as a volume and write it in a research format (geometry kept)."""
    import SimpleITK as sitk

    from hounsfield.imaging.plan import PreprocessingPlan
    from hounsfield.imaging.series import load_series

    with edge():
        vol = load_series(state(ctx).archive, series_uid, stack=stack, resample=resample)
        if plan is not None:
            vol = PreprocessingPlan.load(plan).apply(vol)
        sitk.WriteImage(vol.to_sitk(), str(out), useCompression=True)
        console.print(f"{vol.shape[::-1]} voxels, spacing {tuple(round(s, 4) for s in vol.spacing)}"
                      f" mm -> {out}")

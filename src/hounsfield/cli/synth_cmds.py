"""``hounsfield synth``: synthetic multi-site chest CT / radiographs with ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.cli.common import console, edge, progress, state
from hounsfield.errors import InvalidInput
from hounsfield.synth import (
    BUILTIN_SITES, DEMO_OPTIONS, iter_cases, load_sites, resolve_sites, send_cases,
    synth_to_archive, synth_to_folder,
)
from hounsfield.synth.output import SynthReport

SiteOpt = Annotated[Optional[list[str]], typer.Option(
    "--site", "-s", help="site profile name (repeat for several; default: all built-in)")]
SitesFile = Annotated[Optional[Path], typer.Option(
    "--sites-file", help="TOML/YAML file with more site profiles ([[site]] tables)")]
Patients = Annotated[int, typer.Option("--patients", "-n", min=0, help="patients per site")]
Seed = Annotated[int, typer.Option("--seed", help="base seed (same seed -> same pixels)")]
FirstPatient = Annotated[int, typer.Option(
    "--first-patient", min=0, help="number the patients of each site from this one (IDs and "
    "pixels follow the number): add patients to sites generated before")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="write files to this folder")]
ToArchive = Annotated[bool, typer.Option("--archive", help="store into the archive")]
Shape = Annotated[Optional[str], typer.Option(
    "--shape", help="SLICESxROWSxCOLS, e.g. 64x128x128 (overrides --matrix/--slices)")]
Matrix = Annotated[int, typer.Option("--matrix", help="CT rows = columns")]
Slices = Annotated[Optional[int], typer.Option(
    "--slices", help="CT slices (default: scan length / the site's spacing)")]
Nodules = Annotated[Optional[int], typer.Option(
    "--nodules", min=0, max=5, help="nodules per patient (default: realistic 0-5)")]


def register(app: typer.Typer) -> None:
    synth = typer.Typer(help="Synthetic multi-site chest CT and radiographs with ground truth.",
                        no_args_is_help=True)
    synth.command("ct")(ct_cmd)
    synth.command("dx")(dx_cmd)
    synth.command("send")(send_cmd)
    synth.command("demo")(demo_cmd)
    synth.command("sites")(sites_cmd)
    app.add_typer(synth, name="synth")


def _parse_shape(shape: str | None) -> tuple[int, int, int] | None:
    if shape is None:
        return None
    parts = shape.lower().replace(",", "x").split("x")
    try:
        s, r, c = (int(p) for p in parts)
    except ValueError:
        raise InvalidInput(f"--shape {shape!r}: expected SLICESxROWSxCOLS, e.g. 64x128x128") from None
    return s, r, c


def _sites(site: list[str] | None, sites_file: Path | None):
    extra = load_sites(sites_file) if sites_file else {}
    names = site if site else (list(BUILTIN_SITES) + list(extra))
    return resolve_sites(names, extra)


def _run(ctx: typer.Context, out: Path | None, archive: bool, cases_kw: dict,
         sites, patients: int) -> SynthReport:
    if not out and not archive:
        raise InvalidInput("say where the studies go: --out DIR and/or --archive")
    if out and archive:
        raise InvalidInput("use either --out or --archive (import a folder later with "
                           "'hounsfield import')")
    total = len(sites) * patients
    with progress() as bar:
        task = bar.add_task("generating", total=total)
        tick = lambda _c: bar.advance(task)  # noqa: E731
        if archive:
            report = synth_to_archive(state(ctx).archive, sites, patients, on_case=tick,
                                      **cases_kw)
        else:
            report = synth_to_folder(out, iter_cases(sites, patients, **cases_kw), on_case=tick)
    _print(report, out)
    return report


def _print(report: SynthReport, out: Path | None) -> None:
    t = Table(title="synthetic studies", show_header=False)
    t.add_row("cases (patients)", str(report.cases))
    t.add_row("instances", str(report.instances))
    t.add_row("nodules", str(report.nodules))
    t.add_row("MB", f"{report.bytes / 1e6:.1f}")
    t.add_row("seconds", f"{report.seconds:.1f}")
    for k, v in sorted(report.statuses.items()):
        t.add_row(f"status {k}", str(v))
    if report.truth_csv:
        t.add_row("nodule truth", str(report.truth_csv))
    if report.dx_csv:
        t.add_row("radiograph truth", str(report.dx_csv))
    if out:
        t.add_row("folder", str(out))
    console.print(t)


def ct_cmd(
    ctx: typer.Context, patients: Patients = 1, site: SiteOpt = None, sites_file: SitesFile = None,
    out: Out = None, archive: ToArchive = False, seed: Seed = 0, shape: Shape = None,
    matrix: Matrix = 512, slices: Slices = None, nodules: Nodules = None,
    dx: Annotated[bool, typer.Option("--dx/--no-dx", help="also a PA radiograph")] = False,
    seg: Annotated[bool, typer.Option("--seg/--no-seg", help="nodule truth as DICOM SEG")] = True,
    first_patient: FirstPatient = 0,
) -> None:
    """Chest CT series with nodule truth (CSV, NIfTI masks, DICOM SEG), per site."""
    with edge():
        sites = _sites(site, sites_file)
        kw = dict(seed=seed, shape=_parse_shape(shape), matrix=matrix, slices=slices,
                  nodules=nodules, dx=dx, seg=seg, first_patient=first_patient)
        _run(ctx, out, archive, kw, sites, patients)


def dx_cmd(
    ctx: typer.Context, patients: Patients = 1, site: SiteOpt = None, sites_file: SitesFile = None,
    out: Out = None, archive: ToArchive = False, seed: Seed = 0,
    matrix: Annotated[int, typer.Option("--matrix", help="detector rows = columns")] = 1024,
    nodules: Nodules = None,
) -> None:
    """PA chest radiographs (DX) with truth (nodule present, centre, diameter), per site."""
    with edge():
        sites = _sites(site, sites_file)
        kw = dict(seed=seed, ct=False, seg=False, dx=True, dx_matrix=matrix, nodules=nodules)
        _run(ctx, out, archive, kw, sites, patients)


def send_cmd(
    to: Annotated[str, typer.Option("--to", help="destination AE@host:port")],
    patients: Patients = 1, site: SiteOpt = None, sites_file: SitesFile = None, seed: Seed = 0,
    rate: Annotated[Optional[float], typer.Option(
        "--rate", help="instances per second (default: as fast as the peer takes them)")] = None,
    calling_ae: Annotated[str, typer.Option("--aet", help="our (calling) AE title")] = "HF_SYNTH",
    shape: Shape = None, matrix: Matrix = 512, slices: Slices = None, nodules: Nodules = None,
    dx: Annotated[bool, typer.Option("--dx/--no-dx", help="also send a radiograph")] = False,
    seg: Annotated[bool, typer.Option("--seg/--no-seg")] = False,
) -> None:
    """Act as a modality: C-STORE synthetic studies to a DICOM node at a chosen rate."""
    with edge():
        sites = _sites(site, sites_file)
        cases = iter_cases(sites, patients, seed=seed, shape=_parse_shape(shape), matrix=matrix,
                           slices=slices, nodules=nodules, dx=dx, seg=seg)
        with progress() as bar:
            task = bar.add_task(f"C-STORE to {to}", total=None)
            report = send_cases(cases, to, rate=rate, calling_ae=calling_ae,
                                on_instance=lambda _d, _s: bar.advance(task))
        _print(report, None)
        # success 0x0000 and warnings 0xB000-0xBFFF count as stored (PS3.4 B.2.3)
        failed = sum(v for k, v in report.statuses.items()
                     if k != "0x0000" and not k.startswith("0xB"))
        if failed:
            raise typer.Exit(1)


def demo_cmd(
    ctx: typer.Context, out: Out = None, archive: ToArchive = False,
    patients: Patients = 2, seed: Seed = 0,
) -> None:
    """A small multi-site demo set (every built-in site, CT + SEG + radiograph), quickly."""
    with edge():
        sites = resolve_sites(None)
        kw = dict(seed=seed, **DEMO_OPTIONS)
        _run(ctx, out, archive, kw, sites, patients)


def sites_cmd(sites_file: SitesFile = None) -> None:
    """List the site profiles (built-in and from --sites-file)."""
    with edge():
        sites = _sites(None, sites_file)
        t = Table(title="site profiles")
        for col in ("name", "scanner", "kernel", "noise HU", "grain mm", "slice mm", "HU offset",
                    "HU scale", "FOV", "contrast", "charset"):
            t.add_column(col)
        for p in sites:
            t.add_row(p.name, f"{p.manufacturer} {p.model}", p.kernel, f"{p.noise_sd:g}",
                      f"{p.noise_grain_mm:g}", f"{p.slice_thickness_mm:g}", f"{p.hu_offset:+g}",
                      f"{p.hu_scale:g}", f"{p.fov_mm:g}", "yes" if p.contrast else "no",
                      p.charset)
        console.print(t)

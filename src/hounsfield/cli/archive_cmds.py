"""Archive commands: import, studies, show, export, check, db, demo-data."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield import audit
from hounsfield.archive import migrate
from hounsfield.archive.check import check as run_check
from hounsfield.archive.export import export as run_export
from hounsfield.archive.query import find_studies, get_study, series_counts, study_counts
from hounsfield.cli.common import console, edge, err_console, progress, state
from hounsfield.errors import HounsfieldError
from hounsfield.ingest.importer import ImportReport, import_paths
from hounsfield.ingest.stable import stable_state
from hounsfield.ingest.sources import count_candidates


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)
    app.command("studies")(studies_cmd)
    app.command("show")(show_cmd)
    app.command("export")(export_cmd)
    app.command("check")(check_cmd)
    db = typer.Typer(help="Index database maintenance.", no_args_is_help=True)
    db.command("upgrade")(db_upgrade)
    app.add_typer(db, name="db")


def import_cmd(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="files, folders, zip archives, DICOMDIRs")],
    site: Annotated[Optional[str], typer.Option(help="site label (default: settings.site)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list every refusal")] = False,
) -> None:
    """Import DICOM (and research formats) into the archive; headers only, de-duplicated."""
    with edge():
        archive = state(ctx).archive
        total = count_candidates(paths)
        with progress() as bar:
            task = bar.add_task("importing", total=total)
            report = import_paths(archive, paths, site=site,
                                  on_item=lambda _n: bar.advance(task))
            bar.update(task, total=max(total, report.seen), completed=report.seen)
        print_report(report, verbose=verbose)
        if report.refused and not (report.imported or report.duplicates or report.replaced):
            raise typer.Exit(1)


def print_report(report: ImportReport, *, verbose: bool = False) -> None:
    t = Table(title="import summary", show_header=False)
    t.add_row("imported", str(report.imported))
    if report.replaced:
        t.add_row("replaced", str(report.replaced))
    t.add_row("duplicates (same bytes, skipped)", str(report.duplicates))
    t.add_row("conflicts (same UID, different bytes; first kept)", str(len(report.conflicts)))
    t.add_row("refused", str(len(report.refused)))
    if report.skipped:
        t.add_row("skipped", str(len(report.skipped)))
    t.add_row("studies touched", str(len(report.studies)))
    t.add_row("MB imported", f"{report.bytes / 1e6:.1f}")
    console.print(t)
    limit = None if verbose else 20
    for title, rows in (("conflicts", report.conflicts), ("refused", report.refused)):
        if rows:
            console.print(f"[bold]{title}:[/]")
            for name, why in rows[:limit]:
                console.print(f"  {name}: {why}", markup=False, highlight=False)
            if limit and len(rows) > limit:
                console.print(f"  ... and {len(rows) - limit} more (use --verbose)")


def studies_cmd(
    ctx: typer.Context,
    patient_name: Annotated[Optional[str], typer.Option("--patient-name", "-n", help="wildcards * ?")] = None,
    patient_id: Annotated[Optional[str], typer.Option("--patient-id")] = None,
    date: Annotated[Optional[str], typer.Option("--date", help="YYYYMMDD or range A-B")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality")] = None,
    accession: Annotated[Optional[str], typer.Option("--accession")] = None,
    description: Annotated[Optional[str], typer.Option("--description")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
) -> None:
    """List studies in the archive, newest first, with optional filters."""
    filters = {k: v for k, v in {
        "PatientName": patient_name, "PatientID": patient_id, "StudyDate": date,
        "ModalitiesInStudy": modality, "AccessionNumber": accession,
        "StudyDescription": description,
    }.items() if v}
    with edge():
        archive = state(ctx).archive
        with archive.session() as s:
            studies = find_studies(s, filters, limit=limit,
                                   case_insensitive_pn=archive.settings.dicom.case_insensitive_pn)
            counts = study_counts(s, [st.id for st in studies])
        stable = stable_state(archive, [st.study_instance_uid for st in studies])
        t = Table(title=f"{len(studies)} studies")
        for col in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "Modalities",
                    "Description", "Series", "Instances", "Site", "Stable"):
            t.add_column(col, overflow="fold")
        for st in studies:
            c = counts[st.id]
            t.add_row(st.study_instance_uid, st.patient.patient_name, st.patient.patient_id,
                      st.study_date, "/".join(c.modalities), st.study_description,
                      str(c.series), str(c.instances), st.site,
                      "receiving" if stable[st.study_instance_uid] is None
                      else stable[st.study_instance_uid].strftime("%Y-%m-%d %H:%M:%S"))
        console.print(t)


def show_cmd(ctx: typer.Context, uid: Annotated[str, typer.Argument(help="StudyInstanceUID")]) -> None:
    """Show a study: patient, series and instances with key attributes."""
    with edge():
        from hounsfield.errors import NotFound

        archive = state(ctx).archive
        with archive.session() as s:
            st = get_study(s, uid)
            if st is None:
                raise NotFound(f"no study with StudyInstanceUID {uid}")
            p = st.patient
            console.print(f"[bold]Study[/] {st.study_instance_uid}")
            console.print(f"  Patient: {p.patient_name} (ID {p.patient_id}, born "
                          f"{p.patient_birth_date or '?'}, sex {p.patient_sex or '?'})", markup=False)
            console.print(f"  Date {st.study_date} {st.study_time}  Accession {st.accession_number}"
                          f"  Description: {st.study_description}  Site: {st.site}", markup=False)
            sers = sorted(st.series, key=lambda x: (x.series_number or 0, x.id))
            n_inst = series_counts(s, [x.id for x in sers])
            for se in sers:
                console.print(f"  [bold]Series[/] #{se.series_number} {se.modality} "
                              f"{se.series_description!r} — {n_inst[se.id]} instances, "
                              f"{se.manufacturer} {se.manufacturer_model_name}  {se.series_instance_uid}")
                t = Table(show_edge=False, box=None, padding=(0, 1))
                for col in ("#", "SOPInstanceUID", "SOPClass", "Size", "Frames", "Transfer syntax",
                            "Position"):
                    t.add_column(col, overflow="fold")
                for inst in sorted(se.instances, key=lambda i: (i.instance_number or 0, i.id)):
                    t.add_row(str(inst.instance_number or ""), inst.sop_instance_uid,
                              _sop_name(inst.sop_class_uid),
                              f"{inst.rows}x{inst.columns}" if inst.rows else "",
                              str(inst.number_of_frames or 1), _ts_name(inst.transfer_syntax_uid),
                              inst.image_position_patient)
                console.print(t)


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name or uid


def _ts_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name or uid


def export_cmd(
    ctx: typer.Context,
    uid: Annotated[str, typer.Argument(help="study, series or SOP instance UID")],
    dest: Annotated[Path, typer.Argument(help="folder, or a path ending in .zip")],
) -> None:
    """Export Part 10 files (the exact bytes stored) into a folder or a zip."""
    with edge():
        archive = state(ctx).archive
        actor = f"cli:{getpass.getuser()}"
        try:
            with progress() as bar:
                task = bar.add_task("exporting", total=None)
                n = run_export(archive, uid, dest, on_item=lambda _u: bar.advance(task))
        except HounsfieldError as exc:
            audit.record(archive, audit.Entry(audit.Action.EXPORT, actor=actor, source="cli",
                                              destination=str(dest), study_instance_uid=uid[:64],
                                              outcome=audit.Outcome.MINOR_FAILURE,
                                              detail=exc.reason))
            raise
        audit.record(archive, audit.Entry(audit.Action.EXPORT, actor=actor, source="cli",
                                          destination=str(dest), study_instance_uid=uid[:64],
                                          detail=f"{n} instances"))
        console.print(f"exported {n} instances to {dest}")


def check_cmd(
    ctx: typer.Context,
    repair: Annotated[bool, typer.Option("--repair", help="remove orphans, drop rows without blobs")] = False,
    verify: Annotated[bool, typer.Option("--verify-hashes", help="re-hash every blob (slow)")] = False,
) -> None:
    """Check that every index row has its blob and every blob its row."""
    with edge():
        archive = state(ctx).archive
        r = run_check(archive, verify_hashes=verify, repair=repair)
        console.print(f"{r.instances} indexed instances, {r.blobs} blobs")
        for title, items in (("rows without blob", r.missing_blobs),
                             ("blobs with wrong size/hash", r.corrupt_blobs),
                             ("blobs without row", r.orphan_blobs),
                             ("temporary files", r.temp_files)):
            if items:
                console.print(f"[yellow]{len(items)} {title}[/]")
                for x in items[:20]:
                    console.print(f"  {x}", markup=False)
        if r.clean:
            console.print("[green]archive is consistent[/]")
        elif r.repaired:
            console.print("[green]repaired[/]")
        else:
            err_console.print("archive is not consistent; run `hounsfield check --repair`")
            raise typer.Exit(1)


def db_upgrade(ctx: typer.Context) -> None:
    """Apply index database migrations (also done automatically on open)."""
    with edge():
        archive = state(ctx).archive
        migrate.upgrade(archive.write_engine)
        console.print(f"index at {archive.settings.index_url.split('@')[-1]} is up to date")

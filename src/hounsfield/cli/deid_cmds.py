"""De-identification commands: deid, deid-verify, reidentify."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Optional

import typer

from hounsfield.cli.common import cli_actor, console, edge, err_console, progress, state


def register(app: typer.Typer) -> None:
    app.command("deid")(deid_cmd)
    app.command("deid-verify")(verify_cmd)
    app.command("reidentify")(reidentify_cmd)


def _flag(name: str, help_text: str = "") -> object:
    return typer.Option(f"--{name}/--no-{name}", help=help_text or None)


Flag = Optional[bool]


def deid_cmd(
    ctx: typer.Context,
    uids: Annotated[list[str], typer.Argument(help="study, series or instance UIDs")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="folder (default: into the archive)")] = None,
    modified_dates: Annotated[Flag, _flag(
        "modified-dates", "Retain Longitudinal Temporal Information with Modified Dates")] = None,
    patient_characteristics: Annotated[Flag, _flag("patient-characteristics")] = None,
    device_identity: Annotated[Flag, _flag("device-identity")] = None,
    institution_identity: Annotated[Flag, _flag("institution-identity")] = None,
    clean_descriptors: Annotated[Flag, _flag("clean-descriptors")] = None,
    safe_private: Annotated[Flag, _flag("safe-private")] = None,
) -> None:
    """De-identify studies / series (PS3.15 Basic Profile + options) into the archive or a folder."""
    from hounsfield.archive.query import instances_of
    from hounsfield.deid.service import deidentify_uids, options_from_settings

    with edge():
        st = state(ctx)
        archive = st.archive
        opts = options_from_settings(
            st.settings, retain_longitudinal_modified_dates=modified_dates,
            retain_patient_characteristics=patient_characteristics,
            retain_device_identity=device_identity, retain_institution_identity=institution_identity,
            clean_descriptors=clean_descriptors, retain_safe_private=safe_private)
        with archive.session() as s:
            total = sum(len(instances_of(s, u)) for u in uids)
        with progress() as bar:
            task = bar.add_task("de-identifying", total=total)
            report = deidentify_uids(archive, uids, out_dir=out, options=opts, actor=cli_actor(),
                                     on_item=lambda _s: bar.advance(task))
        where = str(out) if out else "the archive"
        console.print(f"{report.written} instance(s) de-identified into {where}")
        for orig, new in report.studies.items():
            console.print(f"  study {orig} -> {new}", highlight=False)
        for sop, why in report.withheld:
            err_console.print(f"withheld {sop}: {why}", highlight=False)
        for sop, why in report.failed:
            err_console.print(f"failed {sop}: {why}", highlight=False)
        if report.failed or (report.withheld and not report.written):
            raise typer.Exit(1)



def verify_cmd(
    paths: Annotated[list[Path], typer.Argument(help="de-identified files or folders")],
    modified_dates: Annotated[bool, typer.Option("--modified-dates")] = False,
    patient_characteristics: Annotated[bool, typer.Option("--patient-characteristics")] = False,
    device_identity: Annotated[bool, typer.Option("--device-identity")] = False,
    institution_identity: Annotated[bool, typer.Option("--institution-identity")] = False,
    clean_descriptors: Annotated[bool, typer.Option("--clean-descriptors")] = False,
    safe_private: Annotated[bool, typer.Option("--safe-private")] = False,
) -> None:
    """List every attribute the profile says must go that is still there (exit 1 on leaks)."""
    import pydicom

    from hounsfield.deid.profile import DeidOptions
    from hounsfield.deid.verify import verify

    opts = DeidOptions(retain_longitudinal_modified_dates=modified_dates,
                       retain_patient_characteristics=patient_characteristics,
                       retain_device_identity=device_identity,
                       retain_institution_identity=institution_identity,
                       clean_descriptors=clean_descriptors, retain_safe_private=safe_private)
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    leaks = unreadable = 0
    for f in files:
        try:
            ds = pydicom.dcmread(io.BytesIO(f.read_bytes()), force=True)
        except Exception as exc:  # noqa: BLE001
            err_console.print(f"{f}: unreadable: {exc}", highlight=False)
            unreadable += 1
            continue
        for leak in verify(ds, opts):
            console.print(f"{f}: {leak}", highlight=False)
            leaks += 1
    console.print(f"{len(files)} file(s) checked, {leaks} leak(s), {unreadable} unreadable")
    if leaks or unreadable:
        raise typer.Exit(1)


def reidentify_cmd(
    ctx: typer.Context,
    pseudonym: Annotated[str, typer.Argument(help="patient pseudonym, or pseudonymous study/series UID")],
    actor: Annotated[str, typer.Option(help="who asks (recorded)")],
    role: Annotated[list[str], typer.Option(help="the actor's roles (admin required)")] = [],  # noqa: B006
    kind: Annotated[str, typer.Option(help="patient | study | series")] = "patient",
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
) -> None:
    """Look up the original behind a pseudonym (admins only; every attempt is audited)."""
    from hounsfield.deid.vault import Actor, Vault

    with edge():
        vault = Vault(state(ctx).archive)
        original = vault.reidentify(pseudonym, Actor(actor, frozenset(role), client="cli"),
                                    kind=kind, reason=reason)
        for k, v in original.items():
            console.print(f"{k}: {v}", highlight=False)

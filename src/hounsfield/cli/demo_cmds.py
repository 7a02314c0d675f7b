"""``hounsfield demo``: fill the archive with demo data and show it (the README's first command)."""

from __future__ import annotations

from typing import Annotated

import typer

from hounsfield.cli.archive_cmds import print_report, studies_cmd
from hounsfield.cli.common import console, edge, progress, state
from hounsfield.demo import sample_dicom_roots
from hounsfield.ingest.importer import import_paths
from hounsfield.ingest.sources import count_candidates


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)


def demo_cmd(
    ctx: typer.Context,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="start the platform afterwards")] = True,
    synthetic: Annotated[bool, typer.Option("--synthetic/--no-synthetic",
                                            help="add synthetic multi-site chest CT and DX")] = True,
    scanner: Annotated[bool, typer.Option("--scanner/--no-scanner", help=(
        "a simulated CT scanner sends a chest CT once the platform is up"))] = True,
) -> None:
    """Import the real sample DICOM shipped offline (pydicom, pydicom-data), deploy the shipped
    demo nodule model, and run the platform; a simulated CT scanner then sends a chest CT whose
    AI result arrives on its own."""
    with edge():
        st = state(ctx)
        st.overrides.setdefault("profile", "demo")
        archive = st.archive
        roots = sample_dicom_roots()
        with progress() as bar:
            task = bar.add_task("importing sample DICOM", total=count_candidates(roots))
            report = import_paths(archive, roots, site="demo-samples",
                                  on_item=lambda _n: bar.advance(task))
        print_report(report)
        console.print("[dim](refusals above are the deliberately broken files in pydicom's test "
                      "set: each is refused with its reason)[/]")
        if synthetic:
            from hounsfield.synth import BUILTIN_SITES, DEMO_OPTIONS, synth_to_archive

            sites = list(BUILTIN_SITES)
            truth = archive.settings.data_dir / "demo-truth"
            with progress() as bar:
                task = bar.add_task("synthetic multi-site chest CT + DX", total=len(sites) * 2)
                synth_to_archive(archive, sites, 2, truth_dir=truth,
                                 on_case=lambda _c: bar.advance(task), **DEMO_OPTIONS)
            console.print(f"synthetic studies from {len(sites)} sites; ground truth in {truth}")
        studies_cmd(ctx, limit=50)
        from hounsfield.demo.clinical import prepare, simulate_scanner

        ref = prepare(archive)
        console.print(f"AI deployed: chest CTs are routed to [bold]{ref}[/] (the shipped demo "
                      f"model; rules in {archive.settings.data_dir / 'rules.yaml'})")
        if serve:
            from hounsfield.cli.dicom_cmds import serve_cmd

            s = archive.settings
            console.print(f"\n[bold]Open http://{s.http.host}:{s.http.port}/ and log in as "
                          f"demo / demo[/] (demo profile only). Send DICOM to "
                          f"{s.dicom.ae_title}@{s.dicom.host}:{s.dicom.port}.")
            if scanner:
                console.print("A simulated CT scanner sends a chest CT once the platform is up: "
                              "its AI result appears under AI jobs (/jobs) and on the study "
                              "page of DEMO SCANNER within a minute.")
                simulate_scanner(s)
            serve_cmd(ctx, dicom_port=None, ae_title=None, dicom_host=None, http_port=None,
                      http_host=None, role="all", log_level="INFO")

"""Unit tests of the web layer's pieces: multipart, Accept negotiation, credentials, the viewer
mount, rendering, and the CLI commands."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless
from typer.testing import CliRunner

from hounsfield.cli.main import app as cli
from hounsfield.dicomweb import pixels, render
from hounsfield.dicomweb.multipart import (
    new_boundary,
    parse_media_type,
    parse_related,
    related_content_type,
    related_stream,
)
from hounsfield.dicomweb.wado import dicom_targets, frame_target
from hounsfield.errors import Conflict, InvalidInput, Unauthenticated
from hounsfield.web import auth
from hounsfield.web.app import create_app
from hounsfield.web.models import ApiToken
from hounsfield.web.viewer import app_config
from tests.web_data import ct_series, to_bytes


# -- multipart ------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_multipart_round_trip(bodies: list[bytes]) -> None:
    boundary = new_boundary()
    ctype = related_content_type(boundary, "application/dicom")
    data = b"".join(related_stream(boundary, [({"Content-Type": "application/dicom"}, b)
                                              for b in bodies]))
    part_type, parts = parse_related(data, ctype)
    assert part_type == "application/dicom"
    assert [p.body for p in parts] == bodies


@pytest.mark.parametrize("body,ctype,why", [
    (b"--a\r\n\r\nx\r\n--a--", "multipart/related; boundary=b", "wrong boundary"),
    (b"--a\r\n\r\nx", "multipart/related; boundary=a", "not terminated"),
    (b"--a\r\nno-colon\r\n\r\nx\r\n--a--", "multipart/related; boundary=a", "malformed part header"),
    (b"x", "application/dicom", "expected Content-Type multipart/related"),
    (b"x", "multipart/related", "boundary parameter"),
])
def test_multipart_errors(body: bytes, ctype: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_related(body, ctype)


def test_media_type_parameters() -> None:
    media, params = parse_media_type('Multipart/Related; type="application/dicom"; boundary="a;b"')
    assert media == "multipart/related" and params == {"type": "application/dicom",
                                                       "boundary": "a;b"}


# -- negotiation ----------------------------------------------------------------------------

def test_transfer_syntax_negotiation() -> None:
    assert dicom_targets(None) == [ExplicitVRLittleEndian]
    assert dicom_targets('multipart/related; type="application/dicom"; transfer-syntax=*') == ["*"]
    assert frame_target("multipart/related; type=application/octet-stream; transfer-syntax=*",
                        JPEGLSLossless) == (JPEGLSLossless, "application/octet-stream")
    assert frame_target(None, JPEGLSLossless)[0] == ExplicitVRLittleEndian
    assert frame_target('multipart/related; type="image/dicom-rle"', ExplicitVRLittleEndian) \
        == (RLELossless, "image/dicom-rle")
    with pytest.raises(Exception, match="cannot provide"):
        frame_target('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
                     ExplicitVRLittleEndian)


def test_frames_transcode_losslessly() -> None:
    ds = ct_series(1, 16, seed="unit-frames")[0]
    src = pixels.FrameSource.of(to_bytes(ds), ExplicitVRLittleEndian)
    assert src.frame(1, "*") == ds.PixelData
    rle = src.frame(1, RLELossless)
    from pydicom.encaps import encapsulate

    again = ds.copy()
    again.file_meta = ds.file_meta.copy()
    again.file_meta.TransferSyntaxUID = RLELossless
    again.PixelData = encapsulate([rle])
    again["PixelData"].VR = "OB"
    decoded = again.pixel_array
    np.testing.assert_array_equal(decoded, ds.pixel_array)
    with pytest.raises(Exception, match="frame 2"):
        src.check([2])


def test_render_windowing() -> None:
    ds = ct_series(3, 32, seed="unit-render")[1]
    narrow = render.to_8bit(ds, 0, (0.0, 10.0, "LINEAR"))
    assert set(np.unique(narrow)) <= {0, 255} or narrow.std() > 0
    default = render.to_8bit(ds, 0, None)  # WindowCenter 40 / Width 400 from the header
    assert default.min() == 0 and default.max() == 255
    assert render.parse_window("40,400") == (40.0, 400.0, "LINEAR")
    for bad in ("40", "a,b", "40,-1", "40,400,CUBIC"):
        with pytest.raises(InvalidInput):
            render.parse_window(bad)


# -- credentials ----------------------------------------------------------------------------

def test_users_passwords_tokens_sessions(archive) -> None:  # noqa: ANN001
    user = auth.create_user(archive, "rad", "radiologist", "long-enough-1")
    with pytest.raises(Conflict):
        auth.create_user(archive, "rad", "radiologist", "long-enough-1")
    for name, role, pw in [("bad name", "admin", "long-enough-1"), ("x", "root", "long-enough"),
                           ("y", "admin", "short")]:
        with pytest.raises(InvalidInput):
            auth.create_user(archive, name, role, pw)
    assert auth.verify_password(archive, "rad", "long-enough-1").id == user.id
    for name, pw in [("rad", "wrong-password"), ("nobody", "long-enough-1")]:
        with pytest.raises(Unauthenticated, match="wrong user name or password"):
            auth.verify_password(archive, name, pw)
    cookie = auth.start_session(archive, user, source="10.0.0.1")
    assert auth.session_principal(archive, cookie).role is auth.Role.RADIOLOGIST
    auth.end_session(archive, cookie)
    with pytest.raises(Unauthenticated):
        auth.session_principal(archive, cookie)
    secret, token = auth.issue_token(archive, "rad", days=1)
    p = auth.token_principal(archive, secret)
    assert p.username == "rad" and p.can(auth.Permission.WRITE)
    assert not p.can(auth.Permission.USERS)
    with archive.write_session() as s, s.begin():
        s.get(ApiToken, token.id).expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.token_principal(archive, secret)
    secret2, token2 = auth.issue_token(archive, "rad")
    auth.revoke_token(archive, token2.prefix)
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.token_principal(archive, secret2)
    with pytest.raises(Unauthenticated):
        auth.token_principal(archive, "hf_" + "0" * 43)


def test_no_demo_admin_outside_demo(tmp_path) -> None:  # noqa: ANN001
    from hounsfield.archive import Archive
    from hounsfield.config import load_settings

    prod = Archive.open(load_settings(data_dir=tmp_path / "p", profile="production",
                                      secret_key="a-real-secret-of-some-length"))
    assert not auth.ensure_demo_admin(prod) and auth.list_users(prod) == []
    prod.close()
    demo = Archive.open(load_settings(data_dir=tmp_path / "d", profile="demo"))
    assert auth.ensure_demo_admin(demo)
    assert [u.username for u in auth.list_users(demo)] == ["demo"]
    demo.close()


# -- viewer mount ---------------------------------------------------------------------------

def test_viewer_mount_mime_types_and_fallback(settings, archive, tmp_path) -> None:  # noqa: ANN001
    dist = tmp_path / "ohif"
    (dist / "sub").mkdir(parents=True)
    (dist / "index.html").write_text("<html>ohif</html>")
    (dist / "app.bundle.0123456789abcdef.js").write_text("js")
    (dist / "sub" / "codec.wasm").write_bytes(b"\0asm")
    settings.http.viewer_dir = dist
    app = create_app(settings, archive)
    with TestClient(app) as c:
        r = c.get("/viewer/viewer?StudyInstanceUIDs=1.2.3", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/viewer/")
        assert c.post("/login", data={"username": "demo", "password": "demo"},
                      follow_redirects=False).status_code == 303
        r = c.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
        assert r.text == "<html>ohif</html>" and r.headers["cache-control"] == "no-cache"
        r = c.get("/viewer/sub/codec.wasm")
        assert r.headers["content-type"] == "application/wasm"
        r = c.get("/viewer/app.bundle.0123456789abcdef.js")
        assert r.headers["content-type"].startswith("text/javascript")
        assert "immutable" in r.headers["cache-control"]
        assert c.get("/viewer/missing.js").status_code == 404
        r = c.get("/viewer/app-config.js")
        assert "qidoRoot = origin + '/dicom-web'" in r.text and r.headers["cache-control"] == "no-cache"
    assert '"routerBasename": "/viewer"' in app_config()


# -- CLI ------------------------------------------------------------------------------------

def test_cli_users_and_audit(tmp_path) -> None:  # noqa: ANN001
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "var")]
    r = runner.invoke(cli, [*base, "users", "add", "alice", "--role", "admin", "--password-stdin"],
                      input="a-long-password\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, [*base, "users", "add", "svc", "--role", "service", "--no-password"])
    assert r.exit_code == 0
    r = runner.invoke(cli, [*base, "users", "add", "eve", "--role", "root", "--no-password"])
    assert r.exit_code == 2 and "unknown role" in r.output
    r = runner.invoke(cli, [*base, "users", "list"])
    assert "alice" in r.output and "service" in r.output
    r = runner.invoke(cli, [*base, "users", "token", "svc", "--days", "2"])
    assert r.exit_code == 0 and r.stdout.strip().splitlines()[-1].startswith("hf_")
    r = runner.invoke(cli, [*base, "audit", "--json"])
    assert r.exit_code == 0
    r = runner.invoke(cli, [*base, "audit", "--action", "NOPE"])
    assert r.exit_code == 2 and "unknown action" in r.output


# -- the same DICOMweb paths on SQLite and PostgreSQL ----------------------------------------

def test_dicomweb_on_both_databases(any_archive) -> None:  # noqa: ANN001
    from hounsfield.archive.parse import parse_part10
    from hounsfield.archive.store import store_instances

    cts = ct_series(3, 16, seed="both-dbs", patient="O'BRIEN^PAT")
    store_instances(any_archive, [parse_part10(to_bytes(d)) for d in cts], source="test")
    app = create_app(any_archive.settings, any_archive)
    st, se = cts[0].StudyInstanceUID, cts[0].SeriesInstanceUID
    with TestClient(app) as c:
        assert c.post("/api/auth/login", json={"username": "demo", "password": "demo"}).status_code == 200
        meta = c.get(f"/dicom-web/studies/{st}/series/{se}/metadata").json()
        assert len(meta) == 3 and meta[0]["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
        assert meta[0]["00020010"]["Value"] == [ExplicitVRLittleEndian]
        found = c.get("/dicom-web/studies", params={"PatientName": "o'brien*"}).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [st]
        assert c.get("/dicom-web/studies", params={"PatientName": "%"}).json() == []
        assert c.get("/api/audit", params={"action": "WADO"}).json()[0]["study_instance_uid"] == st

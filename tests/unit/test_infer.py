"""The inference layer: device choice, the one Runner template (stages, timings, provenance),
the loader for every bundle kind and the per-process warm cache over a real MLflow registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from hounsfield.config import load_settings
from hounsfield.errors import InvalidInput
from hounsfield.infer import (WARM, HeatmapRunner, InferenceResult, Run, Runner, TwoStageRunner,
                              infer_series, load_model, load_runner, resolve_device)
from hounsfield.infer.result import findings_at
from hounsfield.models.bundle import write_bundle
from hounsfield.models.detector import NetworkSpec, build_network
from hounsfield.models.volume import PreprocessPlan, Volume
from hounsfield.train.recipe import load_recipe

HAS_CUDA = torch.cuda.is_available()


# -- devices ---------------------------------------------------------------------------------

def test_resolve_device_choices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InvalidInput, match="expected cpu, cuda, cuda:N or auto"):
        resolve_device("tpu")
    with pytest.raises(InvalidInput, match="expected cpu, cuda, cuda:N or auto"):
        resolve_device("cuda:x")


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without a GPU")
def test_cuda_where_there_is_none_is_refused_with_the_reason() -> None:
    for choice in ("cuda", "cuda:0"):
        with pytest.raises(InvalidInput, match="CUDA is not available here.*--device cpu or auto"):
            resolve_device(choice)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_a_gpu_beyond_the_count_is_refused() -> None:
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(InvalidInput, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


# -- the template ----------------------------------------------------------------------------

def _volume(shape=(12, 24, 24), spacing=(1.4, 1.4, 2.0), uid="1.2.3") -> Volume:
    arr = np.full(shape, 0.3, dtype=np.float32)
    arr[4:8, 8:14, 8:14] = 0.9
    return Volume(arr, spacing, (-10.0, 20.0, -30.0), np.eye(3), series_instance_uid=uid)


@dataclass
class BrightestVoxel(Runner):
    """A complete runner (not a stand-in): the brightest voxel of the volume is the finding."""

    kind = "brightest-voxel"
    label = "a brightest-voxel detector"

    net: torch.nn.Module
    plan: PreprocessPlan
    model_name: str = "bright"
    model_version: str = "7"
    calls: tuple = ()

    @property
    def network(self) -> torch.nn.Module:
        return self.net

    def settings(self) -> dict:
        return {"rule": "argmax"}

    def infer(self, prep: Volume, run: Run) -> np.ndarray:
        self.calls += ("infer",)
        with run.timed("search_s"):
            zyx = np.unravel_index(int(np.argmax(prep.array)), prep.array.shape)
        run.provenance["searched"] = int(prep.array.size)
        return np.asarray(zyx, dtype=np.float64)

    def postprocess(self, prep: Volume, raw: np.ndarray, run: Run) -> list:
        self.calls += ("postprocess",)
        return findings_at(prep, raw[None], [5.0], [0.9])


def test_the_template_runs_the_stages_and_builds_the_provenance_once() -> None:
    plan = PreprocessPlan(spacing_mm=(1.4, 1.4, 2.0))
    runner = BrightestVoxel(torch.nn.Conv3d(1, 1, 1), plan)
    vol = _volume()
    res = runner.run_volume(vol, preprocessed=True)
    assert isinstance(res, InferenceResult) and runner.calls == ("infer", "postprocess")
    p = res.provenance
    assert p["model"] == "bright" and p["model_version"] == "7" and p["detector"] == "brightest-voxel"
    assert p["series_instance_uid"] == "1.2.3" and p["plan"] == plan.model_dump()
    assert p["precision"] == "fp32" and p["device"] == "cpu" and p["rule"] == "argmax"
    assert p["searched"] == vol.array.size and p["search_s"] >= 0
    assert p["input_shape"] == p["network_shape"] == [12, 24, 24]
    assert p["total_s"] >= p["preprocess_s"] + p["network_s"] + p["postprocess_s"] - 0.003
    (f,) = res.findings  # the box's first voxel (4, 8, 8) in patient mm
    assert (f.x_mm, f.y_mm, f.z_mm) == pytest.approx((-10 + 8 * 1.4, 20 + 8 * 1.4, -30 + 4 * 2.0))
    assert res.to_dict()["findings"][0]["diameter_mm"] == 5.0


def test_the_template_refuses_options_that_do_not_apply() -> None:
    runner = BrightestVoxel(torch.nn.Conv3d(1, 1, 1), PreprocessPlan())
    with pytest.raises(InvalidInput, match="two-stage models only .*a brightest-voxel detector"):
        runner.run_volume(_volume(), preprocessed=True, tta_top_k=5)
    with pytest.raises(InvalidInput, match="unknown precision 'fp8'"):
        runner.run_volume(_volume(), preprocessed=True, precision="fp8")  # type: ignore[arg-type]
    assert runner.calls == ()  # refused before any stage ran


# -- the loader and the warm cache ------------------------------------------------------------

def _bundle(path: Path, preset: str, features) -> Path:  # noqa: ANN001
    recipe = load_recipe("lung-nodule-detection", preset=preset).model_dump(mode="json")
    recipe["network"]["features"] = list(features)
    torch.manual_seed(0)
    net = build_network(NetworkSpec.model_validate(recipe["network"]))
    return write_bundle(path, net, recipe=recipe, lineage={"test": True})


def test_load_runner_builds_each_hounsfield_kind(tmp_path: Path) -> None:
    heat = load_runner(_bundle(tmp_path / "h", "heatmap", (4, 4, 8, 8, 16, 4)), name="h",
                       version="1", device="cpu")
    assert isinstance(heat, HeatmapRunner) and heat.device == torch.device("cpu")
    two = load_runner(_bundle(tmp_path / "t", "tiny", (4, 4, 8, 8, 8, 0)), device="auto")
    assert isinstance(two, TwoStageRunner) and two.supports_tta
    assert two.device.type == ("cuda" if HAS_CUDA else "cpu")
    res = two.run_volume(_volume(shape=(16, 32, 32)), preprocessed=True, tta_top_k=3,
                         keep_candidates=True)
    p = res.provenance
    assert p["detector"] == "two-stage" and p["tta_top_k"] == 3 and two.tta_top_k == 0
    assert p["candidates"] == len(res.candidates_mm) and p["candidates_s"] <= p["network_s"]


def test_load_model_keeps_a_model_warm_per_name_version_and_device(tmp_path: Path) -> None:
    from hounsfield.archive import Archive
    from hounsfield.registry.mlflow_registry import ModelRegistry

    settings = load_settings(data_dir=tmp_path / "data")
    reg = ModelRegistry(settings)
    reg.import_bundle(_bundle(tmp_path / "b1", "heatmap", (4, 4, 8, 8, 16, 4)), "warm")
    WARM.clear()
    try:
        a = load_model(settings, "warm@1", device="cpu")
        assert load_model(settings, "warm", device="cpu") is a  # NAME: its latest, loaded once
        assert WARM.loaded() == [("warm", "1", "cpu")]
        reg.import_bundle(_bundle(tmp_path / "b2", "heatmap", (4, 4, 8, 8, 16, 4)), "warm")
        b = load_model(settings, "warm", device="cpu")
        assert b is not a and b.model_version == "2"
        assert WARM.loaded() == [("warm", "1", "cpu"), ("warm", "2", "cpu")]
        archive = Archive.open(settings)
        with pytest.raises(InvalidInput, match="two-stage models only .*a heatmap detector"):
            infer_series(archive, settings, "warm@1", "1.2.3.4", device="cpu", tta_top_k=2)
    finally:
        WARM.clear()


# -- --device on the commands ----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["infer", "nodules@1", "1.2.3"],
    ["evaluate", "nodules@1", "--dataset", "lung@1"],
    ["train", "lung-nodule-detection", "--dataset", "lung@1"],
])
def test_every_ai_command_takes_device_and_refuses_a_bad_one(tmp_path: Path, args) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from hounsfield.cli.main import app

    cli = CliRunner()
    base = ["--data-dir", str(tmp_path), *args, "--device"]
    res = cli.invoke(app, [*base, "tpu"], env={"COLUMNS": "250"})
    assert res.exit_code == 2, res.output
    assert "--device 'tpu': expected cpu, cuda, cuda:N or auto" in res.output
    if not HAS_CUDA:
        res = cli.invoke(app, [*base, "cuda"], env={"COLUMNS": "250"})
        assert res.exit_code == 2 and "CUDA is not available here" in res.output, res.output

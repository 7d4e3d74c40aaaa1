"""CUDA kernels that never block a run: a failed gsplat/nerfacc build on a CUDA device is one
warning line and the pure-torch path (auto), or one clear error (explicit gsplat).

No test here needs a GPU: the kernel loader is replaced by one that raises the way a build
without ``nvcc`` does, and "the device is CUDA" is passed to the backend resolution."""

import json
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import sds3d.config
import sds3d.scenes.gaussians
import sds3d.scenes.nerf
from sds3d.cli import main
from sds3d.render import kernels, resolve_backend, resolve_nerf_sampler
from sds3d.types import SDS3DError

from conftest import EXEMPLAR_CLI_FAST

BUILD_ERROR = "Error building extension 'gsplat_cuda'\n[1/42] nvcc: not found\nninja: build stopped: subcommand failed."


@pytest.fixture(autouse=True)
def fresh_kernel_state() -> Iterator[None]:
    kernels.reset()
    yield
    kernels.reset()


@pytest.fixture
def failing_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(lib: str) -> object:
        raise RuntimeError(BUILD_ERROR.replace("gsplat", lib))

    monkeypatch.setattr(kernels, "load_backend", load)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenes and the config check resolve their backends as if their device were CUDA."""
    monkeypatch.setattr(sds3d.scenes.gaussians, "resolve_backend", lambda b, cuda: resolve_backend(b, True))
    monkeypatch.setattr(sds3d.scenes.nerf, "resolve_nerf_sampler", lambda occ, cuda: resolve_nerf_sampler(occ, True))
    monkeypatch.setattr(sds3d.config, "resolve_backend", lambda b, cuda: resolve_backend(b, True))


def warning_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "warning" in ln]


def test_problem_is_one_line_with_the_cause_and_the_advice(failing_build) -> None:
    msg = kernels.kernel_problem("gsplat")
    assert msg is not None and "\n" not in msg
    assert "RuntimeError: Error building extension 'gsplat_cuda'" in msg and "ninja" not in msg
    assert "CUDA toolkit" in msg and "CUDA_HOME" in msg and "https://docs.gsplat.studio/whl/" in msg
    nerfacc = kernels.kernel_problem("nerfacc")
    assert nerfacc is not None and "nerfacc_cuda" in nerfacc and "nerfacc-bucket" in nerfacc


def test_loader_without_toolkit_or_module_raises(monkeypatch) -> None:
    """gsplat/nerfacc leave ``_C = None`` when no toolkit is found: that is a failure too."""
    fake_importlib = types.SimpleNamespace(import_module=lambda name: types.SimpleNamespace(_C=None))
    monkeypatch.setattr(kernels, "importlib", fake_importlib)
    with pytest.raises(RuntimeError, match="no CUDA toolkit"):
        kernels.load_backend("gsplat")
    assert "no CUDA toolkit" in (kernels.kernel_problem("nerfacc") or "")
    fake_importlib.import_module = lambda name: types.SimpleNamespace(_C=object())
    kernels.reset()
    assert kernels.kernel_problem("nerfacc") is None


def test_auto_falls_back_with_one_warning_and_tries_the_build_once(failing_build, monkeypatch, capsys) -> None:
    calls = []
    load = kernels.load_backend
    monkeypatch.setattr(kernels, "load_backend", lambda lib: calls.append(lib) or load(lib))
    assert [resolve_backend("auto", True) for _ in range(3)] == ["torch"] * 3
    assert resolve_nerf_sampler(True, True) == "torch" and resolve_nerf_sampler(True, True) == "torch"
    assert calls == ["gsplat", "nerfacc"]  # cached: a failed build is not retried
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "gsplat's CUDA kernels" in err[0] and "pure-torch rasterizer" in err[0]
    assert "nerfacc's CUDA kernels" in err[1] and "dense torch sampler" in err[1]
    # CPU never loads kernels and never warns; without an occupancy grid nerfacc is not needed
    assert resolve_backend("auto", False) == "torch" and resolve_nerf_sampler(False, True) == "torch"
    assert capsys.readouterr().err == ""


def test_explicit_gsplat_is_one_clear_error(failing_build) -> None:
    with pytest.raises(SDS3DError) as e:
        resolve_backend("gsplat", True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--gaussians.backend gsplat: gsplat's CUDA kernels could not be built")
    assert "CUDA_HOME" in msg and "backend auto or torch" in msg


def test_kernels_that_load_are_used(monkeypatch, capsys) -> None:
    monkeypatch.setattr(kernels, "load_backend", lambda lib: object())
    assert resolve_backend("auto", True) == "gsplat" and resolve_backend("gsplat", True) == "gsplat"
    assert resolve_nerf_sampler(True, True) == "nerfacc"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("scene", ["gaussians", "nerf"])
def test_run_on_cuda_without_kernels_completes_on_torch(scene, failing_build, fake_cuda, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["generate", "a snowman", *EXEMPLAR_CLI_FAST, "--steps", "2", "--output-dir", str(out), "--scene", scene]
    assert main(args) == 0
    err = capsys.readouterr().err
    lib = "gsplat" if scene == "gaussians" else "nerfacc"
    assert "Traceback" not in err and len(warning_lines(err)) == 1 and f"{lib}'s CUDA kernels" in warning_lines(err)[0]
    (run,) = out.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["backend"] == "torch"


def test_cli_explicit_gsplat_fails_before_training_with_one_line(failing_build, fake_cuda, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["generate", "a snowman", *EXEMPLAR_CLI_FAST, "--steps", "2", "--output-dir", str(out), "--gaussians.backend", "gsplat"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sds3d: error: --gaussians.backend gsplat: gsplat's CUDA kernels")
    assert not out.exists() or not any(out.iterdir())  # failed in validate(), before a run folder


def test_summary_records_the_kernel_backend_on_cpu(tmp_path: Path) -> None:
    """Without fakes a CPU run records the torch backend (the CUDA runs record gsplat/nerfacc)."""
    out = tmp_path / "out"
    assert main(["generate", "a snowman", *EXEMPLAR_CLI_FAST, "--steps", "1", "--output-dir", str(out)]) == 0
    (run,) = out.iterdir()
    assert json.loads((run / "summary.json").read_text())["backend"] == "torch"

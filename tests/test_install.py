"""A non-editable ``pip install .`` trains ``experiment=tiny`` from an empty folder: the configs ship in the package."""

import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = {".git", ".venv", "build", "data", "runs", "outputs"}  # checkout-only folders (not conf/data inside the package)


def skip(folder, names):
    return [n for n in names if (Path(folder) == ROOT and n in TOP) or n == "__pycache__" or n.endswith(".egg-info")]


def test_configs_live_inside_the_package():
    from scenecomp.train import CONF

    assert Path(CONF) == ROOT / "scenecomp" / "conf" and (Path(CONF) / "train.yaml").is_file()


@pytest.mark.slow
def test_a_wheel_install_trains_tiny_from_an_empty_folder(tmp_path):
    """A fresh venv whose own site-packages get a real (non-editable) install of a copy of the
    repository; torch and the other dependencies come from this environment's site-packages through
    a ``.pth`` line (so nothing is downloaded, and this environment's editable finder is not loaded)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=skip)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own = Path(
        subprocess.check_output([python, "-c", "import site; print(site.getsitepackages()[0])"], text=True).strip()
    )
    (own / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source)],
        check=True,
        timeout=900,
    )
    shutil.rmtree(source)  # nothing may come from the source tree any more

    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.check_output([python, "-c", "import scenecomp; print(scenecomp.__file__)"], cwd=empty, text=True)
    assert Path(where.strip()).is_relative_to(own), where
    res = subprocess.run(
        [env_dir / "bin" / "scenecomp-train", "experiment=tiny", "threads=1", "hydra.run.dir=run"],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (empty / "run" / "composer.safetensors").is_file() and (empty / "data" / "shapes-tiny" / "train").is_dir()

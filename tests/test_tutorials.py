"""The tutorial notebooks run top to bottom without errors or warnings, and are stored without outputs."""

import base64
import io
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))
CELL_TIMEOUT_S = 1200  # a hang guard, not a budget: a cell takes seconds on a quiet machine


def test_there_are_tutorials():
    names = [path.name for path in TUTORIALS]
    assert names == ["01_quickstart.ipynb", "02_sva_in_small.ipynb", "03_vision_transformer.ipynb",
                     "04_explaining_generated_text.ipynb"]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has stored outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_notebook_executes(path, tmp_path, minilm_path):
    import matplotlib.image as mpimg

    notebook = nbformat.read(path, as_version=4)
    # Tutorials that train shrink their training in quick mode: bounded by work, not seconds.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CAPTUM_ATTNFLOW_TUTORIAL_QUICK="1")
    env.pop("MPLBACKEND", None)  # let the kernel use its inline backend, as in Jupyter
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # Warnings a reader would see, e.g. tqdm's "IProgress not found" without ipywidgets.
    stderr = "".join(output.text for output in outputs if output.get("name") == "stderr")
    assert "Warning" not in stderr, stderr
    images = [output.data["image/png"] for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 2, "the notebook should display its figures"
    for encoded in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(encoded)), format="png")
        assert pixels[..., :3].var() > 1e-4

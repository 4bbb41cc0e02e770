"""timm's own model tests on the LocAt models: ``tests/test_models.py`` of the installed timm.

The file comes from that timm version's sdist, fetched from the package registry at test time
(``pip download``); offline, the test skips and says so. The models get what timm gives its own
backbones: the ViT-like ones (LocAtViT and RoPE-ViT, Jumbo) join ``NON_STD_FILTERS`` (the transformer
APIs), LocAt Swin stays a standard model as timm's Swin is, and every module joins
``FEAT_INTER_FILTERS`` (``forward_intermediates`` and the features). The one exclusion is TorchScript
(``EXCLUDE_JIT_FILTERS``): the ops take keyword-only arguments, and TorchScript is deprecated
upstream; ``torch.export`` works (tests/test_model.py). Run: the tiny LocAtViT, RoPE-ViT, Swin and Jumbo models;
the small and base ones are the same classes at other widths and depths, and add minutes, not code
(``SAME_CODE_AS``; v43: all eight models in one run took 24 minutes of a 2-core CI machine). Deselected: the two
tests that download pretrained weights from the Hugging Face hub (timm's CI skips them too; loading the published
weights from a hub-format cache is tested offline in tests/test_model.py), and for Jumbo the last check of
``test_model_default_cfgs_non_std``, which asks a headless model's output width to be
``num_features``: Jumbo's features are per token (``num_features`` = dim) while its head reads the J
prefix tokens flattened (``head_hidden_size`` = J * dim), so the two differ by design.
"""
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
PATCHES = {  # list -> the entries timm gives its own ViTs and Swins (the modules: locat_vit's file names)
    "NON_STD_FILTERS = [\n": "    'locatvit_*', 'locatjumbo_*', 'jumbo_*',\n",
    "FEAT_INTER_FILTERS = [\n": "    'locatvit', 'ropevit', 'jumbo', 'swin',\n",
    "EXCLUDE_JIT_FILTERS = [\n": "    'locat*', 'jumbo_*',  # TorchScript: see tests/test_timm_suite.py\n",
}
# One test a model, so the workers of pytest-xdist share them (one subprocess for all eight took 24 minutes of a CI
# run on a 2-core machine): a -k expression that selects the model's tests alone (names that contain another's
# excluded), and the docstring's deselections.
MODELS = {
    "locatvit_tiny": "locatvit_tiny and not rope",
    "locatvit_tiny_rope_mixed": "locatvit_tiny_rope_mixed",
    "locatswin_tiny": "locatswin_tiny",
    "locatjumbo_tiny": "locatjumbo_tiny",
    "jumbo_tiny": "jumbo_tiny and not locatjumbo",
}
SAME_CODE_AS = {  # registered models not run here -> the run model of the same class (the test checks the class)
    "locatvit_small": "locatvit_tiny",
    "locatvit_base": "locatvit_tiny",
    "locatvit_base_rope_mixed": "locatvit_tiny_rope_mixed",
    "locatswin_base": "locatswin_tiny",
    "locatjumbo_base": "locatjumbo_tiny",
    "jumbo_base": "jumbo_tiny",
}
DESELECT = "not pretrained and not (test_model_default_cfgs_non_std and jumbo)"


def timm_test_models(dest: Path) -> Path:
    """tests/test_models.py of the installed timm, patched for the LocAtViT models."""
    version = timm.__version__
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                           f"timm=={version}", "-d", str(dest)], capture_output=True, text=True, timeout=300)
    sdists = list(dest.glob("timm-*.tar.gz"))
    if done.returncode or not sdists:
        pytest.skip(f"timm {version}'s sdist could not be fetched (offline?): {done.stderr.strip()[-200:]}")
    with tarfile.open(sdists[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/tests/test_models.py"))
        text = tar.extractfile(member).read().decode()
    for anchor, entry in PATCHES.items():
        assert text.count(anchor) == 1, f"timm {version}'s test_models.py has no {anchor.strip()!r}"
        text = text.replace(anchor, anchor + entry)
    path = dest / "test_timm_models.py"
    path.write_text("import locat_vit  # noqa: F401  (registers the models)\n" + text)
    return path


def test_every_registered_model_runs_or_shares_a_run_models_code():
    """Every model locat_vit registers is run here or maps to a run model of the same class (a new one would
    otherwise go untested)."""
    import locat_vit  # noqa: F401  (registers the models)
    registered = set(timm.list_models("locat*")) | set(timm.list_models("jumbo_*"))
    assert set(MODELS) | set(SAME_CODE_AS) == registered
    assert set(SAME_CODE_AS.values()) <= set(MODELS)
    with torch.device("meta"):  # no weights made
        for base, run in SAME_CODE_AS.items():
            assert type(timm.create_model(base)) is type(timm.create_model(run)), base


@pytest.fixture(scope="module")
def timm_tests(tmp_path_factory) -> Path:
    return timm_test_models(tmp_path_factory.mktemp("timm"))


@pytest.mark.minutes
@pytest.mark.parametrize("model", list(MODELS))
def test_timms_model_tests_pass(timm_tests, model):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-k", f"({MODELS[model]}) and {DESELECT}", "-v", "-rf", "-p", "no:cacheprovider", "-p", "no:warnings"]
    done = subprocess.run([sys.executable, "-m", "pytest", str(timm_tests), *args], cwd=timm_tests.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # 7-9 of timm's tests a model here (forward, backward, cfgs, features, FX, ...), each this model's: one that drops
    # out, or a selection that caught another model, shows
    models = re.findall(r"::\w+\[(?:\d+-)?([\w.]+)\] PASSED", done.stdout)  # ids: [1-locatvit_tiny], [locatvit_tiny]
    assert len(models) >= 7 and set(models) == {model}, summary

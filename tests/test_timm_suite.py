"""timm's own model tests on the LocAtViT models: ``tests/test_models.py`` of the installed timm.

The file comes from that timm version's sdist, fetched from the package registry at test time
(``pip download``); offline, the test skips and says so. It gets what timm gives its own ViTs: the
models join ``NON_STD_FILTERS`` (the transformer APIs) and, by module, ``FEAT_INTER_FILTERS``
(``forward_intermediates`` and the getter features). The one exclusion is TorchScript
(``EXCLUDE_JIT_FILTERS``): the ops take keyword-only arguments, and TorchScript is deprecated
upstream; ``torch.export`` works (tests/test_model.py). Deselected: the two tests that download
pretrained weights from the Hugging Face hub (timm's CI skips them too); loading the published
weights from a hub-format cache is tested offline in tests/test_model.py.
"""
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

ROOT = Path(__file__).resolve().parents[1]
PATCHES = {  # list -> the entry timm gives its ViTs
    "NON_STD_FILTERS = [\n": "    'locatvit_*',\n",
    "FEAT_INTER_FILTERS = [\n": "    'locatvit',\n",
    "EXCLUDE_JIT_FILTERS = [\n": "    'locatvit_*',  # TorchScript: see tests/test_timm_suite.py\n",
}


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


def test_timms_model_tests_pass_on_every_registered_model(tmp_path):
    path = timm_test_models(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-k", "locatvit and not pretrained", "-q", "-rf", "-p", "no:cacheprovider"]
    done = subprocess.run([sys.executable, "-m", "pytest", str(path), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 3 * 8, summary  # each model through forward, backward, cfgs, features, FX, ...

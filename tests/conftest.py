"""Device choice: CUDA when present, else the Triton interpreter on CPU (set before any kernel is defined)."""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from locat_kernels.fused import configs  # noqa: E402  (after TRITON_INTERPRET is set)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed_and_poison(request, monkeypatch):
    # Different random inputs per test (reproducible from its id; LOCAT_FRESH_SEED=1 draws new ones),
    # and NaN-filled kernel outputs, so an element the kernels never write fails the comparison.
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(int.from_bytes(os.urandom(4), "little") if os.environ.get("LOCAT_FRESH_SEED") else seed)
    monkeypatch.setattr(configs, "POISON_OUTPUTS", True)


def pytest_collection_modifyitems(items):
    # The tests marked "minutes" first (the order otherwise kept), so they start early, not at the end of a worker's
    # queue; with `--dist worksteal` (the README's command) an idle worker takes tests still queued on a busy one
    # (v43: timm's model tests at the end of one worker left the other idle for minutes of CI).
    items.sort(key=lambda item: item.get_closest_marker("minutes") is None)


def pytest_report_header(config):
    return f"locat device: {DEVICE} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})"


def pytest_terminal_summary(terminalreporter):
    """With LOCAT_TEST_SUMMARY=path: write pass counts, worst errors, device and versions as JSON."""
    path = os.environ.get("LOCAT_TEST_SUMMARY")
    if not path:
        return
    import json
    import platform

    import triton

    counts = {k: len(terminalreporter.stats.get(k, [])) for k in ("passed", "failed", "skipped", "error")}
    errors, worst = {}, {}
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        if report.when != "call":
            continue
        group = report.nodeid.split("::")[-1].split("[")[0]
        for key, err in report.user_properties:
            if key.startswith("rel_err::"):
                tensor = key.removeprefix("rel_err::")
                errors[f"{report.nodeid}::{tensor}"] = err
                worst.setdefault(group, {})[tensor] = max(err, worst.get(group, {}).get(tensor, 0.0))
    summary = dict(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        counts=counts, failed=[r.nodeid for r in terminalreporter.stats.get("failed", [])],
        worst_relative_error=worst, errors=errors,
    )
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)

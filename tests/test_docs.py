"""The documents' citations resolve: every relative link of README.md and benchmarks/RESULTS.md names a file of
the repository (and, with an anchor, one of its headings), and every measurement file that a config table entry
cites as its source is committed under benchmarks/results/."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "benchmarks/RESULTS.md"]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+\s+(.+?)\s*$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    path = ROOT / doc
    broken = []
    text = re.sub(r"`[^`\n]*`(?!\])", "", path.read_text())  # inline code (``kernel[grid](...)``), not link text
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{doc}: links to nothing: {broken}"


def expand(pattern: str) -> list[str]:
    """A shell brace pattern's names: ``tune_{a,b}_H200.json`` -> tune_a_H200.json, tune_b_H200.json."""
    head, brace, rest = pattern.partition("{")
    if not brace:
        return [pattern]
    options, _, tail = rest.partition("}")
    return [name for option in options.split(",") for name in expand(head + option + tail)]


def test_config_sources_are_committed():
    table = json.loads((ROOT / "locat_kernels/fused/configs.json").read_text())
    cited = {name for arch in table["archs"].values() for entry in arch["entries"]
             for pattern in re.findall(r"[\w.\-{},]+\.(?:json|log|txt)", entry["source"])
             for name in expand(pattern)}
    missing = sorted(n for n in cited if not (ROOT / "benchmarks/results" / n).exists())
    assert cited and not missing, f"configs.json cites files not under benchmarks/results: {missing}"

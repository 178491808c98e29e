"""The README and docs/: every relative link and anchor resolves, every command names a module
or file that exists, and the families table has a row for every family (no ComfyUI needed)."""

import importlib.util
import re
from pathlib import Path

import pytest

from unhype.families import FAMILIES

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"\b(?:python|torchrun)\b[^\n`]*?\s-m\s+([\w.]+)(?:\s+(\w+))?")
SCRIPT = re.compile(r"\bpython\s+((?:[\w.-]+/)+[\w.-]+\.py)\b")
#: a file of this repository named in the text (`scripts/app.js` is the frontend's, not ours)
REPO_FILE = re.compile(r"(?<![\w/.~-])((?:benchmarks|nodes|scripts|tests|unhype|workflows)/"
                       r"[\w/.-]*\.(?:py|json|toml))\b")


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    ids = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            ids.add(slug)
    return ids


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc):
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.is_file(), f"{doc.name}: {target}"
        if anchor:
            assert anchor in anchors(path), f"{doc.name}: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_commands_name_what_exists(doc):
    text = doc.read_text(encoding="utf-8")
    main = (REPO / "unhype" / "__main__.py").read_text(encoding="utf-8")
    for module, command in MODULE.findall(text):
        path = REPO / module.replace(".", "/")
        if (REPO / module.split(".")[0]).is_dir():
            assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module
        else:
            assert importlib.util.find_spec(module) is not None, module
        if module == "unhype":
            assert re.search(rf'add_parser\(\s*"{command}"', main), f"python -m unhype {command}"
    for script in SCRIPT.findall(text):
        assert (REPO / script).is_file(), script
    for name in REPO_FILE.findall(text):
        assert (REPO / name).is_file(), f"{doc.name}: {name}"


def test_families_table_has_every_family():
    text = (REPO / "docs" / "families.md").read_text(encoding="utf-8")
    table = text[text.index("## Supported families"):].split("\n\n")[2].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[re.search(r"\(`([\w-]+)`\)", cells[0]).group(1)] = cells[header.index("Trainer")]
    assert set(rows) == set(FAMILIES)
    for name, trainer in rows.items():
        assert trainer.startswith("yes") == FAMILIES[name].trains, name

"""The distribution installs labtel.* and nothing with a generic top-level name."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setup["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            expected.add(".".join([package, *relative.parts]))
    assert expected == set(setup["packages"])


def test_generic_top_level_names_are_not_importable(tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json, labtel.sdk, labtel.collector, labtel.query_api, labtel.cli\n"
        "print(json.dumps({'generic': [n for n in ('sdk', 'collector', 'query_api', 'cli') "
        "if importlib.util.find_spec(n)], 'sdk': labtel.sdk.__file__, 'collector': labtel.collector.__file__}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    found = json.loads(result.stdout)
    assert found["generic"] == []
    assert Path(found["sdk"]).parent == REPO / "sdk"
    assert Path(found["collector"]).parent == REPO / "collector"

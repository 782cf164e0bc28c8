"""The chart's README is what helm-docs generates from README.md.gotmpl and values.yaml,
and every value is described there and in values.schema.json.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from conftest import require_tool
from deploy_support import CHART

ROW = re.compile(r"^\| (?P<key>[^ |]+) \| (?P<type>[^|]+) \| (?P<default>.*) \| (?P<text>.*) \|$")


def helm_docs() -> str:
    found = shutil.which("helm-docs") or (
        str(Path.home() / "go" / "bin" / "helm-docs")
        if (Path.home() / "go" / "bin" / "helm-docs").exists()
        else None
    )
    return found or require_tool("helm-docs")


def test_committed_readme_is_what_helm_docs_generates(tmp_path: Path) -> None:
    charts = tmp_path / "charts"
    copy = charts / CHART.name
    shutil.copytree(CHART, copy)
    (copy / "README.md").unlink()
    result = subprocess.run(
        [helm_docs(), "--chart-search-root", str(charts), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    generated = (copy / "README.md").read_text()
    assert (CHART / "README.md").read_text() == generated, (
        "deploy/helm/seriesflow/README.md is stale: run "
        "`helm-docs --chart-search-root deploy/helm` and commit the result"
    )


def readme_rows() -> dict[str, str]:
    rows = {}
    for line in (CHART / "README.md").read_text().splitlines():
        match = ROW.match(line)
        if match and match["key"] not in {"Key", "-----"}:
            rows[match["key"]] = match["text"].strip()
    return rows


def leaves(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values' leaves (an empty map or list is a leaf)."""
    if isinstance(values, dict) and values:
        return [p for k, v in values.items() for p in leaves(v, f"{prefix}{k}.")]
    return [prefix.removesuffix(".")]


def test_every_value_has_a_description_in_the_readme() -> None:
    rows = readme_rows()
    assert len(rows) > 100, "the values table was not found"
    undescribed = [key for key, text in rows.items() if not text]
    assert not undescribed, f"values without a `# --` comment: {undescribed}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # A leaf is documented by its own row or by a documented map above it (resources).
    missing = [
        path
        for path in leaves(values)
        if not any(path == key or path.startswith(f"{key}.") for key in rows)
    ]
    assert not missing, f"values missing from the README: {missing}"


def _schema_paths(values: Any, schema: dict[str, Any], prefix: str) -> list[str]:
    """Value paths the schema does not name, where it names its properties."""
    missing = []
    properties = schema.get("properties")
    if not isinstance(values, dict) or properties is None:
        return []
    for key, value in values.items():
        if key not in properties:
            missing.append(f"{prefix}{key}")
        else:
            missing += _schema_paths(value, properties[key], f"{prefix}{key}.")
    return missing


def test_every_value_is_in_the_schema_which_refuses_unknown_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert _schema_paths(values, schema, "") == []
    assert schema["additionalProperties"] is False

    def closed(node: dict[str, Any], path: str) -> list[str]:
        # Objects with named properties refuse others, except Helm's shared `global`.
        open_ = []
        if (
            "properties" in node
            and path != "global"
            and node.get("additionalProperties") is not False
        ):
            open_.append(path)
        for key, child in node.get("properties", {}).items():
            open_ += closed(child, f"{path}.{key}" if path else key)
        return open_

    assert closed(schema, "") == []

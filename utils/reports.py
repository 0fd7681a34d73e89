"""Figures of every stage go to reports/<stage>.json; the model hash ties them together."""
import hashlib
import json
import os
from pathlib import Path

from utils import paths


def model_hash(path) -> str:
    """Identity of a model file: the first 16 hex digits of its SHA-256."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest[:16]


def report_path(stage: str, reports_dir=None) -> Path:
    return Path(reports_dir or paths.REPORTS_DIR) / f"{stage}.json"


def read_report(stage: str, reports_dir=None) -> dict:
    path = report_path(stage, reports_dir)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def write_report(stage: str, figures: dict, section: str = None, reports_dir=None) -> Path:
    """Merge figures into reports/<stage>.json (under `section` when given, e.g. a target name)."""
    path = report_path(stage, reports_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = read_report(stage, reports_dir)
    if section is None:
        report.update(figures)
    else:
        report.setdefault(section, {}).update(figures)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path

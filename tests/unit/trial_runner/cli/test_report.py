"""``kubetune report``'s input errors: one line naming the flag or the study, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_api.spec import dump_yaml, load_study
from kubetune_study.storage import ensure_study, open_storage
from tests.harness.studies import study_document
from trial_runner.cli import main
from trial_runner.cli._common import EXIT_INPUT, EXIT_OK


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(dump_yaml(study_document("reported")))
    return path


def test_unknown_study_and_bad_output_are_one_line_errors(
    study_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"journal:{tmp_path / 'studies.journal'}"
    out = str(tmp_path / "report.html")
    assert main(["report", str(study_file), "--storage", storage, "--output", out]) == EXIT_INPUT
    assert "no study named 'reported'" in capsys.readouterr().err

    missing_dir = str(tmp_path / "nowhere" / "report.html")
    assert (
        main(["report", str(study_file), "--storage", storage, "--output", missing_dir])
        == EXIT_INPUT
    )
    err = capsys.readouterr().err
    assert f"--output {missing_dir}: directory" in err and "does not exist" in err
    assert "Traceback" not in err

    assert main(["report", str(study_file), "--output", str(tmp_path)]) == EXIT_INPUT
    assert "is a directory" in capsys.readouterr().err


def test_a_study_without_trials_still_gets_a_report(
    study_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"journal:{tmp_path / 'studies.journal'}"
    spec = load_study(study_file).spec
    ensure_study(open_storage(storage), "reported", spec)
    out = tmp_path / "report.html"
    assert main(["report", str(study_file), "--storage", storage, "--output", str(out)]) == EXIT_OK
    assert "no trial has completed yet" in out.read_text()
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {out}" in captured.err

import shlex

import pytest

from trainmap.cli import EXAMPLES, build_parser, main


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_help_examples_parse(command):
    parser = build_parser()
    for line in EXAMPLES[command]:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.command == command


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "trainmap score runs/seed23 --detector models/edge-lr" in capsys.readouterr().out


def test_cli_imports_no_heavy_libraries():
    import subprocess
    import sys

    code = "import sys, trainmap.cli; print(sorted(m for m in ('torch', 'xgboost', 'umap', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_table_is_an_error_message(tmp_path, capsys):
    status = main(["labels", str(tmp_path / "absent.parquet")])
    assert status == 2
    assert "trainmap extract" in capsys.readouterr().err


def test_train_rejects_invalid_horizon(micro_table, tmp_path, capsys):
    _, path = micro_table
    assert main(["train", str(path), "--horizon", "ten", "-o", str(tmp_path / "m")]) == 2
    assert "invalid horizon 'ten'" in capsys.readouterr().err


def test_config_file_sets_defaults_and_cli_wins(tmp_path):
    from trainmap.cli import _resolve
    from trainmap.models.training import TrainConfig

    config_file = tmp_path / "trainmap.toml"
    config_file.write_text("[train]\nhorizon = 12\nthreshold = 2.0\n")
    args = build_parser().parse_args(["--config", str(config_file), "train", "t.parquet", "-o", "m", "--threshold", "3.0"])
    config = _resolve(TrainConfig, args)
    assert config.horizon == ["12"]
    assert config.threshold == 3.0


def test_config_file_rejects_unknown_keys(tmp_path):
    from trainmap.cli import _resolve
    from trainmap.models.training import TrainConfig

    config_file = tmp_path / "trainmap.toml"
    config_file.write_text("[train]\nhorizn = 12\n")
    args = build_parser().parse_args(["--config", str(config_file), "train", "t.parquet", "-o", "m"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['horizn'\]"):
        _resolve(TrainConfig, args)


@pytest.mark.parametrize(("command", "resumes"), [("extract", True), ("train", False)])
def test_interrupt_message_names_resume(command, resumes, tmp_path, monkeypatch, capsys):
    from trainmap import workflows

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflows, command, interrupted)
    source = tmp_path / "input.parquet"
    args = [command, str(source), "-o", str(tmp_path / "out")]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"trainmap {command}: interrupted" in err
    assert ("run the same command again to resume" in err) is resumes

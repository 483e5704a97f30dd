"""The command line's bad-input paths: a clear one-line error and exit 2, never a traceback."""
from __future__ import annotations

import pytest

from hypkern import cli
from hypkern.unlearning import ConfigError, UnlearnConfig


def _run(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_negative_number_reaches_the_config_check(tmp_path, capsys):
    rc, err = _run(["unlearn", "--model", "demo:meru", "--concepts", "red circle", "--lr", "-1e-3",
                    "--out", str(tmp_path)], capsys)
    assert rc == 2 and "'lr'" in err and "must be > 0" in err, err


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: 1.0\nbeta: [1, 2\ngamma: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml \(line \d+, column \d+\): not valid YAML"):
        UnlearnConfig.from_file(bad)
    js = tmp_path / "bad.json"
    js.write_text('{"alpha": 1.0,,}')
    with pytest.raises(ConfigError, match=r"bad\.json \(line 1, column \d+\): not valid JSON"):
        UnlearnConfig.from_file(js)


def test_a_bad_file_value_is_an_error_even_when_a_flag_overrides_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: -5\nsteps: 3\n")
    with pytest.raises(ConfigError, match=r"'lr'.*c\.yaml"):
        UnlearnConfig.from_file(f, lr=1e-4)


def test_eval_missing_or_corrupt_model_exits_2(tmp_path, capsys):
    rc, err = _run(["eval", "--model", str(tmp_path / "nope.pth"), "--concepts", "dog", "--out", str(tmp_path)],
                   capsys)
    assert rc == 2 and err.startswith("hypkern eval: error:"), err
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    rc, err = _run(["eval", "--model", str(corrupt), "--concepts", "dog", "--out", str(tmp_path)], capsys)
    assert rc == 2 and err.startswith("hypkern eval: error:"), err


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    from hypkern.unlearning import unlearn
    from hypkern.unlearning.toy import toy_model, toy_pairs
    with pytest.raises(ConfigError, match=r"'resume'.*no checkpoint in .*drop --resume"):
        unlearn(toy_model("euclidean"), ["dog"], toy_pairs(4), steps=1, retain_batch_size=4, forget_batch_size=2,
                progress=False, eval=False, out_dir=str(tmp_path), resume=True)


def test_warns_when_batches_exceed_the_data_or_half_precision_runs_on_cpu():
    from hypkern.unlearning import unlearn
    from hypkern.unlearning.toy import toy_model, toy_pairs
    said = []
    unlearn(toy_model("euclidean"), ["dog"], toy_pairs(2), steps=1, retain_batch_size=16, forget_batch_size=8,
            precision="bf16", device="cpu", progress=False, eval=False, log=said.append)
    text = "\n".join(said)
    assert "retain_batch_size=16 but the data has only 10 retain pairs" in text, text
    assert "forget_batch_size=8 but the data has only 2 forget pairs" in text, text
    assert "precision=bf16 on the CPU is slower than fp32" in text, text

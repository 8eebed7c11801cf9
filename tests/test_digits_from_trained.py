"""`benchmarks/digits_from_trained.py`: a reduced run trains, converts and reports every row."""

import pytest

from benchmarks import digits_from_trained


def test_reduced_run_reports_the_deterministic_network_and_each_delta(capsys):
    means = digits_from_trained.main(["--seeds", "1", "--epochs", "3", "--pretrain", "2", "--deltas", "0.1", "0.5",
                                      "--samples", "4"])
    assert list(means) == ["deterministic", "deterministic at the conversion (2 epochs)", "to_bayesian delta=0.1",
                           "to_bayesian delta=0.5"]
    for row in means.values():
        assert 0.5 < row["accuracy"] <= 1.0 and row["nll"] > 0 and 0.0 <= row["ood_auroc"] <= 1.0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and table[-1].startswith("| to_bayesian delta=0.5 |")


def test_pretrain_must_leave_epochs_for_the_posterior():
    with pytest.raises(SystemExit):
        digits_from_trained.main(["--epochs", "5", "--pretrain", "5"])

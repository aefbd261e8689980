"""The command lines' kit: one choices registry, errors that name arguments in the library and flags in a CLI."""
from __future__ import annotations

import pytest

from vae.choices import CHOICES, check_choice
from vae.cli import ArgumentParser
from vae.errors import ArgumentError, as_flags
from vae.config import TrainConfig


def test_library_errors_name_the_argument_and_the_cli_shows_the_flag(capsys):
    err = ArgumentError("batch_size", "must be positive, got 0; lower `eval_batch_size` too")
    assert str(err) == "batch_size must be positive, got 0; lower eval_batch_size too"
    assert err.as_flag() == "--batch-size must be positive, got 0; lower --eval-batch-size too"
    assert str(ArgumentError("resume", ": no last.pt")) == "resume: no last.pt"
    parser = ArgumentParser(prog="prog")
    with pytest.raises(SystemExit) as stop:
        parser.error(err)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "prog: error: --batch-size must be positive, got 0; lower --eval-batch-size too\n"
    assert parser.fail("`init_from` x.pt: broken\nsecond line") == 1
    assert capsys.readouterr().err == "prog: error: --init-from x.pt: broken\n"
    assert as_flags("no mention") == "no mention"


def test_one_choices_check_for_every_registered_argument():
    for argument, choices in CHOICES.items():
        check_choice(argument, choices[0])
        with pytest.raises(ArgumentError, match=f"^{argument} must be one of {', '.join(choices)}, got 'nope'$"):
            check_choice(argument, "nope")


def test_config_validation_speaks_of_arguments():
    with pytest.raises(ArgumentError) as err:
        TrainConfig(latent_dim=0).validate()
    assert str(err.value) == "latent_dim must be a positive integer, got 0"
    assert err.value.as_flag() == "--latent-dim must be a positive integer, got 0"
    with pytest.raises(ArgumentError, match="rank must be at most latent_dim"):
        TrainConfig(posterior="lowrank", latent_dim=2, rank=3).validate()
    TrainConfig(posterior="full", latent_dim=2, rank=3).validate()  # rank shapes only the low-rank family

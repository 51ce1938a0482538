"""The one atomic-write helper (hivtp.atomic) and its users outside the runner: whole files or none,
the user's umask (tempfile.mkstemp would make them 0600), no temp file left after a failure."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from hivtp.atomic import atomic_open, write_json, write_text


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "x.txt"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_new_files_follow_the_umask(tmp_path, umask_027):
    write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert _mode(tmp_path / "a" / "b.json") == 0o640


def test_toy_trainer_checkpoint_is_atomic_and_follows_the_umask(tmp_path, umask_027):
    from hivtp.toy.train import TrainConfig, _save_state

    model, heads = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "state.pt"
    _save_state(path, model, heads, opt, 3, TrainConfig())
    assert torch.load(path)["step"] == 3 and _mode(path) == 0o640
    with pytest.raises(AttributeError):
        _save_state(path, model, heads, object(), 4, TrainConfig())  # an optimizer without state_dict fails mid-save
    assert torch.load(path)["step"] == 3 and [p.name for p in tmp_path.iterdir()] == ["state.pt"]

"""Class-folder dataset limits, transforms, the epoch-seeded loader, schedules and the metrics log."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_recognition_training.dataset import (
    ClassFolderDataset,
    EpochLoader,
    build_transform,
)
from face_recognition_training.run_log import plot_metrics
from face_recognition_training.schedule import (
    EarlyStopping,
    build_scheduler,
    step_scheduler,
)


def _folders(root: Path, counts: dict[str, int], size: int = 112) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for j in range(n):
            Image.new("RGB", (size, size), (10 * j, 0, 0)).save(root / name / f"{j:02d}.png")
    (root / "notes.txt").write_text("not an identity")
    return root


def test_width_and_depth_take_the_first_sorted(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"b": 3, "a": 5, "c": 2})
    full = ClassFolderDataset(root)
    assert full.classes == ["a", "b", "c"] and len(full) == 10
    limited = ClassFolderDataset(root, width=2, depth=2)
    assert limited.classes == ["a", "b"]
    assert [(p.parent.name, p.name, y) for p, y in limited.samples] == [
        ("a", "00.png", 0), ("a", "01.png", 0), ("b", "00.png", 1), ("b", "01.png", 1)]


def test_images_are_resized_and_normalised(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"a": 1}, size=128)
    x, y = ClassFolderDataset(root, transform=build_transform("ra_4_16", random_erasing=0.5))[0]
    assert x.shape == (3, 112, 112) and y == 0
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ClassFolderDataset(tmp_path / "missing")
    (tmp_path / "empty" / "id").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no images"):
        ClassFolderDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="augment must be one of"):
        build_transform("ra_2_9")


def test_epoch_loader_order_depends_on_epoch_only(tmp_path: Path) -> None:
    dataset = [(torch.tensor(i), i) for i in range(12)]
    loader = EpochLoader(dataset, batch_size=4, seed=3)
    first = [b[1].tolist() for b in loader.epoch(0)]
    second = [b[1].tolist() for b in loader.epoch(1)]
    again = [b[1].tolist() for b in EpochLoader(dataset, batch_size=4, seed=3).epoch(0)]
    assert first == again and first != second
    assert sorted(sum(first, [])) == list(range(12))
    halves = [sum((b[1].tolist() for b in EpochLoader(dataset, 2, seed=3, rank=r, world_size=2).epoch(0)), [])
              for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(12))


def test_step_and_plateau_schedules() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    step = build_scheduler(opt, {"name": "step", "milestones": [1, 3], "factor": 0.1})
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        step_scheduler(step, None)
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01])
    opt = torch.optim.SGD([param], lr=1.0)
    plateau = build_scheduler(opt, {"name": "plateau", "factor": 0.1, "patience": 1})
    for acc in (50.0, 60.0, 55.0, 58.0):
        opt.step()
        step_scheduler(plateau, acc)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs verification results"):
        step_scheduler(plateau, None)


def test_early_stopping_matches_the_original_rule() -> None:
    stopper = EarlyStopping(patience=6)
    for epoch, acc in enumerate([50, 60, 59, 58, 57, 56, 55, 54]):
        stopper.update(epoch, acc)
        if stopper.should_stop(epoch):
            break
    assert (epoch, stopper.best_epoch) == (7, 1)  # stops when the best epoch is 6 epochs old
    restored = EarlyStopping(patience=6)
    restored.load_state_dict(stopper.state_dict())
    assert restored == stopper


def test_fr_metrics_plot_is_written(tmp_path: Path) -> None:
    records = [{"epoch": e, "loss": 3.0 - e, "lr": 0.1, "eval": {"lfw": {"accuracy_mean": 60.0 + e}},
                "mean_accuracy": 60.0 + e} for e in range(3)]
    png = plot_metrics(records, tmp_path / "metrics.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path: Path) -> None:
    """A killed split_identity_blocks.py leaves ``.<identity>.<random>.tmp/``: it is neither a class nor a sample."""
    root = _folders(tmp_path / "data", {"a": 2, "b": 2, ".c.x1y2z3.tmp": 2})
    Image.new("RGB", (112, 112)).save(root / "a" / ".hidden.png")
    dataset = ClassFolderDataset(root)
    assert dataset.classes == ["a", "b"] and dataset.num_classes == 2
    assert [(p.parent.name, p.name) for p, _ in dataset.samples] == [("a", "00.png"), ("a", "01.png"),
                                                                     ("b", "00.png"), ("b", "01.png")]


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_corrupt_image_is_named_or_skipped_with_its_own_label(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    for name, shade in (("a", 0), ("b", 100)):
        (root / name).mkdir(parents=True)
        for j in range(2):
            Image.effect_noise((112, 112), 40 + shade).convert("RGB").save(root / name / f"{j}.png")
    bad = _truncate(root / "a" / "1.png")
    stop = ClassFolderDataset(root, on_unreadable="stop")
    with pytest.raises(ValueError) as err:
        stop[1]
    message = str(err.value)
    assert str(bad) in message and "truncated" in message and "on_unreadable" in message and "\n" not in message

    skip = ClassFolderDataset(root, on_unreadable="skip")
    with caplog.at_level("WARNING"):
        image, label = skip[1]
        skip[1]
    assert label == 1 and image.size == (112, 112)  # the image used is b/0.png, so its label is b's
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(root / "b" / "0.png").convert("RGB")))
    warnings = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(warnings) == 1 and "1 unreadable" in warnings[0], warnings
    epoch = [labels.tolist() for _, labels in EpochLoader(
        ClassFolderDataset(root, transform=build_transform(), on_unreadable="skip"), batch_size=2).epoch(0)]
    assert sorted(sum(epoch, [])) == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="on_unreadable must be one of"):
        ClassFolderDataset(root, on_unreadable="ignore")

import pytest

from jaxvision import config as config_lib
from jaxvision.tasks.classification import ClassificationConfig


def test_overrides_are_parsed_by_field_type():
    cfg = config_lib.apply_overrides(ClassificationConfig(), [
        "--config.total_steps=2e3", "optim.learning_rate=3e-4", "model.representation_size=None",
        "model.pool=gap", "fsdp=true", "optim.grad_clip_norm=none", "data.image_size=32",
    ])
    assert cfg.total_steps == 2000 and isinstance(cfg.total_steps, int)
    assert cfg.optim.learning_rate == 3e-4 and cfg.model.pool == "gap" and cfg.fsdp is True
    assert cfg.optim.grad_clip_norm is None and cfg.data.image_size == 32
    assert ClassificationConfig().total_steps != 2000  # the default is untouched


@pytest.mark.parametrize("override, message", [
    ("total_steps=ten", "expects an int"),
    ("total_steps=0.5", "expects an int"),
    ("fsdp=maybe", "expects a bool"),
    ("optim.learing_rate=1", "Unknown config field 'learing_rate'.*learning_rate"),
    ("model=3", "is a group"),
    ("seed", "must look like field.name=value"),
    ("seed.x=1", "has no field"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.apply_overrides(ClassificationConfig(), [override])


def test_parse_stages():
    from jaxvision import cli

    assert cli.parse_stages(["--workdir", "w", "--stages", "b,a", "--config.x=1"], ("a", "b", "c")) == (
        ["b", "a"], ["--workdir", "w", "--config.x=1"])
    assert cli.parse_stages(["--workdir", "w"], ("a", "b"))[0] == ["a", "b"]
    with pytest.raises(SystemExit, match=r"unknown stages \['z'\]; choose from \('a', 'b'\)"):
        cli.parse_stages(["--stages", "a,z"], ("a", "b"))


def test_ensure_classifier_trains_only_when_the_folder_holds_no_run(tmp_path, monkeypatch):
    from jaxvision.tasks import classification

    calls = []
    monkeypatch.setattr(classification, "run", lambda cfg, workdir: calls.append((cfg.total_steps, workdir)))
    config = classification.ClassificationConfig()
    classification.ensure_classifier(tmp_path / "cls", config, 7)
    assert calls == [(7, tmp_path / "cls")]
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "config.json").write_text("{}")
    classification.ensure_classifier(tmp_path / "done", config, 7)
    assert len(calls) == 1

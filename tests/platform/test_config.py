from __future__ import annotations

import pytest

from seqctr.platform.config import ConfigError, ExperimentConfig, config_from_dict, load_config, resolve_paths


def test_default_and_tiny_configs_load(repo_root):
    default = load_config(repo_root / "configs" / "default.yaml")
    tiny = load_config(repo_root / "configs" / "tiny.yaml")
    assert default.embed.model == "packaged"
    assert tiny.embed.model == "tiny"
    assert tiny.data.synthetic.events < default.data.synthetic.events


def test_overrides_are_typed_from_yaml():
    cfg = load_config(None, ["train.lr=1e-4", "model.attention=true", "model.mlp_hidden=[8, 4]"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.attention is True
    assert cfg.model.mlp_hidden == [8, 4]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown key 'train.lrr'"),
        ("trian.lr=1", "unknown key 'trian'"),
        ("train.lr=abc", "train.lr (flag --set train.lr=...)"),
        ("train.lr=-1", "train.lr"),
        ("model.sequence=transformer", "model.sequence"),
        ("data.train_fraction=0.95", "data.train_fraction + data.val_fraction"),
        ("train.lr", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_config(None, [override])


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hiden_size: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'model.hiden_size'"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_json_dict():
    cfg = load_config(None, ["model.hidden_size=17"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.with_overrides({"train.epochs": 9}).train.epochs == 9


def test_resolve_paths_makes_local_paths_absolute_and_keeps_uris(tmp_path):
    cfg = ExperimentConfig().with_overrides({"data.events": "s3://bucket/events", "data.items": "rel/items"})
    resolved = resolve_paths(cfg, tmp_path)
    assert resolved.data.events == "s3://bucket/events"
    assert resolved.data.items == str(tmp_path / "rel" / "items")
    logged = resolve_paths(cfg.with_overrides({"serve.impressions": "work/impressions"}), tmp_path)
    assert logged.serve.impressions == str(tmp_path / "work" / "impressions")  # replicas write it, not the cwd
    assert resolved.serve.impressions == ""  # off stays off


def test_batch_size_is_global_and_must_divide_across_workers():
    cfg = ExperimentConfig().with_overrides(
        {"train.batch_size": 512, "train.num_workers": 2, "train.grad_accum_steps": 2}
    )
    assert cfg.train.micro_batch_size == 128
    with pytest.raises(ConfigError, match=r"train\.batch_size \(500\) is the global batch .* try 498"):
        load_config(None, ["train.batch_size=500", "train.num_workers=3"])


def test_lr_scaling_only_when_asked():
    base = ExperimentConfig().with_overrides({"train.lr": 0.002, "train.batch_size": 2048})
    assert base.train.effective_lr == 0.002
    assert base.with_overrides({"train.lr_scaling": "linear"}).train.effective_lr == pytest.approx(0.008)
    assert base.with_overrides({"train.lr_scaling": "sqrt"}).train.effective_lr == pytest.approx(0.004)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.features.counts=true", "data.features.item=[]", "data.features.user_item_counts=[category]"],
            "must be a categorical column",
        ),
        (
            [
                "data.features.counts=true",
                "data.features.item=[{name: price, kind: numeric}]",
                "data.features.user_item_counts=[price]",
            ],
            "must be a categorical column",
        ),
        (
            [
                "data.features.counts=false",
                "data.features.item=[{name: category, kind: categorical}]",
                "data.features.user_item_counts=[category]",
            ],
            "needs data.features.counts: true",
        ),
    ],
)
def test_user_item_counts_need_counts_and_a_declared_categorical_item_column(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)

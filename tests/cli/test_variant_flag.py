"""`seqctr serve --variant NAME=REF[:PCT][:shadow]`: parsing, the champion's remaining share, and errors
that name --variant (all before Ray or Serve starts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqctr.cli.main import app
from seqctr.cli.serve import parse_variant_flag, variants_from_flags, with_variant_flags
from seqctr.platform.config import ConfigError, load_config
from seqctr.serving.variants import VariantsSpec, route_users, variant_specs

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("challenger=registry://seqctr@challenger:10%", ("challenger", "registry://seqctr@challenger", 10.0, False)),
        ("shadow=registry://seqctr@v0007:50%:shadow", ("shadow", "registry://seqctr@v0007", 50.0, True)),
        ("shadow=registry://seqctr@v0007:shadow:50%", ("shadow", "registry://seqctr@v0007", 50.0, True)),
        ("s=s3://bucket/runs/seqctr/latest:shadow", ("s", "s3://bucket/runs/seqctr/latest", 100.0, True)),
        ("b=work/runs/seqctr/latest:2.5%", ("b", "work/runs/seqctr/latest", 2.5, False)),
        (" c = registry://seqctr@v3:0% ", ("c", "registry://seqctr@v3", 0.0, False)),
    ],
)
def test_flag_parses_ref_share_and_shadow(flag, expected):
    name, spec = parse_variant_flag(flag)
    assert (name, spec["model"], spec["pct"], spec["shadow"]) == expected


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("challenger", "expected NAME=REF[:PCT][:shadow]"),
        ("=registry://seqctr@v1:10%", "expected NAME=REF"),
        ("c=", "expected NAME=REF"),
        ("c=:10%", "no model REF"),
        ("c=registry://seqctr@v1:10", "a share needs a % sign (10%)"),
        ("c=registry://seqctr@v1:150%", "a share is 0..100%"),
        ("c=registry://seqctr@v1", "a served variant needs its share"),
    ],
)
def test_malformed_flags_name_the_flag(flag, message):
    with pytest.raises(ConfigError, match="--variant") as err:
        parse_variant_flag(flag)
    assert message in str(err.value)


def test_champion_gets_the_remaining_weight_and_shadows_take_none():
    variants = variants_from_flags(
        ["challenger=registry://seqctr@challenger:10%", "shadow=registry://seqctr@v0007:50%:shadow"],
        "registry://seqctr@production",
    )
    assert variants == {
        "champion": {"model": "registry://seqctr@production", "weight": 0.9, "shadow": False},
        "challenger": {"model": "registry://seqctr@challenger", "weight": 0.1, "shadow": False},
        "shadow": {"model": "registry://seqctr@v0007", "weight": 0.5, "shadow": True},
    }
    assert list(variants_from_flags(["a=x:30%", "b=y:70%"], "m")) == ["champion", "a", "b"]
    assert variants_from_flags(["a=x:30%", "b=y:70%"], "m")["champion"]["weight"] == 0.0  # a full rollout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["a=x:60%", "b=y:50%"], "the served shares add up to 110% (a=60%, b=50%), more than 100%"),
        (["a=x:10%", "a=y:20%"], "variant 'a' given twice"),
        (["champion=x:10%"], "'champion' is the main model"),
    ],
)
def test_inconsistent_flags_name_the_flag(flags, message):
    with pytest.raises(ConfigError, match="--variant") as err:
        variants_from_flags(flags, "m")
    assert message in str(err.value)


def test_flags_become_serve_variants_through_the_config_rules():
    cfg = load_config(TINY, ["serve.model=registry://seqctr@production"])
    out = with_variant_flags(cfg, ["challenger=registry://seqctr@challenger:10%", "sh=registry://seqctr@v7:shadow"])
    assert {n: (v.model, v.weight, v.shadow) for n, v in out.serve.variants.items()} == {
        "champion": ("registry://seqctr@production", 0.9, False),
        "challenger": ("registry://seqctr@challenger", 0.1, False),
        "sh": ("registry://seqctr@v7", 1.0, True),
    }
    specs = variant_specs(out)  # what the scorer's user_config carries, valid by its own rules too
    VariantsSpec.model_validate({"variants": specs})
    users = [f"u{i}" for i in range(10_000)]
    share = route_users(users, {n: s.weight for n, s in specs.items() if not s.shadow}).count("challenger") / 1e4
    assert share == pytest.approx(0.1, abs=0.01)
    assert with_variant_flags(cfg, []) is cfg


def test_config_rules_reject_a_bad_name_naming_the_flag():
    cfg = load_config(TINY)
    with pytest.raises(ConfigError, match=r"^--variant: invalid config.*variant name 'b@d'"):
        with_variant_flags(cfg, ["b@d=registry://seqctr@v1:10%"])
    both = cfg.with_overrides({"serve.variants": {"x": {"model": "m"}}})
    with pytest.raises(ConfigError, match="--variant: the config already sets serve.variants"):
        with_variant_flags(both, ["c=registry://seqctr@v1:10%"])


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("challenger", "error: --variant 'challenger': expected NAME=REF[:PCT][:shadow]"),
        ("c=registry://seqctr@v1:60%", "error: --variant"),
    ],
)
def test_serve_command_stops_on_a_bad_flag_before_ray_starts(flag, message, monkeypatch):
    import seqctr.cli.serve as serve_cli

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start on a bad --variant")

    monkeypatch.setattr(serve_cli, "connect_ray", no_ray)
    flags = ["--variant", flag] if "60%" not in flag else ["--variant", flag, "--variant", "d=registry://x@y:50%"]
    result = CliRunner().invoke(app, ["serve", "--config", str(TINY), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_serve_help_shows_the_flag():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--variant NAME=REF[:PCT][:shadow]" in result.output

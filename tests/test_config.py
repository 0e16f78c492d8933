from pathlib import Path

import pytest

from pellet_analysis.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_is_valid_and_runs_the_demo():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.input_dir == Path("images")
    assert cfg.output_dir == Path("outputs/demo")
    assert cfg.stains.preset == "ab-vg"


def test_overrides_replace_file_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pixel_size_um: 0.5\nstains:\n  preset: he\n")
    cfg = load_config(path, pixel_size_um=0.25, stains__preset="safranin-o", output_dir=None)
    assert cfg.pixel_size_um == 0.25
    assert cfg.stains.preset == "safranin-o"
    assert cfg.output_dir == RunConfig().output_dir  # None leaves the value alone


@pytest.mark.parametrize(
    "text, key, cause",
    [
        ("pixel_size_um: -1\n", "pixel_size_um", "greater than 0"),
        ("pixel_size_um: abc\n", "pixel_size_um", "valid number"),
        ("pellets:\n  min_pellet_area_um2: -5\n", "pellets.min_pellet_area_um2", "greater than 0"),
        ("colour: blue\n", "colour", "unknown key"),
        ("stains:\n  preset: trichrome\n", "stains.preset", "unknown stain preset"),
        ("scheduler: gpu\n", "scheduler", "threads, processes"),
        ("nuclei:\n  min_diameter_um: 10\n  max_diameter_um: 5\n", "nuclei.max_diameter_um", "larger than"),
        ("filename_pattern: '{donor'\n", "filename_pattern", "unbalanced"),
    ],
)
def test_bad_values_give_one_line_naming_the_file_and_key(tmp_path, text, key, cause):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and key in message and cause in message


def test_invalid_yaml_and_non_mapping_are_config_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("stains: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("pixel_size_um: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_config_reference_in_docs_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_config_reference", ROOT / "docs" / "make_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == module.render()


def test_every_section_gives_its_frozen_parameters_under_the_same_names():
    import dataclasses

    from pellet_analysis.config import RunConfig

    config = RunConfig(pellets={"tissue_min_od": 0.07}, iron={"control_conditions": ["none", "unlabeled"]})
    for name in ("stains", "pellets", "classify", "nuclei", "iron", "bern"):
        section = getattr(config, name)
        params = section.params()
        for field in type(section).model_fields:
            value = getattr(section, field)
            assert getattr(params, field) == (tuple(value) if isinstance(value, list) else value), (name, field)
        with pytest.raises(dataclasses.FrozenInstanceError):
            params.__setattr__(next(iter(type(section).model_fields)), None)
    assert config.pellets.params().tissue_min_od == 0.07
    assert config.iron.params().control_conditions == ("none", "unlabeled")

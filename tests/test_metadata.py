import pytest

from pellet_analysis.metadata import compile_pattern, parse_name

PATTERN = "{donor}_{condition}_d{day}_s{section}"


@pytest.mark.parametrize(
    "stem, expected",
    [
        ("P03_labeled_d14_s1", {"donor": "P03", "condition": "labeled", "day": 14, "section": "1"}),
        ("P10_Unlabelled_d7_s12", {"donor": "P10", "condition": "unlabeled", "day": 7, "section": "12"}),
        ("donor-A_labeled_D28_s2b", {"donor": "donor-A", "condition": "labeled", "day": 28, "section": "2b"}),
    ],
)
def test_parse_default_pattern(stem, expected):
    assert parse_name(stem, PATTERN) == expected


@pytest.mark.parametrize("stem", ["P03_treated_d14_s1", "P03_labeled_14_s1", "slide_0001", "P03_labeled_d14"])
def test_non_matching_names_return_none(stem):
    assert parse_name(stem, PATTERN) is None


def test_custom_pattern():
    assert parse_name("day28-P2-labeled", "day{day}-{donor}-{condition}") == {
        "day": 28, "donor": "P2", "condition": "labeled",
    }


@pytest.mark.parametrize("bad", ["{donor", "{donor}_{donor}", "{1x}"])
def test_invalid_patterns_raise(bad):
    with pytest.raises(ValueError):
        compile_pattern(bad)

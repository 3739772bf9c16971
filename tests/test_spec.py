"""The typed sparsity setting: one parser from the CLI/config text, and its JSON form."""

import pytest

from nmrl.errors import NmrlError
from nmrl.sparsity.pattern import NMPattern
from nmrl.sparsity.spec import (
    Dense,
    NMSparsity,
    UnstructuredSparsity,
    nm_pattern,
    parse_sparsity,
    sparsity_from_dict,
    sparsity_to_dict,
)


def test_each_text_form_parses_to_its_type():
    assert parse_sparsity("2:4") == NMSparsity(NMPattern(2, 4))
    assert parse_sparsity(" 1 : 8 ") == NMSparsity(NMPattern(1, 8))
    assert parse_sparsity("dense") == Dense() and parse_sparsity("Dense") == Dense()
    assert parse_sparsity("4:4") == Dense()  # N = M keeps every weight
    assert parse_sparsity("0.9") == UnstructuredSparsity(0.9, "static")  # auto = static for a fraction
    assert parse_sparsity("0.5", "set", "uniform", "all") == UnstructuredSparsity(0.5, "set", "uniform", "all")


@pytest.mark.parametrize("text", ["2:4", "1:8", "dense", "0.9", "0.05"])
def test_the_text_form_round_trips(text):
    spec = parse_sparsity(text)
    assert parse_sparsity(str(spec)) == spec
    assert sparsity_from_dict(sparsity_to_dict(spec)) == spec


def test_rigl_spec_round_trips_through_json():
    spec = parse_sparsity("0.75", "rigl", "uniform", "all")
    assert sparsity_from_dict(sparsity_to_dict(spec)) == spec


@pytest.mark.parametrize(
    ("text", "topology", "message"),
    [
        ("2/4", "auto", "invalid --sparsity '2/4'"),
        ("5:4", "auto", "N must be between 1 and M"),
        ("1.5", "auto", "a fraction in (0, 1)"),
        ("0", "auto", "a fraction in (0, 1)"),
        ("nan", "auto", "a fraction in (0, 1)"),
        ("2:4", "set", "--topology set is for unstructured sparsity"),
        ("dense", "rigl", "--topology rigl is for unstructured sparsity"),
        ("0.9", "sometimes", "unknown --topology 'sometimes'"),
    ],
)
def test_bad_settings_are_one_clear_error(text, topology, message):
    with pytest.raises(NmrlError) as error:
        parse_sparsity(text, topology)
    assert message in str(error.value)


def test_only_nm_makes_an_nm_claim():
    assert nm_pattern(parse_sparsity("1:4")) == NMPattern(1, 4)
    assert nm_pattern(parse_sparsity("dense")) is None and nm_pattern(parse_sparsity("0.9")) is None


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"kind": "nm"},
        {"kind": "nm", "pattern": "x"},
        {"kind": "odd"},
        {"kind": "unstructured", "fraction": 2},
    ],
)
def test_a_malformed_saved_spec_is_refused(data):
    with pytest.raises(NmrlError):
        sparsity_from_dict(data)

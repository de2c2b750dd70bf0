"""The recipes' shared data checks: a resume on sources of another size, the evaluation note."""

import pytest

from tests.data.test_mixing import Numbers, mixer
from torchflava.data.mixing import SOURCE_FILES, SOURCE_SIZES
from torchflava.data.run_checks import evaluation_note, resumed_data_checks

KEYS = {"odd": "data.files.odd", "even": "data.files.even"}


def test_a_source_of_another_size_fails_naming_its_key_and_the_sizes():
    grown = mixer(sources={"odd": Numbers(12, 1000), "even": Numbers(6, 2000)})
    states = [{"data": {SOURCE_SIZES: {"odd": 10, "even": 6}}}]
    [(ok, key, expected, got)] = resumed_data_checks(grown, states, KEYS)
    assert (ok, key, got) == (False, "data.files.odd", "12 items")
    assert expected.startswith("the 10 odd the checkpoint was trained on, since a resumed run draws each pass")
    assert resumed_data_checks(mixer(), states, KEYS) == []  # the sizes recorded
    assert resumed_data_checks(grown, None, KEYS) == resumed_data_checks(grown, [], KEYS) == []  # a fresh run
    assert resumed_data_checks(grown, [{"data": {}}], KEYS) == []  # a checkpoint from before sizes were recorded


def test_keys_missing_a_kind_are_refused_before_any_check():
    with pytest.raises(
        ValueError, match=r"^keys: expected the config key of each kind \['even', 'odd'\], got \['odd'\]$"
    ):
        resumed_data_checks(mixer(), None, {"odd": "data.files.odd"})


def test_the_evaluation_note_is_given_only_where_the_evaluation_cannot_run():
    assert evaluation_note("files", True).startswith("eval: no evaluation after this run: eval.* scores the held-out")
    assert evaluation_note("files", False) is None and evaluation_note("shapes", True) is None


def test_a_source_of_other_files_of_the_same_size_fails_naming_its_key_and_the_files():
    """Parquet shards renamed or swapped keep the size but not the items at each index: their files_digest differs."""
    odd, even = Numbers(10, 1000), Numbers(6, 2000)
    odd.files_digest = "3 files, sha1 aaaa"
    position = mixer(sources={"odd": odd, "even": even})[0].position
    assert position == {SOURCE_SIZES: {"odd": 10, "even": 6}, SOURCE_FILES: {"odd": "3 files, sha1 aaaa"}}
    moved = Numbers(10, 1000)
    moved.files_digest = "3 files, sha1 bbbb"
    [(ok, key, expected, got)] = resumed_data_checks(
        mixer(sources={"odd": moved, "even": even}), [{"data": position}], KEYS
    )
    assert (ok, key, got) == (False, "data.files.odd", "3 files, sha1 bbbb")
    assert expected.startswith("the parquet files the checkpoint was trained on (3 files, sha1 aaaa: by name, rows")
    assert resumed_data_checks(mixer(sources={"odd": odd, "even": even}), [{"data": position}], KEYS) == []
    # (recorded before the files were, or with a single captions file of no digest: the sizes alone compared)
    assert resumed_data_checks(mixer(sources={"odd": moved, "even": even}), [{"data": {SOURCE_SIZES: {}}}], KEYS) == []
    grown = Numbers(11, 1000)
    grown.files_digest = "4 files, sha1 cccc"  # (a size changed: that one check, not two)
    [check] = resumed_data_checks(mixer(sources={"odd": grown, "even": even}), [{"data": position}], KEYS)
    assert check[3] == "11 items"

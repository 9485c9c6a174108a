import gzip
import json

import pytest

from densesearch.data.itemtext import ItemFields, as_float, as_list, clean_text, details_text, split_sentences
from densesearch.data.sources import sample_meta_path


def test_clean_text_unescapes_html_and_never_shows_list_reprs():
    assert clean_text("Soft &amp; comfy<br/>cotton  \n tee") == "Soft & comfy cotton tee"
    assert clean_text(["a", None, ["b", "c"]]) == "a b c"
    assert "[" not in clean_text(["x", "y"])
    assert clean_text(None) == ""


def test_field_shapes_seen_in_real_data():
    assert as_list(None) == [] and as_list("one") == ["one"] and as_list(["", " two "]) == ["two"]
    assert as_float(12.5) == 12.5 and as_float(None) is None and as_float("$1,299.00") == 1299.0
    assert as_float("—") is None and as_float(True) is None
    assert details_text({"Color": "Red", "Date First Available": "May 1, 2020"}) == "Color: Red"
    assert details_text(None) == ""
    assert split_sentences("Soft fabric. Machine wash! Fits well") == ["Soft fabric.", "Machine wash!", "Fits well"]


def test_every_real_sample_row_parses_to_a_clean_text():
    with gzip.open(sample_meta_path(), "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 1000
    for row in rows:
        item = ItemFields.from_record(row)
        text = item.text(2000)
        assert 0 < len(text) <= 2000
        assert "['" not in text and "&amp;" not in text and "  " not in text
        assert item.rating is None or 0 <= item.rating <= 5
    null_price = [r for r in rows if r["price"] is None]
    assert null_price and ItemFields.from_record(null_price[0]).price is None


def test_unusable_rows_raise_with_a_reason():
    with pytest.raises(ValueError, match="parent_asin"):
        ItemFields.from_record({"title": "x"})
    with pytest.raises(ValueError, match="no title"):
        ItemFields.from_record({"parent_asin": "B1", "title": "", "features": [], "description": []})


def test_variant_groups_share_normalised_title_and_store():
    a = ItemFields.from_record({"parent_asin": "A", "title": "Summer Dress, Blue!", "store": "Acme"})
    b = ItemFields.from_record({"parent_asin": "B", "title": "summer dress blue", "store": "ACME"})
    c = ItemFields.from_record({"parent_asin": "C", "title": "summer dress blue", "store": "Other"})
    assert a.group_key() == b.group_key() != c.group_key()


def test_held_out_sentences_are_removed_from_item_text():
    item = ItemFields.from_record({"parent_asin": "A", "title": "Tee",
                                   "features": ["Soft cotton fabric. Machine wash."]})
    assert "Soft cotton" not in item.text(500, frozenset({"Soft cotton fabric."}))
    assert "Machine wash." in item.text(500, frozenset({"Soft cotton fabric."}))

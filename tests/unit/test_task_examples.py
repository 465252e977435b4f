"""Labelled examples: JSONL, CSV and Parquet files written here, synthetic Reuters SGML, and
the real Reuters-21578 distribution on the ModApte split when it is on hand."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.errors import DataError
from lmforge.tasks.examples import Example, ExampleSet, read_examples, val_part

REAL = Path(__file__).parents[3] / "shared" / "data" / "reuters21578.tar.gz"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def reviews(n: int = 40) -> list[dict]:
    return [{"text": f"review number {i}", "label": "pos" if i % 3 else "neg"} for i in range(n)]


def test_jsonl_single_label_is_split_by_hash_deterministically(tmp_path):
    path = write_jsonl(tmp_path / "reviews.jsonl", reviews())
    data = read_examples(path, test_fraction=0.25)
    assert isinstance(data, ExampleSet) and not data.multi_label
    assert data.label_names == ["neg", "pos"] and data.source == str(path)
    assert len(data.train) + len(data.test) == 40 and 4 <= len(data.test) <= 18
    assert all(len(e.labels) == 1 for e in data.train + data.test)
    assert data.train[0] == Example(text=data.train[0].text, labels=data.train[0].labels,
                                    id=data.train[0].id)
    again = read_examples(str(path), test_fraction=0.25)
    assert again == data
    other = read_examples(path, test_fraction=0.25, seed=1)
    assert {e.id for e in other.test} != {e.id for e in data.test}


def test_the_hash_follows_the_text_not_the_line(tmp_path):
    records = reviews()
    one = read_examples(write_jsonl(tmp_path / "a.jsonl", records))
    two = read_examples(write_jsonl(tmp_path / "b.jsonl", records[::-1]))
    assert {e.text for e in one.test} == {e.text for e in two.test}


def test_jsonl_multi_label_lists_and_own_split(tmp_path):
    path = write_jsonl(tmp_path / "news.jsonl", [
        {"id": "a", "text": "oil and wheat", "labels": ["wheat", "crude"], "split": "train"},
        {"id": "b", "text": "nothing", "labels": [], "split": "train"},
        {"id": "c", "text": "oil", "labels": ["crude", "crude"], "split": "test"},
    ])
    data = read_examples(path)
    assert data.multi_label and data.label_names == ["crude", "wheat"]
    assert data.train == [Example("oil and wheat", ("crude", "wheat"), "a"),
                          Example("nothing", (), "b")]
    assert data.test == [Example("oil", ("crude",), "c")]


def test_csv_with_pipe_separated_labels(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text('text,labels,split\n"oil, and wheat",crude|wheat,train\n'
                    "plain,,train\nbarley,barley | grain,test\n", encoding="utf-8")
    data = read_examples(path)
    assert data.multi_label and data.label_names == ["barley", "crude", "grain", "wheat"]
    assert [e.labels for e in data.train] == [("crude", "wheat"), ()]
    assert data.train[0].text == "oil, and wheat" and data.train[0].id == "news.csv:1"
    assert data.test[0].labels == ("barley", "grain")


def test_csv_single_label_with_named_fields(tmp_path):
    path = tmp_path / "sentiment.csv"
    rows = "".join(f"great film {i},{'yes' if i % 2 else 'no'}\n" for i in range(20))
    path.write_text("review,liked\n" + rows)
    data = read_examples(path, text_field="review", label_field="liked")
    assert not data.multi_label and data.label_names == ["no", "yes"]
    assert len(data.train) + len(data.test) == 20


def test_parquet_single_and_multi_label(tmp_path):
    single = tmp_path / "single.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(10)],
                             "label": ["a", "b"] * 5}), single)
    data = read_examples(single, test_fraction=0.3)
    assert not data.multi_label and data.label_names == ["a", "b"]
    multi = tmp_path / "multi.parquet"
    pq.write_table(pa.table({"body": ["x", "y", "z"], "tags": [["a"], ["a", "b"], []],
                             "split": ["train", "train", "test"]}), multi)
    data = read_examples(multi, text_field="body", label_field="tags")
    assert data.multi_label and [e.labels for e in data.train] == [("a",), ("a", "b")]


def test_two_examples_always_give_both_parts(tmp_path):
    data = read_examples(write_jsonl(tmp_path / "two.jsonl", reviews(2)[::-1][:1] + [
        {"text": "other", "label": "neg"}]), test_fraction=0.01)
    assert len(data.train) == 1 and len(data.test) == 1


def test_val_part_is_deterministic_and_disjoint(tmp_path):
    data = read_examples(write_jsonl(tmp_path / "r.jsonl", reviews(100)))
    train, val = val_part(data.train, 0.2, seed=3)
    assert (train, val) == val_part(data.train, 0.2, seed=3)
    assert sorted(e.id for e in train + val) == sorted(e.id for e in data.train)
    assert 5 <= len(val) <= 35 and not {e.id for e in train} & {e.id for e in val}
    assert [len(p) for p in val_part(data.train[:2], 0.001)] == [1, 1]


def bad_inputs(tmp_path: Path) -> list[tuple[dict, str]]:
    def jsonl(name: str, records: list) -> Path:
        return write_jsonl(tmp_path / name, records)

    text_only = jsonl("text_only.jsonl", [{"text": "x"}])
    no_text = jsonl("no_text.jsonl", [{"body": "x", "label": "a"}])
    unlabelled = jsonl("unlabelled.jsonl", [{"text": "x", "labels": []}] * 3)
    int_label = jsonl("int.jsonl", [{"text": "x", "label": 3}])
    int_in_list = jsonl("list.jsonl", [{"text": "x", "labels": ["a", 1]}])
    one_class = jsonl("one.jsonl", [{"text": f"x{i}", "label": "a"} for i in range(5)])
    empty = jsonl("empty.jsonl", [])
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "x", "label": "a"}\n{"text": \n')
    bad_split = jsonl("split.jsonl", [{"text": "x", "label": "a", "split": "dev"}])
    all_train = jsonl("train.jsonl", [{"text": "x", "label": "a", "split": "train"},
                                      {"text": "y", "label": "b", "split": "train"}])
    unknown_kind = tmp_path / "data.xml"
    unknown_kind.write_text("<x/>")
    return [
        ({"source": tmp_path / "missing.jsonl"}, "does not exist"),
        ({"source": text_only}, "no field 'label' or 'labels'"),
        ({"source": no_text}, "no field 'text'"),
        ({"source": no_text, "text_field": "body", "label_field": "topic"}, "no field 'topic'"),
        ({"source": unlabelled}, "has no labels"),
        ({"source": int_label}, "not a non-empty string"),
        ({"source": int_in_list}, "not a non-empty string"),
        ({"source": one_class}, "one class only"),
        ({"source": empty}, "holds no examples"),
        ({"source": bad_json}, "line 2 is not valid JSON"),
        ({"source": bad_split}, "neither 'train' nor 'test'"),
        ({"source": all_train}, "no test examples"),
        ({"source": unknown_kind}, "unknown kind of file"),
        ({"source": text_only, "split": "modapte"}, "for Reuters-21578 only"),
        ({"source": int_label, "test_fraction": 1.5}, "strictly between 0 and 1"),
        ({"source": tmp_path, "labels": "genres"}, "unknown Reuters label set 'genres'"),
        ({"source": tmp_path, "split": "lewis"}, "unknown split 'lewis'"),
        ({"source": tmp_path}, "holds no reut2-*.sgm files"),
    ]


def test_every_bad_input_is_one_line_naming_the_problem(tmp_path):
    for kwargs, expected in bad_inputs(tmp_path):
        with pytest.raises(DataError) as caught:
            read_examples(**kwargs)
        message = str(caught.value)
        assert expected in message, (kwargs, message)
        assert "\n" not in message, message


def story(newid: int, lewis: str, topics: list[str], yes: str = "YES") -> str:
    codes = "".join(f"<D>{t}</D>" for t in topics)
    return (f'<REUTERS TOPICS="{yes}" LEWISSPLIT="{lewis}" CGISPLIT="TRAINING-SET" '
            f'NEWID="{newid}">\n<TOPICS>{codes}</TOPICS>\n<PLACES><D>usa</D></PLACES>\n'
            f"<TEXT>&#2;\n<TITLE>STORY {newid}</TITLE>\n<BODY>Body {newid}.\n&#3;</BODY></TEXT>\n"
            "</REUTERS>\n")


def test_synthetic_reuters_keeps_categories_seen_on_both_sides(tmp_path):
    (tmp_path / "reut2-000.sgm").write_text(
        story(1, "TRAIN", ["earn"]) + story(2, "TRAIN", ["rare", "acq"])
        + story(3, "TRAIN", []) + story(4, "TEST", ["earn", "acq"])
        + story(5, "TEST", ["testonly"]) + story(6, "NOT-USED", ["earn"])
        + story(7, "TRAIN", ["earn"], yes="NO"))
    data = read_examples(tmp_path, split="modapte")
    assert data.label_names == ["acq", "earn"] and data.multi_label
    assert [(e.id, e.labels) for e in data.train] == [
        ("reuters:1", ("earn",)), ("reuters:2", ("acq",)), ("reuters:3", ())]
    assert [(e.id, e.labels) for e in data.test] == [
        ("reuters:4", ("acq", "earn")), ("reuters:5", ())]
    assert data.train[0].text == "STORY 1\n\nBody 1."
    assert read_examples(tmp_path / "reut2-000.sgm") == ExampleSet(
        data.train, data.test, data.label_names, True, str(tmp_path / "reut2-000.sgm"))
    places = read_examples(tmp_path, labels="places")
    assert places.label_names == ["usa"]


@pytest.fixture(scope="module")
def modapte() -> ExampleSet:
    if not REAL.is_file():
        pytest.skip(f"{REAL} is not here")
    return read_examples(REAL, labels="topics", split="modapte")


def test_real_modapte_topics(modapte):
    assert len(modapte.label_names) == 90  # Yang & Liu (1999), Joachims (1998)
    assert modapte.multi_label and modapte.label_names == sorted(modapte.label_names)
    # All ModApte stories (Joachims 1998, Dumais et al. 1998: 9,603 and 3,299), the
    # unlabelled ones as negatives.
    assert (len(modapte.train), len(modapte.test)) == (9603, 3299)
    # The stories with one of the 90 topics: Yang & Liu's 3,019 test stories; 7,770
    # training stories against their 7,769 (counted here from the SGML as distributed).
    labelled = [sum(bool(e.labels) for e in part) for part in (modapte.train, modapte.test)]
    assert labelled == [7770, 3019]
    assert {"earn", "acq", "money-fx", "grain", "crude"} <= set(modapte.label_names)
    assert not {e.id for e in modapte.train} & {e.id for e in modapte.test}


def test_real_modapte_is_deterministic(modapte):
    again = read_examples(REAL, split="modapte")
    assert again == modapte

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.data import shards
from lmforge.errors import DataError


def write_dataset(directory, docs_by_split, vocab_size):
    dtype = shards.dtype_for(vocab_size)
    splits = {}
    for split, docs in docs_by_split.items():
        with shards.ShardWriter(directory, split, dtype, shard_tokens=1 << 20) as writer:
            for doc in docs:
                writer.append_document(doc)
            splits[split] = {**writer.close(), "bytes": 0}
    manifest = {"format": shards.FORMAT, "dtype": shards.dtype_name(dtype), "splits": splits,
                "tokenizer": {"kind": "byte", "vocab_size": vocab_size, "eot_id": 0,
                              "dir": "tokenizer"}}
    shards.write_manifest(directory, manifest)
    return manifest


@pytest.mark.parametrize("vocab_size,name", [(257, "uint16"), (65536, "uint16"),
                                              (65537, "uint32"), (200_000, "uint32")])
def test_dtype_fits_vocabulary(vocab_size, name):
    assert shards.dtype_name(shards.dtype_for(vocab_size)) == name


@pytest.mark.parametrize("vocab_size", [65536, 200_000])
def test_write_and_read_back(tmp_path, vocab_size):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab_size, size=n) for n in (5, 1, 0, 3000)]
    docs.append(list(range(vocab_size - 3, vocab_size)))  # the largest ids survive
    val = [np.array([vocab_size - 1, 0])]
    manifest = write_dataset(tmp_path, {"train": docs, "val": val}, vocab_size)
    train = shards.open_split(tmp_path, "train")
    assert isinstance(train, np.memmap)
    assert train.dtype.name == manifest["dtype"]
    np.testing.assert_array_equal(train, np.concatenate([np.asarray(d) for d in docs]))
    np.testing.assert_array_equal(shards.open_split(tmp_path, "val"), val[0])
    starts = shards.document_starts(tmp_path, "train")
    np.testing.assert_array_equal(starts, np.cumsum([0] + [len(d) for d in docs[:-1]]))
    assert starts.dtype == np.int64
    entry = manifest["splits"]["train"]
    assert (entry["files"][0]["file"], entry["tokens"], entry["documents"]) == ("train-00000.bin", len(train), 5)
    assert (tmp_path / "train-00000.bin").stat().st_size == len(train) * train.dtype.itemsize
    assert shards.verify(tmp_path) == manifest
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_split_reads_as_empty_array(tmp_path):
    write_dataset(tmp_path, {"train": [[1, 2]], "val": []}, 300)
    assert shards.open_split(tmp_path, "val").shape == (0,)
    shards.verify(tmp_path)


def test_ids_that_do_not_fit_are_refused(tmp_path):
    with shards.ShardWriter(tmp_path, "train", shards.dtype_for(300), shard_tokens=1 << 20) as writer:
        with pytest.raises(ValueError, match="outside"):
            writer.append([1, 65536])
        with pytest.raises(ValueError, match="outside"):
            writer.append([-1])


def test_flipped_byte_is_detected(tmp_path):
    write_dataset(tmp_path, {"train": [list(range(1000))], "val": [[1, 2, 3]]}, 300)
    path = tmp_path / "train-00000.bin"
    data = bytearray(path.read_bytes())
    data[777] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-00000.bin is corrupt \(sha256 mismatch\); prepare"):
        shards.verify(tmp_path)


def test_truncated_file_is_detected(tmp_path):
    write_dataset(tmp_path, {"train": [list(range(1000))], "val": [[1, 2, 3]]}, 300)
    path = tmp_path / "val-00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"val-00000.bin is corrupt \(wrong size\)"):
        shards.verify(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=r"no prepared dataset at .*manifest.json missing.*"
                                        r"lmforge prepare --data \.\.\. --out"):
        shards.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="no prepared dataset at"):
        shards.verify(tmp_path)


def test_unknown_split(tmp_path):
    write_dataset(tmp_path, {"train": [[1]], "val": [[2]]}, 300)
    with pytest.raises(DataError, match="split 'test' is not in .*it has: train, val"):
        shards.open_split(tmp_path, "test")


def test_append_documents_equals_one_document_at_a_time(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1000, size=n).astype(np.uint16) for n in (5, 0, 17, 3, 40)]
    made = {}
    for how in ("one", "batch"):
        (tmp_path / how).mkdir()
        with shards.ShardWriter(tmp_path / how, "train", np.uint16, shard_tokens=16) as writer:
            if how == "one":
                for d in docs:
                    writer.append_document(d)
            else:
                writer.append_documents(np.concatenate(docs[:2]), np.array([5, 0]))
                writer.append_documents(np.zeros(0, np.uint16), np.zeros(0, np.int64))
                writer.append_documents(np.concatenate(docs[2:]), np.array([17, 3, 40]))
            made[how] = writer.close()
    assert made["one"] == made["batch"]
    assert (np.load(tmp_path / "one" / "train.docs.npy").tolist()
            == np.load(tmp_path / "batch" / "train.docs.npy").tolist() == [0, 5, 5, 22, 25])


# ---------------------------------------------------------------- a manifest's shape

def damaged(tmp_path, change):
    """A real dataset whose manifest `change` edits (in place)."""
    manifest = write_dataset(tmp_path, {"train": [[1, 2, 3], [4]], "val": [[5, 6]]}, 300)
    change(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def readers(directory):
    """Every way a dataset is read."""
    return [lambda: shards.read_manifest(directory), lambda: shards.verify(directory),
            lambda: shards.open_split(directory, "train"),
            lambda: shards.document_starts(directory, "val")]


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.pop("dtype"), "no 'dtype'"),
    (lambda m: m.pop("splits"), "no 'splits'"),
    (lambda m: m.pop("tokenizer"), "no 'tokenizer'"),
    (lambda m: m["splits"]["train"].pop("files"), "no 'splits.train.files'"),
    (lambda m: m["splits"]["val"].pop("docs_file"), "no 'splits.val.docs_file'"),
    (lambda m: m["tokenizer"].pop("dir"), "no 'tokenizer.dir'"),
    (lambda m: m.update(splits=[]), "'splits' is a list, not an object"),
    (lambda m: m["splits"].update(train="x"), "'splits.train' is a string, not an object"),
    (lambda m: m["splits"]["train"]["files"][0].update(tokens="3"),
     "'splits.train.files[0].tokens' is a string, not a whole number"),
    (lambda m: m["splits"]["train"]["files"][0].update(tokens=-1),
     "'splits.train.files[0].tokens' is negative (-1)"),
    (lambda m: m["splits"]["train"]["files"][0].update(tokens=True),
     "'splits.train.files[0].tokens' is true, not a whole number"),
    (lambda m: m["tokenizer"].update(vocab_size=None), "'tokenizer.vocab_size' is null, not a whole number"),
    (lambda m: m.update(dtype="float64"), "unknown token dtype 'float64'"),
    (lambda m: m["splits"]["train"]["files"][0].update(file="../../etc/passwd"),
     "'splits.train.files[0].file' is '../../etc/passwd', not a file name in the dataset directory"),
    (lambda m: m["splits"]["train"]["files"][0].update(file="/etc/passwd"),
     "'splits.train.files[0].file' is '/etc/passwd', not a file name in the dataset directory"),
    (lambda m: m["splits"]["val"].update(docs_file=".."),
     "'splits.val.docs_file' is '..', not a file name in the dataset directory"),
    (lambda m: m["tokenizer"].update(dir="a\nb"),
     "'tokenizer.dir' is 'a\\nb', not a file name in the dataset directory"),
])
def test_a_damaged_manifest_is_one_data_error_for_every_reader(tmp_path, change, problem):
    directory = damaged(tmp_path, change)
    for read in readers(directory):
        with pytest.raises(DataError) as err:
            read()
        assert str(err.value) == (f"{directory}/manifest.json is damaged ({problem}); prepare "
                                  "the dataset again")


def test_a_shard_linked_out_of_the_directory_is_refused_before_it_is_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    directory = tmp_path / "ds"
    directory.mkdir()
    write_dataset(directory, {"train": [[1, 2, 3]], "val": [[4]]}, 300)
    shard = directory / "train-00000.bin"
    (outside / "secret").write_bytes(shard.read_bytes())  # the right size, the right hash
    shard.unlink()
    shard.symlink_to(outside / "secret")
    for read in readers(directory):
        with pytest.raises(DataError, match=rf"^{shard} leads outside {directory} \(a symbolic "
                                            rf"link to {outside / 'secret'}\); prepare"):
            read()
    shard.unlink()
    shard.symlink_to("val-00000.bin")  # a link that stays inside is no escape
    shards.read_manifest(directory)


def test_a_manifest_of_something_else_is_no_dataset(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "my app", "icons": []}')
    with pytest.raises(DataError, match=r"no prepared dataset at .* \(manifest.json is not "
                                        r"lmforge's\); run `lmforge prepare"):
        shards.verify(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "2\\nx"}')
    with pytest.raises(DataError, match=r"another version of lmforge \(format '2\\nx', this"):
        shards.read_manifest(tmp_path)


# A JSON value that no reader expects where it lands.
ODD = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                st.sampled_from(["", ".", "..", "../../etc/passwd", "/etc/passwd", "a\x00b",
                                 "train-00000.bin", "val.docs.npy", "tokenizer", "manifest.json",
                                 "x" * 300, "uint32", "uint64", "\ud800"]),
                st.text(max_size=8), st.just([]), st.just({}), st.just([{}]),
                st.just({"file": "x"}))


def _places(value, path=()):
    """Every (path to a container, key) in a JSON tree."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield path, index
            yield from _places(item, (*path, index))


@st.composite
def mutations(draw, manifest):
    """Edits of a manifest: delete a key, put an odd value in a place, add an odd key."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        places = list(_places(manifest))
        path, key = draw(st.sampled_from(places))
        how = draw(st.sampled_from(["delete", "replace", "add"]))
        edits.append((how, path, key, draw(ODD), draw(st.text(max_size=6))))
    return edits


def _apply(manifest, edits):
    for how, path, key, value, new_key in edits:
        node = manifest
        try:
            for step in path:
                node = node[step]
            if how == "delete":
                del node[key]
            elif how == "replace":
                node[key] = copy.deepcopy(value)  # st.just hands out one object every time
            elif isinstance(node, dict):
                node[new_key] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit took this place away


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_to_a_manifest_reads_or_is_a_data_error(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("ds")
    manifest = write_dataset(directory, {"train": [[1, 2, 3], [4]], "val": [[5, 6]]}, 300)
    _apply(manifest, data.draw(mutations(json.loads(json.dumps(manifest)))))
    (directory / "manifest.json").write_text(json.dumps(manifest))
    for read in readers(directory) + [lambda: shards.foreign_files(directory)]:
        try:
            read()
        except DataError as err:
            assert "\n" not in str(err)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.integers(0, 127), new=st.binary(min_size=1, max_size=4))
def test_any_damage_to_a_document_index_reads_or_is_a_data_error(tmp_path_factory, at, new):
    """A .docs.npy whose header was edited (np.load raises ValueError, TokenError or
    SyntaxError for those) gives offsets or a DataError."""
    directory = tmp_path_factory.mktemp("ds")
    write_dataset(directory, {"train": [[1, 2, 3], [4]], "val": [[5, 6]]}, 300)
    path = directory / "val.docs.npy"
    data = bytearray(path.read_bytes())
    data[at:at + len(new)] = new
    path.write_bytes(bytes(data))
    try:
        shards.document_starts(directory, "val")
    except DataError as err:
        assert "\n" not in str(err)

import numpy as np
import pytest

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

"""Data sources, the memmap format, prepare, and batch sampling (titans_edu.training.data, .prepare, .tokenizer)."""

import json

import numpy as np
import pytest
import torch

from titans_edu.training.data import BatchSampler, DataError, embedded_corpus, load_token_folder, load_tokens, open_source
from titans_edu.training.prepare import main as prepare_main
from titans_edu.training.prepare import prepare
from titans_edu.training.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer


def test_byte_tokenizer_round_trip_and_range():
    tok = load_tokenizer("bytes")
    text = "Titans: mémoire à long terme"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and max(ids) < 256 and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids[:-1]).endswith("\ufffd") or tok.decode(ids[:-1]) == text[:-1]  # cut mid-character is shown
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tok.decode([300])


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer"):
        HFTokenizer(bad)


def test_embedded_corpus_is_english_text_and_splits():
    text = embedded_corpus()
    assert len(text) > 300_000 and "function" in text and "class" in text
    data = load_tokens("embedded", ByteTokenizer(), val_fraction=0.05)
    total = len(data.train) + len(data.val)
    assert total == len(text.encode("utf-8"))
    assert abs(len(data.val) / total - 0.05) < 1e-3
    assert data.vocab_size == 256 and data.bytes_per_token == 1.0
    assert bytes(data.val[:50].tolist()) == text.encode("utf-8")[len(data.train):][:50]


def test_text_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta " * 100)
    (tmp_path / "ignored.bin.bak").write_bytes(b"\x00\x01")
    one = load_tokens(str(tmp_path / "a.txt"), ByteTokenizer())
    assert len(one.train) + len(one.val) == 600
    both = load_tokens(str(tmp_path), ByteTokenizer())
    joined = bytes(np.concatenate([both.train, both.val]).tolist()).decode()
    assert joined == "alpha " * 100 + "\n\n" + "beta " * 100  # sorted order, files joined by a blank line


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope.txt", "does not exist"),
        (lambda p: (p / "empty.txt").write_text("  \n") and p / "empty.txt", "no text"),
        (lambda p: (p / "bin.txt").write_bytes(b"ab\x00cd") and p / "bin.txt", "NUL bytes"),
        (lambda p: (p / "latin.txt").write_bytes("caf\xe9".encode("latin-1")) and p / "latin.txt", "UTF-8"),
        (lambda p: (p / "d").mkdir() or p / "d", "no text files"),
    ],
)
def test_bad_text_sources_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_tokens(str(make(tmp_path)), ByteTokenizer())


def _docs(n):
    return [f"document {i}: " + "word " * (5 + i % 7) for i in range(n)]


def test_prepare_round_trip_and_val_split(tmp_path):
    docs = _docs(10)
    meta = prepare(docs, tmp_path / "out", val_every=5, source="test")
    data = load_token_folder(tmp_path / "out")
    assert meta["dtype"] == "uint16" and data.train.dtype == np.uint16 and isinstance(data.train, np.memmap)
    assert meta["train_tokens"] == len(data.train) and meta["val_tokens"] == len(data.val)
    val_text = bytes(data.val.tolist()).decode()
    assert val_text == docs[4] + "\n\n" + docs[9] + "\n\n"  # documents 5 and 10 (every 5th) went to val
    train_text = bytes(data.train.tolist()).decode()
    assert train_text.startswith(docs[0] + "\n\n" + docs[1]) and docs[4] not in train_text
    assert meta["bytes_per_token"] == 1.0 and data.tokenizer == "bytes"
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary files left


def test_prepare_few_documents_takes_the_tail_as_val(tmp_path):
    meta = prepare(["x" * 1000], tmp_path, val_every=10)
    data = load_token_folder(tmp_path)
    assert meta["val_tokens"] == len(data.val) == 100 and len(data.train) == 902  # 1000 + "\n\n"


def test_prepare_never_loses_an_existing_dataset(tmp_path):
    prepare(_docs(4), tmp_path, val_every=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(DataError, match="--overwrite"):
        prepare(_docs(6), tmp_path, val_every=2)

    def failing():
        yield "fine text"
        raise RuntimeError("the network went away")

    with pytest.raises(RuntimeError, match="network"):
        prepare(failing(), tmp_path, val_every=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # untouched, no temp files


def test_prepare_cli(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("hello world. " * 50)
    assert prepare_main([str(tmp_path / "c.txt"), "--out", str(tmp_path / "tok")]) == 0
    assert "train" in capsys.readouterr().out
    data, tok = open_source(str(tmp_path / "tok"))
    assert isinstance(tok, ByteTokenizer) and len(data.train) + len(data.val) == 652
    assert prepare_main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err


def _token_folder(path, ids, dtype="uint16", vocab=256, **meta):
    path.mkdir(exist_ok=True)
    np.asarray(ids, dtype=dtype).tofile(path / "train.bin")
    np.asarray(ids, dtype=dtype).tofile(path / "val.bin")
    (path / "meta.json").write_text(json.dumps({"dtype": dtype, "vocab_size": vocab, **meta}))
    return path


def test_corrupt_token_folders_raise_clear_errors(tmp_path):
    wide = _token_folder(tmp_path / "wide", [0, 70_000, 99_999], dtype="uint32", vocab=100_000)
    assert load_token_folder(wide).train.tolist() == [0, 70_000, 99_999]
    good = _token_folder(tmp_path / "good", range(100))
    assert len(load_token_folder(good).train) == 100

    (good / "train.bin").write_bytes((good / "train.bin").read_bytes()[:-1])  # an odd number of bytes
    with pytest.raises(DataError, match="not a whole number"):
        load_token_folder(good)

    short = _token_folder(tmp_path / "short", range(100), train_tokens=200)
    with pytest.raises(DataError, match="truncated"):
        load_token_folder(short)

    no_meta = _token_folder(tmp_path / "nometa", range(10))
    (no_meta / "meta.json").unlink()
    with pytest.raises(DataError, match="no meta.json"):
        load_tokens(str(no_meta), ByteTokenizer())

    bad_meta = _token_folder(tmp_path / "badmeta", range(10))
    (bad_meta / "meta.json").write_text('{"dtype": "int8", "vocab_size": 256}')
    with pytest.raises(DataError, match="dtype"):
        load_token_folder(bad_meta)

    empty = _token_folder(tmp_path / "empty", [])
    with pytest.raises(DataError, match="empty"):
        load_token_folder(empty)


def test_token_ids_beyond_the_vocabulary_are_caught(tmp_path):
    folder = _token_folder(tmp_path / "t", [5] * 50 + [300] * 50, vocab=256)
    data = load_token_folder(folder)
    sampler = BatchSampler(data, context=40, micro_batch=4)
    with pytest.raises(DataError, match="not below the data's vocab_size"):
        for step in range(20):
            sampler.batch(step)


def test_check_fits_catches_short_data_and_vocabulary_mismatch(tmp_path):
    data = load_token_folder(_token_folder(tmp_path / "t", range(64), vocab=1000))
    with pytest.raises(DataError, match="context \\+ 1 = 65"):
        data.check_fits(context=64, model_vocab=1000)
    with pytest.raises(DataError, match="vocabulary mismatch"):
        data.check_fits(context=8, model_vocab=256)
    data.check_fits(context=8, model_vocab=1024)  # a larger (padded) vocabulary is fine


def test_open_source_rejects_a_tokenizer_of_another_vocabulary(tmp_path):
    folder = _token_folder(tmp_path / "t", range(100), vocab=1000, tokenizer="bytes")
    with pytest.raises(DataError, match="vocabulary mismatch"):
        open_source(str(folder))


def test_sampling_is_a_pure_function_of_seed_and_step():
    data = load_tokens("embedded", ByteTokenizer())
    sampler = BatchSampler(data, context=16, micro_batch=3, seed=7)
    x, y = sampler.batch(5)
    assert x.shape == y.shape == (3, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    assert torch.equal(sampler.batch(5)[0], x)  # same step, same windows, whatever came before
    assert not torch.equal(sampler.batch(6)[0], x)
    assert not torch.equal(BatchSampler(data, 16, 3, seed=8).batch(5)[0], x)


def test_streams_continue_row_by_row_and_restart_where_they_should():
    data = load_tokens("embedded", ByteTokenizer())
    sampler = BatchSampler(data, context=16, micro_batch=3, seed=7, windows=4, restart_every=6)
    assert [sampler.stream_start(s) for s in range(13)] == [0, 0, 0, 0, 4, 4, 6, 6, 8, 8, 8, 8, 12]
    for step in (0, 1, 2, 4, 6, 8, 9, 10):  # inside a stream, each row reads on where it stopped
        (x0, y0), (x1, _) = sampler.batch(step), sampler.batch(step + 1)
        assert torch.equal(torch.cat([x0, x1], 1)[:, 1:17], y0)
        assert torch.equal(x1[:, 0], y0[:, -1])
    for step in (3, 5, 7, 11):  # a new stream starts at the next step: other text
        assert not torch.equal(sampler.batch(step + 1)[0][:, 0], sampler.batch(step)[1][:, -1])
    # validation windows, and one window per stream, are drawn as before
    plain = BatchSampler(data, context=16, micro_batch=3, seed=7)
    assert torch.equal(sampler.batch(5, split="val")[0], plain.batch(5, split="val")[0])
    assert torch.equal(BatchSampler(data, 16, 3, seed=7, windows=1, restart_every=6).batch(5)[0], plain.batch(5)[0])
    with pytest.raises(DataError, match="stream of"):
        BatchSampler(data, context=len(data.train) // 3, micro_batch=1, windows=4)


def test_a_global_batch_is_the_same_for_any_number_of_processes():
    data = load_tokens("embedded", ByteTokenizer())
    one = BatchSampler(data, context=8, micro_batch=2, accum=2, world=1)
    two = [BatchSampler(data, context=8, micro_batch=2, accum=1, rank=r, world=2) for r in range(2)]
    single = torch.cat([one.batch(3, micro=m)[0] for m in range(2)])
    split = torch.cat([s.batch(3)[0] for s in two])
    assert torch.equal(single, split)


def test_a_hugging_face_tokenizer_file_end_to_end(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from titans_edu.training.trainer import main

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(), decoders.ByteLevel()
    tok.train_from_iterator([embedded_corpus()], trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))

    hf = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert hf.vocab_size == 400 and hf.decode(hf.encode("def main():")).strip() == "def main():"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(embedded_corpus()[:60_000])
    meta = prepare([corpus.read_text()], tmp_path / "tok", tokenizer=str(tmp_path / "tokenizer.json"))
    assert meta["vocab_size"] == 400 and meta["bytes_per_token"] > 1.5  # merges: several bytes per token
    data, tokenizer = open_source(str(tmp_path / "tok"))
    assert tokenizer.vocab_size == data.vocab_size == 400
    with pytest.raises(DataError, match="vocabulary mismatch"):
        open_source(str(tmp_path / "tok"), tokenizer="bytes")
    flags = ["--model.dim=32", "--model.depth=1", "--model.segment=16", "--model.window=16", "--model.chunk_size=8",
             "--context=32", "--micro_batch=2", "--threads=1", "--progress=false", "--plot=false", "--max_steps=2",
             "--eval_every=2", "--eval_batches=1", "--sample_tokens=5"]
    assert main([f"--data={tmp_path / 'tok'}", f"--out_dir={tmp_path / 'run'}", *flags]) == 0
    row = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["val_bpb"] < row["val_loss"] / np.log(2)  # bits per byte < bits per token: tokens span bytes

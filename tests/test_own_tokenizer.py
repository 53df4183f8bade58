"""A tokenizer.json of one's own (not GPT-2 style: SentencePiece-like, Unigram, WordPiece, Llama 3
style), through `arrows tokenize --tokenizer`, training windows and `arrows generate`."""

import json

import numpy as np
import pytest
from conftest import arrows, random_text
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from arrows.data import TokenStore

LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def corpus_texts() -> list[str]:
    """Two files of words, punctuation, all sorts of whitespace, a few of the tokenizers' special
    tokens written literally, and sentences ending a line."""
    return [random_text(seed, size) + "The end.\nNext line <s> [CLS] <mask>\nx <mask> y\n" for seed, size in ((11, 120_000), (12, 30_000))]


def build(kind: str, texts: list[str]) -> Tokenizer:
    if kind == "metaspace":  # SentencePiece / Llama 2 style, with a post-processor adding <s>
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizers.NFKC(), pre_tokenizers.Metaspace(), decoders.Metaspace()
        tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>"], unk_token="<unk>", show_progress=False))
    elif kind == "wordpiece":  # BERT style: [CLS] text [SEP] from the post-processor
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False))
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    elif kind in ("prefix", "llama3", "mask"):
        tok = Tokenizer(models.BPE())
        tok.decoder = decoders.ByteLevel()
        if kind == "llama3":
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=kind == "prefix")
        tok.normalizer = normalizers.NFC()  # not GPT-2 style: the general engine
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        if kind == "mask":  # RoBERTa's <mask> swallows the whitespace beside it
            tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True)])
    else:
        raise ValueError(kind)
    return tok


def write_corpus(tmp_path, texts):
    files = []
    for i, t in enumerate(texts):
        files.append(tmp_path / f"in{i}.txt")
        files[-1].write_bytes(t.encode())
    return files


@pytest.mark.parametrize("kind", ["metaspace", "unigram", "wordpiece", "prefix", "llama3", "mask"])
def test_store_holds_each_files_ids_whatever_the_threads(tmp_path, kind):
    """The store holds what `encode(text, add_special_tokens=False)` gives for each file: what the
    post-processor adds ([CLS] ... [SEP], <s>) is not part of the text; each window gets arrows'
    BOS instead. SentencePiece's Metaspace, Unigram and ByteLevel with a prefix space are cut
    before a space, Llama 3's regex after a line break, so one large file is encoded in parallel
    chunks; a <mask> that strips the whitespace beside it cannot be cut without changing its ids."""
    texts = corpus_texts()
    files = write_corpus(tmp_path, texts)
    tok = build(kind, texts)
    tok.save(str(tmp_path / "tokenizer.json"))
    expected = [i for t in texts for i in tok.encode(t, add_special_tokens=False).ids]
    if kind in ("metaspace", "wordpiece"):
        assert [i for t in texts for i in tok.encode(t).ids] != expected  # the post-processor adds its tokens
    for threads in (1, 2):
        out = tmp_path / f"store{threads}"
        arrows("tokenize", *files, "--out", out, "--tokenizer", tmp_path / "tokenizer.json", "--threads", threads, "--shard-bytes", "2KB")
        store = TokenStore(out)
        assert np.array_equal(store[:], np.array(expected)), f"{kind}, {threads} thread(s)"
        shards = len(store.manifest["shards"])
        if kind == "mask":
            assert shards == len(files)  # each file whole
        else:
            assert shards > 20, f"{kind}: {shards} shard(s) for {sum(map(len, texts))} bytes: the text was not cut"


class Recorder:
    """Stands for a trained model: records what generation starts from and adds nothing."""

    def to(self, device):
        return self

    def generate(self, start, tokens, **kw):
        self.start = start.tolist()[0]
        return start


def generate_with(monkeypatch, tok, dataset, prompt, backward=False):
    import arrows.generate as generate

    model = Recorder()
    cfg = {"training_params": {"dataset_folder": str(dataset), "backwards": backward}}
    monkeypatch.setattr(generate, "load_run", lambda run, checkpoint=None: (model, cfg, tok))
    text = generate.generate_text("run", prompt, tokens=0)
    return model.start, text


def test_generate_reads_the_prompt_as_the_store_holds_text(tmp_path, monkeypatch):
    """A WordPiece tokenizer's post-processor wraps an encoding in [CLS] ... [SEP]; the model never
    saw those inside a text, so the prompt must not get them (it did: the generated text went on
    after a [SEP])."""
    texts = corpus_texts()
    tok = build("wordpiece", texts)
    tok.save(str(tmp_path / "tokenizer.json"))
    arrows("tokenize", *write_corpus(tmp_path, texts), "--out", tmp_path / "store", "--tokenizer", tmp_path / "tokenizer.json")
    store = TokenStore(tmp_path / "store")
    bos = 0 if store.bos_id is None else store.bos_id
    ids = tok.encode("The arrow of time", add_special_tokens=False).ids
    start, text = generate_with(monkeypatch, tok, tmp_path / "store", "The arrow of time")
    assert start == [bos] + ids and text == "the arrow of time"
    start, text = generate_with(monkeypatch, tok, tmp_path / "store", "The arrow of time", backward=True)
    assert start == [bos] + ids[::-1] and text == "the arrow of time"


def test_generate_starts_with_the_bos_the_training_windows_had(tmp_path, monkeypatch):
    """A tokenizer whose <|endoftext|> is its last id: the store and its tokens.h5 train with that
    BOS (the .h5 records it; it began windows with id 0, the reference files' BOS, so the same
    tokens trained differently by the path given), and generation starts from it. A reference .h5,
    without the record, begins windows with id 0, and generation too."""
    import h5py

    from arrows.loader import WindowLoader

    texts = corpus_texts()
    tok = build("llama3", texts)
    tok.add_special_tokens(["<|endoftext|>"])
    eot = tok.token_to_id("<|endoftext|>")
    assert eot > 0
    tok.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "store"
    arrows("tokenize", *write_corpus(tmp_path, texts), "--out", out, "--tokenizer", tmp_path / "tokenizer.json", "--h5")
    assert TokenStore(out).bos_id == eot
    reference = tmp_path / "reference.h5"
    with h5py.File(out / "tokens.h5", "r") as f, h5py.File(reference, "w") as g:
        g.create_dataset("tokens", data=f["tokens"][:])
    for dataset, bos in ((out, eot), (out / "tokens.h5", eot), (reference, 0)):
        assert WindowLoader(dataset, 16, 2).bos_id == bos, dataset
        start, _ = generate_with(monkeypatch, tok, dataset, "The end.")
        assert start[0] == bos, dataset


def bos_case(kind: str, texts: list[str]) -> tuple[Tokenizer, str | None, str]:
    """A tokenizer without <|endoftext|>, the BOS its windows should begin with (None: id 0) and
    the reason tokenize gives for it. The texts hold a literal <|endoftext|>, which Unigram and
    Metaspace BPE learn as an ordinary piece: not a BOS."""
    if kind == "nospecial":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, show_progress=False))
        return tok, None, "a token of the text itself"
    if kind == "unigram":  # <pad> and <unk>, nothing that begins a text
        return build(kind, texts), None, "one of its special tokens"
    if kind in ("metaspace", "wordpiece"):  # a TemplateProcessing that adds <s> / [CLS] first
        return build(kind, texts), {"metaspace": "<s>", "wordpiece": "[CLS]"}[kind], "its post-processor puts it before every text"
    tok = build("llama3", texts)
    if kind == "llama3":  # Llama 3's own: ByteLevel then a template, in a Sequence
        tok.add_special_tokens(["<|begin_of_text|>"])
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]),
        ])
        return tok, "<|begin_of_text|>", "its post-processor puts it before every text"
    tok.add_special_tokens(["<pad>", "<bos>", "<eos>"])  # named so, no post-processor
    return tok, "<bos>", "its special token for the beginning of a text"


@pytest.mark.parametrize("kind", ["nospecial", "unigram", "metaspace", "wordpiece", "llama3", "named"])
def test_windows_begin_with_the_tokenizers_own_bos_without_endoftext(tmp_path, monkeypatch, kind):
    """Without <|endoftext|>, windows begin with the token the tokenizer itself begins a text with
    (they began with id 0: SentencePiece's <unk>, BERT's [PAD]), and tokenize says which and why;
    a tokenizer with no such token keeps id 0, and tokenize says what that token is. The loader,
    inspect and generate (with the data and without) agree."""
    from arrows.loader import WindowLoader

    texts = corpus_texts()
    tok, name, why = bos_case(kind, texts)
    if kind in ("unigram", "metaspace"):
        assert tok.token_to_id("<|endoftext|>") is not None  # an ordinary piece, learned from the text
    tok.save(str(tmp_path / "tokenizer.json"))
    out, files = tmp_path / "store", write_corpus(tmp_path, texts)
    proc = arrows("tokenize", *files, "--out", out, "--tokenizer", tmp_path / "tokenizer.json")
    note = " ".join(proc.stderr.replace("│", " ").split())
    bos = 0 if name is None else tok.token_to_id(name)
    if name is None:
        assert TokenStore(out).bos_id is None
        assert f'training windows will begin with id 0 ("{tok.id_to_token(0)}") as their BOS, {why}' in note, note
        assert ("--bos TOKEN" in note and "add <|endoftext|>" in note) == (kind == "nospecial"), note
        assert "BOS id 0 (no BOS of the tokenizer's own)" in arrows("inspect", out).stdout
    else:
        assert bos > 0 and TokenStore(out).bos_id == bos
        assert f'training windows will begin with "{name}" (id {bos}) as their BOS: {why}' in note, note
        assert f"BOS id {bos} ({name!r})" in arrows("inspect", out).stdout
    loader = WindowLoader(out, 16, 2)
    x, _ = next(iter(loader))
    assert loader.bos_id == bos and x[:, 0].tolist() == [bos, bos]
    assert generate_with(monkeypatch, tok, out, "The end.")[0][0] == bos
    assert generate_with(monkeypatch, tok, tmp_path / "elsewhere", "The end.")[0][0] == bos  # the data moved: the rule itself
    # Resumed, the store keeps its recorded BOS and says it again.
    proc = arrows("tokenize", *files, "--out", out, "--tokenizer", tmp_path / "tokenizer.json", "--resume")
    assert "training windows will begin with" in proc.stderr


def test_bos_chosen_by_its_text(tmp_path):
    """--bos picks the token windows begin with; a name that is no token is refused before
    anything is written, with the special tokens listed; a store keeps the BOS it was started
    with (a resume with another --bos is refused, one without --bos keeps it)."""
    from arrows.loader import WindowLoader

    texts = corpus_texts()
    tok = build("wordpiece", texts)
    tok.save(str(tmp_path / "tokenizer.json"))
    files, out = write_corpus(tmp_path, texts), tmp_path / "store"
    common = ("tokenize", *files, "--out", out, "--tokenizer", tmp_path / "tokenizer.json", "--shard-bytes", "20KB")
    wrong = arrows(*common, "--bos", "<s>", check=False)
    message = " ".join(wrong.stderr.split())
    assert wrong.returncode == 1 and '--bos "<s>": not a token of the tokenizer' in message and '"[CLS]"' in message, message
    assert not (out / "manifest.json").exists() and not list(out.glob("shard_*"))
    sep = tok.token_to_id("[SEP]")
    proc = arrows(*common, "--bos", "[SEP]")
    assert TokenStore(out).bos_id == sep and WindowLoader(out, 16, 2).bos_id == sep
    assert f'begin with "[SEP]" (id {sep}) as their BOS: chosen with --bos' in " ".join(proc.stderr.split())
    refused = arrows(*common, "--resume", "--bos", "[CLS]", check=False)
    assert refused.returncode == 1 and "was started with another BOS" in " ".join(refused.stderr.split())
    arrows(*common, "--resume")
    assert TokenStore(out).bos_id == sep
    # An ordinary token by its vocabulary text, with the bytes tokenizer: "a" is byte 97, id 98.
    arrows("tokenize", files[1], "--out", tmp_path / "bytes", "--tokenizer", "bytes", "--bos", "a")
    assert TokenStore(tmp_path / "bytes").bos_id == 98
    # The trained BPE: a name no training can give is refused before the training, as above (it
    # was refused only once trained, minutes on a large corpus); one it gives is looked up after.
    trained = tmp_path / "trained"
    wrong = arrows("tokenize", *files, "--out", trained, "--vocab-size", "400", "--bos", "<s>", check=False)
    message = " ".join(wrong.stderr.split())
    assert wrong.returncode == 1 and '--bos "<s>": not a token of the tokenizer' in message and '"<|endoftext|>"' in message, message
    assert not trained.exists() and "learning merges" not in wrong.stderr
    arrows("tokenize", *files, "--out", trained, "--vocab-size", "400", "--bos", "Ġthe")
    assert TokenStore(trained).bos_id == TokenStore(trained).tokenizer.token_to_id("Ġthe") > 256


def test_text_that_encodes_to_no_tokens_is_said_so(tmp_path):
    """A WordPiece tokenizer drops whitespace: a file of spaces and newlines gives no tokens, where
    tokenize and inspect printed 9.00 bytes/token (bytes over max(tokens, 1))."""
    build("wordpiece", corpus_texts()).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "blank.txt").write_text("  \n\n \n  \n")
    out = arrows("tokenize", tmp_path / "blank.txt", "--tokenizer", tmp_path / "tokenizer.json", "--out", tmp_path / "s").stdout
    assert "no tokens (the tokenizer dropped all of it)" in out and "bytes/token" not in out, out
    shown = arrows("inspect", tmp_path / "s", check=False)
    assert "bytes/token  – (no tokens)" in shown.stdout and "Traceback" not in shown.stderr, (shown.stdout, shown.stderr)


def test_a_folder_given_for_the_tokenizer_names_the_file_inside(tmp_path):
    build("wordpiece", corpus_texts()).save(str(tmp_path / "tokenizer.json"))
    corpus = write_corpus(tmp_path, ["some text\n"])
    proc = arrows("tokenize", *corpus, "--out", tmp_path / "store", "--tokenizer", tmp_path, check=False)
    assert proc.returncode != 0
    text = " ".join(proc.stderr.replace("│", " ").split())  # typer's box, unwrapped
    assert "a folder, not a tokenizer file (give" in text, proc.stderr


def test_a_tokenizer_config_given_for_the_tokenizer_is_named(tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": "<s>", "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer"}))
    corpus = write_corpus(tmp_path, ["some text\n"])
    proc = arrows("tokenize", *corpus, "--out", tmp_path / "store", "--tokenizer", config, check=False)
    assert proc.returncode != 0
    assert str(config) in proc.stderr and "tokenizer_config.json" in proc.stderr and "give the tokenizer.json" in proc.stderr, proc.stderr


def test_a_tokenizer_file_the_library_panics_on_is_one_clean_error(tmp_path):
    """The `tokenizers` library panics on this BPE (a `continuing_subword_prefix` longer than a
    merge's right part); arrows catches the panic, and Rust's panic hook printed "thread ...
    panicked at ..." on stderr above the clean message."""
    config = json.loads(build("wordpiece", corpus_texts()).to_str())
    config["model"] = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "##", "end_of_word_suffix": None,
                       "fuse_unk": False, "byte_fallback": False, "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    corpus = write_corpus(tmp_path, ["ab ab\n"])
    proc = arrows("tokenize", *corpus, "--out", tmp_path / "store", "--tokenizer", tmp_path / "tokenizer.json", check=False)
    text = " ".join(proc.stderr.replace("│", " ").split())
    assert proc.returncode == 1 and "cannot be loaded by the tokenizers library" in text and "out of bounds" in text, proc.stderr
    assert "panicked" not in proc.stderr and "RUST_BACKTRACE" not in proc.stderr, proc.stderr


def test_a_tokenizer_that_cannot_cut_is_refused_a_file_too_large_for_the_memory(tmp_path):
    # Without a pre-tokenizer a text cannot be cut, so each file is encoded whole: 100-160 bytes of
    # memory per byte, and the kernel killed the job without a word when that did not fit.
    import os
    import subprocess

    from conftest import ARROWS
    from test_tokenize_cli import memory_cgroup

    group = memory_cgroup(f"arrows_test_{os.getpid()}", 400_000_000)
    if group is None:
        pytest.skip("no permission to make a memory control group here")
    try:
        tok = Tokenizer(models.BPE())
        tok.train_from_iterator(["the arrow of time, forwards and backwards"] * 50, trainers.BpeTrainer(vocab_size=300, show_progress=False))
        tok.save(str(tmp_path / "tokenizer.json"))
        corpus = tmp_path / "big.txt"
        corpus.write_text(random_text(3, 6_000_000))
        proc = subprocess.run([str(ARROWS), "tokenize", str(corpus), "--out", str(tmp_path / "store"), "--tokenizer", str(tmp_path / "tokenizer.json")],
                              capture_output=True, text=True, timeout=300, preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
        assert proc.returncode == 1, proc.stderr
        text = " ".join(proc.stderr.split())
        assert f"{corpus}: this tokenizer cannot cut a text" in text and "split the input into files of at most" in text, proc.stderr
    finally:
        group.rmdir()


def test_bos_naming_what_the_store_began_with_resumes_and_a_chosen_bos_is_not_said_to_replace_a_missing_endoftext(tmp_path):
    """A store that recorded no BOS begins its windows with id 0: a resume with --bos naming the
    token at id 0 is the same BOS, not 'another' (it was refused). And a token chosen with --bos
    over a tokenizer's <|endoftext|> is said to be that: the note said the tokenizer had none."""
    texts = [random_text(21, 20_000, specials=False)]
    build("unigram", texts).save(str(tmp_path / "tokenizer.json"))  # <pad> at id 0, no BOS of its own
    files, out = write_corpus(tmp_path, texts), tmp_path / "store"
    common = ("tokenize", *files, "--out", out, "--tokenizer", tmp_path / "tokenizer.json")
    arrows(*common)
    assert TokenStore(out).bos_id is None
    arrows(*common, "--resume", "--bos", "<pad>")
    refused = arrows(*common, "--resume", "--bos", "<unk>", check=False)
    assert refused.returncode == 1 and "was started with another BOS" in " ".join(refused.stderr.split())
    for resume in ((), ("--resume",)):
        extra = ("--bos", "a") if not resume else ()
        proc = arrows("tokenize", *files, "--out", tmp_path / "bytes", "--tokenizer", "bytes", *extra, *resume)
        note = " ".join(proc.stderr.split())
        assert "has no <|endoftext|>" not in note and "not the tokenizer's <|endoftext|> (id 0)" in note, note

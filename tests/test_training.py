"""jaxspec.training: the corpus split, model configs, calibrate-then-schedule, a few steps of `train`."""

import doctest
import os

import numpy as np
import pytest

from jaxspec import training
from jaxspec.training import trainer


def test_split_is_deterministic_and_keeps_a_heldout_file(tmp_path):
    files = training.python_files()
    train, heldout = training.split_files(files)
    assert sorted(train + heldout) == sorted(files) and not set(train) & set(heldout)
    assert 0.02 < len(heldout) / len(files) < 0.08  # the 5% bucket
    assert training.split_files(files) == (train, heldout)
    # A tiny corpus (smoke runs) still gets one held-out file.
    paths = [str(tmp_path / f"m{i}.py") for i in range(2)]
    for p in paths:
        open(p, "w").write("x = 1\n")
    assert [len(part) for part in training.split_files(paths, heldout_percent=0)] == [1, 1]
    assert training.read_texts(paths[:1]) == ["x = 1\n"]


def test_decoder_config_of_each_family():
    gpt2 = training.decoder_config("gpt2", vocab_size=300, layers=1, width=16, heads=2, context=32, eos=0)
    opt = training.decoder_config("opt", vocab_size=300, layers=1, width=16, heads=2, context=32, eos=0)
    assert (gpt2.model_type, gpt2.max_positions, gpt2.hidden_size) == ("gpt2", 32, 16)
    assert (opt.model_type, opt.max_positions, opt.vocab_size) == ("opt", 32, 300)
    assert gpt2.hf_config["architectures"] == ["GPT2LMHeadModel"]
    llama = training.decoder_config("llama", vocab_size=300, layers=1, width=96, heads=3, context=32, eos=0)
    assert (llama.model_type, llama.ffn_size, llama.tie_word_embeddings) == ("llama", 256, True)
    assert llama.hf_config["architectures"] == ["LlamaForCausalLM"]
    with pytest.raises(ValueError, match="unknown model_type 'bert'"):
        training.decoder_config("bert", vocab_size=3, layers=1, width=4, heads=1, context=4, eos=0)


def test_train_fits_min_steps_and_reports(tmp_path):
    config = training.decoder_config("gpt2", vocab_size=32, layers=1, width=8, heads=2, context=8, eos=0)
    stream = np.random.default_rng(0).integers(0, 32, 400).astype(np.int32)
    lines = []
    model, report = training.train(
        config,
        stream,
        stream,
        minutes=0.0,
        batch_size=2,
        context=8,
        peak_lr=1e-2,
        seed=0,
        log=lines.append,
        min_steps=3,
    )
    assert report.steps == 3 and report.tokens == 3 * 2 * 8
    assert np.isfinite(report.heldout_loss) and report.heldout_loss == pytest.approx(
        training.heldout_loss(model, stream, 8)
    )
    assert "-> 3 steps" in lines[0] and any(line.startswith("step 3/3 loss") for line in lines)
    with pytest.raises(ValueError, match="cannot continue training"):
        other = training.decoder_config("gpt2", vocab_size=32, layers=2, width=8, heads=2, context=8, eos=0)
        training.train(
            other,
            stream,
            stream,
            minutes=0,
            batch_size=2,
            context=8,
            peak_lr=1e-2,
            seed=0,
            log=print,
            min_steps=1,
            init=model,
        )


def test_check_config_names_what_is_missing(tmp_path):
    config = training.PairConfig(out_dir=str(tmp_path), models=("gpt2-target",))
    drafts = "gpt2-draft, opt-draft, llama-draft"
    with pytest.raises(ValueError, match=f"keeps {drafts}, but .* lacks {drafts}"):
        training.check_config(config)
    full = training.PairConfig(out_dir=str(tmp_path), models=("gpt2-draft",), target_init="somewhere")
    for name in training.MODEL_NAMES:
        os.makedirs(tmp_path / name)
        (tmp_path / name / "tokenizer.json").write_text("{}")
    (tmp_path / "training_summary.json").write_text("{}")
    with pytest.raises(ValueError, match="--target_init=somewhere needs gpt2-target in --models"):
        training.check_config(full)


def test_docstring_examples():
    assert doctest.testmod(trainer).failed == 0


def test_saved_corpus_round_trips_and_extra_text_avoids_heldout_names(tmp_path):
    """An accelerator host trains on the tokens and tokenizer saved here; extra text never shares a held-out name."""
    from jaxspec.distillation.data import StreamPromptSource, document_prompts
    from jaxspec.loading import load_tokenizer

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    files = sorted(str(p) for p in src.glob("*.py"))
    tok_dir = os.path.join(os.path.dirname(__file__), os.pardir, "checkpoints", "gpt2-target")
    meta = training.data.save_corpus(str(tmp_path / "c.npz"), tok_dir, files)
    train, heldout, loaded = training.data.load_corpus(str(tmp_path / "c.npz"), str(tmp_path / "tok"))
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer.get_vocab() == load_tokenizer(tok_dir).get_vocab()
    train_files, heldout_files = training.split_files(files)
    assert (len(train), len(heldout)) == (meta["train_tokens"], meta["heldout_tokens"])
    np.testing.assert_array_equal(train, training.encode(tokenizer, training.read_texts(train_files)))
    np.testing.assert_array_equal(heldout, training.encode(tokenizer, training.read_texts(heldout_files)))
    assert loaded["heldout_names"] == sorted(os.path.basename(f) for f in heldout_files)
    # Held-out prompts cut from the saved stream are the first tokens of each held-out file.
    eos = tokenizer.convert_tokens_to_ids(training.EOS)
    first = tokenizer(training.read_texts(heldout_files[:1]), add_special_tokens=False)["input_ids"][0][:3]
    assert document_prompts(heldout, eos, 1, 3).tolist() == [first]
    assert StreamPromptSource(train, 5, np.random.default_rng(0)).sample(3).shape == (3, 5)
    np.savez(tmp_path / "other.npz", train=train)
    with pytest.raises(ValueError, match=r"other.npz is not a corpus written by save_corpus \(missing heldout"):
        training.data.load_corpus(str(tmp_path / "other.npz"), str(tmp_path / "tok2"))

    extra = tmp_path / "site"
    extra.mkdir()
    (extra / os.path.basename(heldout_files[0])).write_text("leak = 1\n")  # a vendored copy of a held-out file
    (extra / "big.py").write_text("y = 2\n" * 1000)
    (extra / "small.py").write_text("z = 3\n")
    picked = training.data.extra_training_files([str(extra)], loaded["heldout_names"], max_mb=0)
    assert sorted(os.path.basename(f) for f in picked) == ["big.py", "small.py"]
    capped = training.data.extra_training_files([str(extra)], loaded["heldout_names"], max_mb=0.001)
    assert [os.path.basename(f) for f in capped] == ["small.py"]

"""Tokenizers through HF `tokenizers`/`transformers`: a byte-level BPE trained locally on the corpus and cached
(embedded and local-file sources), or a hub tokenizer by name (cluster recipes)."""
from __future__ import annotations

import os

EOS = "<|endoftext|>"


def train_bpe(texts, vocab_size: int, path: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tmp = path + f".tmp{os.getpid()}"
    tok.save(tmp)
    os.replace(tmp, path)


def load_tokenizer(data_cfg, documents=None, fingerprint: str = ""):
    """Return a `PreTrainedTokenizerFast` with an EOS token."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # here: `import pretrain.data` stays light

    if data_cfg.tokenizer != "bpe":
        tok = AutoTokenizer.from_pretrained(data_cfg.tokenizer)
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {data_cfg.tokenizer} has no EOS token")
        return tok
    cache = os.path.join(os.path.expanduser(data_cfg.cache_dir), "tokenizers")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"bpe_{data_cfg.vocab_size}_{fingerprint}.json")
    if not os.path.exists(path):
        train_bpe((d["text"] for d in documents), data_cfg.vocab_size, path)
    return PreTrainedTokenizerFast(tokenizer_file=path, eos_token=EOS, bos_token=EOS, unk_token=None,
                                   model_max_length=10**9)

"""Scorers for MAPO's candidate answers: how good is an answer to a question asked in language x.

A scorer is any object with ``needs_english`` (whether it reads the English answers) and
``score(answers, lang, english_answers, *, gold=None) -> list[float]`` (one reward per answer; higher is better).
``build_scorer(cfg)`` makes the one a ``scorer`` config names:

- ``kind: translation``: MAPO's reward. A translation model (NLLB, or a tiny random one built from ``arch``) reads
  the answer in ``lang`` and is forced to write each English answer; reward = 1 / the mean token cross-entropy of
  that translation, averaged over the English answers.
- ``kind: correctness``: 1 for an answer whose last number is the gold number, else 0 (works offline, no model).
- ``kind: numbers``: MAPO's "agree with the English reasoning" without a translation model: how closely the numbers
  the answer writes, in order, match those of each English answer (difflib's ratio of the two number sequences),
  averaged over the English answers. Works offline, no model; numbers are what a worked math answer shares across
  languages, so it is exact for the harness's generated answers and a rough proxy for free-form chains of thought.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Protocol, Sequence

import torch

from . import languages
from .errors import HarnessError, ModelLoadError
from .files import folder_state
from .prompts import all_numbers, is_correct
from .settings import scorer_settings

TARGET_LANG = "en"


class Scorer(Protocol):
    needs_english: bool

    def score(self, answers: Sequence[str], lang: str, english_answers: Sequence[str], *,
              gold: float | None = None) -> list[float]: ...


class CorrectnessScorer:
    """Reward 1 for a correct final number, 0 otherwise: MAPO's ranking then pairs every correct answer (chosen)
    with every wrong one (rejected), and nothing else."""

    needs_english = False

    def score(self, answers: Sequence[str], lang: str, english_answers: Sequence[str], *,
              gold: float | None = None) -> list[float]:
        if gold is None:
            raise HarnessError("scorer=correctness needs the gold number of every question")
        return [float(is_correct(a, gold)) for a in answers]


class NumbersScorer:
    """Reward = mean over the English answers of the agreement between the answer's number sequence and the English
    answer's (``difflib.SequenceMatcher.ratio``: 1 for the same numbers in the same order, 0 for none shared)."""

    needs_english = True

    def score(self, answers: Sequence[str], lang: str, english_answers: Sequence[str], *,
              gold: float | None = None) -> list[float]:
        if not english_answers:
            raise HarnessError("scorer=numbers needs at least one English answer per question")
        references = [all_numbers(e) for e in english_answers]
        out = []
        for answer in answers:
            mine = all_numbers(answer)
            out.append(sum(difflib.SequenceMatcher(None, mine, ref, autojunk=False).ratio() for ref in references)
                       / len(references))
        return out


class TranslationScorer:
    """MAPO's alignment reward from a seq2seq translation model with NLLB language-code tokens.

    Source: ``[code(lang)] answer </s>``; target: ``[eng_Latn] english </s>``, decoded after the model's decoder
    start token. The target language token is forced (as NLLB generation forces it), so it is not scored: the
    cross-entropy is the mean over the English answer's own tokens and its end token.
    """

    needs_english = True

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 32, max_length: int = 512):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.start_id = model.config.decoder_start_token_id
        if self.start_id is None:
            self.start_id = self.eos_id

    def lang_token(self, lang: str) -> int:
        code = languages.get(lang).nllb
        token_id = self.tokenizer.convert_tokens_to_ids(code)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise HarnessError(f"the scorer's tokenizer has no language token {code!r} for {lang!r}: use an NLLB "
                               "translation model (scorer.name_or_path) whose tokenizer knows the FLORES-200 codes")
        return token_id

    def _ids(self, texts: Sequence[str], lang_id: int) -> list[list[int]]:
        body = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [[lang_id, *ids[: self.max_length - 2], self.eos_id] for ids in body]

    def cross_entropy(self, sources: Sequence[str], lang: str, targets: Sequence[str]) -> torch.Tensor:
        """Mean token cross-entropy of translating ``sources[i]`` (in ``lang``) into ``targets[i]`` (English)."""
        src = self._ids(sources, self.lang_token(lang))
        tgt = self._ids(targets, self.lang_token(TARGET_LANG))
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, len(src), self.batch_size):
                s, t = src[start:start + self.batch_size], tgt[start:start + self.batch_size]
                input_ids = _pad(s, self.pad_id).to(device)
                labels = _pad(t, -100).to(device)
                decoder_input = torch.cat([torch.full_like(labels[:, :1], self.start_id), labels[:, :-1]], dim=1)
                decoder_input[decoder_input == -100] = self.pad_id
                logits = self.model(input_ids=input_ids, attention_mask=input_ids.ne(self.pad_id).long(),
                                    decoder_input_ids=decoder_input).logits.float()
                labels[:, 0] = -100  # the forced language token
                token_ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                                             reduction="none")
                counted = labels.ne(-100)
                out.append((token_ce * counted).sum(1) / counted.sum(1).clamp(min=1))
        return torch.cat(out).cpu() if out else torch.zeros(0)

    def score(self, answers: Sequence[str], lang: str, english_answers: Sequence[str], *,
              gold: float | None = None) -> list[float]:
        if not english_answers:
            raise HarnessError("the translation scorer needs at least one English answer per question")
        m = len(english_answers)
        sources = [a for a in answers for _ in range(m)]
        targets = list(english_answers) * len(answers)
        ce = self.cross_entropy(sources, lang, targets).view(len(answers), m)
        return (1.0 / ce.clamp(min=1e-6)).mean(1).tolist()


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


# ---- building the configured scorer -----------------------------------------------------------------------------
def scorer_identity(cfg: Any) -> dict[str, Any]:
    """What a scorer's rewards depend on (for cache keys): its kind, model and build settings, not its speed.
    ``cfg``: the ``scorer`` settings (or their mapping)."""
    cfg = scorer_settings(cfg)
    if cfg.kind in ("correctness", "numbers"):
        return {"kind": cfg.kind}
    ident = {k: getattr(cfg, k) for k in ("kind", "name_or_path", "revision", "max_length")}
    if not cfg.name_or_path:
        ident.update({k: getattr(cfg, k) for k in ("arch", "vocab_size", "seed", "corpus_size")})
    else:
        ident["files"] = folder_state(cfg.name_or_path)  # a local folder can change under the same name
    return ident


def build_scorer(cfg: Any, device: str | torch.device | None = None) -> Scorer:
    """The scorer the ``scorer`` settings (or their mapping) describe (see the module docstring), on ``device``
    (default: cuda when available)."""
    cfg = scorer_settings(cfg)
    if cfg.kind == "correctness":
        return CorrectnessScorer()
    if cfg.kind == "numbers":
        return NumbersScorer()
    if cfg.name_or_path:
        model, tokenizer = load_seq2seq(cfg.name_or_path, revision=cfg.revision, dtype=cfg.dtype)
    else:
        model, tokenizer = build_tiny_scorer(cfg.arch, cfg.vocab_size, seed=cfg.seed, corpus_size=cfg.corpus_size)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TranslationScorer(model.to(device), tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)


def build_tiny_scorer(arch: Mapping[str, Any], vocab_size: int = 1024, seed: int = 0, corpus_size: int = 200):
    """A randomly initialised M2M100 (NLLB architecture) model and a byte-level BPE tokenizer with the NLLB
    language codes as special tokens: the translation scorer's code path with no download. Its rewards carry no
    meaning (they differ around the sixth digit): it is for tests and offline runs of the pipeline."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    from .data.problems import load_problems
    from .data.synthetic import SYNTHETIC_LANGS
    from .modeling import build_tokenizer

    from .settings import ProblemSettings

    spec = ProblemSettings(source="synthetic", path=None, n=corpus_size, offset=0, seed=4321)
    problems = load_problems(spec, SYNTHETIC_LANGS, "plain")
    corpus = (f"{row['question']} {row['response']}" for ds in problems.values() for row in ds)
    tokenizer = build_tokenizer(corpus, vocab_size)
    tokenizer.add_tokens([info.nllb for info in languages.LANGUAGES.values()], special_tokens=True)
    sizes = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
             "max_position_embeddings": 1024, **dict(arch)}
    config = M2M100Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.eos_token_id, dropout=0.0, attention_dropout=0.0,
                          encoder_layerdrop=0.0, decoder_layerdrop=0.0, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = M2M100ForConditionalGeneration(config)
    return model.eval(), tokenizer


def load_seq2seq(name_or_path: str, revision: str | None = None, dtype: str | None = "auto"):
    """A translation model and tokenizer from a local folder, the HF cache or the hub (in that order:
    :func:`modeling.load_from_anywhere`); a one-line ``ModelLoadError`` naming the scorer, what was tried and how to
    fix it when none has it."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .modeling import load_from_anywhere, resolve_dtype

    torch_dtype = resolve_dtype(dtype)

    def load(name: str, source: str, extra: dict[str, Any]):
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, **extra)
            model = AutoModelForSeq2SeqLM.from_pretrained(name, revision=revision, dtype=torch_dtype, **extra)
        except (OSError, ValueError) as e:
            if extra.get("local_files_only"):
                raise
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"scorer model {name_or_path!r} could not be loaded from {source} ({reason}); it "
                                 "must be a seq2seq translation model saved with save_pretrained (e.g. "
                                 "facebook/nllb-200-distilled-600M)") from None
        return model, tokenizer

    fix = (f"download it where the hub is reachable (`hf download {name_or_path}`) and pass scorer.name_or_path="
           "/local/dir, or run offline with scorer=tiny or scorer=correctness")
    return load_from_anywhere(name_or_path, load, what="scorer model", revision=revision, no_folder=fix, fix=fix)

"""Prompt formats: what a base model and a chat model are shown, and where their answers end."""

import pytest
import torch

from langneurons.data import load_problems
from langneurons.data.problems import with_prompts
from langneurons.errors import HarnessError
from langneurons.evaluation import AnswerStops, end_of_answer_ids
from langneurons.experiment import tiny_tokenizer_corpus
from langneurons.modeling import build_tokenizer
from langneurons.prompts import format_prompt, prompt_format, trim_answer
from langneurons.prompts import is_correct

from conftest import problem_settings
from neurons.neuron_helpers import tiny_model, tiny_tokenizer

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_fewshot_prompt_shows_worked_examples_in_the_asked_language_then_the_question():
    problems = load_problems(problem_settings(n=2, offset=100000, seed=0), ["sw"], "fewshot")["sw"]
    prompt = problems[0]["prompt"]
    assert prompt.endswith(f"Question: {problems[0]['question']}\nAnswer:")
    assert prompt.count("Question:") == 4 and prompt.count("Jibu ni") == 3  # three Swahili examples
    # the examples are the same for every question
    assert problems[1]["prompt"].split("Question:")[:4] == prompt.split("Question:")[:4]


def test_a_rambling_base_model_answer_is_cut_at_the_next_question_and_its_numbers_do_not_count():
    fmt = prompt_format("fewshot")
    generated = " 12 + 5 = 17. The answer is 17.\n\nQuestion: Anna has 3 apples...\nAnswer: 3 + 4 = 7. The answer is 7."
    answer = trim_answer(generated, fmt.stop)
    assert answer == "12 + 5 = 17. The answer is 17."
    assert is_correct(answer, 17.0) and not is_correct(generated, 17.0)


def test_chat_format_renders_the_tokenizers_template_without_a_second_bos():
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    fmt = prompt_format("chat", tok)
    prompt = format_prompt("Wie viel ist 2 + 2?", "de", fmt)
    assert prompt.startswith("<|user|>Wie viel ist 2 + 2?") and "German" in prompt and prompt.endswith("<|assistant|>")
    ids = tok(prompt)["input_ids"]
    # this tokenizer adds BOS itself: the template's own BOS was dropped, so there is exactly one
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert fmt.sep == ""  # the answer follows the assistant turn directly
    # the problems' prompts are written anew in it once the tokenizer is there
    problems = load_problems(problem_settings(n=1, offset=100000, seed=0), ["de"], "plain")
    assert with_prompts(problems, fmt)["de"][0]["prompt"].endswith("<|assistant|>")


def test_chat_format_on_a_tokenizer_without_a_chat_template_is_a_one_line_error():
    with pytest.raises(HarnessError) as err:
        prompt_format("chat", tiny_tokenizer())
    assert "\n" not in str(err.value) and "model.prompt_template=fewshot" in str(err.value)
    with pytest.raises(HarnessError, match="unknown prompt template 'fewshots'"):
        prompt_format("fewshots")


def test_generation_stops_at_the_formats_stop_strings_and_every_end_of_turn_token():
    tok = build_tokenizer(tiny_tokenizer_corpus("plain", n=20), 300)  # byte-level: every text round-trips
    model = tiny_model("llama")
    model.generation_config.eos_token_id = [tok.eos_token_id, 5]
    assert end_of_answer_ids(model, tok)[:2] == [tok.eos_token_id, 5]
    stops = AnswerStops(model, tok, prompt_format("fewshot").stop)
    kwargs = stops.generate_kwargs()
    assert kwargs["eos_token_id"][:2] == [tok.eos_token_id, 5]
    # the stopping criterion fires as soon as the decoded continuation contains a stop string
    (criterion,) = kwargs["stopping_criteria"]
    going = torch.tensor([tok("The answer is 17.")["input_ids"]])
    stopped = torch.tensor([tok("The answer is 17.\nQuestion:")["input_ids"]])
    assert not bool(criterion(going, None).any()) and bool(criterion(stopped, None).all())

"""A parallel multilingual set of arithmetic word problems that the harness writes itself.

Problem ``id`` is the same problem in every language (same operation, numbers, item and name slot), as in MGSM.
Problems are a pure function of ``(seed, id)``, so a training set (ids 0..n-1) and an evaluation set drawn from
another id range never depend on each other's size. Numbers are written with ASCII digits in every language, as
MGSM does. The texts are ours; grammar is kept simple (female names, items whose forms do not change after a
number where a language inflects) so every language reads naturally.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .. import languages

OPS = ("add", "sub", "mul", "div")
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


@dataclass(frozen=True)
class _Text:
    names: tuple[str, ...]
    items: tuple[str, ...]  # plural (or invariant) item nouns; see the Russian and Thai special cases below
    add: str
    sub: str
    mul: str
    div: str


def _ru_plural(n: int, forms: tuple[str, str, str]) -> str:
    """Russian noun form after the number n: 1 яблоко, 2 яблока, 5 яблок (accusative = nominative here)."""
    if n % 10 == 1 and n % 100 != 11:
        return forms[0]
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return forms[1]
    return forms[2]


_RU_ITEMS = (("яблоко", "яблока", "яблок"), ("яйцо", "яйца", "яиц"), ("апельсин", "апельсина", "апельсинов"),
             ("мандарин", "мандарина", "мандаринов"))
_TH_CLASSIFIERS = ("ลูก", "ฟอง", "ลูก", "ลูก")  # classifier of each Thai item below

TEXTS: dict[str, _Text] = {
    "en": _Text(
        names=("Anna", "Mary", "Lucy", "Emma"),
        items=("apples", "eggs", "oranges", "books"),
        add="{n} has {a} {i}. A friend gives {n} {b} more {i}. How many {i} does {n} have now?",
        sub="{n} has {a} {i} and gives {b} of them away. How many {i} does {n} have left?",
        mul="{n} buys {a} boxes. Each box holds {b} {i}. How many {i} does {n} buy in total?",
        div="{n} shares {a} {i} equally among {b} friends. How many {i} does each friend get?",
    ),
    "zh": _Text(
        names=("小红", "小丽", "小芳", "小梅"),
        items=("苹果", "鸡蛋", "橘子", "梨"),
        add="{n}有{a}个{i}。朋友又给了{n}{b}个{i}。{n}现在有多少个{i}？",
        sub="{n}有{a}个{i}，送出了{b}个。{n}还剩多少个{i}？",
        mul="{n}买了{a}盒{i}，每盒有{b}个。{n}一共买了多少个{i}？",
        div="{n}把{a}个{i}平均分给{b}个朋友。每个朋友分到多少个{i}？",
    ),
    "ru": _Text(
        names=("Анна", "Мария", "Ольга", "Елена"),
        items=tuple(forms[2] for forms in _RU_ITEMS),
        add="{n} собрала {a} {ia}. Потом она собрала ещё {b} {ib}. Сколько всего {i} собрала {n}?",
        sub="{n} купила {a} {ia} и отдала {b} {ib} подруге. Сколько {i} осталось у неё?",
        mul="{n} купила {a} {boxes}. В каждой коробке {b} {ib}. Сколько всего {i} купила {n}?",
        div="{n} разделила {a} {ia} поровну между {b} друзьями. Сколько {i} получил каждый друг?",
    ),
    "de": _Text(
        names=("Anna", "Marie", "Lena", "Sophie"),
        items=("Äpfel", "Eier", "Orangen", "Bücher"),
        add="{n} hat {a} {i}. Ein Freund gibt {n} noch {b} {i}. Wie viele {i} hat {n} jetzt?",
        sub="{n} hat {a} {i} und verschenkt {b} davon. Wie viele {i} hat {n} noch?",
        mul="{n} kauft {a} Kisten. In jeder Kiste sind {b} {i}. Wie viele {i} kauft {n} insgesamt?",
        div="{n} verteilt {a} {i} gleichmäßig an {b} Freunde. Wie viele {i} bekommt jeder Freund?",
    ),
    "fr": _Text(
        names=("Marie", "Claire", "Julie", "Sophie"),
        items=("pommes", "poires", "citrons", "livres"),
        add="{n} a {a} {i}. Un ami lui donne encore {b} {i}. Combien de {i} a {n} maintenant ?",
        sub="{n} a {a} {i} et en donne {b}. Combien de {i} reste-t-il à {n} ?",
        mul="{n} achète {a} boîtes. Chaque boîte contient {b} {i}. Combien de {i} achète {n} au total ?",
        div="{n} partage {a} {i} également entre {b} amis. Combien de {i} reçoit chaque ami ?",
    ),
    "es": _Text(
        names=("Ana", "María", "Lucía", "Carmen"),
        items=("manzanas", "naranjas", "peras", "galletas"),
        add="{n} tiene {a} {i}. Un amigo le da {b} {i} más. ¿Cuántas {i} tiene {n} ahora?",
        sub="{n} tiene {a} {i} y regala {b}. ¿Cuántas {i} le quedan a {n}?",
        mul="{n} compra {a} cajas. Cada caja tiene {b} {i}. ¿Cuántas {i} compra {n} en total?",
        div="{n} reparte {a} {i} en partes iguales entre {b} amigos. ¿Cuántas {i} recibe cada amigo?",
    ),
    "ja": _Text(
        names=("花子", "美咲", "陽菜", "さくら"),
        items=("りんご", "卵", "みかん", "梨"),
        add="{n}さんは{i}を{a}個持っています。友達がさらに{b}個くれました。{n}さんは今{i}を何個持っていますか？",
        sub="{n}さんは{i}を{a}個持っていて、{b}個をあげました。{n}さんには{i}が何個残っていますか？",
        mul="{n}さんは箱を{a}個買いました。各箱には{i}が{b}個入っています。{n}さんは全部で{i}を何個買いましたか？",
        div="{n}さんは{i}{a}個を{b}人の友達で等しく分けます。友達一人あたり{i}は何個ですか？",
    ),
    "sw": _Text(
        names=("Amina", "Neema", "Zawadi", "Asha"),
        items=("machungwa", "mayai", "maembe", "vitabu"),
        add="{n} ana {i} {a}. Rafiki yake anampa {i} {b} zaidi. {n} ana {i} ngapi sasa?",
        sub="{n} ana {i} {a} na anatoa {i} {b}. {n} amebaki na {i} ngapi?",
        mul="{n} ananunua masanduku {a}. Kila sanduku lina {i} {b}. {n} amenunua {i} ngapi kwa jumla?",
        div="{n} anagawa {i} {a} kwa usawa kwa marafiki {b}. Kila rafiki anapata {i} ngapi?",
    ),
    "th": _Text(
        names=("มาลี", "สุดา", "นภา", "ปราณี"),
        items=("แอปเปิล", "ไข่", "ส้ม", "มะม่วง"),
        add="{n}มี{i} {a} {c} เพื่อนให้{i}อีก {b} {c} ตอนนี้{n}มี{i}กี่{c}",
        sub="{n}มี{i} {a} {c} และให้เพื่อนไป {b} {c} {n}เหลือ{i}กี่{c}",
        mul="{n}ซื้อ{i} {a} กล่อง แต่ละกล่องมี{i} {b} {c} {n}ซื้อ{i}ทั้งหมดกี่{c}",
        div="{n}แบ่ง{i} {a} {c} ให้เพื่อน {b} คนเท่าๆ กัน เพื่อนแต่ละคนได้{i}กี่{c}",
    ),
    "bn": _Text(
        names=("রিনা", "মিতা", "সুমি", "পপি"),
        items=("আপেল", "ডিম", "কমলা", "আম"),
        add="{n}-এর কাছে {a}টি {i} আছে। একজন বন্ধু তাকে আরও {b}টি {i} দিল। এখন {n}-এর কাছে কতটি {i} আছে?",
        sub="{n}-এর কাছে {a}টি {i} ছিল, সে {b}টি দিয়ে দিল। {n}-এর কাছে কতটি {i} বাকি আছে?",
        mul="{n} {a}টি বাক্স কিনল। প্রতিটি বাক্সে {b}টি {i} আছে। {n} মোট কতটি {i} কিনল?",
        div="{n} {a}টি {i} {b} জন বন্ধুর মধ্যে সমানভাবে ভাগ করে দিল। প্রত্যেক বন্ধু কতটি {i} পেল?",
    ),
}

SYNTHETIC_LANGS: tuple[str, ...] = tuple(TEXTS)


@dataclass(frozen=True)
class Problem:
    """One problem, language-independent: what every language's text is rendered from."""

    id: int
    op: str
    a: int
    b: int
    answer: int
    name: int  # index into each language's names
    item: int  # index into each language's items


def problem(seed: int, pid: int) -> Problem:
    """Problem ``pid`` of the set ``seed``: a pure function of both, so any id range can be drawn on its own."""
    rng = random.Random(f"langneurons-synthetic/{seed}/{pid}")
    op = OPS[rng.randrange(len(OPS))]
    if op == "add":
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        answer = a + b
    elif op == "sub":
        a = rng.randint(5, 80)
        b = rng.randint(2, a - 1)
        answer = a - b
    elif op == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        answer = a * b
    else:
        b, answer = rng.randint(2, 9), rng.randint(2, 12)
        a = b * answer
    return Problem(pid, op, a, b, answer, name=rng.randrange(4), item=rng.randrange(4))


def render_question(p: Problem, lang: str) -> str:
    """The text of problem ``p`` in language ``lang``."""
    try:
        text = TEXTS[lang]
    except KeyError:
        languages.get(lang)  # an unknown code gets the table's message
        raise languages.UnknownLanguageError(
            f"the generated problem set has no texts for {lang!r}: it covers {', '.join(SYNTHETIC_LANGS)}"
        ) from None
    fields = {"n": text.names[p.name], "a": p.a, "b": p.b, "i": text.items[p.item]}
    if lang == "ru":
        forms = _RU_ITEMS[p.item]
        fields.update(ia=_ru_plural(p.a, forms), ib=_ru_plural(p.b, forms),
                      boxes=_ru_plural(p.a, ("коробку", "коробки", "коробок")))
    if lang == "th":
        fields["c"] = _TH_CLASSIFIERS[p.item]
    return getattr(text, p.op).format(**fields)


def expression(p: Problem) -> str:
    """The left side of the problem's equation ("12 + 5"): the worked step of a response."""
    return f"{p.a} {_SYMBOL[p.op]} {p.b}"

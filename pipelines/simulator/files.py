"""Result files of ended batches: JSONL lines re-derived from a batch's seed, never stored.

Each batch draws a small table of SLOTS request templates once (models, tokens, texts, error
bodies, already serialized); line i of its output file is slot i % SLOTS with its own ids,
custom_id and timestamp spliced in. A line therefore costs one bytes formatting, a 20,000-line
file a few dozen milliseconds, and sums over a whole file (the `usage` an OpenAI-style batch
object reports) take a lookup in the table's prefix sums, not a pass over the lines.
"""

import hashlib
import math
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple, TypeVar

import orjson

SLOTS = 97  # line templates per batch; prime, so no other per-line pattern lines up with it
OPENAI_SHARE = 0.35  # of batches without an OpenAI-style object, those with OpenAI's line shape
MIXED_SHARE = 0.05  # batches whose lines name two models
SECOND_MODEL_SHARE = 0.1  # of a mixed batch's lines, those naming its second model
VARIANTS = 256  # assistant texts and embedding vectors, indexed by one byte
MALFORMED_SHARE = 1 / 40  # files holding one or two lines that are not JSON objects
DETAILS_SHARE = 0.5  # batches whose usage carries reasoning (cached) token details, each
CHAT_MODELS = (
    ("deepseek-ai/DeepSeek-V3", 0.3),
    ("deepseek-ai/DeepSeek-R1", 0.2),
    ("Qwen/Qwen3-30B-A3B", 0.2),
    ("Qwen/Qwen2.5-7B-Instruct", 0.15),
    ("moonshotai/Kimi-K2-Instruct", 0.15),  # no price in sql/seeds: its cost stays unknown
)
REASONING_MODELS = frozenset({"deepseek-ai/DeepSeek-R1"})
EMBEDDING_MODEL = "BAAI/bge-m3"
OPENERS = (
    "Sure! Here is the summary",
    "翻译：这是一个测试"  # noqa: RUF001 (a full-width colon, as Chinese text has),
    "Résumé of the findings",
    "Ответ: да",
    "The answer is 42",
    "Voilà, c'est fait",
    "要点如下",
    "Let me think step by step",
    "Done ✅",
    "Here's the JSON you asked for",
)
QUOTED = ("ok", "naïve", "数据", "hello, world", "🚀 launch", "it's fine", "50%", "a\\b")
CLOSERS = (
    "That is all.",
    "第二行。",
    "See the table below.",
    "Ça marche.",
    "— end",
    "Let me know if you need more 🙂",
    "Σ = 3",
)
WORDS = ("alpha", "beta", "数据", "naïve", "token", "batch", "résumé", "ok", "🙂", "line")
SERVER_ERROR = {
    "error": {
        "message": "The server had an error processing your request. Sorry about that!",
        "type": "server_error",
        "code": "internal_error",
    }
}
# (code, message) of error-file lines that carry a 400 response ...
REJECTED = (
    ("context_length_exceeded", "This model's maximum context length is 32768 tokens."),
    ("invalid_request", 'Invalid request body: "messages" must be a non-empty array.'),
    ("model_not_found", "The model `deepseek-ai/DeepSeek-V9` does not exist."),
    ("invalid_request", "Input line is not a JSON object."),
)
# ... and of those that carry no response at all.
UNANSWERED = (
    ("batch_expired", "This request could not be executed before the completion window expired."),
    ("request_timeout", "The request timed out after 600 seconds."),
    ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    ("internal_error", 'Upstream said "overloaded"; the request was not retried.'),
)
ERROR_STYLES = (("response", 0.4), ("error", 0.4), ("mixed", 0.2))
MALFORMED = (b"not json", None)  # None: the request line that follows, cut in half
SPLICE = "@@splice@@"  # where an enlarged file's padding goes in a serialized body
CHAT_PAD = b" lorem ipsum dolor sit amet"
EMBEDDING_PAD = b",0.0078125"

# Line layouts; %031x takes a line's mixed index, so its ids differ from line to line.
OPENAI_CHAT = (
    b'{"id":"batch_req_%031x","custom_id":"request-%d","response":{"status_code":200,'
    b'"request_id":"%031x","body":{"id":"chatcmpl-%031x","object":"chat.completion",'
    b'"created":%d,%b}},"error":null}\n'
)
PLAIN_CHAT = (
    b'{"custom_id":"request-%d","response":{"body":{"id":"chatcmpl-%031x",'
    b'"object":"chat.completion","created":%d,%b}}}\n'
)
OPENAI_EMBEDDING = (
    b'{"id":"batch_req_%031x","custom_id":"request-%d","response":{"status_code":200,'
    b'"request_id":"%031x","body":{%b}},"error":null}\n'
)
PLAIN_EMBEDDING = b'{"custom_id":"request-%d","response":{"body":{%b}}}\n'
OPENAI_FAILURE = (
    b'{"id":"batch_req_%031x","custom_id":"request-%d","response":{"status_code":500,'
    b'"request_id":"%031x","body":%b},"error":null}\n'
)
ERROR_LINE = b'{"custom_id":"request-%d",%b}\n'

_BITS = 124
_MASK = (1 << _BITS) - 1
_MUL = 0x9E3779B97F4A7C15F39CC0605CEDC83
_REQUEST_ID = 0x5BD1E9955BD1E9955BD1E9955BD1E99
_COMPLETION_ID = 0x2545F4914F6CDD1D2545F4914F6CDD1
T = TypeVar("T")
SLOT_BYTES = 8  # hashed bytes per slot: model, prompt, completion, cached (2), reasoning,
# finish reason, text (also the error template of error lines)
_HEAD_WORDS = 24  # 16-bit uniforms for the batch-wide choices ...
_HEAD_BYTES = 2 * _HEAD_WORDS + 16  # ... then 16 bytes of salt for the line ids
_U16 = 1 / 65536


def _log_table(low: float, high: float) -> tuple[int, ...]:
    """256 token counts spread log-uniformly over [low, high], one per byte value."""
    return tuple(int(low * (high / low) ** ((b + 0.5) / 256)) for b in range(256))


PROMPTS = _log_table(20, 3000)
COMPLETIONS = _log_table(1, 2000)
EMBEDDED = _log_table(5, 800)


class Draw(NamedTuple):
    """One output line template's numbers; a failure slot only marks OpenAI's 500 lines."""

    failure: bool
    model: str = EMBEDDING_MODEL
    prompt: int = 0
    cached: int = 0
    completion: int = 0
    reasoning: int = 0
    finish: str = "stop"
    text: int = 0  # index into CONTENTS (chat) or VECTORS (embeddings)


FAILURE = Draw(failure=True)


class Slot(NamedTuple):
    """One output line template: a body serialized around the place an enlarged file pads."""

    before: bytes
    after: bytes
    whole: bytes  # before + after: the body as served when nothing is padded
    failure: bool  # an OpenAI-shaped line answered 500


class LinePlan(NamedTuple):
    """Everything about a batch's result lines that does not depend on the clock.

    Per slot it keeps SLOT_BYTES hashed bytes (model, tokens, texts as table indexes) and the
    token prefix sums; the templates themselves (`draws()`, `templates()`) are made when lines
    are asked for, so an OpenAI-style object's usage costs one hash and a few list passes.
    """

    openai: bool  # OpenAI's line shape (id, status_code, request_id, error) or SiliconFlow's
    chat: bool  # chat.completion bodies, else embeddings lists
    models: tuple[str, ...]  # the batch's model, then the one a few lines of a mixed batch name
    reasoning_details: bool
    cached_details: bool
    failure_slot: int  # the slot of OpenAI-shaped lines answered 500; -1 for none
    errors: str  # error lines: with a 400 'response', with only an 'error', or 'mixed'
    malformed: tuple[tuple[tuple[float, bytes | None], ...], ...]  # (output, error) extras
    salt: int
    raw: bytes  # SLOT_BYTES per slot
    # (prompt, cached, completion, reasoning) tokens reported by output lines 0..r-1 of a
    # table cycle, r = 0..SLOTS: usage sums over any file in constant time.
    sums: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ResultFile:
    """One result file as a batch names it at the world's clock; `lines()` gives its bytes.

    `file_id` is what the batch object shows (a signed storage URL when `signed`), `plain_id`
    the id behind it. A `gone` file is answered 404 (API) or 403 (storage) but still says what
    it held. `requests` counts request lines, `lines()` also yields the malformed ones.
    """

    batch_id: str
    kind: str  # 'output' | 'error'
    file_id: str
    plain_id: str
    signed: bool
    gone: bool
    requests: int
    _source: Callable[[], Iterator[bytes]] = field(repr=False, compare=False)

    def lines(self) -> Iterator[bytes]:
        """Every line, newline included, in file order: b"".join() of them is the file."""
        return self._source()

    def content(self) -> bytes:
        """The whole file at once (small files only: it is built in memory)."""
        return b"".join(self._source())


class Enlarged(NamedTuple):
    """An output file stretched for memory tests: `lines` lines of about `pad_bytes` each."""

    lines: int
    pad_bytes: int


# --- planning the lines of one batch ----------------------------------------------------------


def plan_lines(seed: int, *, openai_object: bool, chat: bool) -> LinePlan:
    """A batch's line tables, hashed from its file seed; OpenAI-style objects get OpenAI lines."""
    raw = hashlib.shake_128(seed.to_bytes(8, "big")).digest(_HEAD_BYTES + SLOT_BYTES * SLOTS)
    draw = map(_U16.__mul__, struct.unpack_from(f"<{_HEAD_WORDS}H", raw)).__next__
    openai = openai_object or draw() < OPENAI_SHARE
    models = _models(draw) if chat else (EMBEDDING_MODEL,)
    failure_slot = int(draw() * SLOTS) if openai else -1
    lines = LinePlan(
        openai=openai,
        chat=chat,
        models=models,
        reasoning_details=draw() < DETAILS_SHARE,
        cached_details=draw() < DETAILS_SHARE,
        failure_slot=failure_slot,
        errors=pick(draw, ERROR_STYLES),
        malformed=(_malformed(draw), _malformed(draw)),
        salt=int.from_bytes(raw[_HEAD_BYTES - 16 : _HEAD_BYTES], "big") & _MASK,
        raw=raw[_HEAD_BYTES:],
        sums=(),
    )
    return lines._replace(sums=_token_sums(lines))


def _token_sums(lines: LinePlan) -> tuple[tuple[int, ...], ...]:
    """Prefix sums of the tokens each slot reports: what _draw says, column by column."""
    raw, zeros = lines.raw, [0] * SLOTS
    if not lines.chat:
        columns = [[EMBEDDED[b] for b in raw[1::SLOT_BYTES]], zeros, zeros, zeros]
    else:
        prompts = [PROMPTS[b] for b in raw[1::SLOT_BYTES]]
        completions = [COMPLETIONS[b] for b in raw[2::SLOT_BYTES]]
        columns = [prompts, zeros, completions, zeros]
        if lines.cached_details:
            flags, shares = raw[3::SLOT_BYTES], raw[4::SLOT_BYTES]
            columns[1] = [
                64 * (prompt * share // 256 // 64) if flag < 0.3 * 256 else 0
                for prompt, flag, share in zip(prompts, flags, shares, strict=True)
            ]
        if lines.reasoning_details and REASONING_MODELS.intersection(lines.models):
            models = [lines.models[_second(lines, b)] for b in raw[0::SLOT_BYTES]]
            columns[3] = [
                completion * (77 + b * 154 // 256) // 256 if model in REASONING_MODELS else 0
                for completion, b, model in zip(
                    completions, raw[5::SLOT_BYTES], models, strict=True
                )
            ]
    if lines.failure_slot >= 0:
        columns = [[*column] for column in columns]
        for column in columns:
            column[lines.failure_slot] = 0
    return tuple(zip(*(accumulate(column, initial=0) for column in columns), strict=True))


def _second(lines: LinePlan, model_byte: int) -> bool:
    """Whether a slot names a mixed batch's second model."""
    return len(lines.models) > 1 and model_byte < SECOND_MODEL_SHARE * 256


def _models(draw: Callable[[], float]) -> tuple[str, ...]:
    first = pick(draw, CHAT_MODELS)
    second = [model for model, _ in CHAT_MODELS if model != first][int(draw() * 4)]
    return (first, second) if draw() < MIXED_SHARE else (first,)


def _draw(lines: LinePlan, index: int) -> Draw:
    """Slot `index`'s numbers, read from its bytes through the token tables."""
    if index == lines.failure_slot:
        return FAILURE
    model_b, prompt_b, completion_b, cached_b, share_b, reasoning_b, finish_b, text_b = lines.raw[
        index * SLOT_BYTES : (index + 1) * SLOT_BYTES
    ]
    if not lines.chat:
        return Draw(False, EMBEDDING_MODEL, EMBEDDED[prompt_b], text=text_b)
    model = lines.models[_second(lines, model_b)]
    prompt, completion = PROMPTS[prompt_b], COMPLETIONS[completion_b]
    return Draw(
        False,
        model,
        prompt,
        64 * (prompt * share_b // 256 // 64) if cached_b < 0.3 * 256 else 0,
        completion,
        completion * (77 + reasoning_b * 154 // 256) // 256 if model in REASONING_MODELS else 0,
        "length" if finish_b < 0.1 * 256 else "stop",
        text_b,
    )


def _malformed(draw: Callable[[], float]) -> tuple[tuple[float, bytes | None], ...]:
    present, extras, first, second, kinds = draw(), draw(), draw(), draw(), draw()
    if present >= MALFORMED_SHARE:
        return ()
    places = [first, second][: 1 + int(extras * 2)]
    return tuple(sorted((at, MALFORMED[int(kinds * 4) >> i & 1]) for i, at in enumerate(places)))


def error_tails(lines: LinePlan) -> list[bytes]:
    """The error line templates of a batch (what follows the custom_id), one per slot."""
    tails = []
    for index, pick in enumerate(lines.raw[7::SLOT_BYTES]):
        rejected = lines.errors == "response" or (lines.errors == "mixed" and index % 2 == 0)
        pick = pick % len(REJECTED) if rejected else len(REJECTED) + pick % len(UNANSWERED)
        tails.append(ERROR_TAILS[pick])
    return tails


def templates(lines: LinePlan) -> tuple[Slot, ...]:
    """The output line templates of a batch, serialized."""
    return tuple(_slot(lines, _draw(lines, index)) for index in range(SLOTS))


def _slot(lines: LinePlan, draw: Draw) -> Slot:
    if draw.failure:
        body = orjson.dumps(SERVER_ERROR)
        return Slot(body, b"", body, failure=True)
    if not lines.chat:
        vector = VECTORS[draw.text]
        usage = {"prompt_tokens": draw.prompt, "total_tokens": draw.prompt}
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": SPLICE}],
            "model": EMBEDDING_MODEL,
            "usage": usage,
        }
        head, tail = orjson.dumps(body)[1:-1].split(f'"{SPLICE}"'.encode())
        before, after = head + vector[:-1], b"]" + tail
        return Slot(before, after, before + after, failure=False)
    usage = {
        "prompt_tokens": draw.prompt,
        "completion_tokens": draw.completion,
        "total_tokens": draw.prompt + draw.completion,
    }
    if lines.reasoning_details:
        usage["completion_tokens_details"] = {"reasoning_tokens": draw.reasoning}
    if lines.cached_details:
        usage["prompt_tokens_details"] = {"cached_tokens": draw.cached}
    message = {"role": "assistant", "content": CONTENTS[draw.text] + SPLICE}
    body = {
        "model": draw.model,
        "choices": [{"index": 0, "message": message, "finish_reason": draw.finish}],
        "usage": usage,
    }
    before, after = orjson.dumps(body)[1:-1].split(SPLICE.encode())
    return Slot(before, after, before + after, failure=False)


def pick(draw: Callable[[], float], choices: Sequence[tuple[T, float]]) -> T:
    """The value whose share of [0, 1) the next draw falls in."""
    roll = draw()
    for value, weight in choices:
        roll -= weight
        if roll < 0:
            return value
    return choices[-1][0]


def _choice(draw: Callable[[], float], options: Sequence[T]) -> T:
    return options[int(draw() * len(options))]


def _log_uniform(draw: Callable[[], float], low: float, high: float) -> float:
    return low * math.exp(draw() * math.log(high / low))


def _contents(rnd: random.Random) -> tuple[str, ...]:
    """Assistant texts of 20-200 characters, each with some unicode, a quote and a line break."""
    texts = []
    for _ in range(VARIANTS):
        text = f'{_choice(rnd.random, OPENERS)} "{_choice(rnd.random, QUOTED)}"\n'
        text += _choice(rnd.random, CLOSERS)
        target = int(_log_uniform(rnd.random, 20, 200))
        while len(text) < target:
            text += " " + _choice(rnd.random, WORDS)
        text = text[:200]
        texts.append(text if not text.isascii() else text[:197] + " 数据")
    return tuple(texts)


def _vectors(rnd: random.Random) -> tuple[bytes, ...]:
    return tuple(
        orjson.dumps([round(rnd.uniform(-1, 1), 6) for _ in range(8)]) for _ in range(VARIANTS)
    )


def _error_tails() -> tuple[bytes, ...]:
    """Error line bodies after the custom_id: 400 responses first, then lines without one."""
    tails = [
        {
            "response": {
                "status_code": 400,
                "body": {
                    "error": {"message": message, "type": "invalid_request_error", "code": code}
                },
            },
            "error": None,
        }
        for code, message in REJECTED
    ]
    tails += [
        {"response": None, "error": {"code": code, "message": message}}
        for code, message in UNANSWERED
    ]
    return tuple(orjson.dumps(tail)[1:-1] for tail in tails)


CONTENTS = _contents(random.Random(20))
VECTORS = _vectors(random.Random(21))
ERROR_TAILS = _error_tails()


# --- what a file holds ------------------------------------------------------------------------


def usage_sums(lines: LinePlan, count: int) -> tuple[int, int, int, int]:
    """(prompt, cached, completion, reasoning) tokens over the first `count` output lines."""
    cycles, rest = divmod(count, SLOTS)
    whole, part = lines.sums[SLOTS], lines.sums[rest]
    return tuple(cycles * w + p for w, p in zip(whole, part, strict=True))  # type: ignore[return-value]


def request_numbers(total: int, failed_total: int, *, failed: bool) -> Iterator[int]:
    """The request numbers (1..total) that succeed, or fail, in order; failures spread evenly."""
    if failed:
        for j in range(failed_total):
            yield (2 * j + 1) * total // (2 * failed_total) + 1
        return
    failures = request_numbers(total, failed_total, failed=True)
    next_failure = next(failures, None)
    for number in range(1, total + 1):
        if number == next_failure:
            next_failure = next(failures, None)
        else:
            yield number


def output_lines(
    lines: LinePlan,
    numbers: Iterator[int],
    count: int,
    started_at: int,
    span_s: int,
    pad_bytes: int = 0,
) -> Iterator[bytes]:
    """The output file: `count` request lines (custom_ids from `numbers`), created over
    [started_at, started_at + span_s], each padded to about `pad_bytes` when asked."""
    slots = templates(lines)
    pads = _pads(slots, lines.chat, pad_bytes)
    salt, openai, chat = lines.salt, lines.openai, lines.chat

    def line(index: int, number: int) -> bytes:
        slot = slots[index % SLOTS]
        x = ((salt + index) * _MUL) & _MASK
        x ^= x >> (_BITS // 2)
        if slot.failure:
            return OPENAI_FAILURE % (x, number, x ^ _REQUEST_ID, slot.whole)
        body = slot.whole if pads is None else slot.before + pads[index % SLOTS] + slot.after
        if not chat:
            if openai:
                return OPENAI_EMBEDDING % (x, number, x ^ _REQUEST_ID, body)
            return PLAIN_EMBEDDING % (number, body)
        created = started_at + index * span_s // count
        if openai:
            return OPENAI_CHAT % (x, number, x ^ _REQUEST_ID, x ^ _COMPLETION_ID, created, body)
        return PLAIN_CHAT % (number, x ^ _COMPLETION_ID, created, body)

    return _with_malformed(map(line, range(count), numbers), lines.malformed[0], count)


def error_lines(lines: LinePlan, numbers: Iterator[int], count: int) -> Iterator[bytes]:
    """The error file: `count` lines, one per failed request in `numbers`."""
    errors = error_tails(lines)
    generated = (
        ERROR_LINE % (number, errors[index % SLOTS])
        for index, number in zip(range(count), numbers, strict=False)
    )
    return _with_malformed(generated, lines.malformed[1], count)


def _pads(slots: tuple[Slot, ...], chat: bool, pad_bytes: int) -> list[bytes] | None:
    """Per slot, the padding that brings its lines to about `pad_bytes` (None: no padding).

    Slices of one filler, in whole units (a cut number would leave the JSON malformed): a line
    of a gigabyte file is built, written and dropped."""
    if pad_bytes <= 0:
        return None
    unit = CHAT_PAD if chat else EMBEDDING_PAD
    filler = memoryview(unit * (pad_bytes // len(unit) + 1))
    overhead = 260  # ids, custom_id and the line layout around a body
    units = [max(0, pad_bytes - overhead - len(slot.whole)) // len(unit) for slot in slots]
    return [filler[: count * len(unit)] for count in units]


def _with_malformed(
    generated: Iterator[bytes], extras: tuple[tuple[float, bytes | None], ...], count: int
) -> Iterator[bytes]:
    """`generated` with the file's malformed lines inserted at their places."""
    places = [(min(count, int(at * (count + 1))), text) for at, text in extras]
    last = b""
    for index, line in enumerate(generated):
        while places and places[0][0] == index:
            yield _malformed_line(places.pop(0)[1], line)
        yield line
        last = line
    for _, text in places:
        yield _malformed_line(text, last)


def _malformed_line(text: bytes | None, neighbour: bytes) -> bytes:
    if text is not None:
        return text + b"\n"
    # Cut on a character boundary: the line is broken JSON, not broken UTF-8.
    half = neighbour[: len(neighbour) // 2].decode("utf-8", "ignore").encode()
    return half + b"\n"

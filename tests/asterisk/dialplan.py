"""Runs the sample ``[pbx-zrtp]`` subroutine (dialplan/asterisk/extensions_pbx_zrtp.conf)
on a fake channel, so tests check what the shipped dialplan decides, not a copy of it.

Just enough of Asterisk's dialplan for that file: ``exten => s,1,…`` / ``same => n(label),…``
lines; ``${VAR}``, ``${FUNC(args)}`` (IF, CHANNEL, STACK_PEEK, PJSIP_ENDPOINT, LEN),
substrings ``${X:offset:length}`` and ``$[expr]`` with quoted strings, ``=``, ``!=``,
``=~`` (an unanchored extended regex: the match's length), ``&``, ``|`` (``&`` binds
tighter, as in Asterisk's ast_expr2.y); the applications NoOp, Set, Progress, UserEvent,
WaitForCondition, GotoIf, Log, Hangup, Return. Anything else raises, so a change to the
file that this runner does not understand fails loudly instead of being skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.asterisk.fake_ami import FakeChannel

EXTENSIONS = (
    Path(__file__).resolve().parents[2] / "dialplan" / "asterisk" / "extensions_pbx_zrtp.conf"
)


@dataclass
class Step:
    label: str
    app: str
    data: str


@dataclass
class Outcome:
    """How the subroutine ended: ``returned`` (the call goes on) or hung up with ``cause``."""

    returned: bool
    cause: int | None = None
    log: list[str] = field(default_factory=list)


def load(context: str = "pbx-zrtp", path: Path = EXTENSIONS) -> list[Step]:
    steps: list[Step] = []
    inside = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == f"[{context}]"
            continue
        if not inside or not line or line.startswith(";"):
            continue
        match = re.fullmatch(r"(exten => s,1|same => n(?:\((\w+)\))?),(\w+)\((.*)\)", line)
        if match is None:
            raise ValueError(f"dialplan line this runner does not understand: {line}")
        steps.append(Step(match.group(2) or "", match.group(3), match.group(4)))
    if not steps:
        raise ValueError(f"no [{context}] in {path}")
    return steps


def _closing(text: str, start: int, opening: str, closing: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening} in {text!r}")


def split_args(data: str, sep: str = ",") -> list[str]:
    """ast_app_separate_args: commas inside () [] or quotes do not split."""
    out, depth, quoted, current = [], 0, False, ""
    for ch in data:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return out


def evaluate(expr: str) -> str:
    """``$[…]`` after substitution: strings compared with = and !=, joined by & and |."""
    tokens = re.findall(r'"[^"]*"|!=|=~|=|&|\||\S+', expr)

    def value(token: str) -> str:
        return token[1:-1] if token.startswith('"') else token

    def truthy(text: str) -> bool:
        return text not in ("", "0")

    def comparison(i: int) -> tuple[str, int]:
        left = value(tokens[i])
        if i + 1 < len(tokens) and tokens[i + 1] == "=~":
            match = re.search(value(tokens[i + 2]), left)
            return str(len(match.group(0)) if match else 0), i + 3
        if i + 1 < len(tokens) and tokens[i + 1] in ("=", "!="):
            right = value(tokens[i + 2])
            equal = left == right
            return ("1" if equal == (tokens[i + 1] == "=") else "0"), i + 3
        return left, i + 1

    def conjunction(i: int) -> tuple[str, int]:
        result, i = comparison(i)
        while i < len(tokens) and tokens[i] == "&":
            right, i = comparison(i + 1)
            result = "1" if truthy(result) and truthy(right) else "0"
        return result, i

    result, i = conjunction(0)
    while i < len(tokens) and tokens[i] == "|":
        right, i = conjunction(i + 1)
        result = "1" if truthy(result) or truthy(right) else "0"
    if i != len(tokens):
        raise ValueError(f"expression this runner does not understand: {expr!r}")
    return result


class Runner:
    """One Gosub(pbx-zrtp,s,1(args)) on a fake channel."""

    def __init__(
        self, channel: FakeChannel, args: list[str], *, media_address: str | None = None
    ) -> None:
        self.channel = channel
        self.args = {f"ARG{i + 1}": a for i, a in enumerate(args)}
        #: the endpoint's media_address; by default where the channel sends already
        self.media_address = media_address if media_address is not None else channel.rtp_dest_ip
        self.log: list[str] = []

    def var(self, name: str) -> str:
        if name in self.args:
            return self.args[name]
        if name.startswith("ARG"):
            return ""
        found = self.channel.read_variable(name)
        return found if found is not None else ""

    def function(self, name: str, args: str) -> str:
        if name == "IF":
            condition, _, choices = args.partition("?")
            yes, _, no = choices.partition(":")
            return yes if evaluate(condition) not in ("", "0") else no
        if name == "CHANNEL":
            return self.channel.channel_function(args)
        if name == "STACK_PEEK":
            return self.channel.exten  # the caller's extension
        if name == "PJSIP_ENDPOINT":
            return self.media_address if args.endswith(",media_address") else ""
        if name == "LEN":
            return str(len(args))
        raise ValueError(f"dialplan function this runner does not know: {name}")

    def substitute(self, text: str) -> str:
        out, i = "", 0
        while i < len(text):
            if text.startswith("${", i):
                end = _closing(text, i + 1, "{", "}")
                inner = self.substitute(text[i + 2 : end])
                sliced = re.fullmatch(r"(.*?(?:\)|\w))((?::-?\d+){1,2})", inner, re.S)
                if sliced:  # ${X:offset} or ${X:offset:length}
                    inner, cuts = sliced.group(1), [int(c) for c in sliced.group(2)[1:].split(":")]
                call = re.fullmatch(r"(\w+)\((.*)\)", inner, re.S)
                got = self.function(call.group(1), call.group(2)) if call else self.var(inner)
                if sliced:
                    start = cuts[0]
                    got = got[start:] if len(cuts) == 1 else got[start : start + cuts[1]]
                out += got
                i = end + 1
            elif text.startswith("$[", i):
                end = _closing(text, i + 1, "[", "]")
                out += evaluate(self.substitute(text[i + 2 : end]))
                i = end + 1
            else:
                out += text[i]
                i += 1
        return out

    async def run(self, steps: list[Step] | None = None) -> Outcome:
        steps = steps if steps is not None else load()
        labels = {s.label: n for n, s in enumerate(steps) if s.label}
        pc = 0
        while pc < len(steps):
            step = steps[pc]
            pc += 1
            app = step.app
            if app == "WaitForCondition":
                marker, condition, timeout, _interval = split_args(step.data)
                condition = condition.replace(marker + "{", "${").replace(marker + "[", "$[")
                await self.channel.wait_for_var(
                    "ZRTP_STATE",
                    lambda _v, c=condition: self.substitute(c) not in ("", "0"),
                    float(self.substitute(timeout)),
                )
                continue
            data = self.substitute(step.data)
            if app == "NoOp":
                await self.channel.exec_app("NoOp", data)
            elif app == "Set":
                name, _, value = data.partition("=")
                await self.channel.exec_app("Set", data)
                await self.channel.set_var(name, value)
            elif app == "Progress":
                await self.channel.progress()
            elif app == "UserEvent":
                name, *fields = split_args(data)
                headers = {}
                for text in fields:
                    key, _, value = text.partition(":")
                    headers[key.strip()] = value.strip()
                await self.channel.user_event(name, **headers)
            elif app == "GotoIf":  # GotoIf(cond?label_if_true[:label_if_false])
                condition, _, branches = data.partition("?")
                if_true, _, if_false = branches.partition(":")
                target = if_true if evaluate(condition) not in ("", "0") else if_false
                if target:
                    pc = labels[target]
            elif app == "Log":
                self.log.append(data)
            elif app == "Hangup":
                cause = int(data or 16)
                self.channel.terminate(request=False, soft_cause=16, q850=cause)
                return Outcome(False, cause, self.log)
            elif app == "Return":
                return Outcome(True, None, self.log)
            else:
                raise ValueError(f"dialplan application this runner does not know: {app}")
        raise ValueError("the subroutine ran off its end")

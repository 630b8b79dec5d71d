"""pbx_zrtp/asterisk/ami.py against the fake Asterisk, and the panoramisk behaviour it
relies on (issue 11, item 4: a DBGet of a missing key used to wait the whole 5 s
action time-out, longer than the dialplan's 3 s wait)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import pytest
from panoramisk.actions import Action
from panoramisk.message import Message

from pbx_zrtp.asterisk.ami import DB_ENTRY_NOT_FOUND, Ami, AmiError, AmiRefused
from tests.asterisk.fake_ami import FakeAmi


@asynccontextmanager
async def session(fake: FakeAmi) -> AsyncIterator[Ami]:
    port = await fake.start()
    ami = Ami("127.0.0.1", port, "ctl", "ctlpass", on_event=lambda e: None, on_connect=lambda: None)
    try:
        assert await ami.start()
        yield ami
    finally:
        await ami.close()
        await fake.close()


def test_a_missing_astdb_key_answers_in_milliseconds() -> None:
    async def scenario() -> None:
        fake = FakeAmi()
        async with session(fake) as ami:
            started = time.monotonic()
            assert await ami.db_get("pbx_zrtp/policy", "602") is None
            elapsed = time.monotonic() - started
            assert elapsed < 0.1, f"a missing AstDB key took {elapsed:.3f} s"
            # ...answered exactly as Asterisk 22's manager.c does (astman_send_error)
            dbget = next(a for a in fake.actions if a.get("Action") == "DBGet")
            answer = (
                f"Response: Error\r\nActionID: {dbget['ActionID']}\r\n"
                f"Message: {DB_ENTRY_NOT_FOUND}\r\n\r\n"
            ).encode()
            assert answer in fake.connections[-1].sent
            # a present key and the other list action still work
            fake.astdb[("pbx_zrtp/policy", "601")] = "required"
            assert await ami.db_get("pbx_zrtp/policy", "601") == "required"
            fake.new_call(rtp_port=20094)
            fake.new_call(rtp_port=20096)
            assert len(await ami.live_channels()) == 2
            # any other Error is not "no such key": it is raised, at once
            started = time.monotonic()
            with pytest.raises(AmiRefused, match="No key specified"):
                await ami.db_get("pbx_zrtp/policy", "")
            assert time.monotonic() - started < 0.1

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_lookup_that_times_out_is_an_error_not_a_missing_key() -> None:
    async def scenario() -> None:
        fake = FakeAmi()

        async def silent(session: object, headers: list[str]) -> bool:
            return True  # Asterisk stuck: never answers

        fake._handlers["dbget"] = silent
        async with session(fake) as ami:
            ami.action_timeout = 0.2
            with pytest.raises(AmiError, match="timed out"):
                await ami.db_get("pbx_zrtp/policy", "601")

    asyncio.run(asyncio.wait_for(scenario(), 20))


def _messages(*texts: str) -> list[Message]:
    out = []
    for text in texts:
        message = Message.from_line(text.replace("\n", "\r\n"))
        assert message is not None
        out.append(message)
    return out


LONE_ERROR = "Response: Error\nActionID: a/1\nMessage: Database entry not found"
LIST = (
    "Response: Success\nActionID: a/1\nEventList: start\nMessage: Result will follow",
    "Event: DBGetResponse\nFamily: f\nKey: k\nVal: v\nActionID: a/1",
    "Event: DBGetComplete\nActionID: a/1\nEventList: Complete\nListItems: 1",
)


def test_panoramisk_behaves_as_ami_py_assumes() -> None:
    """If this fails, panoramisk changed: re-read the quirks in ami.py's docstring,
    ``Ami._send_list`` and the version range pinned in pyproject.toml."""

    async def scenario() -> None:
        assert version("panoramisk").startswith("1.4"), "pyproject.toml pins panoramisk 1.4.x"
        # What _send_list relies on (as_list=None): a lone Error completes the action...
        action = Action({"Action": "DBGet", "ActionID": "a/1"}, as_list=None)
        for message in _messages(LONE_ERROR):
            action.add_message(message)
        assert action.future.done(), "panoramisk no longer completes a lone Error"
        assert action.future.result()["Message"] == DB_ENTRY_NOT_FOUND
        # ...and a list is collected up to its Complete event, not cut at the Response.
        action = Action({"Action": "DBGet", "ActionID": "a/1"}, as_list=None)
        for message in _messages(*LIST):
            assert not action.future.done(), "panoramisk cut a list short"
            action.add_message(message)
        assert [m.get("Event", m.get("Response")) for m in action.future.result()] == [
            "Success",
            "DBGetResponse",
            "DBGetComplete",
        ]
        # The quirk ami.py avoids: as_list=True waits for list items after an Error.
        action = Action({"Action": "DBGet", "ActionID": "a/1"}, as_list=True)
        for message in _messages(LONE_ERROR):
            action.add_message(message)
        assert not action.future.done(), (
            "panoramisk now completes as_list=True on a lone Error: the work-around in"
            " ami.py (_send_list) may be simplified"
        )

    asyncio.run(scenario())


class _Records(logging.Handler):
    """The records of one logger tree, whatever other tests did to propagation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_refused_login_is_said_once_and_a_later_login_too() -> None:
    """Asterisk hangs up after "Authentication failed" and panoramisk reconnects every
    second: the log says so once, in one line naming the user, never the secret."""

    async def scenario() -> None:
        fake = FakeAmi()
        port = await fake.start()
        ami = Ami(
            "127.0.0.1",
            port,
            "ctl",
            "not-the-secret",
            on_event=lambda e: None,
            on_connect=lambda: None,
            reconnect_delay=1,
        )
        try:
            # what panoramisk's protocol says on its own logger when the greeting comes
            # before the manager hands it its logger (a real Asterisk, at every attempt)
            logging.getLogger("panoramisk.ami_protocol").info("protocol version: %r", "11.0.0")
            assert not await ami.start(wait=1.5)
            await asyncio.sleep(2)  # two more refused attempts
            attempts = sum(1 for a in fake.actions if a.get("Action") == "Login")
            assert attempts >= 3
            assert ami.refused == "Authentication failed"
            fake.secret = "not-the-secret"  # the admin fixes manager.conf
            deadline = asyncio.get_running_loop().time() + 5
            while not ami.connected:
                assert asyncio.get_running_loop().time() < deadline, "never logged in"
                await asyncio.sleep(0.05)
            assert ami.refused is None
        finally:
            await ami.close()
            await fake.close()

    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("pbx_zrtp", "panoramisk")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
    loud = [r for r in handler.records if r.levelno >= logging.INFO]
    texts = [r.getMessage() for r in loud]
    refusals = [t for t in texts if "refused the login of 'ctl': Authentication failed" in t]
    assert len(refusals) == 1, texts
    assert not [t for t in texts if "not logged in yet" in t or "Connection lost" in t], texts
    assert sum("AMI logged in" in t for t in texts) == 1, texts
    assert len(loud) == 2, texts  # the refusal, then the login: nothing per attempt
    assert not any("not-the-secret" in t for t in texts)

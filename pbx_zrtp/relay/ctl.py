"""``pbx-zrtp ctl``: drive a running relay through its control API."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pbx_zrtp.calls import Policy
from pbx_zrtp.config import ConfigError, read_secret_file
from pbx_zrtp.relay.config import RelayConfig
from pbx_zrtp.relay.control import ControlClient, ControlError, parse_control_address

#: The relay's default control socket (same rule as ``pbx-zrtp relay`` without a config:
#: /run/pbx-zrtp as root, else $XDG_RUNTIME_DIR/pbx-zrtp or /tmp/pbx-zrtp-UID).
DEFAULT_CONTROL = f"unix:{RelayConfig.defaults().control_socket}"
PROG = "pbx-zrtp ctl"

_POLICIES = [p.value for p in Policy]


def control_address(value: str) -> str:
    try:
        parse_control_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _seconds(value: str) -> float:
    """A time-out: a positive, finite number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"{value!r}: seconds, more than 0 and less than 86400")
    return seconds


def _json_flag(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--json", action="store_true", default=default, help="print the relay's answer as JSON"
    )


@dataclass(frozen=True)
class Command:
    """One ``pbx-zrtp ctl`` command: its arguments, the request they make, and how
    the answer is shown (adding an op to the control API: one entry here)."""

    help: str
    request: Callable[[argparse.Namespace], tuple[str, dict[str, Any]]]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    show: Callable[[Any], str] = lambda result: format_call(result)


def _call_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("call_id", metavar="CALL_ID")


def _create_arguments(create: argparse.ArgumentParser) -> None:
    create.add_argument("call_id", metavar="CALL_ID")
    create.add_argument("port", type=int, metavar="PORT", help="the PBX's RTP port (even)")
    create.add_argument("--policy", required=True, choices=_POLICIES)
    create.add_argument("--pbx-host", metavar="IP", help="the PBX's RTP address for this call")
    create.add_argument("--pbx-port", type=int, metavar="PORT", help="default: PORT")
    create.add_argument("--self-uri", metavar="URI", help="the extension the phone talks to")
    create.add_argument("--peer-uri", metavar="URI", help="the phone's URI")
    create.add_argument(
        "--payload-type", type=int, choices=(0, 8), help="codec for priming: 0 PCMU, 8 PCMA"
    )
    create.add_argument(
        "--bridge", metavar="ID", help="legs of one bridged call share it (SAS relay)"
    )
    create.add_argument(
        "--enroll", action="store_true", help="invite the phone to enroll (E flag, §7.3.1)"
    )


def _create_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    options = {
        "pbx_host": args.pbx_host,
        "pbx_port": args.pbx_port,
        "self_uri": args.self_uri,
        "peer_uri": args.peer_uri,
        "payload_type": args.payload_type,
        "bridge": args.bridge,
        "enroll": True if args.enroll else None,
    }
    given = {name: value for name, value in options.items() if value is not None}
    return "create", {"call_id": args.call_id, "port": args.port, "policy": args.policy, **given}


def _unenroll_arguments(unenroll: argparse.ArgumentParser) -> None:
    target = unenroll.add_mutually_exclusive_group(required=True)
    target.add_argument("--call", metavar="CALL_ID", help="the phone of this live call")
    target.add_argument("--peer-zid", metavar="HEX", help="the phone's ZID (24 hex digits)")


def _unenroll_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.call is not None:
        return "unenroll", {"call_id": args.call}
    return "unenroll", {"peer_zid": args.peer_zid}


def _verify_arguments(verify: argparse.ArgumentParser) -> None:
    _call_id(verify)
    verify.add_argument("--unverify", action="store_true", help="clear the verified flag")


def _update_arguments(update: argparse.ArgumentParser) -> None:
    _call_id(update)
    update.add_argument("--policy", required=True, choices=_POLICIES)


def _rebridge_arguments(rebridge: argparse.ArgumentParser) -> None:
    _call_id(rebridge)
    rebridge.add_argument(
        "--bridge", required=True, help='the new bridge id ("" : bridged with no leg of ours)'
    )


def _delete_arguments(delete: argparse.ArgumentParser) -> None:
    _call_id(delete)
    delete.add_argument("--reason", default="deleted by pbx-zrtp ctl")


def _named(op: str) -> Callable[[argparse.Namespace], tuple[str, dict[str, Any]]]:
    return lambda args: (op, {"call_id": args.call_id})


def _plain(op: str) -> Callable[[argparse.Namespace], tuple[str, dict[str, Any]]]:
    return lambda args: (op, {})


#: Every command, in the order ``--help`` lists them (``watch`` is the event stream).
COMMANDS: dict[str, Command] = {
    "create": Command("mirror a PBX port for a call", _create_request, _create_arguments),
    "enroll": Command(
        "enroll a call's phone: the user confirmed the SAS (stores the pbxsecret)",
        _named("enroll"),
        _call_id,
    ),
    "unenroll": Command(
        "forget a phone's pbxsecret",
        _unenroll_request,
        _unenroll_arguments,
        lambda result: f"erased {result.get('erased', 0)} pbxsecret(s)",
    ),
    "enrolled": Command(
        "list the phones enrolled with this PBX",
        _plain("enrolled"),
        show=lambda result: format_enrolled(result),
    ),
    "list": Command(
        "list the calls (table: call, port, state, policy, SAS)",
        _plain("list"),
        show=lambda result: format_table(result),
    ),
    "show": Command("show one call", _named("show"), _call_id),
    "verify": Command(
        "mark a call's SAS as compared by the humans",
        lambda args: ("verify", {"call_id": args.call_id, "verified": not args.unverify}),
        _verify_arguments,
    ),
    "update": Command(
        "change a call's policy",
        lambda args: ("update", {"call_id": args.call_id, "policy": args.policy}),
        _update_arguments,
    ),
    "rebridge": Command(
        "move a call's leg to another bridge id (re-links the SAS relay)",
        lambda args: ("rebridge", {"call_id": args.call_id, "bridge": args.bridge}),
        _rebridge_arguments,
    ),
    "delete": Command(
        "end a call's mirror",
        lambda args: ("delete", {"call_id": args.call_id, "reason": args.reason}),
        _delete_arguments,
    ),
    "stats": Command("relay counters", _plain("stats"), show=lambda result: format_stats(result)),
    "ping": Command("check that the relay answers", _plain("ping"), show=str),
}


def add_ctl_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ctl`` options and commands to ``parser`` (e.g. a ``pbx-zrtp`` subparser)."""
    parser.add_argument(
        "--control",
        type=control_address,
        default=DEFAULT_CONTROL,
        metavar="ADDRESS",
        help=f"unix:/PATH or tcp:HOST:PORT of the relay's control API (default {DEFAULT_CONTROL})",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding the control token (required over TCP)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="SECONDS", help="wait this long per reply"
    )
    _json_flag(parser, default=False)
    # Subcommands take --json too; SUPPRESS keeps theirs from hiding the global one.
    commands = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(commands.add_parser(name, help=command.help))
    commands.add_parser("watch", help="print call state changes as they happen (Ctrl-C stops)")
    for sub in commands.choices.values():
        _json_flag(sub, default=argparse.SUPPRESS)


def build_ctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Drive a running pbx-zrtp relay.")
    add_ctl_arguments(parser)
    return parser


def ctl_main(argv: list[str]) -> int:
    """``pbx-zrtp ctl ARGV``: the exit status (argparse errors give 2)."""
    try:
        args = build_ctl_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run_ctl(args)


def run_ctl(args: argparse.Namespace) -> int:
    """Run the parsed ``ctl`` command; 0 on success, 1 (one line on stderr) on error."""
    try:
        token = _read_token(args.token_file) if args.token_file else None
        return asyncio.run(_run(args, token))
    except ControlError as exc:
        _fail(str(exc))
        return 1
    except KeyboardInterrupt:
        return 0 if args.ctl_command == "watch" else 130


def _fail(message: str) -> None:
    sys.stderr.write(f"{PROG}: {' '.join(message.split())}\n")
    sys.stderr.flush()


def _read_token(path: str) -> str:
    try:
        return read_secret_file("--token-file", path)
    except ConfigError as exc:
        raise ControlError(str(exc)) from None


async def _run(args: argparse.Namespace, token: str | None) -> int:
    command = COMMANDS.get(args.ctl_command)
    async with ControlClient(args.control, token=token, timeout=args.timeout) as client:
        if command is None:  # watch
            return await _watch(client, args.json)
        op, fields = command.request(args)
        result = await client.request(op, **fields)
    _out(json.dumps(result, indent=2) if args.json else command.show(result))
    return 0


async def _watch(client: ControlClient, as_json: bool) -> int:
    await client.request("subscribe")
    async for event in client.events():
        if as_json:
            _out(json.dumps(event, separators=(",", ":")))
        elif event.get("event") == "state" and isinstance(event.get("call"), dict):
            _out(f"{time.strftime('%H:%M:%S')} {format_event(event['call'])}")
        elif event.get("event") != "end":
            _out(f"{time.strftime('%H:%M:%S')} {json.dumps(event)}")
        if event.get("event") == "end":
            _fail(f"the event stream ended: {event.get('reason', '')}")
            return 1
    return 0


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------- formatting


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def format_table(calls: list[dict[str, Any]]) -> str:
    """The ``list`` table: call, port, state, policy, SAS, verified."""
    if not calls:
        return "no calls"
    header = ("CALL", "PORT", "STATE", "POLICY", "SAS", "VERIFIED")
    rows = [
        (
            str(call.get("call_id", "")),
            str(call.get("port", "")),
            str(call.get("state", "")),
            str(call.get("policy", "")),
            str(call.get("sas") or "-"),
            _yes(call.get("sas_verified")) if call.get("sas") else "-",
        )
        for call in calls
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    head = "  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))
    return "\n".join(line.rstrip() for line in [head, *lines])


def _pairs(mapping: Any) -> str:
    if not isinstance(mapping, dict) or not mapping:
        return "-"
    return ", ".join(f"{key} {value}" for key, value in sorted(mapping.items()))


def format_call(call: dict[str, Any]) -> str:
    """One call report as aligned ``name: value`` lines."""
    fields: list[tuple[str, str]] = [
        ("call", str(call.get("call_id", ""))),
        ("port", str(call.get("port", ""))),
        ("state", str(call.get("state", ""))),
    ]
    if call.get("reason"):
        fields.append(("reason", str(call["reason"])))
    fields.append(("policy", str(call.get("policy", ""))))
    if call.get("phone"):
        fields.append(("phone", str(call["phone"])))
    if call.get("sas"):
        verified = "verified" if call.get("sas_verified") else "not verified"
        fields.append(("SAS", f"{call['sas']} ({call.get('sas_type', '')}, {verified})"))
        algorithms = [call.get(k, "") for k in ("key_agreement", "hash", "cipher", "auth_tag")]
        fields.append(("algorithms", " ".join(str(a) for a in algorithms if a)))
        fields.append(("peer ZID", str(call.get("peer_zid", ""))))
        if call.get("peer_client_id"):
            fields.append(("peer client", str(call["peer_client_id"])))
        fields.append(("previously verified", _yes(call.get("previously_verified"))))
        fields.append(("enrolled", _yes(call.get("enrolled"))))
        if call.get("sas_scope"):
            shown = f"{call.get('displayed_sas', '')} ({call['sas_scope']})"
            fields.append(("SAS the phone shows", shown))
        if call.get("sas_relay"):
            fields.append(("SAS relay", str(call["sas_relay"])))
        if call.get("cache_mismatch"):
            fields.append(("WARNING", "retained secret mismatch: compare the SAS"))
    if call.get("handshake_ms") is not None:
        fields.append(("handshake", f"{call['handshake_ms']} ms"))
    counters = call.get("counters")
    if isinstance(counters, dict) and counters:
        packets = {
            name: counters[name]
            for name in ("phone_in", "phone_out", "pbx_in", "pbx_out", "priming_sent")
            if name in counters
        }
        fields.append(("packets", _pairs(packets)))
        fields.append(("drops", _pairs(counters.get("drops"))))
    width = max(len(name) for name, _ in fields) + 1
    return "\n".join(f"{(name + ':').ljust(width)} {value}" for name, value in fields)


def format_enrolled(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no enrolled phones"
    lines = ["PHONE ZID                 OUR ZID                   EXPIRES"]
    for row in rows:
        expires = row.get("expires")
        when = "never" if expires is None else time.strftime("%Y-%m-%d", time.gmtime(expires))
        lines.append(f"{row.get('peer_zid', '')}  {row.get('self_zid', '')}  {when}")
    return "\n".join(lines)


def format_stats(stats: dict[str, Any]) -> str:
    lines = []
    for key, value in stats.items():
        text = _pairs(value) if isinstance(value, dict) else str(value)
        lines.append((key.replace("_", " "), text))
    width = max((len(name) for name, _ in lines), default=0) + 1
    return "\n".join(f"{(name + ':').ljust(width)} {text}" for name, text in lines)


def format_event(call: dict[str, Any]) -> str:
    """One state event as a line: call, port, state, reason, SAS."""
    text = f"{call.get('call_id', '')} port {call.get('port', '')} {call.get('state', '')}"
    if call.get("reason"):
        text += f" ({call['reason']})"
    if call.get("sas"):
        verified = "verified" if call.get("sas_verified") else "not verified"
        text += f" SAS {call['sas']} {verified}"
    return text


__all__ = [
    "COMMANDS",
    "DEFAULT_CONTROL",
    "Command",
    "add_ctl_arguments",
    "build_ctl_parser",
    "ctl_main",
    "run_ctl",
]

"""The ``pbx-zrtp`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from pbx_zrtp import __version__, app, extras, logs, samples
from pbx_zrtp.cache.base import CacheError, SecretCache
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.cache.sqlite import SqliteSecretCache
from pbx_zrtp.calls import Address, RelayError
from pbx_zrtp.config import ConfigError
from pbx_zrtp.pbx.registry import BY_NAME, KINDS
from pbx_zrtp.relay.ctl import add_ctl_arguments, control_address, run_ctl
from pbx_zrtp.relay.guard import TABLE, EgressGuard, GuardError
from pbx_zrtp.zrtp.config import ZrtpConfiguration, parse_algorithm_list

if TYPE_CHECKING:
    from pbx_zrtp.relay.config import RelayConfig


def parse_address(value: str) -> Address:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: port must be 0-65535")
    return host, number


def _algorithms(value: str) -> tuple[bytes, ...]:
    try:
        blocks = parse_algorithm_list(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not blocks:
        raise argparse.ArgumentTypeError("empty algorithm list")
    return blocks


def _print(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _endpoint_parser(sub: Any) -> None:
    ep = sub.add_parser(
        "endpoint",
        help="run one ZRTP exchange with a peer over UDP and print the outcome as JSON",
        description="A diagnostic ZRTP endpoint, like openssl s_client for TLS.",
    )
    ep.add_argument("--bind", type=parse_address, default=("127.0.0.1", 0), metavar="HOST:PORT")
    ep.add_argument(
        "--peer",
        type=parse_address,
        metavar="HOST:PORT",
        help="peer address (omitted: answer whoever sends first)",
    )
    ep.add_argument("--role", choices=("auto", "initiator", "responder"), default="auto")
    ep.add_argument("--key-agreement", type=_algorithms, metavar="LIST")
    ep.add_argument("--hash", type=_algorithms, metavar="LIST")
    ep.add_argument("--cipher", type=_algorithms, metavar="LIST")
    ep.add_argument("--auth-tag", type=_algorithms, metavar="LIST")
    ep.add_argument("--sas", type=_algorithms, metavar="LIST")
    ep.add_argument("--cache", metavar="PATH", help="SQLite retained-secret cache (created 0600)")
    ep.add_argument("--self-uri", default="", help="our URI in the cache key")
    ep.add_argument("--peer-uri", default="", help="the peer's URI in the cache key")
    ep.add_argument(
        "--mark-verified", action="store_true", help="mark the SAS verified once secure"
    )
    ep.add_argument(
        "--accept-enrollment",
        action="store_true",
        help="if the peer PBX invites us to enroll (E flag), consent: store the pbxsecret",
    )
    ep.add_argument(
        "--sas-relay-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="once secure, wait this long for the PBX's SASrelay (displayed_sas in the output)",
    )
    ep.add_argument(
        "--srtp", type=int, default=0, metavar="N", help="send N SRTP packets when secure"
    )
    ep.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    ep.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after securing, keep answering the peer's retransmissions this long",
    )
    ep.add_argument("--port-file", metavar="PATH", help="write the bound UDP port here")


def _build_configuration(args: argparse.Namespace, zid: bytes) -> ZrtpConfiguration:
    options: dict[str, Any] = {
        # D flag (§11): this diagnostic prints the SRTP keys, so it says it discloses them.
        "disclosure": True,
        "zid": zid,
        "role": args.role,
        "self_uri": args.self_uri,
        "peer_uri": args.peer_uri,
    }
    for name in ("key_agreement", "hash", "cipher", "auth_tag", "sas"):
        value = getattr(args, name)
        if value is not None:
            field = {
                "key_agreement": "key_agreement_types",
                "hash": "hash_types",
                "cipher": "cipher_types",
                "auth_tag": "auth_tag_types",
                "sas": "sas_types",
            }[name]
            options[field] = value
    return ZrtpConfiguration(**options)


async def _endpoint_main(args: argparse.Namespace) -> int:
    from pbx_zrtp.endpoint import EndpointError, EndpointOptions, run_endpoint

    cache: SecretCache
    try:
        cache = SqliteSecretCache(args.cache) if args.cache else MemorySecretCache()
        zid = cache.local_zid(lambda: os.urandom(12))
        configuration = _build_configuration(args, zid)
        if args.srtp < 0:
            raise ValueError("--srtp must be >= 0")
        if args.timeout <= 0:
            raise ValueError("--timeout must be > 0")
        if args.sas_relay_wait < 0:
            raise ValueError("--sas-relay-wait must be >= 0")
        if not 0 <= args.linger <= 60:
            raise ValueError("--linger must be between 0 and 60")
    except (ValueError, OSError) as exc:
        _print({"ok": False, "error": f"bad argument: {exc}"})
        return 2
    options = EndpointOptions(
        bind=args.bind,
        peer=args.peer,
        srtp_count=args.srtp,
        timeout=args.timeout,
        mark_verified=args.mark_verified,
        accept_enrollment=args.accept_enrollment,
        sas_relay_wait=args.sas_relay_wait,
        linger=args.linger,
    )
    ready: asyncio.Future[Address] = asyncio.get_running_loop().create_future()
    if args.port_file:
        ready.add_done_callback(lambda f: _write_port(args.port_file, f.result()[1]))
    try:
        result = await run_endpoint(configuration, options, cache=cache, ready=ready)
    except EndpointError as exc:
        _print({"ok": False, "error": str(exc)})
        return 1
    finally:
        cache.close()
    _print(result)
    return 0


def _write_port(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)


async def _demo_main(args: argparse.Namespace) -> int:
    """Two endpoints of this install talk ZRTP over loopback UDP, then SRTP."""
    from pbx_zrtp.endpoint import EndpointError, EndpointOptions, run_endpoint

    loop = asyncio.get_running_loop()
    responder_ready: asyncio.Future[Address] = loop.create_future()
    responder = asyncio.ensure_future(
        run_endpoint(
            ZrtpConfiguration(zid=os.urandom(12), role="responder"),
            EndpointOptions(bind=("127.0.0.1", 0), peer=None, srtp_count=args.srtp, timeout=10),
            ready=responder_ready,
        )
    )
    address = await responder_ready
    try:
        initiator = await run_endpoint(
            ZrtpConfiguration(zid=os.urandom(12), role="initiator"),
            EndpointOptions(bind=("127.0.0.1", 0), peer=address, srtp_count=args.srtp, timeout=10),
        )
        answer = await responder
    except EndpointError as exc:
        responder.cancel()
        _print({"ok": False, "error": str(exc)})
        return 1
    ok = initiator["sas"] == answer["sas"] and initiator["srtp"]["received_ok"] == args.srtp
    _print({"ok": ok, "initiator": _public(initiator), "responder": _public(answer)})
    return 0 if ok else 1


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("srtp_")}


def _relay_parsers(sub: Any) -> None:
    commands = [
        ("run", "run pbx_zrtp: the relay and the PBX adapters configured in the file"),
        ("relay", "run the ZRTP media relay alone, with its control API and metrics"),
    ]
    commands += [
        (kind.name, f"run the {kind.title} adapter alone, against a relay's control API")
        for kind in KINDS
    ]
    for name, text in commands:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", metavar="FILE", help="TOML configuration (default: built-in)")
        cmd.add_argument("--check", action="store_true", help="check the configuration and exit")
        if name in BY_NAME:
            cmd.add_argument(
                "--metrics",
                type=parse_address,
                metavar="HOST:PORT",
                help="serve this adapter's health and process metrics there (/metrics)",
            )
            cmd.add_argument(
                "--relay",
                type=control_address,  # a typo is an argument error, before anything starts
                metavar="unix:PATH|tcp:HOST:PORT",
                help="the relay's control API (default: its configured socket)",
            )
    ctl = sub.add_parser(
        "ctl", help="drive a running relay (create, list, show, verify, delete...)"
    )
    add_ctl_arguments(ctl)


def _config_errors(exc: ConfigError) -> int:
    for problem in exc.problems or (str(exc),):
        sys.stderr.write(f"pbx-zrtp: configuration error: {problem}\n")
    return 2


def _guard_parser(sub: Any) -> None:
    text = (
        "print the PBX host's nftables egress guard: the PBX's RTP on relay.pbx_address,"
        " ports relay.ports, talks to the relays only (pipe it into `nft -f -` as root)"
    )
    cmd = sub.add_parser("guard", help=text, description=text)
    cmd.add_argument("--config", metavar="FILE", help="TOML configuration (default: built-in)")
    cmd.add_argument(
        "--pbx-address",
        metavar="A",
        help="the PBX's RTP address (default: relay.pbx_address; give it where the"
        " file only names remote [[…relays]])",
    )
    cmd.add_argument(
        "--table", default=TABLE, help=f"the nftables table it owns (default: {TABLE})"
    )


def _guard_main(args: argparse.Namespace) -> int:
    """The guard for this configuration's PBX address, relays and port range: every
    relay it may steer calls to (relay.address and each [[…relays]] address)."""
    try:
        settings = app.load_settings(args.config)
    except ConfigError as exc:
        return _config_errors(exc)
    config = settings.relay
    pbxs = settings.pbxs.values()
    # the in-process relay serves every PBX section without [[…relays]] of its own
    relays = [config.relay_address] if not pbxs or any(not p.relays for p in pbxs) else []
    relays += [entry.address for pbx in pbxs for entry in pbx.relays]
    try:
        guard = EgressGuard.build(
            args.pbx_address or config.pbx_address,
            relays,
            (config.port_min, config.port_max),
            table=args.table,
        )
    except GuardError as exc:
        sys.stderr.write(f"pbx-zrtp: configuration error: {exc}\n")
        return 2
    sys.stdout.write(guard.nft_ruleset())
    return 0


def _relay_main(args: argparse.Namespace) -> int:
    try:
        settings = app.load_settings(args.config)  # every section, as `run` reads them
    except ConfigError as exc:
        return _config_errors(exc)
    config = settings.relay
    logs.setup(config.log_level)  # the journal's format under systemd
    try:
        _check_extras(args.command, settings)
    except extras.MissingExtra as exc:
        sys.stderr.write(f"pbx-zrtp: {exc}\n")
        return 2
    if args.check:
        return _check(args.command, config)
    if args.command in ("run", "relay") and _port_range_refused(config):
        return 2
    try:
        if args.command == "relay":
            return run_service(
                app.run(settings, adapters=(), config_path=args.config), config.event_loop
            )
        if args.command in BY_NAME:
            if args.command not in settings.pbxs:
                sys.stderr.write(
                    f"pbx-zrtp: configuration error: [{args.command}]: missing section\n"
                )
                return 2
            return run_service(
                app.run(
                    settings,
                    with_relay=False,
                    adapters=(args.command,),
                    relay_address=args.relay,
                    config_path=args.config,
                    metrics=args.metrics,
                ),
                config.event_loop,
            )
        return run_service(app.run(settings, config_path=args.config), config.event_loop)
    except ConfigError as exc:
        return _config_errors(exc)
    except (RelayError, OSError, CacheError) as exc:
        sys.stderr.write(f"pbx-zrtp: cannot start the relay: {exc}\n")
        return 1


def _port_range_refused(config: RelayConfig) -> bool:
    """``relay.ports`` as ``--check`` judges it: warnings logged (the journal's
    warning priority), a range that cannot work refused before anything starts."""
    from pbx_zrtp.relay.preflight import port_range

    found = port_range(config)
    for warning in found.warnings:
        logging.getLogger("pbx_zrtp").warning("%s", warning)
    for error in found.errors:
        sys.stderr.write(f"pbx-zrtp: configuration error: {error}\n")
    return bool(found.errors)


def _check(command: str, config: RelayConfig) -> int:
    """``--check``: beyond the file, what starting would stop at (probed, nothing kept)."""
    from pbx_zrtp.config import read_secret_file
    from pbx_zrtp.relay.preflight import Findings, check

    if command in ("run", "relay"):
        found = check(config)
    else:  # an adapter alone: the relay's token, if it needs one
        found = Findings()
        if config.control_token_file:
            try:
                read_secret_file("control.token_file", config.control_token_file, min_length=16)
            except ConfigError as exc:
                found.errors.append(str(exc))
    for warning in found.warnings:
        sys.stderr.write(f"pbx-zrtp: warning: {warning}\n")
    for error in found.errors:
        sys.stderr.write(f"pbx-zrtp: check failed: {error}\n")
    if found.errors:
        return 2
    sys.stdout.write("configuration OK\n")
    return 0


def _check_extras(command: str, settings: app.Settings) -> None:
    """The libraries of the optional parts this command would start are installed."""
    for name in settings.pbxs:
        if command in ("run", name):
            extras.require(name, f"the [{name}] adapter")


def event_loop_runner(name: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """How a long-lived service runs: ``relay.event_loop`` says, nothing else (not
    whether the fast path could be built)."""
    if name == "uvloop":
        import uvloop

        runner: Callable[[Coroutine[Any, Any, int]], int] = uvloop.run
        return runner
    return asyncio.run


def run_service(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    try:
        return event_loop_runner(event_loop)(main)
    except KeyboardInterrupt:  # Ctrl-C while starting, before SIGINT is ours: stopped
        logging.getLogger("pbx_zrtp").info("interrupted while starting")
        return 130


class _Version(argparse.Action):
    """``--version``: the version, and whether this installation has its native worker."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from pbx_zrtp.relay.fastpath import available as fastpath_available

        reason = fastpath_available()
        fast = "native fast path" if reason is None else f"no native fast path: {reason}"
        sys.stdout.write(f"pbx-zrtp {__version__} ({fast})\n")
        parser.exit()


def _samples_parser(sub: Any) -> None:
    text = "list, print or copy the shipped docs, dialplan snippets and example units"
    cmd = sub.add_parser("samples", help=text, description=text)
    verbs = cmd.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="list them (under a directory, e.g. dialplan)")
    listing.add_argument("under", nargs="?", default="")
    show = verbs.add_parser("show", help="print one, e.g. examples/relay.toml")
    show.add_argument("name")
    copy = verbs.add_parser(
        "copy",
        help="copy files or directories into DIR, e.g. dialplan/asterisk /etc/asterisk",
    )
    copy.add_argument("names", nargs="+", metavar="NAME")
    copy.add_argument("dest", metavar="DIR")
    copy.add_argument("--force", action="store_true", help="overwrite existing files")


def _samples_main(args: argparse.Namespace) -> int:
    try:
        if args.verb == "list":
            chosen = samples.names()
            if args.under:
                under = args.under.strip("/")
                chosen = [n for n in chosen if n == under or n.startswith(f"{under}/")]
                if not chosen:
                    raise samples.SampleError(f"no sample under {args.under!r}")
            sys.stdout.write("".join(f"{name}\n" for name in chosen))
        elif args.verb == "show":
            sys.stdout.buffer.write(samples.read(args.name))
        else:
            for item in samples.copy(args.names, args.dest, force=args.force):
                sys.stdout.write(f"{item.name} -> {item.target}\n")
        sys.stdout.flush()
    except samples.SampleError as exc:
        sys.stderr.write(f"pbx-zrtp: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"pbx-zrtp: {exc.strerror or exc}: {exc.filename or ''}\n")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbx-zrtp", description="ZRTP for Asterisk and FreeSWITCH"
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    _relay_parsers(sub)
    _endpoint_parser(sub)
    demo = sub.add_parser("demo", help="run a ZRTP exchange and SRTP between two local endpoints")
    demo.add_argument("--srtp", type=int, default=50, metavar="N")
    _samples_parser(sub)
    _guard_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "endpoint":
        return asyncio.run(_endpoint_main(args))
    if args.command == "demo":
        return asyncio.run(_demo_main(args))
    if args.command in ("run", "relay", *BY_NAME):
        return _relay_main(args)
    if args.command == "ctl":
        return run_ctl(args)
    if args.command == "samples":
        return _samples_main(args)
    if args.command == "guard":
        return _guard_main(args)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())

"""`switchboard call NUMBER`: place one outbound message or one-time-code call over AMI."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.asterisk.ami import AmiClient, AmiError
from gateway.asterisk.originate import OutboundCalls
from gateway.cli.common import load, setup_logging
from gateway.config import Config
from gateway.daemon.app import Gateway
from gateway.services import load_services


def command(args: argparse.Namespace) -> int:
    config = load(args)
    if config is None:
        return 2
    if not config.ami.enabled:
        print(f"switchboard call: needs the AMI control plane: set ami.enabled and its credentials in {config.path}",
              file=sys.stderr)
        return 2
    if not args.text and args.code is None:
        print("switchboard call: give a TEXT to say, --code DIGITS, or both", file=sys.stderr)
        return 2
    if args.code is not None and not args.code.isdigit():
        print("switchboard call: --code must be digits only", file=sys.stderr)
        return 2
    setup_logging(config.log_level if args.verbose else "WARNING", transcripts=config.log_transcripts)
    return asyncio.run(run_outbound_call(config, args.number, args.text, args.code))


async def run_outbound_call(config: Config, number: str, text: str, code: str | None) -> int:
    """`switchboard call`: its own AudioSocket listener for the spoken part, so no daemon is needed."""
    s = config.ami
    host = s.outbound_audiosocket_host or config.audiosocket.host
    services = await load_services(config, progress=False, client=True)  # the daemon may be running
    ami = AmiClient(s)
    gateway = Gateway(services, host=host, port=0)
    try:
        await gateway.start()
        await ami.start()
        await ami.wait_connected(s.connect_timeout_s + 2)
        gateway.outbound = OutboundCalls(ami, services.store, s, site=config.site, audiosocket=f"{host}:{gateway.port}")
        result = await gateway.outbound.call(number, text, code=code)
    except (AmiError, ValueError) as exc:
        print(f"switchboard call: {exc}", file=sys.stderr)
        return 2
    finally:
        await ami.close()
        await gateway.stop(grace_s=2.0)
        await services.close()
    print(f"{number}: {result.result} after {result.attempts} attempt(s)"
          + (f" ({result.error})" if result.error else ""))
    return 0 if result.result == "answered" else 1

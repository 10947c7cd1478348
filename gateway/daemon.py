"""`mailgw serve`: build components from Config, start → run → reload (SIGHUP) → drain (SIGTERM).

Order matters (design: Lifecycle): spool opened and recovered first, then the directory and workers,
listeners bound last, so nothing is accepted before it can be stored and nothing is stored that no
worker will pick up. On SIGTERM listeners stop first (DATA in progress finishes), then pollers and
workers; whatever is unfinished stays claimed-free in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway import __version__
from gateway.admission import AdmissionPolicy
from gateway.config import Config, ConfigError, load_config
from gateway.exitcodes import EX_CONFIG, EX_OSERR, EX_TEMPFAIL
from gateway.host import default_hostname
from gateway.intake.pipe import PipeListener
from gateway.intake.pipe_handoff import config_identity
from gateway.intake.policy import PolicyListener
from gateway.intake.smtp import SmtpListener
from gateway.logs import get_logger, setup_logging
from gateway.routing_policy import rcpt_precheck, smtp_line
from gateway.sdnotify import notify, watchdog_interval
from gateway.spool import Direction, Spool, SpoolError, SpoolUnavailable, open_spool, spool_location
from gateway.state_lock import StateDirLocked, StateLock

if TYPE_CHECKING:
    from gateway.inbound import IntakeHold

log = get_logger("mailgw.daemon")


def settle_garbage_collector() -> None:
    """Once start-up is done: move everything allocated so far (modules, config, pydantic and structlog state,
    the directory) out of the collector's sight, and collect the young generation less often.

    Every SMTP connection allocates a few hundred container objects, so CPython's default threshold (700) ran a
    collection every few connections, and each full collection walked the whole start-up heap again: about 6 %
    of the daemon's CPU under load (perf). Nothing frozen is ever freed, which is fine for what lives as long
    as the process; cycles created later are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


class Service(Protocol):
    """Anything the daemon starts and stops (workers, pollers, the directory sync)."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class Daemon:
    def __init__(self, config: Config, config_path: Path | None = None, config_id: list[int] | None = None):
        self.config = config
        self.config_path = config_path
        # The config file as it was when read (pipe_handoff.config_identity): `mailgw pipe` hands its message over
        # only to a daemon that runs the config file it was given, unchanged.
        self.config_id = config_id
        # One identity for banners, Received lines, DSNs and generated Message-Ids, as an MTA's myhostname.
        self.hostname = config.outbound.helo_name or default_hostname()
        self.spool: Spool | None = None
        self.lock = StateLock(config.state_dir)
        self.admission = AdmissionPolicy(config)
        self.listeners: list[SmtpListener] = []
        # Not mail sessions: `mailgw pipe`'s hand-over socket and Postfix policy listeners.
        self.aux_listeners: list[PipeListener | PolicyListener] = []
        self.services: list[Service] = []
        self._service_tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.reload_hooks: list[Callable[[Config], Awaitable[None]]] = []
        self.started_at = time.time()
        self.inbound: Any = None  # gateway.inbound.InboundService when Odoo instances are configured
        self.outbound: Any = None  # gateway.outbound.worker.OutboundWorker
        self.bounces: Any = None  # gateway.bounces.BounceForwarder
        self.dns_status: dict[str, int] = {}
        self.intake_auth: Any = None  # gateway.auth.intake.IntakeAuth when auth.enabled

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.lock.acquire()  # before the spool and the sockets: a second daemon touches neither
        self.spool = spool = await self._open_spool()
        if spool is None:
            return  # stopped while waiting for the spool database
        report = await spool.recover(crash_limit=cfg.delivery.crash_limit)
        log.info("daemon.starting", version=__version__, state_dir=str(cfg.state_dir), spool=spool_location(cfg),
                 recovered=len(report.released), parked=len(report.parked))
        spool.add_listener(self._kick)  # mail stored by a peer gateway or `mailgw pipe` (PostgreSQL)
        for problem in cfg.secret_problems():  # what check-config warns about, said once here too
            log.warning("config.secret_missing", problem=problem)
        self.services.extend(self._build_services())
        for svc in self.services:
            self._service_tasks.append(asyncio.create_task(self._run_service(svc), name=type(svc).__name__))
        await self._start_aux_listeners()
        for lcfg in cfg.listeners:
            if lcfg.kind == "policy":
                continue
            if lcfg.kind == "submission":
                check = AdmissionPolicy.submission_check(lcfg.auth is not None)
            else:
                check = self.admission.check_rcpt
            listener = SmtpListener(lcfg, spool=spool, rcpt_check=check, hostname=self.hostname,
                                    on_stored=self._kick,
                                    message_check=self._check_message if lcfg.kind != "submission" else None,
                                    hold_check=self._intake_hold,
                                    auth=self.intake_auth if lcfg.kind in cfg.auth.intakes else None)
            await listener.start()
            self.listeners.append(listener)
        settle_garbage_collector()
        notify(f"READY=1\nSTATUS=accepting mail on {', '.join(x.address for x in self.listeners) or 'no listener'}")
        log.info("daemon.ready", listeners=[x.address for x in self.listeners],
                 aux=[x.address for x in self.aux_listeners])

    async def _start_aux_listeners(self) -> None:
        """The pipe hand-over socket (a path too long for a unix socket only costs `mailgw pipe` its fast path)
        and the policy listeners (a bind that fails is fatal, like a mail listener's)."""
        assert self.spool is not None
        pipe = PipeListener(self.config, self.spool, hostname=self.hostname, identity=lambda: self.config_id,
                            on_stored=self._kick, hold_check=self._intake_hold)
        try:
            await pipe.start()
            self.aux_listeners.append(pipe)
        except OSError as exc:
            log.warning("intake.pipe_socket_unavailable", path=str(pipe.path), error=str(exc),
                        hint="mailgw pipe stores without the daemon (slower, as durable)")
        for lcfg in self.config.listeners:
            if lcfg.kind == "policy":
                policy = PolicyListener(lcfg, self.admission)
                await policy.start()
                self.aux_listeners.append(policy)

    async def _open_spool(self) -> Spool | None:
        """The spool, waiting for its database if it cannot be reached yet (PostgreSQL starting with the machine):
        nothing listens meanwhile, so senders retry. None when told to stop while waiting."""
        delay = 1.0
        while True:
            try:
                return await open_spool(self.config, daemon=True)
            except SpoolUnavailable as exc:
                log.error("daemon.spool_unavailable", spool=spool_location(self.config), error=str(exc),
                          retry_in=delay)
                notify(f"STATUS=waiting for the spool database: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return None
            delay = min(delay * 2, 30.0)

    def _build_services(self) -> list[Service]:
        """Every component the config asks for, in dependency order (the Odoo side first: the others read its
        directory)."""
        from gateway.bounces import BounceForwarder
        from gateway.inbound import InboundService
        from gateway.intake.imap import ImapPoller
        from gateway.intake.pop import Pop3Poller
        from gateway.metrics import MetricsServer, daemon_families, daemon_health
        from gateway.outbound.worker import OutboundWorker

        cfg = self.config
        assert self.spool is not None
        services: list[Service] = []
        verp_secret = cfg.bounce.verp_secret()
        if cfg.bounce.verp_warning():
            log.warning("bounce.verp_off", reason=cfg.bounce.verp_warning())
        if cfg.odoo:
            self.inbound = InboundService(cfg, self.spool, hostname=self.hostname)
            directory = self.inbound.directory
            self.bounces = BounceForwarder(spool=self.spool, clients=self.inbound.clients,
                                           directory=lambda: directory.current, hostname=self.hostname,
                                           verp_secret=verp_secret, forward_soft=cfg.bounce.forward_soft,
                                           report_failures=cfg.bounce.report_failures)
            self.inbound.worker.bounce_handler = self.bounces
            # RCPT prechecks ask the worker's current router (swapped per snapshot; it shares the loop guard).
            worker = self.inbound.worker
            self.admission.precheck = rcpt_precheck(lambda: worker.router)
            self.reload_hooks.append(self.inbound.reload)
            services.append(self.inbound)
            if cfg.auth.enabled:
                services += self._build_auth(worker, directory)
        self.outbound = OutboundWorker(cfg, self.spool, hostname=self.hostname, verp_secret=verp_secret,
                                       bounce_addresses=self._bounce_addresses)
        services.append(self.outbound)
        self.reload_hooks.append(self.outbound.reload)
        services += [ImapPoller(m, cfg, self.spool) for m in cfg.imap]
        services += [Pop3Poller(m, cfg, self.spool) for m in cfg.pop3]
        if cfg.metrics.bind:
            services.append(MetricsServer(cfg.metrics.bind, lambda: daemon_families(self), lambda: daemon_health(self)))
        if cfg.dns_check.interval:
            from gateway.dnswatch import DnsWatch

            services.append(DnsWatch(self))
        return services

    def _build_auth(self, worker: Any, directory: Any) -> list[Service]:
        """Sender authentication: one verifier (resolver and cache) for the intake hooks and the worker."""
        from gateway.auth.held import HeldExpiry
        from gateway.auth.intake import IntakeAuth
        from gateway.auth.resolver import build_resolver
        from gateway.auth.verifier import Verifier

        auth = self.config.auth
        assert self.spool is not None
        verifier = Verifier(build_resolver(auth.nameservers, timeout=auth.dns_timeout, cache_size=auth.dns_cache_size),
                            authserv_id=auth.authserv_id or self.hostname, trusted_sealers=auth.trusted_arc_sealers,
                            timeout=auth.timeout)
        worker.auth_gate.verifier = verifier
        self.intake_auth = IntakeAuth(lambda: self.config, verifier, lambda: worker.router, lambda: directory.current,
                                      reply_lookup=worker.known_replies)
        log.info("auth.enabled", authserv_id=verifier.authserv_id, intakes=auth.intakes,
                 trusted_relays=auth.trusted_relays, trusted_arc_sealers=auth.trusted_arc_sealers)
        return [HeldExpiry(self.spool, auth.held_lifetime)]

    def _check_message(self, raw: bytes, rcpts: tuple[str, ...]) -> list[str | None]:
        """End of DATA: the router's message rules (today only `routing.auto_submitted: refuse`)."""
        if self.config.routing.auto_submitted != "refuse" or self.inbound is None:
            return [None] * len(rcpts)
        from routing.message import MessageView

        return [smtp_line(a) for a in self.inbound.worker.router.check_message(MessageView.from_bytes(raw), rcpts)]

    def _intake_hold(self, mail_from: str, rcpts: tuple[str, ...]) -> IntakeHold | None:
        """Mail the worker would only defer (Odoo down, or its sender waiting behind an earlier message) is
        spooled deferred straight away."""
        return self.inbound.worker.intake_hold(mail_from, rcpts) if self.inbound is not None else None

    def _bounce_addresses(self) -> dict[str, tuple[str, str]]:
        """Envelope senders that get a VERP return path: every alias domain's bounce address."""
        out = {f"bounce@{d}": ("bounce", d) for inst in self.config.odoo for d in inst.domains}
        if self.inbound is not None:
            for inst in self.inbound.directory.current.instances.values():
                for dom in inst.domains:
                    if dom.bounce_email:
                        out[dom.bounce_email] = (dom.bounce_alias, dom.name.lower())
        return out

    def _kick(self, direction: Direction) -> None:
        """A listener stored mail: let the worker look now rather than at its next poll."""
        if direction == Direction.OUTBOUND:
            if self.outbound is not None:
                self.outbound.kick()
        elif self.inbound is not None:
            self.inbound.worker.kick()

    async def _run_service(self, svc: Service) -> None:
        try:
            await svc.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a service dying must be loud, and must not take the listeners down
            log.error("daemon.service_crashed", service=type(svc).__name__, error=repr(exc))

    def install_signal_handlers(self) -> None:
        """Before anything starts: a SIGTERM that arrives during start-up must drain, not kill the process."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    async def run_until_stopped(self) -> None:
        watchdog = asyncio.create_task(self._watchdog())
        try:
            while not self._stop.is_set():
                reload_wait = asyncio.create_task(self._reload.wait())
                stop_wait = asyncio.create_task(self._stop.wait())
                await asyncio.wait({reload_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                reload_wait.cancel()
                stop_wait.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self.reload()
        finally:
            watchdog.cancel()

    async def reload(self) -> None:
        """SIGHUP: re-read the config; keep the old one if the new one is invalid. Listeners are not rebound."""
        notify("RELOADING=1")
        if self.config_path is None:
            notify("READY=1")
            return
        try:
            config_id = config_identity(str(self.config_path))  # before reading: a later edit must not match
            new = load_config(self.config_path)
        except OSError as exc:
            log.error("daemon.reload_rejected", errors=[f"{self.config_path}: {exc.strerror}"])
            notify("READY=1\nSTATUS=reload rejected: config unreadable, still running the old one")
            return
        except ConfigError as exc:
            log.error("daemon.reload_rejected", errors=exc.errors)
            notify("READY=1\nSTATUS=reload rejected: invalid config, still running the old one")
            return
        if [x.model_dump() for x in new.listeners] != [x.model_dump() for x in self.config.listeners]:
            log.warning("daemon.reload_listeners_unchanged", hint="listener changes need a restart")
        self.config = new
        self.config_id = config_id
        self.admission.domains = set(new.domain_owner)
        for aux in self.aux_listeners:
            if isinstance(aux, PipeListener):
                aux.config = new
        for hook in self.reload_hooks:
            try:
                await hook(new)
            except Exception as exc:
                log.error("daemon.reload_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)), error=repr(exc))
        log.info("daemon.reloaded")
        notify("READY=1\nSTATUS=config reloaded")

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            # Ping only while the loop turns (we are here) and no service task died.
            if all(not t.done() for t in self._service_tasks):
                notify("WATCHDOG=1")
            else:
                log.error("daemon.watchdog_withheld", reason="a service task has stopped")

    async def drain(self) -> None:
        notify("STOPPING=1")
        log.info("daemon.draining", timeout=self.config.drain_timeout)
        grace = self.config.drain_timeout
        await asyncio.gather(*(x.drain(grace) for x in self.listeners), *(x.drain(grace) for x in self.aux_listeners))
        stops = [asyncio.wait_for(svc.stop(), self.config.drain_timeout) for svc in self.services]
        for result in await asyncio.gather(*stops, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("daemon.service_stop_failed", error=repr(result))
        for task in self._service_tasks:
            task.cancel()
        for task in self._service_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.spool is not None:
            await self.spool.close()
        self.lock.release()
        log.info("daemon.stopped")


async def serve(config: Config, config_path: Path | None = None, ready: Callable[[Daemon], Any] | None = None,
                config_id: list[int] | None = None) -> int:
    daemon = Daemon(config, config_path, config_id)
    daemon.install_signal_handlers()
    try:
        try:
            await daemon.start()
        except StateDirLocked as exc:
            # 75: not a broken config or machine, only "not now" — it starts once the other daemon has stopped.
            log.error("daemon.already_running", error=str(exc))
            return EX_TEMPFAIL
        except OSError as exc:
            log.error("daemon.start_failed", error=str(exc))
            await daemon.drain()
            return EX_OSERR  # e.g. the port is taken
        except (SpoolError, ConfigError) as exc:  # another live gateway has this instance name, no DSN secret …
            log.error("daemon.start_failed", error=str(exc))
            await daemon.drain()
            return EX_CONFIG
        if ready is not None:
            ready(daemon)
        try:
            await daemon.run_until_stopped()
        finally:
            await daemon.drain()
        return 0
    finally:
        daemon.remove_signal_handlers()


def run(config_path: Path) -> int:
    try:
        config_id = config_identity(str(config_path))  # before reading (see Daemon.config_id)
        config = load_config(config_path)
    except OSError as exc:
        setup_logging()
        log.error("config.invalid", path=str(config_path), error=exc.strerror)
        return EX_CONFIG
    except ConfigError as exc:
        setup_logging()
        for line in exc.errors:
            log.error("config.invalid", path=str(config_path), error=line)
        return EX_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep running without it
        return asyncio.run(serve(config, config_path, config_id=config_id))
    return uvloop.run(serve(config, config_path, config_id=config_id))

"""TLS-RPT (RFC 8460) counters: per UTC day and per policy domain, the sessions that negotiated TLS as the
domain's policy asks and those that failed, with the failure details a report needs (result type, MX host,
addresses). Kept in ``<state_dir>/tls-reports/YYYY-MM-DD.json``; `mailgw tls-report` turns a day into the
RFC 8460 JSON reports, one per policy domain (sending them to the domain's `rua` is left to the operator).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.logs import get_logger
from gateway.outbound.mta_sts import StsPolicy

log = get_logger("mailgw.outbound")

FLUSH_EVERY = 60.0


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _policy_key(domain: str, policy: StsPolicy | None) -> str:
    return f"{domain}|sts|{policy.policy_id}" if policy is not None else f"{domain}|no-policy-found|"


class TlsReportCounters:
    def __init__(self, directory: Path | None, clock: Callable[[], float] = time.time):
        self.directory = directory
        self.clock = clock
        self.day = day_of(clock())
        self.data: dict[str, Any] = self._load(self.day)
        self._flushed = clock()
        self._dirty = False

    def success(self, domain: str, policy: StsPolicy | None) -> None:
        self._entry(domain, policy)["success"] += 1
        self._changed()

    def failure(self, domain: str, policy: StsPolicy | None, result_type: str, *, mx_host: str = "",
                receiving_ip: str = "", sending_ip: str = "", detail: str = "") -> None:
        entry = self._entry(domain, policy)
        entry["failure"] += 1
        key = "|".join((result_type, mx_host, receiving_ip, sending_ip, detail[:200]))
        entry["details"][key] = entry["details"].get(key, 0) + 1
        self._changed()

    def _entry(self, domain: str, policy: StsPolicy | None) -> dict[str, Any]:
        today = day_of(self.clock())
        if today != self.day:
            self.flush()
            self.day, self.data = today, {}
        key = _policy_key(domain, policy)
        entry = self.data.get(key)
        if entry is None:
            entry = self.data[key] = {
                "domain": domain, "type": "sts" if policy else "no-policy-found",
                "policy": policy.lines() if policy else [], "mx": list(policy.mx) if policy else [],
                "success": 0, "failure": 0, "details": {}}
        return entry

    def _changed(self) -> None:
        self._dirty = True
        if self.clock() - self._flushed >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        self._flushed = self.clock()
        if not self._dirty or self.directory is None:
            return
        self._dirty = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self.day}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("outbound.tls_report_unwritable", directory=str(self.directory), error=str(exc))

    def _load(self, day: str) -> dict[str, Any]:
        return load_day(self.directory, day) if self.directory is not None else {}


def load_day(directory: Path, day: str) -> dict[str, Any]:
    path = directory / f"{day}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("outbound.tls_report_unreadable", path=str(path), error=str(exc))
        return {}
    return data if isinstance(data, dict) else {}


def build_reports(data: dict[str, Any], day: str, *, organization: str, contact: str | None = None
                  ) -> list[dict[str, Any]]:
    """RFC 8460 §4.4 reports, one per policy domain, for the counters of one day."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for entry in data.values():
        details = []
        for key, count in sorted(entry.get("details", {}).items()):
            result_type, mx_host, receiving_ip, sending_ip, detail = (key.split("|") + [""] * 5)[:5]
            item: dict[str, Any] = {"result-type": result_type, "failed-session-count": count}
            if sending_ip:
                item["sending-mta-ip"] = sending_ip
            if mx_host:
                item["receiving-mx-hostname"] = mx_host
            if receiving_ip:
                item["receiving-ip"] = receiving_ip
            if detail:
                item["additional-information"] = detail
            details.append(item)
        policy: dict[str, Any] = {"policy-type": entry["type"], "policy-domain": entry["domain"]}
        if entry["type"] == "sts":
            policy["policy-string"] = entry["policy"]
            policy["mx-host"] = entry["mx"]
        by_domain.setdefault(entry["domain"], []).append({
            "policy": policy,
            "summary": {"total-successful-session-count": entry["success"],
                        "total-failure-session-count": entry["failure"]},
            "failure-details": details})
    start = f"{day}T00:00:00Z"
    reports = []
    for domain, policies in sorted(by_domain.items()):
        report: dict[str, Any] = {
            "organization-name": organization,
            "date-range": {"start-datetime": start, "end-datetime": f"{day}T23:59:59Z"},
            "contact-info": contact or f"postmaster@{organization}",
            "report-id": f"{start}_{domain}",
            "policies": policies,
        }
        reports.append(report)
    return reports
